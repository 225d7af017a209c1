"""What `edgekit bench` feeds a model: validation images, a folder of images, or generated tensors.

edgekit's own variants are timed on their validation images. Any other .tflite is timed either on a
folder of images (`--images DIR`, single-input image classifiers) or on tensors generated over each
input's dtype range, so detectors, segmenters, multi-input and non-image models all run. What was fed
is stated in every row (`inputs`), because a latency measured on noise is not one measured on photos.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit import runner
from edgekit.errors import EdgekitError
from edgekit.evaluate import TFLitePredictor
from edgekit.runner import dequantize, load_model
from edgekit.tflite import TFLiteModel

SEED = 0
MAX_PIXELS = 40 * 10**6  # what the runner's own bench allows an image


@dataclass
class Feed:
    """Inputs saved for the runner: `flag` (--images or --inputs) names how it reads `path`."""

    flag: str
    path: Path
    description: str
    pixels: np.ndarray | None = None  # --images: float RGB 0..255, the classifier path
    tensors: dict[str, np.ndarray] | None = None  # --inputs: input_<i> arrays [N, *shape], raw dtype


def _value_range(dtype: str) -> tuple[float, float, str]:
    """Generated values per dtype: the full integer range, [-1, 1] for floats, 0/1 where values index."""
    if dtype in ("int8", "uint8", "int16"):
        info = np.iinfo(dtype)
        return info.min, info.max, f"{dtype} uniform over {info.min}..{info.max}"
    if dtype in ("int32", "int64", "bool"):
        return 0, 1, f"{dtype} 0 or 1 (values may index a table)"
    if dtype in ("float32", "float16", "float64"):
        return -1.0, 1.0, f"{dtype} uniform in [-1, 1)"
    raise EdgekitError(f"input dtype {dtype} cannot be generated; pass --images for an image model")


def generated(model: TFLiteModel, out: Path, count: int) -> Feed:
    """`count` seeded random samples for every input, each over its dtype's range (dynamic dims → 1)."""
    rng = np.random.default_rng(SEED)
    tensors, described = {}, []
    for i, tensor in enumerate(model.inputs):
        shape = [1 if d < 0 else d for d in tensor.shape]
        low, high, text = _value_range(tensor.dtype)
        if tensor.dtype.startswith("float"):
            values = rng.uniform(low, high, [count, *shape]).astype(tensor.dtype)
        else:
            values = rng.integers(low, high, [count, *shape], endpoint=True).astype(tensor.dtype)
        tensors[f"input_{i}"] = values
        described.append(f"{tensor.name or i} {shape}: {text}")
    np.savez(out, **tensors)
    return Feed("--inputs", out, f"generated ({count} samples, seed {SEED}): " + "; ".join(described),
                tensors=tensors)


def folder_images(model: TFLiteModel, directory: Path, out: Path, count: int) -> Feed:
    """Up to `count` images from `directory`, decoded and resized to the model's input as the runner's
    `classify` does (its own code), float RGB 0..255."""

    if len(model.inputs) != 1 or not model.is_image_classifier or model.inputs[0].shape[-1] != 3:
        raise EdgekitError(f"{model.label}: --images feeds single-input RGB image classifiers; "
                           f"{_not_a_classifier(model)}; drop --images to time it on generated inputs")
    if not Path(directory).is_dir():
        raise EdgekitError(f"--images {directory}: not a directory of images")
    height, width = model.inputs[0].shape[1:3]
    pixels = []
    for path in sorted(Path(directory).rglob("*")):
        if len(pixels) >= count:
            break
        if path.suffix.lower() not in runner.IMAGE_EXTENSIONS or not path.is_file():
            continue
        try:
            decoded, _ = runner.decode_image(path.read_bytes(), MAX_PIXELS, (height, width))
        except (OSError, runner.ImageError):
            continue
        pixels.append(runner.resize_bilinear(decoded, height, width))
    if not pixels:
        raise EdgekitError(f"--images {directory}: no readable images ({', '.join(runner.IMAGE_EXTENSIONS)})")
    stacked = np.stack(pixels)
    np.savez(out, x=stacked)
    return Feed("--images", out, f"{len(pixels)} images from {directory}", pixels=stacked)


def _not_a_classifier(model: TFLiteModel) -> str:
    """Which part of "one [1, H, W, 3] input, one [1, N] output" this model breaks, in its own shapes."""
    shapes = lambda tensors: ", ".join(str(list(t.shape)) for t in tensors)  # noqa: E731
    if len(model.inputs) != 1:
        return f"this model takes {len(model.inputs)} inputs ({shapes(model.inputs)})"
    shape = model.inputs[0].shape
    if len(shape) != 4 or shape[-1] != 3:
        return f"its input is {list(shape)}, not [1, H, W, 3] RGB"
    if len(model.outputs) != 1:
        return f"its input is RGB but it has {len(model.outputs)} outputs ({shapes(model.outputs)}), not one [1, N]"
    return f"its output is {list(model.outputs[0].shape)}, not [1, N] class scores"


def reference_outputs(path: Path, feed: Feed, k: int) -> np.ndarray:
    """What LiteRT on this host answers for the first k samples: the first output, dequantized."""
    count = min(k, len(feed.pixels) if feed.pixels is not None else min(len(v) for v in feed.tensors.values()))
    return replayed_outputs(path, feed, list(range(count)))


def replayed_outputs(path: Path, feed: Feed, sequence: list[int]) -> np.ndarray:
    """LiteRT's outputs on this host for the samples at `sequence`, invoked in that order on a fresh interpreter.

    A stateful model (variable tensors: a streaming wake-word model) answers from everything it was
    fed since it was loaded; replaying the runner's own sequence compares like with like.
    """

    if feed.pixels is not None:
        return TFLitePredictor(path).predict(feed.pixels[sequence]).reshape(len(sequence), -1)
    model = load_model(path, raw=True)
    rows = []
    for n in sequence:
        raw, _ = model.run([feed.tensors[f"input_{i}"][n] for i in range(len(model.inputs))])
        rows.append(dequantize(raw, model.output))
    return np.stack(rows)
