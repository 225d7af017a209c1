"""What every training stage shares: a flat working copy of the model and one fine-tuning loop.

tfmot wraps the layer objects it is given, so a stage must never touch the caller's model: clustering
deletes the original kernels and pruning masks them in place. Each stage works on a copy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from edgekit.compat import keras
from edgekit.config import validate
from edgekit.errors import EdgekitError
from edgekit.model import compile_for_training


def check_flat(model: keras.Model, stage: str) -> None:
    """Reject what tfmot cannot wrap: subclassed models and models nested inside the classifier."""
    if not isinstance(model, keras.Model):
        raise EdgekitError(f"{stage}: expected a Keras model, got {type(model).__name__}")
    if not (isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False)):
        raise EdgekitError(
            f"{stage}: model {model.name!r} is a subclassed Keras model; tfmot can only wrap functional "
            "or Sequential models, so build it with edgekit.model.build_classifier"
        )
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise EdgekitError(
                f"{stage}: layer {layer.name!r} is a nested Keras model ({type(layer).__name__}); tfmot "
                "cannot wrap a model inside a model, so build the classifier flat (edgekit.model."
                "build_classifier wires the MobileNetV2 layers directly between input and head)"
            )


def working_copy(model: keras.Model, stage: str) -> keras.Model:
    """A flat, fully trainable clone with the same weights; the caller's model stays untouched.

    Everything but batch-norm is made trainable because compression fine-tunes the whole network
    (tfmot also refuses to cluster a frozen Conv2D). Batch-norm layers keep their flag, so a model
    trained with frozen statistics keeps them.
    """
    check_flat(model, stage)
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for layer in clone.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = True
    return clone


class EpochProgress(keras.callbacks.Callback):
    """One line per epoch on stderr (through logging): fine-tuning can take minutes per stage."""

    def __init__(self, what: str, epochs: int):
        super().__init__()
        self.what, self.epochs = what, epochs

    def on_epoch_end(self, epoch, logs=None):
        figures = "  ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items() if "acc" in k or k == "loss")
        logging.getLogger("edgekit").info("%s epoch %d/%d  %s", self.what, epoch + 1, self.epochs, figures)


def check_params(stage: str, params) -> None:
    """Parameters built in code (not read from a recipe) meet the rules declared on their class:
    `<stage>: field '<name>' must be ...`."""
    validate(params, "field", where=stage)


def count_steps(dataset) -> int | None:
    """Batches per pass over a finite tf.data dataset, or None when TensorFlow cannot tell."""
    cardinality = int(dataset.cardinality())
    if cardinality < 0:  # tf.data.INFINITE_CARDINALITY (-1) or UNKNOWN_CARDINALITY (-2)
        return None
    return cardinality


def fine_tune(
    model: keras.Model,
    train_ds,
    val_ds,
    epochs: int,
    learning_rate: float,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    *,
    steps_per_epoch: int | None = None,
    verbose: int = 0,
    run_eagerly: bool = False,
) -> keras.callbacks.History:
    """Compile (Adam, sparse categorical cross-entropy, accuracy) and fit a wrapped model in place.

    The classifier ends in a softmax, so the loss takes probabilities. `run_eagerly` skips the graph
    trace, which costs 20-30 s for MobileNetV2 on two cores: worth it only for a handful of steps.
    """
    if epochs < 0 or not learning_rate > 0:
        raise EdgekitError(f"fine-tune: epochs {epochs} must be >= 0 and learning_rate {learning_rate} > 0")
    compile_for_training(model, learning_rate, run_eagerly)
    if epochs == 0:
        return keras.callbacks.History()
    return model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=list(callbacks),
        verbose=verbose,
    )


def kernel_arrays(model: keras.Model, *, include_depthwise: bool = False) -> dict[str, np.ndarray]:
    """`{layer/kernel: values}` for every Conv2D/Dense kernel, looking through tfmot wrappers.

    Names are those of the original layers, so a pruned, clustered or QAT model reports the same keys
    as the model it came from.
    """
    found = {}
    for layer in model.layers:
        inner = layer
        while hasattr(inner, "layer") and isinstance(inner.layer, keras.layers.Layer):
            inner = inner.layer
        for attr in ("kernel", "depthwise_kernel") if include_depthwise else ("kernel",):
            value = getattr(inner, attr, None)
            if value is not None and hasattr(value, "shape") and len(value.shape) >= 2:
                found[f"{inner.name}/{attr}"] = np.asarray(keras.backend.get_value(value))
    return found
