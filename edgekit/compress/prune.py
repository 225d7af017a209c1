"""Magnitude pruning as a compression stage: `apply` wraps the kernels, `finalize` strips the wrappers.

Built on tfmot's `prune_low_magnitude` / `strip_pruning`, applied layer by layer because tfmot's
whole-model call rejects the classifier's Rescaling layer (its registry entry is broken in tfmot 0.8).
"""

from __future__ import annotations

import warnings

import numpy as np

from edgekit.compat import keras
from edgekit.compress.finetune import check_params, kernel_arrays, working_copy
from edgekit.compress.params import PruneParams
from edgekit.errors import EdgekitError

# isort: split
import tensorflow_model_optimization as tfmot  # after edgekit.compat has set TF_USE_LEGACY_KERAS

DEFAULT_FREQUENCY = 100
# A short fine-tune still gets about this many mask updates when `frequency` is left unset.
MIN_UPDATES = 10
PRUNABLE_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.Dense)


def _schedule(params: PruneParams, steps_per_epoch: int | None):
    """The tfmot schedule, with its last mask update landing exactly on the target.

    The pruning step counter runs 1..epochs*steps_per_epoch and masks change only on steps that are a
    multiple of `frequency` after `begin_step`, so end_step is rounded down onto that grid: otherwise
    a frequency of 100 in a 20-step fine-tune would never prune at all.
    """
    sparsity = tfmot.sparsity.keras
    end = params.end_step
    if end is None and steps_per_epoch is not None:
        end = params.epochs * steps_per_epoch
    if end is None:
        if params.schedule == "polynomial":
            raise EdgekitError(
                "prune: the polynomial schedule needs an end; set end_step, or pass steps_per_epoch "
                "(it cannot be read from a dataset of unknown length)"
            )
        return sparsity.ConstantSparsity(
            params.target_sparsity, params.begin_step, frequency=params.frequency or DEFAULT_FREQUENCY
        )
    span = end - params.begin_step
    if span < 1:
        raise EdgekitError(
            f"prune begin_step={params.begin_step}: fine-tuning has only {end} steps "
            f"({params.epochs} epochs x {steps_per_epoch}); lower begin_step or train longer"
        )
    frequency = params.frequency or max(1, min(DEFAULT_FREQUENCY, span // MIN_UPDATES))
    if frequency > span:
        raise EdgekitError(
            f"prune frequency={frequency}: there are only {span} pruning steps, so the masks would never "
            "be updated; lower frequency or leave it unset"
        )
    end = params.begin_step + frequency * (span // frequency)
    if params.schedule == "constant":
        end_step = -1 if params.end_step is None else end
        return sparsity.ConstantSparsity(params.target_sparsity, params.begin_step, end_step, frequency)
    return sparsity.PolynomialDecay(
        params.initial_sparsity, params.target_sparsity, params.begin_step, end, frequency=frequency
    )


def _check_latency_policy(model: keras.Model, policy) -> None:
    try:
        policy.ensure_model_supports_pruning(model)
    except ValueError as exc:
        warnings.warn(
            f"prune latency_policy: tfmot's XNNPACK check fails ({str(exc).splitlines()[0]}); the 1x1 "
            "convolutions are still pruned, but XNNPACK may run them dense",
            stacklevel=3,
        )


def apply(
    model: keras.Model,
    params: PruneParams,
    *,
    steps_per_epoch: int | None = None,
    log_dir: str | None = None,
) -> tuple[keras.Model, list[keras.callbacks.Callback]]:
    """Wrap a copy of `model` for pruning; return it with the callbacks its fine-tuning must use."""
    if params.epochs > 0 and steps_per_epoch is not None and steps_per_epoch < 1:
        raise EdgekitError(f"prune: steps_per_epoch={steps_per_epoch}: the training data is empty")
    check_params("prune", params)
    copy = working_copy(model, "prune")
    schedule = (
        tfmot.sparsity.keras.ConstantSparsity(0.5, 0)
        if params.structured_2x4
        else _schedule(params, steps_per_epoch)
    )
    policy = tfmot.sparsity.keras.PruneForLatencyOnXNNPack() if params.latency_policy else None
    if policy is not None:
        _check_latency_policy(copy, policy)

    wrapped_names = []

    def wrap(layer):
        prunable = policy.allow_pruning(layer) if policy else isinstance(layer, PRUNABLE_TYPES)
        if not prunable:
            return layer
        wrapped_names.append(layer.name)
        return tfmot.sparsity.keras.prune_low_magnitude(
            layer, pruning_schedule=schedule, sparsity_m_by_n=(2, 4) if params.structured_2x4 else None
        )

    wrapped = keras.models.clone_model(copy, clone_function=wrap)
    if not wrapped_names:
        raise EdgekitError(f"prune: model {model.name!r} has no Conv2D or Dense layer to prune")
    callbacks = [tfmot.sparsity.keras.UpdatePruningStep()]
    if log_dir:
        callbacks.append(tfmot.sparsity.keras.PruningSummaries(log_dir=log_dir))
    return wrapped, callbacks


def finalize(wrapped: keras.Model) -> keras.Model:
    """The plain Keras model with the pruned (zeroed) weights and no pruning wrappers."""
    return tfmot.sparsity.keras.strip_pruning(wrapped)


def measure_sparsity(model: keras.Model) -> dict[str, float]:
    """Fraction of exact zeros in each Conv2D/Dense kernel, plus `overall` across all of them.

    Depthwise kernels are left out: tfmot never prunes them, and they would dilute the figure.
    """
    kernels = kernel_arrays(model)
    result = {name: float(np.mean(values == 0)) for name, values in kernels.items()}
    total = sum(values.size for values in kernels.values())
    zeros = sum(int(np.count_nonzero(values == 0)) for values in kernels.values())
    result["overall"] = zeros / total if total else 0.0
    return result
