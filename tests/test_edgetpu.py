"""Edge TPU compatibility check: tiny tf_keras classifiers converted once per module, a fake compiler on PATH."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

from edgekit.compat import keras, tf
from edgekit.compress import edgetpu
from edgekit.errors import EdgekitError

pytestmark = pytest.mark.filterwarnings("ignore:Statistics for quantized inputs:UserWarning")


def _classifier(batch_size: int | None = 1, middle=None):
    inp = keras.Input((32, 32, 3), batch_size=batch_size)
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(8, 3, padding="same")(x)
    if middle is not None:
        x = middle(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(4)(x)
    return keras.Model(inp, keras.layers.Softmax()(x))


def _convert(model, *, quantize: bool = True, io_type=tf.uint8) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize:
        rng = np.random.default_rng(0)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: (
            [rng.uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)] for _ in range(4)
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io_type is not None:
            converter.inference_input_type = io_type
            converter.inference_output_type = io_type
    return converter.convert()


def _split_batch(t):
    """A 4-D tensor with every dimension > 1: the Edge TPU maps only 3 non-trivial dimensions."""
    y = tf.reshape(t, (2, 16, 32, 8))
    return tf.reshape(tf.nn.relu(y) + y, (1, 32, 32, 8))


_MODELS = {
    "float": lambda: _convert(_classifier(), quantize=False),
    "uint8": lambda: _convert(_classifier()),
    "float_io": lambda: _convert(_classifier(), io_type=None),
    "leaky": lambda: _convert(_classifier(middle=keras.layers.LeakyReLU(0.1))),
    "dynamic": lambda: _convert(_classifier(batch_size=None)),
    "rank4": lambda: _convert(_classifier(middle=keras.layers.Lambda(_split_batch))),
}


@pytest.fixture(scope="module")
def tflite(tmp_path_factory):
    """`tflite(kind)` -> path of that model; each converted once per module, only when a test asks."""
    root, cache = tmp_path_factory.mktemp("edgetpu_models"), {}

    def get(kind: str) -> Path:
        if kind not in cache:
            cache[kind] = root / f"{kind}.tflite"
            cache[kind].write_bytes(_MODELS[kind]())
        return cache[kind]

    return get


def _where(report: dict) -> list[str]:
    return [row["where"] for row in report["ops"]]


def test_float_model_is_not_compatible_and_names_float_tensors(tflite):
    report = edgetpu.analyze_model(tflite("float"))
    assert report["compatible"] is False
    assert report["n_tpu_ops"] == 0 and report["n_cpu_ops"] == report["n_ops"] > 1
    first = report["first_unsupported"]
    assert first["index"] == 0 and "float tensors" in first["reason"] and "float32[1,32,32,3]" in first["reason"]
    assert all(row["reason"].startswith(edgetpu.AFTER_FIRST) for row in report["ops"][1:])


def test_full_integer_uint8_model_maps_every_op(tflite):
    path = tflite("uint8")
    report = edgetpu.analyze_model(path)
    assert report["compatible"] is True, report["summary"]
    assert report["first_unsupported"] is None and report["n_cpu_ops"] == 0
    ops = [row["op"] for row in report["ops"]]
    assert {"QUANTIZE", "CONV_2D", "DEPTHWISE_CONV_2D", "MEAN", "FULLY_CONNECTED", "SOFTMAX"} <= set(ops)
    assert report["ops"][0]["inputs"][0]["dtype"] == "uint8"
    assert set(_where(report)) == {"TPU"}
    from_bytes = edgetpu.analyze_model(path.read_bytes(), name="in-memory.tflite")
    assert from_bytes["ops"] == report["ops"] and from_bytes["model"]["name"] == "in-memory.tflite"


@pytest.mark.slow
def test_unsupported_op_in_the_middle_sends_every_later_op_to_cpu(tflite):
    report = edgetpu.analyze_model(tflite("leaky"))
    rows = report["ops"]
    cut = next(row["index"] for row in rows if row["op"] == "LEAKY_RELU")
    assert 0 < cut < len(rows) - 1
    assert _where(report)[:cut] == ["TPU"] * cut
    assert rows[cut]["where"] == "CPU" and "not in the Edge TPU's supported operations" in rows[cut]["reason"]
    assert all(r["where"] == "CPU" and r["reason"] == edgetpu.AFTER_FIRST for r in rows[cut + 1 :])
    assert report["first_unsupported"]["op"] == "LEAKY_RELU" and report["n_tpu_ops"] == cut
    assert not report["compatible"]


def test_float_input_and_output_conversions_run_on_cpu_without_splitting(tflite):
    report = edgetpu.analyze_model(tflite("float_io"))
    rows = report["ops"]
    assert (rows[0]["op"], rows[0]["where"]) == ("QUANTIZE", "CPU")
    assert "inference_input_type" in rows[0]["reason"]
    assert (rows[-1]["op"], rows[-1]["where"]) == ("DEQUANTIZE", "CPU")
    assert _where(report)[1:-1] == ["TPU"] * (len(rows) - 2)
    assert report["first_unsupported"] is None and report["n_boundary_cpu_ops"] == 2
    assert report["compatible"] is False


def test_dynamic_batch_dimension_is_unsupported(tflite):
    report = edgetpu.analyze_model(tflite("dynamic"))
    first = report["first_unsupported"]
    assert first["index"] == 0 and "dynamic tensor shape" in first["reason"] and "[-1,32,32,3]" in first["reason"]
    assert report["n_tpu_ops"] == 0


def test_tensor_with_four_dimensions_above_one_is_unsupported(tflite):
    report = edgetpu.analyze_model(tflite("rank4"))
    first = report["first_unsupported"]
    assert first["op"] == "RESHAPE" and "3 innermost dimensions" in first["reason"]
    assert "int8[2,16,32,8]" in first["reason"]
    assert _where(report)[: first["index"]] == ["TPU"] * first["index"]


def test_damaged_files_are_edgekit_errors_naming_the_file(tflite, tmp_path):
    content = tflite("uint8").read_bytes()
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(content[: len(content) // 2])
    with pytest.raises(EdgekitError, match=re.escape(str(truncated)) + ".*malformed"):
        edgetpu.check_edgetpu(truncated, tmp_path / "out", run_compiler=False)
    assert not (tmp_path / "out" / edgetpu.REPORT_JSON).exists()
    junk = content[:8] + bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8))
    with pytest.raises(EdgekitError, match="junk.tflite: malformed"):
        edgetpu.analyze_model(junk, name="junk.tflite")
    text = tmp_path / "notes.tflite"
    text.write_text("not a model at all")
    with pytest.raises(EdgekitError, match=re.escape(str(text))):
        edgetpu.analyze_model(text)


def test_missing_compiler_is_one_line_and_the_report_is_still_written(tflite, tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    out = tmp_path / "out"
    report = edgetpu.check_edgetpu(tflite("uint8"), out)
    compiler = report["compiler"]
    assert compiler["found"] is False and compiler["output"] is None
    assert compiler["message"].startswith("edgetpu_compiler not found on PATH")
    assert compiler["message"].endswith("the static compatibility report was still written")
    assert "\n" not in compiler["message"]
    assert json.loads((out / edgetpu.REPORT_JSON).read_text())["compatible"] is True
    markdown = (out / edgetpu.REPORT_MD).read_text()
    assert "compatible: all" in markdown and compiler["message"] in markdown
    assert len(re.findall(r"^\| \d+ +\|", markdown, flags=re.M)) == report["n_ops"]


_LEAKY_LOG = """Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 96 ms.

