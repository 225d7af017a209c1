"""How far a device's answers have moved from what the variant did on its validation split.

The reference (`manifests.DriftReference`, stored in the variant manifest by `compress`) is the histogram
of top-1 scores (20 equal bins over [0, 1]) and the counts of each predicted class, measured by the
accuracy pass over the validation split with the exact .tflite that ships. The field side is the same two
distributions over a device's recent rows.

The score is the Jensen–Shannon divergence (base 2, so it lies in [0, 1]) of each pair, and the drift is
the larger of the two. Jensen–Shannon rather than the population stability index: it is symmetric,
bounded, and defined when a bin is empty on one side (PSI needs an arbitrary floor there, and a class the
validation split never predicted would otherwise weigh infinitely).

Thresholds: below 0.05 is `ok`, 0.05–0.10 `watch`, from 0.10 `drifting`. Sampling noise alone gives about
(bins − 1) / (8 n ln 2) for n rows: 0.03 at the 100-row minimum (`MIN_ROWS`; fewer rows give "n/a"), 0.003
at 1,000, so `drifting` means a real change: the same model and data produce ~0, and a camera whose scenes
shifted to one class or whose confidence halved produces 0.2 and more.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from edgekit import manifests
from edgekit.config import from_mapping

BINS = 20
MIN_ROWS = 100
WATCH, DRIFTING = 0.05, 0.10


def histogram(scores, bins: int = BINS) -> list[int]:
    """Counts of scores in `bins` equal bins over [0, 1] (scores outside are clipped into the end bins)."""
    values = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    counts, _ = np.histogram(values, bins=bins, range=(0.0, 1.0))
    return [int(c) for c in counts]


class ReferenceBuilder:
    """Accumulates top-1 scores and classes batch by batch (the accuracy pass streams the split)."""

    def __init__(self, labels: tuple[str, ...], bins: int = BINS):
        self.labels, self.bins = tuple(labels), bins
        self.hist = np.zeros(bins, dtype=np.int64)
        self.classes = np.zeros(len(labels), dtype=np.int64)
        self.scores: list[np.ndarray] = []

    def add(self, probs: np.ndarray) -> None:
        if len(probs) == 0:
            return
        top = probs.max(axis=1)
        self.hist += np.asarray(histogram(top, self.bins))
        self.classes += np.bincount(probs.argmax(axis=1), minlength=len(self.labels))[:len(self.labels)]
        self.scores.append(top.astype(np.float32))

    def result(self) -> manifests.DriftReference:
        scores = np.concatenate(self.scores) if self.scores else np.zeros(0, np.float32)
        return manifests.DriftReference(
            n=int(len(scores)), score_histogram=tuple(int(c) for c in self.hist),
            class_counts={label: int(c) for label, c in zip(self.labels, self.classes)},
            median_score=round(float(np.median(scores)), 6) if len(scores) else 0.0)


def parse_reference(raw: dict, where: str = "drift_reference") -> manifests.DriftReference:
    """A reference from JSON (a device's copy of the manifest is a stranger's): one-line error when malformed."""
    reference = from_mapping(manifests.DriftReference, raw, where)
    if not reference.score_histogram or any(c < 0 for c in reference.score_histogram) \
            or any(not isinstance(c, int) or c < 0 for c in reference.class_counts.values()):
        raise ValueError(f"{where}: counts must be non-negative")
    return reference


def js_divergence(p, q) -> float:
    """Jensen–Shannon divergence in bits between two count (or probability) vectors of one length."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a, b):
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / b[mask])))

    return max(0.0, min(1.0, (kl(p, m) + kl(q, m)) / 2))


def drift(reference: manifests.DriftReference, scores: list[float], labels: list[str]) -> dict:
    """Drift of the field rows (`scores` and predicted `labels`, one each per row) against the reference."""
    bins = len(reference.score_histogram)
    classes = list(reference.class_counts)
    field_classes = Counter(labels)
    names = classes + sorted(set(field_classes) - set(classes))  # an unknown label is all field, no reference
    score_js = js_divergence(histogram(scores, bins), reference.score_histogram)
    class_js = js_divergence([field_classes.get(n, 0) for n in names], [reference.class_counts.get(n, 0)
                                                                         for n in names])
    value = max(score_js, class_js)
    return {"drift": None if math.isnan(value) else round(value, 4), "score_js": round(score_js, 4),
            "class_js": round(class_js, 4), "n": len(scores), "verdict": verdict(value)}


def verdict(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return "drifting" if value >= DRIFTING else "watch" if value >= WATCH else "ok"
