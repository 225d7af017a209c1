"""The MobileNetV2 classifier, built as one flat functional graph.

Flat matters: tfmot cannot quantize a Keras model nested inside another model, so the body's layers
are wired directly between our input and our head. Normalisation lives inside the model (raw RGB
pixels in [0, 255] go in), so a device never has to know how the model was trained.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from edgekit.compat import keras
from edgekit.config import MIN_IMAGE_SIZE
from edgekit.errors import EdgekitError

log = logging.getLogger(__name__)

IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
IMAGENET_SIZES = (96, 128, 160, 192, 224)
HEAD_LAYER_NAMES = ("pool", "dropout", "logits", "probs")
RESCALE_LAYER = "rescale_to_unit"
WEIGHTS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the classifier's architecture."""

    num_classes: int
    image_size: int = 32
    alpha: float = 0.35
    dropout: float = 0.2
    bn_momentum: float = 0.9


def check_image_size(image_size: int) -> None:
    if image_size < MIN_IMAGE_SIZE:
        raise EdgekitError(
            f"--image-size {image_size}: MobileNetV2 needs at least {MIN_IMAGE_SIZE} pixels; pass 32 or more"
        )


def imagenet_weights_file(alpha: float, image_size: int) -> str:
    """The file name Keras downloads for a no-top MobileNetV2 at this alpha and size."""
    rows = image_size if image_size in IMAGENET_SIZES else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}_no_top.h5"


