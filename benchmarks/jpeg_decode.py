"""usage: python benchmarks/jpeg_decode.py [--images 16] [--rounds 7] [--size 640x480] [--out FILE.json]

What decoding a camera-sized JPEG costs the runner at a model's input size, and whether a different decoder
would buy anything. Side by side in one run, rounds interleaved, median round in ms per image:
  full      Pillow decode at full size (what `classify` did before DCT scaling)
  draft N   Pillow with `draft()` to the model input (the runner's path: libjpeg scales in the IDCT by 1/2,
            1/4 or 1/8); the decoded size is checked, so a draft that silently did nothing shows up
  runner    the runner's own decode_image + resize to N x N (what one `classify` image costs before invoke)
  cv2 1/k   OpenCV's IMREAD_REDUCED_COLOR_k (libjpeg-turbo's scaled decode through another binding)
Inputs: generated 640x480 q90 JPEGs with camera-like noise (entropy decoding, which no DCT scale skips,
grows with detail). Prints a table; writes JSON (default benchmarks/results/jpeg_decode.json).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, save_result
from PIL import Image, features

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edgekit.runner import module as runner  # noqa: E402


def camera_jpegs(count: int, width: int, height: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    out = []
    for i in range(count):
        base = np.stack([(x / width * 255), (y / height * 255), ((x + y + 40 * i) % 255)], -1)
        noisy = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def pillow_full(data: bytes) -> tuple:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.size


def pillow_draft(data: bytes, size: int) -> tuple:
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (size, size))
        image.load()
        return image.size


def runner_decode(data: bytes, size: int) -> tuple:
    pixels, _ = runner.decode_image(data, 40 * 10**6, (size, size))
    runner.resize_bilinear(pixels, size, size)
    return pixels.shape[1::-1]


def cv2_reduced(data: bytes, factor: int) -> tuple:
    import cv2

    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    return image.shape[1::-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--out", type=Path, default=RESULTS / "jpeg_decode.json")
    args = parser.parse_args()
    load_start = os.getloadavg()
    width, height = map(int, args.size.split("x"))
    jpegs = camera_jpegs(args.images, width, height)
    configs = {"full": pillow_full}
    for size in (224, 96):
        configs[f"draft {size}"] = lambda d, s=size: pillow_draft(d, s)
        configs[f"runner {size}"] = lambda d, s=size: runner_decode(d, s)
    try:
        import cv2  # noqa: F401

        for factor in (1, 2, 4):
            configs[f"cv2 1/{factor}"] = lambda d, f=factor: cv2_reduced(d, f)
    except ImportError:
        print("OpenCV not installed: cv2 rows skipped", file=sys.stderr)
    sizes = {name: fn(jpegs[0]) for name, fn in configs.items()}
    rounds: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, fn in configs.items():
            start = time.perf_counter()
            for data in jpegs:
                fn(data)
            rounds[name].append((time.perf_counter() - start) / len(jpegs) * 1e3)
    full = statistics.median(rounds["full"])
    rows = [{"decoder": name, "decoded size": "x".join(map(str, sizes[name])),
             "ms per image": statistics.median(values), "vs full": statistics.median(values) / full}
            for name, values in rounds.items()]
    print(f"{args.images} JPEGs {width}x{height} q90, {args.rounds} interleaved rounds; Pillow "
          f"{Image.__version__} (libjpeg-turbo: {features.check_feature('libjpeg_turbo')})")
    from _common import print_table

    print_table(rows, ["decoder", "decoded size", "ms per image", "vs full"])
    save_result(args.out, {"images": args.images, "size": args.size, "rounds": args.rounds, "rows": rows,
                           "rounds_ms": rounds, "pillow": Image.__version__,
                           "libjpeg_turbo": features.check_feature("libjpeg_turbo"),
                           "load_average_start": list(load_start)}, load_start)


if __name__ == "__main__":
    main()
