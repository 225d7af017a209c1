"""Are the device's answers the host's? Output checks in quantization steps and accuracy on the device.

The host measures accuracy with LiteRT (XNNPACK). Another runtime or a delegate on the device may
compute differently: tflite-runtime 2.14 on a Pi differs from LiteRT by up to 45 int8 steps with ~2%
top-1 flips on an int8 MobileNetV2. So outputs are compared in quantization steps of the output
tensor (|device - host| / scale; for float outputs, an absolute difference), with a stated tolerance,
and where the runtime or delegate differs the validation split is run on the device itself.
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

import numpy as np

from edgekit.data import iter_pixel_batches, load_dataset
from edgekit.errors import EdgekitError
from edgekit.evaluate import TFLitePredictor
from edgekit.runner import dequantizer
from edgekit.tflite import Quantization, parse_file

TOLERANCE_STEPS = 1.0  # one step: rounding may differ between kernels, more is a different computation
FLOAT_TOLERANCE = 1e-4  # float outputs from another build of the same runtime may differ in the last bits
ACCURACY_INPUTS = "accuracy_inputs.npz"  # the local scratch copy of one chunk
CHUNK_BYTES = 64 << 20  # pixels per predict call on the device: 111 images at 224 px, 606 at 96 px


def output_info(path: Path) -> dict:
    """The first output (Tensor.as_dict), plus `internal_scale` when a float output is a dequantized int8
    tensor: an int8 model with float I/O ends in DEQUANTIZE, and its steps are still the unit that matters.
    """

    model = parse_file(path)
    output = model.outputs[0]
    info = output.as_dict()
    producer = next((op for op in model.ops if any(t.index == output.index for t in op.outputs)), None)
    if not output.quantized and producer is not None and producer.name == "DEQUANTIZE" and producer.inputs[0]:
        source = producer.inputs[0].quantization
        info["internal_scale"] = source.per_tensor[0] if source and source.per_tensor[0] else None
    return info


def output_scale(output: dict) -> float | None:
    """The first output's quantization step (its own, or the int8 tensor it dequantizes), else None."""
    quant = output.get("quantization")
    if str(output.get("dtype")) not in ("int8", "uint8", "int16") or not quant:
        return output.get("internal_scale")
    return Quantization.from_dict(quant).per_tensor[0]


def compare(device: np.ndarray, host: np.ndarray, output: dict) -> dict:
    """Dequantized device vs host outputs ([N, K] each): max difference in steps, top-1 flips, verdict."""
    device = np.asarray(device, dtype=np.float64).reshape(len(device), -1)
    host = np.asarray(host, dtype=np.float64).reshape(len(host), -1)[:, :device.shape[1]]
    if not len(device):
        return {"checked": 0}
    diff = np.abs(device - host)
    scale = output_scale(output)
    flips = int(np.sum(device.argmax(axis=1) != host.argmax(axis=1)))
    check = {"checked": len(device), "max_abs_diff": float(diff.max()), "top1_flips": flips,
             "argmax_equal": flips == 0}
    if scale:
        steps = diff / scale
        check.update(unit="quantization steps", max_steps=float(np.round(steps.max(), 3)),
                     mean_steps=float(np.round(steps.mean(), 4)), tolerance=TOLERANCE_STEPS,
                     equal=bool(steps.max() <= TOLERANCE_STEPS + 1e-6))
    else:
        check.update(unit="absolute", tolerance=FLOAT_TOLERANCE, equal=bool(diff.max() <= FLOAT_TOLERANCE))
    return check


def verdict(check: dict) -> str | None:
    """`drift: ...` when a check is beyond its tolerance, else None."""
    if not check.get("checked") or check.get("equal"):
        return None
    if check.get("unit") == "quantization steps":
        size = f"{check['max_steps']:g} quantization steps (tolerance {check['tolerance']:g})"
    else:
        size = f"{check['max_abs_diff']:.3g} (tolerance {check['tolerance']:g})"
    return (f"outputs differ from LiteRT on the host by up to {size}, {check['top1_flips']} of "
            f"{check['checked']} top-1 answers flipped")


def validation_images(manifest, limit: int | None):
    """The variant's validation split (or its first `limit` images), not yet decoded."""

    splits = load_dataset(manifest.dataset.reload_spec)
    count = len(splits.validation) if not limit else min(limit, len(splits.validation))
    return splits.validation.subset(np.arange(count))


def device_accuracy(target, variant, remote_model: str, model_args: list, scratch: Path, limit: int | None,
                    timeout: float) -> dict:
    """Run the validation split on the device with the row's runtime/delegate and on the host with LiteRT.

    The split goes over in chunks of at most CHUNK_BYTES of pixels, one `predict` call each, so neither
    the host nor the device holds more than a chunk whatever the dataset's size (a whole 224 px split
    of 4,000 images would be 2.4 GB). Returns host and device top-1 accuracy over the same samples and
    the output comparison.
    """

    if variant.manifest is None or not variant.manifest.dataset:
        raise EdgekitError(f"{variant.path}: no manifest naming its dataset, so no labelled inputs for an "
                           "accuracy pass on the device")
    images = validation_images(variant.manifest, limit)
    size = variant.manifest.model.image_size
    per_chunk = max(1, CHUNK_BYTES // (size * size * 3 * 4))
    output = output_info(variant.path)
    to_scores = dequantizer(output)
    local = scratch / f"{variant.name}-{ACCURACY_INPUTS}"
    remote = f"inputs/accuracy-{uuid.uuid4().hex[:12]}.npz"  # this pass's own: other bench processes share the device
    device, host, labels, runtime = [], [], [], {}
    try:
        for pixels, targets in iter_pixel_batches(images, size, batch_size=per_chunk):
            np.savez(local, x=pixels)
            target.put(local, remote)
            report = target.run_runner(["predict", remote_model, "--images", remote, *model_args], timeout=timeout)
            if len(report.get("outputs") or []) != len(pixels):
                raise EdgekitError(f"{target.name}: the runner's predict returned {len(report.get('outputs') or [])}"
                                   f" outputs for {len(pixels)} inputs; redeploy the runner (edgekit doctor)")
            device.append(to_scores(np.asarray(report["outputs"], dtype=np.float64)).astype(np.float32))
            # a fresh interpreter per chunk, as the runner's predict has: a stateful model meets the same history
            host.append(TFLitePredictor(variant.path).predict(pixels))
            labels.append(targets)
            runtime = report.get("runtime") or runtime
    finally:
        local.unlink(missing_ok=True)
        with contextlib.suppress(EdgekitError):
            target.remove(remote)
    if not labels:
        raise EdgekitError(f"{variant.path}: its validation split is empty, so there is nothing to run on the "
                           "device; train with a validation split")
    device, host = np.concatenate(device), np.concatenate(host)
    labels = np.concatenate(labels)
    check = compare(device, host, output)
    return {"samples": len(labels), "split": "validation" if not limit or limit >= len(labels) else
            f"first {len(labels)} validation images",
            "host_accuracy": float(np.mean(host.argmax(axis=1) == labels)),
            "device_accuracy": float(np.mean(device.argmax(axis=1) == labels)),
            "device_runtime": f"{runtime.get('name')} {runtime.get('version')}", "output_check": check}
