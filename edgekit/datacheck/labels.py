"""Likely label errors: out-of-sample class probabilities fed to cleanlab, plus device corrections.

The probabilities come from the run's own network used as a feature extractor (the pooled layer
before the classifier head) and a logistic regression fitted k-fold on those features: every image
is scored by a regression that never saw its label. That costs one forward pass over the folder and
k small fits, instead of k full retrainings. The features themselves were learned on the training
split, so a mislabeled training image the network memorised can hide; the README states this.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgekit import manifests
from edgekit.artifacts import visible_glob
from edgekit.data import make_pipeline
from edgekit.data.hashing import image_facts
from edgekit.errors import EdgekitError
from edgekit.evaluate import manifest_model_file
from edgekit.feedback import SNAPSHOT_DB, corrections, feedback_home, sample_file

log = logging.getLogger(__name__)

FEATURE_LAYER = "pool"
FOLDS = 5
PCA_COMPONENTS = 64


def run_features(run_dir: Path, images, trust_model: bool = False) -> tuple[np.ndarray, dict]:
    """Pooled features of every image in `images` (an ImageSet) from the run's model, and a record."""
    from edgekit.compat import keras
    from edgekit.model import load_keras_model

    run_dir = Path(run_dir)
    manifest = manifests.read(run_dir, manifests.RunManifest)
    model_file = manifest_model_file(run_dir, manifest)
    manifests.verify_files(run_dir, manifest, [model_file.name])
    model = load_keras_model(model_file, trust=trust_model)
    try:
        layer = model.get_layer(FEATURE_LAYER)
    except ValueError:
        raise EdgekitError(f"{run_dir}: the model has no {FEATURE_LAYER!r} layer; pass a run made by "
                           "`edgekit train`") from None
    extractor = keras.Model(model.input, layer.output)
    size = manifest.model.image_size
    log.info("computing %s-layer features of %d images with %s", FEATURE_LAYER, len(images), run_dir.name)
    features = extractor.predict(make_pipeline(images, size, 128, cache=False), verbose=0)
    return np.asarray(features, dtype=np.float32), {"run": str(run_dir.resolve()), "layer": FEATURE_LAYER,
                                                    "input_size": size, "model_sha256": manifest.sha256()}


def out_of_sample_probs(features: np.ndarray, targets: np.ndarray, seed: int, folds: int = FOLDS) -> np.ndarray:
    """k-fold cross-validated logistic-regression probabilities: each row from a fit without that image."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(targets)
    folds = int(min(folds, counts.min()))
    if folds < 2:
        raise EdgekitError(f"class index {int(counts.argmin())} has {int(counts.min())} image; label-error "
                           "search needs at least 2 images per class")
    from threadpoolctl import threadpool_limits

    # 64 principal components keep the fits cheap on 20,000 images and lose little for a linear probe
    components = min(PCA_COMPONENTS, features.shape[1], len(features) - len(features) // folds - 1)
    classifier = make_pipeline(StandardScaler(), PCA(components, random_state=seed),
                               LogisticRegression(max_iter=2000, C=0.1))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    # one BLAS thread: on a shared machine, BLAS threads fighting TensorFlow's made these fits 100x slower
    with threadpool_limits(1):
        return cross_val_predict(classifier, features, targets, cv=splitter, method="predict_proba")


def label_issues(probs: np.ndarray, targets: np.ndarray) -> list[dict]:
    """cleanlab's confident-learning verdicts, most doubtful first: index, given and suggested class."""
    from cleanlab.filter import find_label_issues

    ranked = find_label_issues(labels=targets, pred_probs=probs, return_indices_ranked_by="self_confidence",
                               n_jobs=1)  # worker processes forked from a TensorFlow process are slow
    return [{"index": int(i), "given": int(targets[i]), "suggested": int(probs[i].argmax()),
             "given_probability": round(float(probs[i, targets[i]]), 4),
             "suggested_probability": round(float(probs[i].max()), 4)} for i in ranked]


def device_corrections(sha256s: list[str], phashes: np.ndarray, near_distance: int) -> tuple[list[dict], dict]:
    """Corrections from imported device logs whose image matches a dataset image (exact or near).

    Returns one row per match (dataset index, corrected label, import, prediction id, match kind) and
    counts. Which of them contradict the folder is for the caller, who knows the folder labels.
    """

    by_sha = {sha: i for i, sha in reversed(list(enumerate(sha256s)))}
    phashes = np.asarray(phashes, dtype=np.uint64)
    imports = [p.parent for p in visible_glob(feedback_home(), f"*/{SNAPSHOT_DB}")]
    matches, counts = [], {"imports": len(imports), "corrections": 0, "without_image": 0, "matched": 0}
    for import_dir in imports:
        for row in corrections(import_dir / SNAPSHOT_DB):
            counts["corrections"] += 1
            image = sample_file(import_dir, row["image_path"])
            if image is None:
                counts["without_image"] += 1
                continue
            facts = image_facts(str(image))
            index, kind = by_sha.get(facts.sha256), "exact"
            if index is None and facts.width and len(phashes):
                distance = np.bitwise_count(phashes ^ np.uint64(facts.phash))
                index, kind = (int(distance.argmin()), "near") if distance.min() <= near_distance else (None, "")
            if index is None:
                continue
            counts["matched"] += 1
            matches.append({"index": index, "device_label": row["label"], "import": import_dir.name,
                            "prediction_id": row["id"], "sample": str(image), "match": kind})
    return matches, counts
