"""Will a .tflite model run on a Coral Edge TPU, and which of its ops would fall back to the CPU?

A static check of the flatbuffer against Coral's published model requirements and supported-operations
table, plus the per-op verdict of `edgetpu_compiler` when it is installed (the compiler's word wins).
Both land in `edgetpu_report.json` and `edgetpu_report.md` in the output directory.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from edgekit.artifacts import write_json_atomic, write_text_atomic
from edgekit.errors import EdgekitError
from edgekit.render import markdown_table
from edgekit.tflite import Op, Tensor, has_identifier, parse, read_tflite

REPORT_JSON = "edgetpu_report.json"
REPORT_MD = "edgetpu_report.md"
COMPILER_LOG = "edgetpu_compiler.log"
AFTER_FIRST = "CPU (after first unsupported op)"
RULES = {
    "source": "https://coral.ai/docs/edgetpu/models-intro/#supported-operations",
    "compiler_version": "16.0",  # the table's newest column: Edge TPU Compiler 16.0, runtime 14
    "runtime_version": 14,
}
NOT_FOUND = (
    "edgetpu_compiler not found on PATH; install it from Coral's apt repository on an x86_64 Linux host: "
    "add 'deb https://packages.cloud.google.com/apt coral-edgetpu-stable main' to "
    "/etc/apt/sources.list.d/coral-edgetpu.list with its key (https://coral.ai/docs/edgetpu/compiler/), "
    "then `sudo apt-get install edgetpu-compiler`; the static compatibility report was still written"
)
_EIGHT_BIT = ("int8", "uint8")
_PARAM_TYPES = ("int32", "int64")  # biases, shapes, axes, paddings: constant parameters the TPU accepts
_MAX_SOFTMAX = 16_000
_FOUR_D = 4  # the batch dimension is axis 0 of a 4-D (NHWC) tensor


def _parse(content: bytes, label: str) -> tuple[list[Op], dict]:
    """The main subgraph's ops in execution order, and which tensors are the graph's inputs and outputs."""
    model = parse(content, label)
    info = {"n_subgraphs": model.subgraph_count, "inputs": {t.index for t in model.inputs},
            "outputs": {t.index for t in model.outputs}}
    return list(model.ops), info


def _tensor_text(t: Tensor) -> str:
    return f"{'const ' if t.const else ''}{t.dtype}[{','.join(str(d) for d in t.shape)}]"


def _big_dims(shape: tuple[int, ...]) -> int:
    return sum(1 for d in shape if d > 1 or d < 0)


def _tensor_problems(op: Op) -> list[str]:
    """Coral's model requirements: 8-bit quantized tensors, static shapes, at most 3 non-trivial dims."""
    tensors = [t for t in op.inputs if t is not None] + list(op.outputs)
    live = [t for t in tensors if not t.const]
    floats = [t for t in tensors if t.dtype.startswith("float")]
    odd = [t for t in live if t.dtype not in _EIGHT_BIT and t not in floats]
    odd += [t for t in tensors if t.const and t.dtype not in _EIGHT_BIT + _PARAM_TYPES and t not in floats]
    checks = [
        (floats, "float tensors {}: the Edge TPU runs only fully 8-bit quantized models; convert with "
                 "full-integer quantization (representative dataset, TFLITE_BUILTINS_INT8)"),
        (odd, "unsupported data type {}: only int8/uint8 tensors (and int32 parameters) map"),
        ([t for t in live if t.dtype in _EIGHT_BIT and not t.quantized],
         "8-bit tensors without quantization parameters {}"),
        ([t for t in live if -1 in t.shape], "dynamic tensor shape {}: sizes must be fixed at compile time "
         "(edgetpu_compiler may refuse dynamic-sized tensors); fix the batch size to 1 before conversion"),
        ([t for t in live if any(d > 1 for d in t.shape[:-3])],
         "tensor shape {}: only the 3 innermost dimensions may be larger than 1"),
    ]
    return [text.format(", ".join(_tensor_text(t) for t in bad[:3])) for bad, text in checks if bad]


def _act(op: Op) -> list[str]:
    if getattr(op.options, "fusedActivationFunction", 0):
        return ["fused activation function is not supported on this op"]
    return []


def _dilation(op: Op) -> list[str]:
    w, h = getattr(op.options, "dilationWFactor", 1), getattr(op.options, "dilationHFactor", 1)
    return [f"dilation differs in x and y ({w} vs {h})"] if w != h else []