Input model: leaky.tflite
Output model: leaky_edgetpu.tflite
Number of Edge TPU subgraphs: 1
Total number of operations: 8
Operation log: leaky_edgetpu.log

Model successfully compiled but not all operations are supported by the Edge TPU. A percentage of the model \
will instead run on the CPU, which is slower.
Number of operations that will run on Edge TPU: 2
Number of operations that will run on CPU: 6

Operator                       Count      Status

QUANTIZE                       1          Mapped to Edge TPU
QUANTIZE                       1          More than one subgraph is not supported
CONV_2D                        1          Mapped to Edge TPU
LEAKY_RELU                     1          Operation not supported
DEPTHWISE_CONV_2D              1          More than one subgraph is not supported
MEAN                           1          More than one subgraph is not supported
FULLY_CONNECTED                1          More than one subgraph is not supported
SOFTMAX                        1          More than one subgraph is not supported
Compilation child process completed within timeout period.
Compilation succeeded!
"""


def _fake_compiler(tmp_path: Path, monkeypatch, log: str, code: int = 0, extra: str = "") -> None:
    """An `edgetpu_compiler` that insists on `-s -o DIR MODEL` and writes what the real one writes."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    (bin_dir / "log.txt").write_text(log)
    script = bin_dir / "edgetpu_compiler"
    script.write_text(f"""#!/bin/sh
[ "$1" = "-s" ] && [ "$2" = "-o" ] && [ -d "$3" ] && [ -f "$4" ] || {{ echo "bad arguments: $*" >&2; exit 2; }}
out="$3"; base="${{4##*/}}"; stem="${{base%.tflite}}"
{extra}
while IFS= read -r line; do printf '%s\\n' "$line"; done < "{bin_dir}/log.txt"
while IFS= read -r line; do printf '%s\\n' "$line"; done < "{bin_dir}/log.txt" > "$out/${{stem}}_edgetpu.log"
[ {code} -eq 0 ] && printf 'TFL3' > "$out/${{stem}}_edgetpu.tflite"
exit {code}
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_compiler_log_is_parsed_into_the_report_and_kept(tflite, tmp_path, monkeypatch):
    _fake_compiler(tmp_path, monkeypatch, _LEAKY_LOG)
    out = tmp_path / "out"
    report = edgetpu.check_edgetpu(tflite("leaky"), out)
    compiler = report["compiler"]
    assert compiler["found"] is True and compiler["ok"] is True, compiler["message"]
    assert compiler["version"] == "16.0.384591198" and compiler["n_subgraphs"] == 1
    assert (compiler["n_tpu_ops"], compiler["n_cpu_ops"]) == (2, 6)
    assert {"op": "LEAKY_RELU", "count": 1, "status": "Operation not supported", "tpu": False} in compiler["ops"]
    assert len(compiler["ops"]) == 8 and compiler["disagreements"] == []
    assert Path(compiler["log"]) == out / edgetpu.COMPILER_LOG
    assert "-s -o" in Path(compiler["log"]).read_text() and "LEAKY_RELU" in Path(compiler["log"]).read_text()
    assert Path(compiler["output"]) == out / "leaky_edgetpu.tflite" and Path(compiler["output"]).is_file()
    assert Path(compiler["op_log"]).is_file()
    assert not list(out.glob(".edgetpu-*")), "the staging directory was left behind"
    saved = json.loads((out / edgetpu.REPORT_JSON).read_text())
    assert saved["compiler"]["ops"] == compiler["ops"]
    assert "## edgetpu_compiler 16.0.384591198" in (out / edgetpu.REPORT_MD).read_text()


def test_compiler_disagreement_and_in_memory_model(tflite, tmp_path, monkeypatch):
    _fake_compiler(tmp_path, monkeypatch, _LEAKY_LOG)
    report = edgetpu.check_edgetpu(tflite("uint8").read_bytes(), tmp_path / "out", name="mem.tflite")
    assert Path(report["compiler"]["output"]).name == "model_edgetpu.tflite"
    assert {"op": "SOFTMAX", "static_tpu": 1, "compiler_tpu": 0} in report["compiler"]["disagreements"]


def test_failing_compiler_is_reported_not_raised(tflite, tmp_path, monkeypatch):
    log = "Edge TPU Compiler version 16.0.384591198\nERROR: Didn't find op for builtin opcode 'X'\n" \
          "Compilation failed!\n"
    _fake_compiler(tmp_path, monkeypatch, log, code=1)
    report = edgetpu.check_edgetpu(tflite("uint8"), tmp_path / "out")
    compiler = report["compiler"]
    assert compiler["ok"] is False and compiler["returncode"] == 1 and compiler["output"] is None
    assert "failed (exit 1): ERROR: Didn't find op" in compiler["message"]
    assert (tmp_path / "out" / edgetpu.REPORT_MD).is_file()


def test_hanging_compiler_is_killed_at_the_timeout(tflite, tmp_path, monkeypatch):
    _fake_compiler(tmp_path, monkeypatch, _LEAKY_LOG, extra="sleep 30")
    started = time.monotonic()
    result = edgetpu.run_edgetpu_compiler(tflite("uint8"), tmp_path / "out", timeout=1)
    assert time.monotonic() - started < 10, "the compiler's process group was not killed"
    assert result["returncode"] is None and result["ok"] is False and "timed out" in result["message"]
    assert Path(result["log"]).is_file()