def resolve_imagenet_weights(alpha: float, image_size: int, timeout_s: float = 15.0) -> str:
    """Path of cached imagenet weights, downloading them if the network allows.

    Offline machines are the norm for edge work, so the failure says exactly which file to place where.
    """
    if alpha not in IMAGENET_ALPHAS:
        raise EdgekitError(
            f"--alpha {alpha}: imagenet weights exist only for alpha in {IMAGENET_ALPHAS}; "
            "choose one of those or pass --weights none"
        )
    name = imagenet_weights_file(alpha, image_size)
    cache_dir = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"
    cached = cache_dir / name
    if cached.is_file():
        return str(cached)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    log.info("fetching imagenet weights %s (timeout %g s)", name, timeout_s)
    try:
        # Keras prints "Downloading data from <url>" and a progress bar on stdout; offline that line is
        # followed only by our error, so it is noise: said once above, in our own words
        with contextlib.redirect_stdout(io.StringIO()):
            return keras.utils.get_file(name, WEIGHTS_BASE_URL + name, cache_subdir="models")
    except Exception as exc:  # noqa: BLE001 - any download failure means the same thing to the user
        reason = (str(exc).splitlines() or [type(exc).__name__])[0].split(" on http")[0][:120]
        raise EdgekitError(
            f"--weights imagenet: {name} is not in {cache_dir} and cannot be downloaded ({reason}); "
            f"copy that file there, pass --weights PATH to it, or pass --weights none"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def resolve_weights(weights: str, alpha: float, image_size: int) -> str | None:
    """Turn the --weights option into what keras.applications accepts (None, or a file path)."""
    if weights == "none":
        return None
    if weights == "imagenet":
        return resolve_imagenet_weights(alpha, image_size)
    path = Path(weights)
    if path.suffix in (".h5", ".keras") or path.exists():
        if not path.is_file():
            raise EdgekitError(f"--weights {weights}: no such file; pass imagenet, none or a path to a .h5 file")
        return str(path)
    raise EdgekitError(f"--weights {weights!r}: unknown value; pass imagenet, none or a path to a .h5 file")


def build_classifier(spec: ModelSpec, weights: str | None = None) -> keras.Model:
    """input → rescale to [-1, 1] → MobileNetV2 body → pooling → dropout → dense softmax.

    `weights` is None (random init) or a path to no-top MobileNetV2 weights.
    """
    check_image_size(spec.image_size)
    inputs = keras.Input(shape=(spec.image_size, spec.image_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=RESCALE_LAYER)(inputs)
    try:
        body = keras.applications.MobileNetV2(
            input_tensor=x, include_top=False, weights=weights, alpha=spec.alpha
        )
    except ValueError as exc:
        raise EdgekitError(f"cannot build MobileNetV2 (alpha={spec.alpha}, weights={weights}): {exc}") from None
    for layer in body.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = spec.bn_momentum
    x = keras.layers.GlobalAveragePooling2D(name="pool")(body.output)
    x = keras.layers.Dropout(spec.dropout, name="dropout")(x)
    x = keras.layers.Dense(spec.num_classes, name="logits")(x)
    # float32 softmax keeps probabilities sane under a mixed_float16 policy
    outputs = keras.layers.Activation("softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name="edgekit_mobilenetv2")


def body_layers(model: keras.Model) -> list:
    """The MobileNetV2 layers of a flat classifier: everything between rescaling and the head."""
    return [
        layer
        for layer in model.layers
        if layer.name not in HEAD_LAYER_NAMES
        and layer.name != RESCALE_LAYER
        and not isinstance(layer, keras.layers.InputLayer)
    ]


def set_body_trainable(model: keras.Model, trainable_from: int | None) -> None:
    """Freeze the body, then unfreeze its layers from index `trainable_from` on (None: all frozen).

    Batch-norm layers stay frozen during fine-tuning so the small new dataset cannot wreck their
    imagenet statistics.
    """
    layers = body_layers(model)
    for index, layer in enumerate(layers):
        unfrozen = trainable_from is not None and index >= trainable_from
        layer.trainable = unfrozen and not isinstance(layer, keras.layers.BatchNormalization)


TRUST_HINT = "Keras models run code on load (Lambda layers)"


def load_keras_model(path: Path, trust: bool = False) -> keras.Model:
    """Load a Keras model without running code from it unless the user said they trust it.

    A Keras model is a program: a `Lambda` layer's Python runs when the model is rebuilt. `.keras` files
    load with Keras' safe mode (it refuses to deserialize Lambda code); legacy `.h5` files and
    SavedModel folders have no safe mode, so they load only with `trust=True` (`--trust-model`), which
    also turns safe mode off for a `.keras` file the user vouches for.
    """
    path = Path(path)
    if not path.exists():
        raise EdgekitError(f"{path}: no such Keras model file")
    legacy = path.is_dir() or path.suffix.lower() in (".h5", ".hdf5")
    if legacy and not trust:
        kind = "a SavedModel folder" if path.is_dir() else "a legacy .h5 model"
        raise EdgekitError(f"{path}: refusing {kind}: {TRUST_HINT}; pass --trust-model if you trust its source, "
                           "or re-save it as .keras")
    try:
        return keras.models.load_model(path, compile=False, safe_mode=not trust)
    except (OSError, ValueError, TypeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        if "safe_mode" in str(exc) or "Lambda" in str(exc):
            raise EdgekitError(f"{path}: refusing to run code from the model ({TRUST_HINT}); pass --trust-model "
                               "if you trust its source") from None
        raise EdgekitError(f"{path}: not a loadable Keras model ({first[:160]})") from None


def compile_for_training(model: keras.Model, learning_rate: float, run_eagerly: bool = False) -> None:
    """Adam, sparse categorical cross-entropy on the softmax output, accuracy: the one way `train`, the
    compression stages' fine-tuning and tune's cost probe compile a classifier.

    Every variable the train step needs exists before `fit`: Adam's slots (`optimizer.build`) and the
    accuracy metric's counters (a metric object, not the string "accuracy", which Keras turns into one
    inside the first step). A `tf.function` that creates variables on its first call is traced twice;
    this traces once, ~4.5 s less per compile for alpha 0.35 at 32 px on 2 cores.
    """
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")], run_eagerly=run_eagerly)
    model.optimizer.build(model.trainable_variables)
