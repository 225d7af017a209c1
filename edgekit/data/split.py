"""Splitting a dataset: the seeded stratified split, and the group-aware one `train` uses, where copies
of one image never straddle train and validation.

A random split of a folder where every photo exists three times puts a copy of nearly every
validation image in training, and the validation accuracy then measures memory. Here the unit of the
split is the duplicate group (exact or perceptual-hash near copies), stratified per class and seeded;
folders that come with their own validation/ or test/ are kept as they are, with a warning that names
any leaks.
"""

from __future__ import annotations

import logging

import numpy as np

from edgekit.data.hashing import NEAR_DISTANCE, duplicate_groups, group_ids, hash_files
from edgekit.data.types import DataSpec, DuplicateRecord, ImageSet
from edgekit.errors import EdgekitError

log = logging.getLogger(__name__)

LEAKS_RECORDED = 20  # the manifest keeps the first few leaked pairs as examples, plus the counts


def group_stratified_split(targets: np.ndarray, groups: np.ndarray, fraction: float,
                           seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split of whole groups, as close to `fraction` of each class's images as groups allow.

    A group belongs to the class most of its members carry. Every class with two or more groups gets
    at least one validation group and keeps at least one training group.
    """
    targets, groups = np.asarray(targets), np.asarray(groups)
    rng = np.random.default_rng(seed)
    unique, inverse = np.unique(groups, return_inverse=True)
    sizes = np.bincount(inverse)
    group_class = np.array([np.bincount(targets[inverse == g]).argmax() for g in range(len(unique))])
    in_validation = np.zeros(len(unique), dtype=bool)
    for cls in np.unique(group_class):
        members = np.flatnonzero(group_class == cls)
        if len(members) < 2:
            continue
        rng.shuffle(members)
        wanted = max(1, round(fraction * sizes[members].sum()))
        taken, count = 0, 0
        for g in members:
            if count >= wanted or taken == len(members) - 1:
                break
            if count and count + sizes[g] > wanted:
                continue  # a big group would overshoot: leave it for training, try smaller ones
            in_validation[g], taken, count = True, taken + 1, count + sizes[g]
    val_mask = in_validation[inverse]
    return np.flatnonzero(~val_mask), np.flatnonzero(val_mask)


def _leaks(paths: list[str], sides: list[str], groups: list[dict]) -> tuple[dict, list[dict]]:
    """Per held-out side, how many of its images have a copy in training, and example pairs."""
    counts = {"validation": 0, "test": 0}
    examples = []
    for group in groups:
        train_members = [i for i in group["members"] if sides[i] == "train"]
        if not train_members:
            continue
        for i in group["members"]:
            if sides[i] in counts:
                counts[sides[i]] += 1
                if len(examples) < LEAKS_RECORDED:
                    examples.append({sides[i]: paths[i], "train": paths[train_members[0]], "kind": group["kind"]})
    return counts, examples


def stratified_split(targets: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split; every class with two or more images gets at least one validation image."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for cls in np.unique(targets):
        members = np.flatnonzero(targets == cls)
        rng.shuffle(members)
        n_val = 0 if len(members) < 2 else min(len(members) - 1, max(1, round(fraction * len(members))))
        val_idx.extend(members[:n_val])
        train_idx.extend(members[n_val:])
    return np.sort(np.asarray(train_idx, dtype=np.int64)), np.sort(np.asarray(val_idx, dtype=np.int64))


def split_without_leaks(pool: ImageSet, validation: ImageSet | None, test: ImageSet | None,
                        spec: DataSpec) -> tuple[ImageSet, ImageSet, DuplicateRecord | None]:
    """(train, validation, record): split `pool` by duplicate group when `validation` is None.

    `record` describes what was found and how the split handled it, for the run's manifest. Runs made
    before this check existed (a spec with `group_duplicates=False`) get the plain stratified split back,
    so their splits reload unchanged.
    """
    if not spec.group_duplicates:
        if validation is None:
            train_idx, val_idx = stratified_split(pool.targets, spec.validation_fraction, spec.seed)
            return pool.subset(train_idx), pool.subset(val_idx), None
        return pool, validation, None
    fixed = [("validation", validation), ("test", test)]
    paths = list(pool.paths) + [p for _, s in fixed if s is not None for p in s.paths]
    facts = hash_files(paths, spec.max_image_pixels)
    groups = duplicate_groups(facts, NEAR_DISTANCE)
    sides = ["train"] * len(pool) + [name for name, s in fixed if s is not None for _ in range(len(s))]
    if validation is None:
        ids = group_ids(len(paths), groups)[:len(pool)]
        train_idx, val_idx = group_stratified_split(pool.targets, ids, spec.validation_fraction, spec.seed)
        if not len(val_idx) and len(stratified_split(pool.targets, spec.validation_fraction, spec.seed)[1]):
            # (a folder of one image per class has no validation either way; that is not the copies' doing)
            raise EdgekitError(f"{spec.data}: every class is copies of one image (exact or near duplicates), so "
                               "nothing can be held out without leaking; add distinct images or a validation/ folder")
        for i in val_idx:
            sides[i] = "validation"
        pool, validation = pool.subset(train_idx), pool.subset(val_idx)
        handling = "group-aware split: every duplicate group on one side"
    else:
        handling = "validation folder kept as it is"
    leaked, examples = _leaks(paths, sides, groups)
    if groups:
        log.info("%d duplicate group(s) (%d images, exact or near copies): %s", len(groups),
                 sum(len(g["members"]) for g in groups), handling)
    for side, count in leaked.items():
        if count:
            listed = "; ".join(f"{e[side]} = {e['train']}" for e in examples if side in e)
            log.warning("%d %s image(s) have a copy in training (%s ...): the %s accuracy overstates; "
                        "`edgekit data check` lists them all", count, side, listed[:400], side)
    record = DuplicateRecord(
        method=f"sha256 (exact) and 64-bit perceptual hash within {NEAR_DISTANCE} bits (near, imagehash.phash)",
        exact_groups=sum(g["kind"] == "exact" for g in groups),
        near_groups=sum(g["kind"] == "near" for g in groups),
        images_in_groups=sum(len(g["members"]) for g in groups),
        handling=handling, leaked=leaked, leak_examples=tuple(examples))
    return pool, validation, record
