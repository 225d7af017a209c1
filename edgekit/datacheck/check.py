"""`edgekit data check`: everything that can make a folder of images lie, in one report.

Exact and near duplicates, copies across train/validation/test, class balance, tiny, huge and
odd-aspect images, greyscale share, the training scan's unreadable files, and with a run, likely
label errors and device corrections that contradict the folder. The user's files are only read.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit import manifests
from edgekit.artifacts import edgekit_home, write_json_atomic, write_text_atomic
from edgekit.config import SEED, Range
from edgekit.data import IMAGE_EXTENSIONS, SPLIT_NAMES, DataSpec, ImageSet, hashing, scan_class_folders
from edgekit.datacheck import labels as lab
from edgekit.datacheck.report import contact_sheets, markdown, summary_lines
from edgekit.errors import EdgekitError

log = logging.getLogger(__name__)
HELD_OUT_FIRST = {"test": 0, "validation": 1, "train": 2, "all": 2}  # which copy of a group to keep


@dataclass(frozen=True)
class CheckOptions:
    """What `edgekit data check` flags; `--near-distance` and `--seed` come from the command line."""

    near_distance: int = Range(0, 32, "bits", why="4 finds re-saved and resized copies").field(hashing.NEAR_DISTANCE)
    min_side: int = Range(1, 100_000, "pixels").field(32)  # smaller than the smallest input size edgekit trains at
    huge_pixels: int = Range(1, 1_000_000_000, "pixels").field(20_000_000)
    max_aspect: float = Range(1, 1000, integer=False).field(3.0)  # a square squash distorts these beyond recognition
    imbalance_ratio: float = Range(1, 1_000_000, integer=False).field(3.0)
    seed: int = SEED.field(42)


@dataclass
class Images:
    """Every readable image of the folder, in scan order, with where it sits and what it is."""

    root: Path
    labels: tuple[str, ...]
    paths: list[str]
    splits: list[str]
    targets: np.ndarray
    tf_decodable: list[bool]
    skipped: list[dict]

    def rel(self, index: int) -> str:
        return str(Path(self.paths[index]).relative_to(self.root))

    def image_set(self) -> ImageSet:
        return ImageSet(self.labels, self.targets, tuple(self.paths), tuple(self.tf_decodable))


def scan_folder(root: Path) -> Images:
    """The folder's splits (train/validation/test, or plain class folders) through `train`'s own scan."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise EdgekitError(f"{root}: no such data folder; pass a folder with one sub-folder per class")
    spec = DataSpec(data=str(root))
    found = [(split, root / name) for split, names in SPLIT_NAMES.items() for name in names if (root / name).is_dir()]
    if not any(split == "train" for split, _ in found):
        found = [("all", root)]
    labels, paths, splits, targets, tf_ok, skipped = None, [], [], [], [], []
    for split, folder in found:
        scan = scan_class_folders(folder, spec, labels, hashes=True)  # one read per file: verdict and hashes
        labels = labels or scan.labels
        paths += scan.paths
        splits += [split] * len(scan.paths)
        targets += scan.targets
        tf_ok += scan.tf_decodable
        skipped += [{"path": str(Path(p).relative_to(root)), "split": split, "reason": r} for p, r in scan.skipped]
    if len(labels) < 2:
        raise EdgekitError(f"{root}: only one class ({labels[0]}); a classifier needs at least two class folders")
    return Images(root, labels, paths, splits, np.asarray(targets, dtype=np.int64), tf_ok, skipped)


