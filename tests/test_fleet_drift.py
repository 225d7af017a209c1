"""Drift math and the drift reference a variant manifest carries."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from edgekit import manifests
from edgekit.evaluate import evaluate_predictor
from edgekit.fleet.drift import BINS, ReferenceBuilder, drift, histogram, js_divergence, verdict


def test_js_divergence_is_zero_for_equal_one_for_disjoint_and_symmetric():
    assert js_divergence([1, 2, 3], [2, 4, 6]) == pytest.approx(0)
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1)
    assert js_divergence([3, 1, 0], [1, 1, 2]) == pytest.approx(js_divergence([1, 1, 2], [3, 1, 0]))


def test_histogram_clips_scores_outside_the_unit_interval():
    counts = histogram([-0.5, 0.0, 0.51, 1.0, 7.0])
    assert len(counts) == BINS and sum(counts) == 5 and counts[0] == 2 and counts[-1] == 2


def test_reference_from_the_accuracy_pass_sees_every_batch():
    labels = ("a", "b", "c")
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], size=64).astype(np.float32)

    class Fixed:
        def predict(self, x):
            return probs[x[:, 0].astype(int)]

    builder = ReferenceBuilder(labels)
    batches = [(np.arange(i, i + 16)[:, None].astype(np.float32), np.zeros(16, int)) for i in range(0, 64, 16)]
    evaluate_predictor(Fixed(), batches, None, labels, observe=builder.add)
    reference = builder.result()
    assert reference.n == 64 and sum(reference.score_histogram) == 64
    assert reference.class_counts == {label: int((probs.argmax(1) == i).sum()) for i, label in enumerate(labels)}
    # the field drawn from the same answers has no drift; a field stuck on one class drifts
    same = drift(reference, list(probs.max(1)), [labels[i] for i in probs.argmax(1)])
    assert same["drift"] == 0 and same["verdict"] == "ok"
    stuck = drift(reference, [0.3] * 64, ["a"] * 64)
    assert stuck["drift"] > 0.3 and stuck["verdict"] == "drifting"


def test_variant_manifest_round_trips_the_reference_and_older_ones_have_none(tmp_path):
    reference = manifests.DriftReference(n=3, score_histogram=(0,) * 19 + (3,), class_counts={"a": 3},
                                         median_score=0.99)
    manifests.write(tmp_path, manifests.VariantManifest(name="v", drift_reference=reference), [])
    assert manifests.read(tmp_path, manifests.VariantManifest).drift_reference == reference
    raw = json.loads((tmp_path / "manifest.json").read_text())
    del raw["drift_reference"]
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    assert manifests.read(tmp_path, manifests.VariantManifest).drift_reference is None
    assert dataclasses.asdict(reference)["class_counts"] == {"a": 3}


def test_verdict_thresholds():
    assert [verdict(v) for v in (0.0, 0.05, 0.1, None)] == ["ok", "watch", "drifting", "n/a"]