def _concat(op: Op) -> list[str]:
    consts = [t for t in op.inputs if t is not None and t.const]
    zeros = all(t.values is not None and not np.any(t.values) for t in consts)
    if consts and (len(op.inputs) != 2 or not zeros):
        return _act(op) + ["a constant input is allowed only as an all-zero one of exactly 2 inputs"]
    return _act(op)


def _fully_connected(op: Op) -> list[str]:
    problems = ["only the default weights format is supported"] if getattr(op.options, "weightsFormat", 0) else []
    if _big_dims(op.outputs[0].shape) > 1:
        problems.append(f"output {_tensor_text(op.outputs[0])} is not one-dimensional")
    return problems


def _axes(op: Op, data: int, axes: int) -> tuple[int, list[int] | None]:
    rank = len(op.inputs[data].shape)
    tensor = op.inputs[axes] if axes < len(op.inputs) else None
    if tensor is None or tensor.values is None:
        return rank, None
    return rank, [int(a) % max(rank, 1) for a in np.ravel(tensor.values)]


def _reduce(op: Op, *, data: int = 0, axes: int = 1) -> list[str]:
    rank, found = _axes(op, data, axes)
    if found is None:
        return ["axes are not a compile-time constant"]
    return ["operates on the batch dimension"] if rank == _FOUR_D and 0 in found else []


def _mean(op: Op) -> list[str]:
    problems = _reduce(op)
    rank, found = _axes(op, 0, 1)
    depth = op.inputs[0].shape[-1] if rank else 0
    if found and rank - 1 in found and depth % 4:
        problems.append(f"reduces over z, whose size {depth} is not a multiple of 4")
    return problems


def _pad(op: Op) -> list[str]:
    paddings = op.inputs[1].values if len(op.inputs) > 1 and op.inputs[1] is not None else None
    if paddings is None:
        return ["paddings are not a compile-time constant"]
    if len(op.inputs[0].shape) == _FOUR_D and np.any(np.reshape(paddings, (-1, 2))[0]):
        return ["pads the batch dimension"]
    return []


def _pack(op: Op) -> list[str]:
    axis = getattr(op.options, "axis", 0)
    return ["packs along the batch dimension"] if len(op.outputs[0].shape) == _FOUR_D and axis % 4 == 0 else []


def _softmax(op: Op) -> list[str]:
    shape = op.inputs[0].shape
    problems = [f"input {_tensor_text(op.inputs[0])} is not 1-D"] if _big_dims(shape) > 1 else []
    if int(np.prod([max(d, 1) for d in shape])) > _MAX_SOFTMAX:
        problems.append(f"input has more than {_MAX_SOFTMAX:,} elements")
    return problems


def _strided_slice(op: Op) -> list[str]:
    strides = op.inputs[3].values if len(op.inputs) > 3 and op.inputs[3] is not None else None
    problems = [] if strides is not None and np.all(strides == 1) else ["strides other than 1"]
    if getattr(op.options, "ellipsisMask", 0) or getattr(op.options, "newAxisMask", 0):
        problems.append("ellipsis_mask and new_axis_mask must be 0")
    return problems


def _prelu(op: Op) -> list[str]:
    alpha = op.inputs[1] if len(op.inputs) > 1 else None
    if alpha is not None and any(d > 1 for d in alpha.shape[:-1]):
        return ["alpha must be 1-dimensional (only its innermost dimension > 1)"]
    return []


# Coral's "supported operations" table (Edge TPU Compiler 16.0 / runtime 14), keyed by TFLite builtin name,
# with a checker for each limitation that the flatbuffer alone can decide.
_SUPPORTED = {
    "ADD": None, "SUB": None, "MUL": None, "MAXIMUM": None, "MINIMUM": None, "SQUARED_DIFFERENCE": None,
    "LOGISTIC": None, "TANH": None, "RELU": None, "RELU6": None, "RELU_N1_TO_1": None, "RSQRT": None,
    "L2_NORMALIZATION": None, "RESHAPE": None, "EXPAND_DIMS": None, "SQUEEZE": None, "SLICE": None,
    "SPACE_TO_DEPTH": None, "TRANSPOSE": None, "TRANSPOSE_CONV": None, "QUANTIZE": None,
    "RESIZE_BILINEAR": None, "RESIZE_NEAREST_NEIGHBOR": None, "UNIDIRECTIONAL_SEQUENCE_LSTM": None,
    "AVERAGE_POOL_2D": _act, "MAX_POOL_2D": _act, "CONCATENATION": _concat,
    "CONV_2D": _dilation, "DEPTHWISE_CONV_2D": _dilation, "FULLY_CONNECTED": _fully_connected,
    "MEAN": _mean, "SUM": _reduce, "REDUCE_MAX": _reduce, "REDUCE_MIN": _reduce,
    "PAD": _pad, "PACK": _pack, "PRELU": _prelu, "SOFTMAX": _softmax, "STRIDED_SLICE": _strided_slice,
    "SPLIT": functools.partial(_reduce, data=1, axes=0),
}
# Limitations the compiler decides from sizes and precision; a static check can only warn.
_CAVEATS = {
    "RESHAPE": "certain reshapes of large tensors may not be mapped",
    "RESIZE_BILINEAR": "may not be mapped, depending on input/output size, to avoid loss in precision",
    "RESIZE_NEAREST_NEIGHBOR": "may not be mapped, depending on input/output size, to avoid loss in precision",
}


