"""Quantization-aware training as a compression stage, including tfmot's collaborative forms.

After pruning, PQAT keeps the zeros; after clustering, CQAT keeps the shared values (PCQAT keeps
both). The classifier's input Rescaling layer is not in tfmot's registry, so it gets its own config
with fixed output ranges, and it is split into its multiply and its add: the converter can only
make an op integer when a fake-quant sits on its output, and one Rescaling is two ops.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence

from edgekit.compat import keras
from edgekit.compress.finetune import check_flat, check_params, working_copy
from edgekit.compress.params import QATParams
from edgekit.errors import EdgekitError

# isort: split
import tensorflow_model_optimization as tfmot  # after edgekit.compat has set TF_USE_LEGACY_KERAS

PIXEL_RANGE = (0.0, 255.0)  # the classifier's input contract (see edgekit.model)
NO_QAT_HINT = "or use post-training int8 (--int8 without --qat)"
OP_LAYERS = ("TFOpLambda", "SlicingOpLambda")  # tf ops called on Keras tensors
_UNSUPPORTED = re.compile(r"Layer (\S+?):<class '([\w.]+)'> is not supported")


class RescaleQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """Fake-quantizes a Rescaling layer's output over a fixed range; it has no weights to quantize."""

    def __init__(self, low: float, high: float):
        self.low = float(low)
        self.high = float(high)

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        quantizer = tfmot.quantization.keras.quantizers.FixedQuantizer
        return [quantizer(num_bits=8, init_min=self.low, init_max=self.high, narrow_range=False)]

    def get_config(self):
        return {"low": self.low, "high": self.high}


def quantize_scope():
    """The scope needed to clone or load a QAT model made here (`with qat.quantize_scope(): ...`)."""
    return tfmot.quantization.keras.quantize_scope({"RescaleQuantizeConfig": RescaleQuantizeConfig})


def resolve_preserve(preserve: str, previous: str | Sequence[str] | None) -> str:
    """What 'auto' means after `previous` (the earlier stage kinds, last one last)."""
    if preserve != "auto":
        return preserve
    kinds = [previous] if isinstance(previous, str) else list(previous or [])
    if not kinds:
        return "none"
    if kinds[-1] == "cluster":
        return "sparsity+clusters" if "prune" in kinds[:-1] else "clusters"
    return "sparsity" if kinds[-1] == "prune" else "none"


def _scheme(preserve: str):
    combine = tfmot.experimental.combine
    if preserve == "sparsity":
        return combine.Default8BitPrunePreserveQuantizeScheme()
    if preserve in ("clusters", "sparsity+clusters"):
        return combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=preserve != "clusters")
    return tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme()


def _affine_range(scale: float, offset: float, low: float, high: float) -> tuple[float, float]:
    ends = (scale * low + offset, scale * high + offset)
    return min(*ends, 0.0), max(*ends, 0.0)  # fake-quant ranges must contain 0


def _split_rescaling(model: keras.Model) -> tuple[keras.Model, dict[str, tuple[float, float]]]:
    """Split the input Rescaling(scale, offset) into Rescaling(scale) → Rescaling(1, offset).

    Returns the rebuilt model and the output range of each input-rescaling layer for 0..255 pixels.
    The extra layer costs nothing: the converter emits the MUL and ADD it would anyway, and for
    0..255 input both quantize exactly (every pixel value is one quantization step).
    """
    config = model.get_config()
    inputs = {node[0] for node in config["input_layers"]}
    layers, renamed, ranges = [], {}, {}
    for layer_config in config["layers"]:
        layers.append(layer_config)
        inner = layer_config["config"]
        if layer_config["class_name"] != "Rescaling":
            continue
        nodes = layer_config["inbound_nodes"]
        if not (len(nodes) == 1 and len(nodes[0]) == 1 and nodes[0][0][0] in inputs):
            raise EdgekitError(
                f"qat: Rescaling layer {layer_config['name']!r} does not read the model input, so its "
                f"range is unknown; move the rescaling to the input, {NO_QAT_HINT}"
            )
        scale, offset = inner.get("scale"), inner.get("offset")
        if not all(isinstance(v, (int, float)) for v in (scale, offset)):
            raise EdgekitError(
                f"qat: Rescaling layer {layer_config['name']!r} has per-channel scales; {NO_QAT_HINT}"
            )
        name = layer_config["name"]
        if offset == 0 or scale == 1:
            ranges[name] = _affine_range(scale, offset, *PIXEL_RANGE)
            continue
        ranges[name] = _affine_range(scale, 0.0, *PIXEL_RANGE)
        added = copy.deepcopy(layer_config)
        added["name"] = added["config"]["name"] = f"{name}_offset"
        added["config"].update(scale=1.0, offset=offset)
        added["inbound_nodes"] = [[[name, 0, 0, {}]]]
        inner["offset"] = 0.0
        layers.append(added)
        renamed[name] = added["name"]
        ranges[added["name"]] = _affine_range(1.0, offset, *ranges[name])
    if not renamed:
        return model, ranges

    def repoint(node):
        if isinstance(node, list) and len(node) in (3, 4) and node[0] in renamed:
            return [renamed[node[0]], *node[1:]]
        return [repoint(n) for n in node] if isinstance(node, list) else node

    for layer_config in layers:
        if layer_config["name"] not in renamed.values():
            layer_config["inbound_nodes"] = repoint(layer_config["inbound_nodes"])
    config["layers"] = layers
    config["output_layers"] = repoint(config["output_layers"])
    rebuilt = keras.Model.from_config(config)
    for layer in rebuilt.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return rebuilt, ranges


