"""usage: python benchmarks/metadata_interop.py [--run RUN_DIR] [--epochs 8]

What standard TFLite metadata costs and whether MediaPipe Tasks agrees with `edgekit eval`. For each
variant kind (float32, float16, dynamic range, int8 with float I/O, int8 I/O, uint8 I/O) the run's
Keras model is converted with the same `convert` call `compress` makes, then given metadata with
`add_classifier_metadata` exactly as `compress` does; the table shows the bytes added, and the top-1
agreement on the whole validation split between edgekit eval (TFLitePredictor on LiteRT, the
validation pixels as the pipeline makes them) and MediaPipe Tasks `ImageClassifier` (the same pixels
rounded to uint8, as an image is). `agree_same_input` compares eval on the rounded pixels too, which
separates the rounding from any disagreement between the two runtimes.
Without --run it trains a tiny digits run (alpha 0.35, 32 px) into benchmarks/work/runs-metadata.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import WORK, print_table, write_json

from edgekit import manifests
from edgekit.compress.convert import ConvertParams, convert
from edgekit.data import calibration_images, load_dataset, load_pixels
from edgekit.evaluate import TFLitePredictor
from edgekit.model import load_keras_model
from edgekit.tflite_metadata import add_classifier_metadata, lineage_record

KINDS = {"float32": ("float32", "float32"), "float16": ("float16", "float32"), "dynamic": ("dynamic", "float32"),
         "int8": ("int8", "float32"), "int8-io": ("int8", "int8"), "uint8-io": ("int8", "uint8")}


def tiny_run(epochs: int) -> Path:
    from edgekit.config import TrainConfig
    from edgekit.train import train

    runs = WORK / "runs-metadata"
    existing = sorted(runs.glob("digits-tiny*/manifest.json"))
    if existing:
        return existing[-1].parent
    return train(TrainConfig(epochs=epochs, name="digits-tiny", runs_dir=str(runs), patience=20)).run_dir


def mediapipe_top1(content: bytes, images: np.ndarray) -> list[int] | str:
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_buffer=content), max_results=1)
    try:
        classifier = vision.ImageClassifier.create_from_options(options)
    except (ValueError, RuntimeError) as exc:
        return f"refused: {str(exc).splitlines()[0][:90]}"
    with classifier:
        return [classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
                .classifications[0].categories[0].index for image in images]


def measure(kind: str, run_dir: Path, run, model, splits, pixels: np.ndarray, scratch: Path) -> dict:
    mode, io = KINDS[kind]
    params = ConvertParams(mode=mode, io_dtype=io, calibration_samples=100)
    seed = run.config.seed
    calibration = calibration_images(splits.train, run.model.image_size, 100, seed=seed) if mode == "int8" else None
    bare = convert(model, params, calibration)
    parent = manifests.parent_ref(run_dir, run)
    content = add_classifier_metadata(bare, name=kind, labels=run.model.labels, version="benchmark",
                                      lineage=lineage_record(parent, run.name, kind, "benchmark"))
    path = scratch / f"{kind}.tflite"
    path.write_bytes(content)
    predictor = TFLitePredictor(path)
    rounded = np.clip(np.round(pixels), 0, 255)
    ours = predictor.predict(pixels).argmax(1)
    ours_rounded = predictor.predict(rounded).argmax(1)
    theirs = mediapipe_top1(content, rounded.astype(np.uint8))
    targets = splits.validation.targets
    row = {"kind": kind, "bytes": len(bare), "with_metadata": len(content), "added": len(content) - len(bare),
           "eval_acc": float((ours == targets).mean()), "n": len(pixels)}
    if isinstance(theirs, str):
        return {**row, "mediapipe": theirs}
    theirs = np.asarray(theirs)
    return {**row, "mediapipe": "loads", "mp_acc": float((theirs == targets).mean()),
            "agree_eval": float((theirs == ours).mean()), "agree_same_input": float((theirs == ours_rounded).mean())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained run directory (default: train a tiny one)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs for the tiny run when --run is not given")
    args = parser.parse_args()
    run_dir = args.run or tiny_run(args.epochs)
    run = manifests.read(run_dir, manifests.RunManifest)
    model = load_keras_model(run_dir / run.MAIN_FILE)
    splits = load_dataset(run.dataset.reload_spec)
    pixels = load_pixels(splits.validation, run.model.image_size)
    integral = bool(np.all(pixels == np.round(pixels)))
    print(f"run {run_dir} ({len(pixels)} validation images, pixels already whole numbers: {integral})",
          file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for kind in KINDS:
            rows.append(measure(kind, run_dir, run, model, splits, pixels, Path(scratch)))
            print(f"{kind}: done", file=sys.stderr)
    print_table(rows, ["kind", "bytes", "with_metadata", "added", "eval_acc", "mp_acc", "agree_eval",
                       "agree_same_input", "mediapipe"])
    import mediapipe

    path = write_json("metadata_interop", {"run": str(run_dir), "pixels_integral": integral,
                                           "mediapipe": mediapipe.__version__, "rows": rows})
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