def _op_problems(op: Op) -> list[str]:
    if op.name == "edgetpu-custom-op":
        return []
    if op.name not in _SUPPORTED:
        kind = "TensorFlow (Flex) op" if op.name.startswith("Flex") else "op"
        return [f"{kind} {op.name} is not in the Edge TPU's supported operations"]
    check = _SUPPORTED[op.name]
    return _tensor_problems(op) + (check(op) if check else [])


def _boundary(op: Op, info: dict) -> str | None:
    """Float input/output conversions at the graph edge run on the CPU without splitting the TPU segment."""
    first_in = op.inputs[0] if op.inputs else None
    if op.name == "QUANTIZE" and first_in is not None and first_in.index in info["inputs"] \
            and first_in.dtype.startswith("float") and op.outputs[0].dtype in _EIGHT_BIT:
        return "converts the float model input to 8 bits on the CPU; convert with inference_input_type=tf.uint8"
    if op.name == "DEQUANTIZE" and op.outputs[0].index in info["outputs"]:
        return "converts the output back to float on the CPU; convert with inference_output_type=tf.uint8"
    return None


def analyze_model(model: Path | str | bytes, name: str | None = None) -> dict:
    """The static compatibility report for a .tflite file (path or bytes); writes nothing."""
    content, label, path = _load(model, name)
    ops, info = _parse(content, label)
    rows, first, tail, boundary = [], None, False, 0
    for op in ops:
        problems = _op_problems(op)
        edge = None if tail else _boundary(op, info)
        if tail:
            own = f"; on its own: {problems[0].split(': ')[0]}" if problems else ""
            where, reason = "CPU", AFTER_FIRST + own
        elif edge:
            where, reason, boundary = "CPU", edge, boundary + 1
        elif problems:
            where, reason, tail = "CPU", "; ".join(problems), True
            first = {"index": op.index, "op": op.name, "reason": reason}
        else:
            where, reason = "TPU", ("already compiled for the Edge TPU" if op.name == "edgetpu-custom-op" else None)
        row = {"index": op.index, "op": op.name, "inputs": [_tensor_json(t) for t in op.inputs if t is not None],
               "outputs": [_tensor_json(t) for t in op.outputs], "where": where, "reason": reason}
        if where == "TPU" and op.name in _CAVEATS:
            row["note"] = _CAVEATS[op.name]
        rows.append(row)
    n_tpu = sum(r["where"] == "TPU" for r in rows)
    notes = []
    if info["n_subgraphs"] > 1:
        notes.append(f"{info['n_subgraphs']} subgraphs: only the main one is checked; the others run on the CPU")
    if any(op.name == "edgetpu-custom-op" for op in ops):
        notes.append("this model is already compiled for the Edge TPU; check the model before compilation")
    report = {
        "model": {"name": label, "path": str(path) if path else None,
                  "sha256": hashlib.sha256(content).hexdigest(), "size": len(content)},
        "rules": dict(RULES),
        "compatible": bool(rows) and n_tpu == len(rows),
        "n_ops": len(rows), "n_tpu_ops": n_tpu, "n_cpu_ops": len(rows) - n_tpu, "n_boundary_cpu_ops": boundary,
        "first_unsupported": first, "notes": notes, "ops": rows,
    }
    report["summary"] = _summary(report)
    return report


