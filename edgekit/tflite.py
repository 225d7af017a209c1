"""The one reader of `.tflite` files: identity, inputs/outputs, quantization, ops, constants and metadata.

Every part of edgekit that looks inside a model (compress, the Edge TPU check, `info`, `bench`) goes
through `parse()`, on the schema module LiteRT ships, so none of them imports TensorFlow and all of
them agree on what a file contains. Any `.tflite` works, with or without an edgekit manifest.
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError

TFLITE_IDENTIFIER = b"TFL3"
METADATA_NAME = "TFLITE_METADATA"  # the standard TFLite Model Metadata flatbuffer
_NUMPY_TYPES = ("int8", "uint8", "int16", "int32", "int64", "float16", "float32", "float64", "bool")


@functools.cache
def litert_schema():
    """LiteRT's generated flatbuffer classes for the .tflite schema (loaded once, on first use)."""

    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def _enum_names(enum_class) -> dict[int, str]:
    return {v: k for k, v in vars(enum_class).items() if not k.startswith("_") and isinstance(v, int)}


def _ints(values) -> list[int]:
    return [] if values is None else [int(v) for v in values]


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


def has_identifier(content: bytes) -> bool:
    return len(content) >= 8 and content[4:8] == TFLITE_IDENTIFIER


def read_tflite(path: Path) -> bytes:
    """The bytes of a .tflite file, after rejecting what is obviously not a TFLite flatbuffer.

    Callers load exactly the bytes that were checked, never the path again.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgekitError(f"{path}: no such model file")
    content = path.read_bytes()
    if not has_identifier(content):
        raise EdgekitError(f"{path}: not a TFLite model (no 'TFL3' flatbuffer identifier); pass a .tflite file "
                           "written by the TFLite converter")
    return content


@dataclass(frozen=True)
class Quantization:
    """A tensor's affine quantization, real = (raw - zero_point) * scale: one scale and zero point for the
    whole tensor (`axis` None), or one per channel along `axis` (conv weights). One type for both, so no
    reader has to ask whether a field holds a number or a list.

    The JSON form (`as_dict`, in `describe()` and variant manifests) keeps TFLite's own convention:
    scalars per tensor, lists plus "axis" per channel.
    """

    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    axis: int | None = None

    @property
    def per_tensor(self) -> tuple[float, int]:
        """(scale, zero_point) as an interpreter reports them; per-channel parameters give the first channel's,
        which is what an output tensor (one channel) has."""
        return self.scales[0], self.zero_points[0]

    def as_dict(self) -> dict:
        if self.axis is None:
            return {"scale": self.scales[0], "zero_point": self.zero_points[0]}
        return {"scale": list(self.scales), "zero_point": list(self.zero_points), "axis": self.axis}

    @classmethod
    def from_dict(cls, raw: dict | None) -> Quantization | None:
        """The type back from its JSON form (None or {} → None: a float tensor)."""
        if not raw or raw.get("scale") is None:
            return None
        scale, zero = raw["scale"], raw.get("zero_point", 0)
        if isinstance(scale, list | tuple):
            zeros = zero if isinstance(zero, list | tuple) else [zero] * len(scale)
            return cls(tuple(float(s) for s in scale), tuple(int(z) for z in zeros), int(raw.get("axis") or 0))
        return cls((float(scale),), (int(zero),))


@dataclass(frozen=True, eq=False)  # compared by identity: values may be arrays
class Tensor:
    index: int
    name: str
    dtype: str  # lower-case TFLite type name: float32, int8, uint8, ...
    shape: tuple[int, ...]  # the shape signature where the file has one: -1 marks a dynamic dimension
    const: bool
    quantization: Quantization | None  # None: a float (or unquantized integer) tensor
    values: np.ndarray | None = None

    @property
    def quantized(self) -> bool:
        return self.quantization is not None

    def as_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "quantization": self.quantization.as_dict() if self.quantization else None}


@dataclass(frozen=True)
class Op:
    index: int
    name: str  # builtin name (CONV_2D) or the custom code
    inputs: tuple[Tensor | None, ...]
    outputs: tuple[Tensor, ...]
    options: object  # the flatbuffer's builtin options object (attribute names as in the schema)
    custom: bool = False  # a CUSTOM op: a runtime loads the model only if this code is registered with it


@dataclass(frozen=True)
class TFLiteModel:
    """What a .tflite file contains (its main subgraph in detail)."""

    label: str
    size: int
    sha256: str
    version: int
    description: str
    subgraph_count: int
    tensor_count: int
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    ops: tuple[Op, ...]
    metadata: dict[str, bytes] = field(repr=False)

    @property
    def op_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(op.name for op in self.ops).items()))

    @property
    def custom_ops(self) -> list[str]:
        """Codes of the CUSTOM ops: stock LiteRT and tflite-runtime cannot load the model without them."""
        return sorted({op.name for op in self.ops if op.custom})

    @property
    def min_runtime_version(self) -> str | None:
        raw = self.metadata.get("min_runtime_version")
        return raw.split(b"\0", 1)[0].decode("ascii", "replace") or None if raw else None

    @property
    def is_image_classifier(self) -> bool:
        """One [1, H, W, 1|3] input and one [1, N] output: what the runner can classify."""
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            return False
        shape_in, shape_out = self.inputs[0].shape, self.outputs[0].shape
        return len(shape_in) == 4 and shape_in[-1] in (1, 3) and len(shape_out) == 2 and shape_out[0] in (1, -1)

    def float_ops(self, ignore: tuple[str, ...] = ()) -> list[str]:
        """Ops that read or write a float32 tensor (a fully-quantized model has none but its boundary)."""
        return sorted({op.name for op in self.ops if op.name not in ignore
                       and any(t is not None and t.dtype == "float32" for t in (*op.inputs, *op.outputs))})

    def constants(self) -> dict[str, np.ndarray]:
        """Every constant tensor of the main graph, by name, as stored (int8 weights stay int8)."""
        found = {}
        for op in self.ops:
            for tensor in (*op.inputs, *op.outputs):
                if tensor is not None and tensor.const and tensor.values is not None:
                    found[tensor.name] = tensor.values
        return found

    def describe(self) -> dict:
        """The JSON-able summary written into variant manifests and shown by `edgekit info`."""
        return {
            "inputs": [t.as_dict() for t in self.inputs],
            "outputs": [t.as_dict() for t in self.outputs],
            "ops": self.op_counts,
            "custom_ops": self.custom_ops,
            "tensor_count": self.tensor_count,
            "subgraph_count": self.subgraph_count,
            "metadata": sorted(self.metadata),
            "min_runtime_version": self.min_runtime_version,
            "description": self.description,
            "size_bytes": self.size,
            "sha256": self.sha256,
        }


def parse(content: bytes, label: str = "<tflite bytes>") -> TFLiteModel:
    """Parse a .tflite flatbuffer; a damaged file is one `EdgekitError` naming `label`, never a crash."""
    content = bytes(content)
    if not has_identifier(content):
        raise EdgekitError(f"{label}: not a TFLite model (no 'TFL3' flatbuffer identifier); pass a .tflite file")
    schema = litert_schema()
    try:
        model = schema.ModelT.InitFromPackedBuf(content, 0)
        if not model.subgraphs:
            raise EdgekitError(f"{label}: the TFLite model has no subgraph; re-export it")
        return _model(model, content, label, schema)
    except EdgekitError:
        raise
    except Exception as exc:  # a damaged flatbuffer fails as IndexError, struct.error, ValueError, ...
        raise EdgekitError(
            f"{label}: malformed TFLite flatbuffer ({type(exc).__name__}: {str(exc)[:80]}); the file is damaged "
            "or truncated, re-export it"
        ) from None


def parse_file(path: Path) -> TFLiteModel:
    return parse(read_tflite(path), str(path))


def _model(model, content: bytes, label: str, schema) -> TFLiteModel:
    graph = model.subgraphs[0]
    dtypes = {k: v.lower() for k, v in _enum_names(schema.TensorType).items()}
    tensors = [_tensor(i, t, model.buffers or [], content, dtypes) for i, t in enumerate(graph.tensors or [])]
    builtin = _enum_names(schema.BuiltinOperator)
    ops = []
    for index, op in enumerate(graph.operators or []):
        code = model.operatorCodes[op.opcodeIndex]
        name = builtin.get(max(code.builtinCode, code.deprecatedBuiltinCode), "UNKNOWN")
        custom = name == "CUSTOM"
        if custom:
            name = _text(code.customCode)
        inputs = tuple(tensors[i] if i >= 0 else None for i in _ints(op.inputs))
        ops.append(Op(index, name, inputs, tuple(tensors[i] for i in _ints(op.outputs)), op.builtinOptions, custom))
    metadata = {}
    for entry in model.metadata or []:
        buffer = model.buffers[entry.buffer] if entry.buffer < len(model.buffers or []) else None
        metadata[_text(entry.name)] = _buffer_bytes(buffer, content) if buffer is not None else b""
    return TFLiteModel(
        label=label, size=len(content), sha256=hashlib.sha256(content).hexdigest(), version=int(model.version),
        description=_text(model.description), subgraph_count=len(model.subgraphs), tensor_count=len(tensors),
        inputs=tuple(tensors[i] for i in _ints(graph.inputs)), outputs=tuple(tensors[i] for i in _ints(graph.outputs)),
        ops=tuple(ops), metadata=metadata,
    )


def _buffer_bytes(buffer, content: bytes) -> bytes:
    if buffer.offset > 1:  # large models keep constant data after the flatbuffer
        return content[buffer.offset: buffer.offset + buffer.size]
    if buffer.data is not None:
        return np.asarray(buffer.data, dtype=np.uint8).tobytes()
    return b""


def _quantization(quant) -> Quantization | None:
    if quant is None or quant.scale is None or len(quant.scale) == 0:
        return None
    scales = tuple(float(s) for s in quant.scale)
    zeros = tuple(int(z) for z in (quant.zeroPoint if quant.zeroPoint is not None else [0] * len(scales)))
    return Quantization(scales, zeros, None if len(scales) == 1 else int(quant.quantizedDimension))


def _tensor(index: int, t, buffers, content: bytes, dtypes: dict[int, str]) -> Tensor:
    raw = _buffer_bytes(buffers[t.buffer], content) if t.buffer and t.buffer < len(buffers) else b""
    dtype = dtypes.get(t.type, f"type{t.type}")
    shape = tuple(_ints(t.shapeSignature) or _ints(t.shape))
    values = None
    if raw and dtype in _NUMPY_TYPES:
        flat = np.frombuffer(raw[: len(raw) - len(raw) % np.dtype(dtype).itemsize], dtype=dtype)
        dims = _ints(t.shape)
        values = flat.reshape(dims) if flat.size == int(np.prod(dims)) else flat
    return Tensor(index, _text(t.name), dtype, shape, bool(raw), _quantization(t.quantization), values)
