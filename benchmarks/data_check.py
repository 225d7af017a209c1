"""usage: python benchmarks/data_check.py [--quick] [--epochs 5] [--label-epochs N] [--images 20000]
                                          [--parts leakage,label_errors,wall_time] [--out NAME]

Figures for the data-cleaning note, each measured side by side in one run:
1. leakage: the exported digits, 20% of them set aside as a truly held-out folder, the rest written
   three times each. Trained twice (alpha 0.35, 32 px, random init, --epochs): once on the split a
   plain stratified shuffle makes (edgekit before duplicate groups; given to train as train/ and
   validation/ folders), once on the group-aware split. Per side: validation images with a copy in
   training, the validation accuracy train reports, and the accuracy on the held-out folder.
2. label errors: all 1,797 exported digits with 5% of the labels flipped at random to another class;
   a run trained on that folder, then `data check --run`: precision and recall of the label-error list.
3. wall time of `data check` (scan, hashes, groups, report and contact sheets) on --images generated
   64x64 JPEGs (5% of them exact copies, 5% re-encoded near copies).
--quick: 60 digits per class, 2 epochs, 4,000 images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, WORK, print_table, write_json  # noqa: E402

from edgekit.config import TrainConfig  # noqa: E402
from edgekit.data import export_digits, stratified_split  # noqa: E402
from edgekit.datacheck.check import check_folder, write_check  # noqa: E402
from edgekit.evaluate import evaluate_model  # noqa: E402
from edgekit.train import train  # noqa: E402


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.png"))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _train(data: Path, name: str, runs: Path, epochs: int):
    config = TrainConfig(data=str(data), image_size=32, weights="none", alpha=0.35, epochs=epochs, name=name,
                         runs_dir=str(runs), patience=epochs)
    return train(config)


def leakage(work: Path, per_class: int | None, epochs: int) -> list[dict]:
    source = export_digits(work / "digits", 32, limit_per_class=per_class)
    files = _files(source)
    labels = np.array([f.parent.name for f in files])
    keep, held = stratified_split(labels, 0.2, seed=0)
    for i in held:
        (work / "heldout" / labels[i]).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files[i], work / "heldout" / labels[i] / files[i].name)
    for i in keep:
        for k in range(3):
            (work / "tripled" / labels[i]).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(files[i], work / "tripled" / labels[i] / f"{files[i].stem}_{k}.png")
    tripled = _files(work / "tripled")
    # what edgekit did before: a plain per-class shuffle of the files, handed to train as folders
    train_idx, val_idx = stratified_split(np.array([f.parent.name for f in tripled]), 0.2, seed=42)
    for side, indices in (("train", train_idx), ("validation", val_idx)):
        for i in indices:
            target = work / "plain" / side / tripled[i].parent.name / tripled[i].name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tripled[i], target)
    rows = []
    for side, data in (("plain stratified split", work / "plain"), ("group-aware split", work / "tripled")):
        result = _train(data, side.split()[0], work / "runs", epochs)
        split = result.manifest.dataset.split
        held_out = evaluate_model(result.run_dir, data=str(work / "heldout"), write=False).metrics
        rows.append({"split": side, "files": len(tripled), "validation": split.validation,
                     "leaked_validation": split.duplicates.leaked["validation"],
                     "reported_val_acc": result.manifest.metrics.validation.accuracy,
                     "held_out_acc": held_out["accuracy"], "held_out_n": held_out["n"]})
    return rows


def label_errors(work: Path, per_class: int | None, epochs: int) -> dict:
    root = export_digits(work / "flipped", 32, limit_per_class=per_class)
    files = _files(root)
    rng = np.random.default_rng(5)
    flipped = {}
    for i in rng.choice(len(files), round(0.05 * len(files)), replace=False):
        true = files[i].parent.name
        wrong = str((int(true) + rng.integers(1, 10)) % 10)
        target = root / wrong / files[i].name
        files[i].rename(target)
        flipped[str(target.relative_to(root))] = true
    result = _train(root, "flipped", work / "runs", epochs)
    started = time.time()
    report = check_folder(root, run=result.run_dir)
    seconds = time.time() - started
    issues = {i["path"]: i["suggested_label"] for i in report["label_errors"]["issues"]}
    found = set(issues) & set(flipped)
    return {"images": len(files), "flipped": len(flipped), "listed": len(issues), "true_positives": len(found),
            "precision": len(found) / max(1, len(issues)), "recall": len(found) / len(flipped),
            "suggested_label_correct": sum(issues[p] == flipped[p] for p in found) / max(1, len(found)),
            "run_val_acc": result.manifest.metrics.validation.accuracy,
            "check_seconds": round(seconds, 1), "label_step_seconds": report["label_errors"]["method"]["seconds"]}


def generated_folder(root: Path, count: int) -> Path:
    """`count` 64x64 JPEGs in 10 classes: random rectangles on noise; 5% exact and 5% near copies."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    written = []
    for i in range(count):
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img{i:05d}.jpg"
        kind = rng.random()
        if written and kind < 0.05:
            shutil.copyfile(written[rng.integers(len(written))], path)
        elif written and kind < 0.10:
            with Image.open(written[rng.integers(len(written))]) as image:
                image.save(path, quality=70)
        else:
            image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
            draw = ImageDraw.Draw(image)
            for _ in range(3):
                x, y = rng.integers(0, 48, 2)
                draw.rectangle([int(x), int(y), int(x) + 16, int(y) + 16], fill=tuple(rng.integers(0, 255, 3).tolist()))
            image.save(path, quality=90)
        written.append(path)
    return root


def wall_time(work: Path, count: int) -> dict:
    root = generated_folder(work / f"generated{count}", count)
    started = time.time()
    report = check_folder(root)
    checked = time.time() - started
    write_check(report, work / f"report{count}")
    total = time.time() - started
    dup = report["duplicates"]
    return {"images": report["n_images"], "check_s": round(checked, 1), "check_and_write_s": round(total, 1),
            "exact_groups": dup["exact_groups"], "near_groups": dup["near_groups"],
            "redundant_images": dup["redundant_images"], "sheets": len(report["sheets"]),
            "images_per_s": round(report["n_images"] / checked, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--label-epochs", type=int, default=None, help="epochs of the run used for label errors")
    parser.add_argument("--parts", default="leakage,label_errors,wall_time",
                        help="comma-separated; parts not run keep their figures from the existing result file")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    per_class = 60 if args.quick else None
    epochs = args.epochs or (2 if args.quick else 5)
    images = args.images or (4000 if args.quick else 20000)
    parts = args.parts.split(",")
    name = args.out or ("data_check_quick" if args.quick else "data_check")
    previous = RESULTS / f"{name}.json"
    payload = json.loads(previous.read_text()) if previous.is_file() and len(parts) < 3 else {}
    payload.pop("environment", None)
    work = WORK / "data_check"
    shutil.rmtree(work, ignore_errors=True)
    os.environ["EDGEKIT_HOME"] = str(work / "home")  # no device imports: the check reads none
    for part in parts:
        load_before = list(os.getloadavg())
        if part == "leakage":
            rows = leakage(work, per_class, epochs)
            result = {"epochs": epochs, "rows": rows}
            print_table(rows, list(rows[0]))
        elif part == "label_errors":
            result = {"epochs": args.label_epochs or epochs,
                      **label_errors(work, per_class, args.label_epochs or epochs)}
            print_table([result], list(result))
        else:
            result = wall_time(work, images)
            print_table([result], list(result))
        payload[part] = {**result, "load_average_before": load_before, "load_average_after": list(os.getloadavg())}
        print()
    path = write_json(name, payload)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