def _tensor_json(t: Tensor) -> dict:
    return {"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "const": t.const}


def _summary(report: dict) -> str:
    n, tpu, first = report["n_ops"], report["n_tpu_ops"], report["first_unsupported"]
    if not n:
        return "not compatible: the model has no ops"
    if report["compatible"]:
        return f"compatible: all {n} ops map to the Edge TPU"
    if first:
        return (f"not compatible: {tpu} of {n} ops map to the Edge TPU; first unsupported op "
                f"#{first['index']} {first['op']}: {first['reason']}")
    return (f"not compatible: {tpu} of {n} ops map to the Edge TPU; only the float input/output conversions "
            "run on the CPU; convert with inference_input_type/inference_output_type=tf.uint8")


def _load(model: Path | str | bytes, name: str | None) -> tuple[bytes, str, Path | None]:
    if isinstance(model, (bytes, bytearray, memoryview)):
        content, label = bytes(model), name or "<tflite bytes>"
        if not has_identifier(content):
            raise EdgekitError(f"{label}: not a TFLite model (no 'TFL3' flatbuffer identifier); pass a .tflite file")
        return content, label, None
    path = Path(model)
    return read_tflite(path), name or str(path), path


_ROW = re.compile(r"^(\S+)\s+(\d+)\s+(\S.*?)\s*$")
_HEADER = re.compile(r"^\s*Operator\s+Count\s+Status\s*$")


def parse_compiler_log(text: str) -> dict:
    """Version, op-mapping table and counts from `edgetpu_compiler -s` output (or its *_edgetpu.log)."""

    def number(label: str) -> int | None:
        found = re.search(rf"{label}:\s*(\d+)", text)
        return int(found.group(1)) if found else None

    ops, in_table = [], False
    for line in text.splitlines():
        if _HEADER.match(line):
            in_table = True
        elif in_table and line.strip():
            row = _ROW.match(line.strip())
            if not row:
                in_table = False
                continue
            status = row.group(3)
            ops.append({"op": row.group(1), "count": int(row.group(2)), "status": status,
                        "tpu": status == "Mapped to Edge TPU"})
    version = re.search(r"Edge TPU Compiler version (\S+)", text)
    error = next((ln.strip() for ln in text.splitlines()
                  if ln.startswith("ERROR") or "Compilation failed" in ln or "Internal compiler error" in ln), None)
    n_tpu = number("Number of operations that will run on Edge TPU")
    n_cpu = number("Number of operations that will run on CPU")
    return {
        "version": version.group(1) if version else None,
        "ops": ops,
        "n_tpu_ops": n_tpu if n_tpu is not None else sum(o["count"] for o in ops if o["tpu"]),
        "n_cpu_ops": n_cpu if n_cpu is not None else sum(o["count"] for o in ops if not o["tpu"]),
        "n_subgraphs": number("Number of Edge TPU subgraphs"),
        "error": error,
    }


def run_edgetpu_compiler(tflite_path: Path, out_dir: Path, timeout: float = 180.0) -> dict:
    """Run `edgetpu_compiler -s -o OUT_DIR MODEL`, keep its log and output model, parse its op table.

    Never raises for a missing, failing or hanging compiler: the result says what happened in `message`.
    """
    tflite_path, out_dir = Path(tflite_path), Path(out_dir)
    result = {"found": False, "path": None, "version": None, "ok": False, "returncode": None,
              "log": None, "output": None, "op_log": None, "ops": [], "message": NOT_FOUND}
    exe = shutil.which("edgetpu_compiler")
    if exe is None:
        return result
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".edgetpu-", dir=out_dir))  # files appear in out_dir whole
    command = [exe, "-s", "-o", str(staging), str(tflite_path)]
    try:
        returncode, output = _run(command, timeout)
        log = out_dir / COMPILER_LOG
        write_text_atomic(log, "$ " + " ".join(command) + "\n" + output)
        for produced in sorted(staging.iterdir()):
            os.replace(produced, out_dir / produced.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    parsed = parse_compiler_log(output)
    model_out = out_dir / f"{tflite_path.stem}_edgetpu.tflite"
    op_log = out_dir / f"{tflite_path.stem}_edgetpu.log"
    ok = returncode == 0 and model_out.is_file()
    if returncode is None:
        message = f"edgetpu_compiler timed out after {timeout:g} s; see {log}"
    elif ok:
        message = (f"edgetpu_compiler {parsed['version']}: {parsed['n_tpu_ops']} ops on the Edge TPU, "
                   f"{parsed['n_cpu_ops']} on the CPU; wrote {model_out.name}")
    else:
        message = f"edgetpu_compiler failed (exit {returncode}): {parsed['error'] or 'no error line'}; see {log}"
    result.update(parsed, found=True, path=exe, ok=ok, returncode=returncode, log=str(log), message=message,
                  output=str(model_out) if model_out.is_file() else None,
                  op_log=str(op_log) if op_log.is_file() else None)
    return result


def _run(command: list[str], timeout: float) -> tuple[int | None, str]:
    """Run in its own process group so a timeout also ends the compiler's child process."""
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", start_new_session=True)
    except OSError as exc:
        return 127, f"ERROR: cannot run {command[0]}: {exc}\n"
    try:
        output, _ = proc.communicate(timeout=timeout)
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return None, (output or "") + f"\n[edgekit] killed after {timeout:g} s\n"


def check_edgetpu(model: Path | str | bytes, out_dir: Path, run_compiler: bool = True,
                  timeout: float = 180.0, name: str | None = None) -> dict:
    """Check a .tflite model for the Edge TPU; write edgetpu_report.json and edgetpu_report.md to `out_dir`.

    Returns the report: `compatible`, op counts, `first_unsupported`, per-op rows (`where` is TPU or CPU) and,
    when the compiler ran, its own verdict under `compiler` with any `disagreements` with the static check.
    """
    report = analyze_model(model, name)
    out_dir = Path(out_dir)
    if not run_compiler:
        compiler = {"found": None, "ok": False, "log": None, "output": None, "ops": [],
                    "message": "edgetpu_compiler not run (run_compiler=False)"}
    elif report["model"]["path"] is None:
        with tempfile.TemporaryDirectory(prefix="edgekit-edgetpu-") as tmp:
            source = Path(tmp) / "model.tflite"
            source.write_bytes(bytes(model))
            compiler = run_edgetpu_compiler(source, out_dir, timeout)
    else:
        compiler = run_edgetpu_compiler(Path(report["model"]["path"]), out_dir, timeout)
    if compiler["ops"]:
        compiler["disagreements"] = _disagreements(report["ops"], compiler["ops"])
    report["compiler"] = compiler
    write_json_atomic(out_dir / REPORT_JSON, report)
    write_text_atomic(out_dir / REPORT_MD, render_markdown(report))
    return report


def _disagreements(rows: list[dict], compiled: list[dict]) -> list[dict]:
    static = Counter(r["op"] for r in rows if r["where"] == "TPU")
    mapped = Counter()
    for entry in compiled:
        mapped[entry["op"]] += entry["count"] if entry["tpu"] else 0
    return [{"op": op, "static_tpu": static[op], "compiler_tpu": mapped[op]}
            for op in sorted(set(static) | set(mapped)) if static[op] != mapped[op]]


def render_markdown(report: dict) -> str:
    model, rules, compiler = report["model"], report["rules"], report.get("compiler") or {}
    lines = [
        f"# Edge TPU compatibility: {Path(model['name']).name}", "",
        f"- **Verdict:** {report['summary']}",
        f"- **Model:** `{model['name']}` (sha256 {model['sha256'][:12]}…, {model['size']} bytes)",
        f"- **Rules:** static check against Coral's model requirements and supported-operations table for Edge "
        f"TPU Compiler {rules['compiler_version']} (runtime {rules['runtime_version']}), {rules['source']}. "
        "The compiler maps ops in graph order up to the first unsupported op; that op and every op after it "
        "run on the CPU.",
        f"- **Compiler:** {compiler.get('message', 'not run')}",
        *[f"- {note}" for note in report["notes"]], "",
        markdown_table(["#", "op", "inputs", "where", "reason"], [
            [row["index"], row["op"], ", ".join(f"{'const ' if t['const'] else ''}{t['dtype']}{t['shape']}"
                                                for t in row["inputs"]),
             row["where"], row["reason"] or row.get("note") or ""] for row in report["ops"]]),
    ]
    if compiler.get("ops"):
        lines += ["", f"## edgetpu_compiler {compiler.get('version')}", "",
                  f"Log: `{compiler.get('log')}`; output: `{compiler.get('output')}`.", "",
                  markdown_table(["op", "count", "status"], [[o["op"], o["count"], o["status"] or ""]
                                                             for o in compiler["ops"]])]
        for d in compiler.get("disagreements", []):
            lines.append(f"\nThe static check maps {d['static_tpu']} {d['op']} op(s) to the TPU, the compiler "
                         f"{d['compiler_tpu']}; the compiler is right.")
    return "\n".join(lines) + "\n"