def _is_image_name(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _groups(images: Images, facts: list, options: CheckOptions) -> list[dict]:
    out = []
    for group in hashing.duplicate_groups(facts, options.near_distance or None):
        members = sorted(group["members"], key=lambda i: (HELD_OUT_FIRST[images.splits[i]], i))
        sides = {images.splits[i] for i in members} - {"all"}
        out.append({
            "kind": group["kind"],
            "members": [{"path": images.rel(i), "split": images.splits[i],
                         "label": images.labels[images.targets[i]], "index": i} for i in members],
            "leak": len(sides) > 1,
            "label_conflict": len({int(images.targets[i]) for i in members}) > 1,
        })
    return out


def _balance(images: Images, options: CheckOptions) -> dict:
    per_split = {split: Counter(images.labels[t] for t, s in zip(images.targets, images.splits) if s == split)
                 for split in dict.fromkeys(images.splits)}
    totals = Counter(images.labels[t] for t in images.targets)
    ratio = max(totals.values()) / min(totals.values())
    return {"counts": {s: {label: c[label] for label in images.labels} for s, c in per_split.items()},
            "total": {label: totals[label] for label in images.labels}, "imbalance_ratio": round(ratio, 2),
            "imbalanced": ratio >= options.imbalance_ratio}


def _flags(images: Images, facts: list, options: CheckOptions) -> list[dict]:
    flagged = []
    for index, fact in enumerate(facts):
        reasons = []
        if fact.width == 0:
            reasons.append("not decodable for hashing")
        elif min(fact.width, fact.height) < options.min_side:
            reasons.append(f"tiny ({fact.width}x{fact.height})")
        if fact.width * fact.height > options.huge_pixels:
            reasons.append(f"huge ({fact.width}x{fact.height})")
        if fact.width and max(fact.width, fact.height) / min(fact.width, fact.height) > options.max_aspect:
            reasons.append(f"odd aspect ({fact.width}x{fact.height})")
        if reasons:
            flagged.append({"path": images.rel(index), "split": images.splits[index], "index": index,
                            "label": images.labels[images.targets[index]], "reasons": reasons})
    return flagged


def _label_errors(images: Images, facts: list, run: Path | None, options: CheckOptions,
                  trust_model: bool = False) -> dict:
    section: dict = {}
    phashes = np.array([f.phash for f in facts], dtype=np.uint64)
    matches, counts = lab.device_corrections([f.sha256 for f in facts], phashes, options.near_distance)
    section["device"] = {**counts, "contradictions": [
        {**m, "path": images.rel(m["index"]), "folder_label": images.labels[images.targets[m["index"]]]}
        for m in matches if m["device_label"] != images.labels[images.targets[m["index"]]]]}
    if run is None:
        return section
    started = time.time()
    features, record = lab.run_features(run, images.image_set(), trust_model=trust_model)
    probs = lab.out_of_sample_probs(features, images.targets, options.seed)
    issues = lab.label_issues(probs, images.targets)
    section["method"] = {**record, "probabilities": f"{lab.FOLDS}-fold cross-validated logistic regression on "
                         "the run's pooled features", "library": "cleanlab.filter.find_label_issues",
                         "seconds": round(time.time() - started, 1)}
    section["issues"] = [{"path": images.rel(i["index"]), "split": images.splits[i["index"]],
                          "folder_label": images.labels[i["given"]], "suggested_label": images.labels[i["suggested"]],
                          **i} for i in issues]
    return section


def check_folder(root: Path, run: Path | None = None, options: CheckOptions | None = None,
                 trust_model: bool = False) -> dict:
    """The full report as a dict (see `report.py` for how it is rendered and written)."""
    options = options or CheckOptions()
    started = time.time()
    images = scan_folder(root)
    facts = hashing.hash_files(images.paths)
    groups = _groups(images, facts, options)
    leaked = Counter(m["split"] for g in groups if g["leak"] for m in g["members"] if m["split"] != "train")
    report = {
        "data": str(images.root.resolve()),
        "layout": sorted(set(images.splits)),
        "n_images": len(images.paths),
        "labels": list(images.labels),
        "options": options.__dict__,
        # The scan names every file it did not use; images that failed to decode are the data problem,
        # the rest (notes.txt, hidden files, a folder named x.jpg) are listed apart.
        "unreadable": [s for s in images.skipped if _is_image_name(s["path"]) and (images.root / s["path"]).is_file()],
        "not_used": [s for s in images.skipped
                     if not (_is_image_name(s["path"]) and (images.root / s["path"]).is_file())],
        "balance": _balance(images, options),
        "grayscale_share": round(sum(f.grayscale for f in facts) / max(1, len(facts)), 4),
        "duplicates": {"method": f"sha256 (exact); imagehash.phash within {options.near_distance} of 64 bits "
                                 "(near)", "groups": groups,
                       "exact_groups": sum(g["kind"] == "exact" for g in groups),
                       "near_groups": sum(g["kind"] == "near" for g in groups),
                       "redundant_images": sum(len(g["members"]) - 1 for g in groups),
                       "label_conflicts": sum(g["label_conflict"] for g in groups)},
        "leakage": {"groups": sum(g["leak"] for g in groups), "held_out_images_with_a_train_copy": dict(leaked)},
        "flagged": _flags(images, facts, options),
        "label_errors": _label_errors(images, facts, run, options, trust_model),
    }
    report["wall_time_s"] = round(time.time() - started, 2)
    return report


def exclusion_entries(report: dict) -> list[tuple[str, str]]:
    """What to leave out: every copy but the held-out-most one, conflicting groups, likely label errors."""
    root = Path(report["data"])
    entries = []
    for group in report["duplicates"]["groups"]:
        keeper, *rest = group["members"]
        if group["label_conflict"]:
            entries += [(str(root / m["path"]), "same image under different labels") for m in group["members"]]
            continue
        entries += [(str(root / m["path"]), f"{group['kind']} copy of {keeper['path']}") for m in rest]
    labels = report["label_errors"]
    for issue in labels.get("issues", []):
        entries.append((str(root / issue["path"]), f"likely mislabeled: {issue['folder_label']} -> "
                                                   f"{issue['suggested_label']}"))
    for fix in labels["device"]["contradictions"]:
        entries.append((str(root / fix["path"]), f"device correction says {fix['device_label']}"))
    return entries


def default_out_dir(root: Path) -> Path:
    return edgekit_home() / "datacheck" / f"{Path(root).resolve().name}-{time.strftime('%Y%m%d-%H%M%S')}"


def write_check(report: dict, out_dir: Path) -> list[str]:
    """report.json, report.md, the contact sheets and a manifest; returns the files written."""

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise EdgekitError(f"{out_dir}: exists and is not empty; pass a new --out folder")
    sheets = contact_sheets(report, out_dir)
    report["sheets"] = sheets
    write_json_atomic(out_dir / "report.json", report)
    write_text_atomic(out_dir / "report.md", markdown(report))
    files = ["report.json", "report.md", *sheets]
    method = report["label_errors"].get("method")
    run = manifests.ParentRef(path=method["run"], sha256=method["model_sha256"], kind="run", file="model.keras") \
        if method else None
    manifests.write(out_dir, manifests.DataCheckManifest(data=report["data"], summary=tuple(summary_lines(report)),
                                                         run=run), files)
    return files
