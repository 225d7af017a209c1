"""The one `.tflite` reader: what it reports about real converted models, and damaged files as one line."""

from __future__ import annotations

import numpy as np
import pytest
import runner_models

from edgekit.errors import EdgekitError
from edgekit.runner import dequantizer
from edgekit.tflite import Quantization, parse, parse_file, read_tflite


@pytest.fixture(scope="module")
def converted():
    """The runner's hand-set colour classifier as float32 and full-integer uint8 .tflite (a few seconds)."""
    return {kind: runner_models.colour_tflite(kind) for kind in (None, "uint8")}


def test_float_model_inputs_outputs_and_ops(converted):
    model = parse(converted[None], "float")
    assert [t.dtype for t in model.inputs] == ["float32"] and model.inputs[0].shape[1:] == (32, 32, 3)
    assert model.outputs[0].shape[-1] == 3 and model.outputs[0].quantization is None
    assert model.op_counts["CONV_2D"] == 1 and model.subgraph_count == 1
    assert model.is_image_classifier and model.min_runtime_version
    assert "min_runtime_version" in model.describe()["metadata"]


def test_integer_model_reports_quantization_and_int8_weights(converted):
    model = parse(converted["uint8"], "uint8")
    scale, zero = model.inputs[0].quantization.per_tensor
    assert model.inputs[0].dtype == "uint8" and scale > 0 and 0 <= zero <= 255
    assert model.inputs[0].quantization.axis is None
    assert model.float_ops(ignore=("QUANTIZE", "DEQUANTIZE")) == []
    kernels = [v for v in model.constants().values() if v.ndim == 4]
    assert kernels and all(v.dtype == np.int8 for v in kernels)
    raw = np.array([0, 128, 255])
    scale, zero = model.outputs[0].quantization.per_tensor
    np.testing.assert_allclose(dequantizer(model.outputs[0].as_dict())(raw), (raw - zero) * scale, rtol=1e-6)
    per_channel = [t.quantization for op in model.ops for t in op.inputs if t is not None and t.quantization
                   and t.quantization.axis is not None]
    assert per_channel and all(len(q.scales) == len(q.zero_points) > 1 for q in per_channel)  # conv kernels


def test_quantization_is_one_type_whose_json_keeps_tflite_convention():
    per_tensor, per_channel = Quantization((0.5,), (3,)), Quantization((0.1, 0.2), (0, 0), axis=3)
    assert per_tensor.as_dict() == {"scale": 0.5, "zero_point": 3}
    assert per_channel.as_dict() == {"scale": [0.1, 0.2], "zero_point": [0, 0], "axis": 3}
    for quant in (per_tensor, per_channel):
        assert Quantization.from_dict(quant.as_dict()) == quant
    assert per_channel.per_tensor == (0.1, 0) and Quantization.from_dict(None) is None
    raw = np.array([3, 5])
    np.testing.assert_allclose(dequantizer({"dtype": "int8", "quantization": per_channel.as_dict()})(raw), raw * 0.1)


@pytest.mark.parametrize("fraction", [0.02, 0.1, 0.3, 0.5, 0.9, 0.999])
def test_truncated_file_is_one_line_never_a_crash(converted, fraction):
    content = converted["uint8"]
    cut = content[: max(8, int(len(content) * fraction))]
    try:
        parse(cut, "cut.tflite")
    except EdgekitError as exc:
        assert str(exc).startswith("cut.tflite: ") and "\n" not in str(exc)


def test_not_a_flatbuffer_is_refused_by_path(tmp_path):
    path = tmp_path / "photo.tflite"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(EdgekitError, match=r"photo.tflite: not a TFLite model \(no 'TFL3'"):
        read_tflite(path)
    with pytest.raises(EdgekitError, match=r"no such model file"):
        parse_file(tmp_path / "absent.tflite")


def _with_custom_op(content: bytes, code: str) -> bytes:
    """The model with its first operator's code turned into CUSTOM `code` (what a converter with
    allow_custom_ops writes for an op TFLite does not know)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(content, 0))
    opcode = model.operatorCodes[model.subgraphs[0].operators[0].opcodeIndex]
    opcode.builtinCode = opcode.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    opcode.customCode = code
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_custom_ops_are_marked_and_info_says_stock_runtimes_cannot_load_them(converted, tmp_path):
    from typer.testing import CliRunner

    from edgekit.cli import app

    path = tmp_path / "custom.tflite"
    path.write_bytes(_with_custom_op(converted[None], "MyFancyConv"))
    model = parse_file(path)
    assert model.custom_ops == ["MyFancyConv"] and "MyFancyConv" in model.op_counts
    assert parse(converted[None], "float").custom_ops == []
    text = CliRunner().invoke(app, ["info", str(path)]).output
    assert "MyFancyConv (custom) 1" in text and "cannot load this model unless these ops are registered" in text
    assert text.count("metadata") == 1  # `metadata entries:` once; no standard metadata block here