def _check_quantizable(model: keras.Model) -> None:
    """Fail fast, before any cloning, on layers tfmot would skip silently or trip over deep inside."""
    check_flat(model, "qat")
    for layer in model.layers:
        kind = type(layer).__name__
        if isinstance(layer, keras.layers.Lambda) or kind in OP_LAYERS:
            fix = "remove it" if kind == "Lambda" else "replace the raw TensorFlow op with a Keras layer"
            raise EdgekitError(
                f"qat: layer {layer.name!r} ({kind}) cannot be quantization-aware trained; {fix}, "
                + NO_QAT_HINT
            )


def _annotator(ranges: dict[str, tuple[float, float]]):
    def annotate(layer):
        if isinstance(layer, keras.layers.Rescaling):
            config = RescaleQuantizeConfig(*ranges[layer.name])
            return tfmot.quantization.keras.quantize_annotate_layer(layer, config)
        return tfmot.quantization.keras.quantize_annotate_layer(layer)

    return annotate


def _unsupported_layer_error(exc: Exception, model: keras.Model) -> EdgekitError:
    message = str(exc)
    match = _UNSUPPORTED.search(message)
    if match:
        name, cls = match.group(1), match.group(2).rsplit(".", 1)[-1]
    else:  # the collaborative registries name only the class: "Layer Foo is not supported."
        cls = next(iter(re.findall(r"Layer (\w+) is not supported", message)), None)
        names = [layer.name for layer in model.layers if type(layer).__name__ == cls]
        name = names[0] if names else None
    if name is None:
        first = message.splitlines()[0] if message else type(exc).__name__
        return EdgekitError(f"qat: tfmot cannot quantize this model ({first[:200]}); {NO_QAT_HINT}")
    return EdgekitError(
        f"qat: layer {name!r} ({cls}) cannot be quantization-aware trained; remove or replace it, "
        + NO_QAT_HINT
    )


def _pin_input_range(qat_model: keras.Model) -> None:
    """Start the input quantizer at 0..255 so uint8 pixels map 1:1 onto the int8 input.

    tfmot's input quantizer (an internal QuantizeLayer) tracks the min and max it has seen, starting
    from 0..0; pinning it keeps a short QAT from calibrating the input on one unlucky batch.
    """
    for layer in qat_model.layers:
        variables = getattr(layer, "quantizer_vars", None)
        if type(layer).__name__ != "QuantizeLayer" or not {"min_var", "max_var"} <= set(variables or {}):
            continue
        if any(layer.input is tensor for tensor in qat_model.inputs):
            variables["min_var"].assign(PIXEL_RANGE[0])
            variables["max_var"].assign(PIXEL_RANGE[1])


def apply(
    model: keras.Model, params: QATParams, previous: str | Sequence[str] | None = None
) -> tuple[keras.Model, list[keras.callbacks.Callback]]:
    """A quantization-aware copy of `model` (no callbacks needed); `previous` is the earlier stages' kinds."""
    check_params("qat", params)
    _check_quantizable(model)
    plain, ranges = _split_rescaling(working_copy(model, "qat"))
    preserve = resolve_preserve(params.preserve, previous)
    with quantize_scope():
        annotated = keras.models.clone_model(plain, clone_function=_annotator(ranges))
        try:
            qat_model = tfmot.quantization.keras.quantize_apply(annotated, scheme=_scheme(preserve))
        except (RuntimeError, ValueError) as exc:
            raise _unsupported_layer_error(exc, plain) from None
    if ranges:  # the input feeds a Rescaling layer: it takes raw pixels
        _pin_input_range(qat_model)
    return qat_model, []


def finalize(qat_model: keras.Model) -> keras.Model:
    """QAT models go to the converter as they are: the fake-quant ranges are what it needs."""
    return qat_model


def is_qat_model(model: keras.Model) -> bool:
    wrappers = (tfmot.quantization.keras.QuantizeWrapper, tfmot.quantization.keras.QuantizeWrapperV2)
    return any(isinstance(layer, wrappers) for layer in model.layers)
