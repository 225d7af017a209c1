"""The typed artifact contract: every manifest reads into its dataclass or fails in one line naming the file."""

from __future__ import annotations

import json

import pytest

from edgekit import manifests
from edgekit.errors import EdgekitError
from edgekit.manifests import ParentRef, RunManifest, VariantManifest

V1_VARIANT = {
    "kind": "variant", "schema": 1, "created": "2026-11-01T10:00:00+00:00", "name": "int8-ptq",
    "parent": {"path": "/runs/a", "kind": "run", "file": "model.keras", "sha256": "ab" * 32},
    "run": "a",
    "model": {"file": "model.tflite", "input_size": [32, 32, 3], "pixel_range": [0, 255], "color": "RGB",
              "resize": "bilinear", "resize_mode": "squash", "normalization": "inside", "labels": ["0", "1"],
              "architecture": {"family": "MobileNetV2", "alpha": 0.35}, "weights": "none", "parameters": 400000},
    "dataset": {"source": "digits", "origin": "sklearn.datasets.load_digits (scikit-learn 1.5.2)", "n_images": 1797,
                "fingerprint": "ef" * 32, "split": {"validation_fraction": 0.2, "seed": 42, "train": 1437,
                                                    "validation": 360}},
    "recipe": {"name": "int8-ptq", "description": "", "stages": [{"type": "convert", "mode": "int8"}]},
    "tflite": {"size": 10, "gzip_size": 8, "inputs": [], "outputs": []},
    "sparsity": {}, "runtime": {"name": "litert"},
    "metrics": {"validation": {"n": 2, "accuracy": 0.5, "macro_precision": 0.5, "macro_recall": 0.5,
                               "macro_f1": 0.5, "per_class": {}, "confusion_matrix": [[1, 0], [1, 0]]},
                "float_keras_accuracy": 0.5, "accuracy_delta_vs_float": 0.0,
                "output_abs_diff_vs_float": {"max": 0.1, "mean": 0.01, "n": 2}},
    "timings": [{"stage": "convert", "seconds": 3.0}], "wall_time_s": 4.0,
    "files": {"model.tflite": {"sha256": "cd" * 32, "size": 10}}, "versions": {"python": "3.11"},
}


def _write(directory, payload) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "manifest.json").write_text(json.dumps(payload) if isinstance(payload, dict) else payload)


def test_version_1_manifest_is_read_and_upgraded(tmp_path):
    _write(tmp_path / "v", V1_VARIANT)
    manifest = manifests.read(tmp_path / "v", VariantManifest)
    assert manifest.schema_version == manifests.SCHEMA_VERSION
    assert manifest.recipe_hash == manifests.recipe_hash(V1_VARIANT["recipe"])
    assert manifest.model.image_size == 32 and manifest.model.labels == ("0", "1")
    assert manifest.metrics.validation.accuracy == 0.5 and manifest.parent.sha256 == "ab" * 32
    assert manifest.sha256() == "cd" * 32


def test_written_manifest_reads_back_equal(tmp_path):
    (tmp_path / "model.tflite").write_bytes(b"TFL3-ish")
    written = manifests.write(tmp_path, manifests.from_dict(V1_VARIANT, "test"), ["model.tflite"])
    again = manifests.read(tmp_path)
    assert again == written and again.files["model.tflite"].size == 8
    assert json.loads((tmp_path / "manifest.json").read_text())["schema_version"] == manifests.SCHEMA_VERSION


@pytest.mark.parametrize("payload, message", [
    ("{not json", r"manifest.json: not valid JSON"),
    ({"name": "x"}, r"manifest.json: not an edgekit manifest \(no 'kind'\)"),
    ({"kind": "checkpoint"}, r"manifest.json: unknown artifact kind 'checkpoint'"),
    ({**V1_VARIANT, "schema_version": 99}, r"schema version 99 is newer than this edgekit understands"),
    ({**V1_VARIANT, "acuracy": 1}, r"manifest.json: unknown field 'acuracy'"),
    ({**V1_VARIANT, "metrics": {**V1_VARIANT["metrics"], "validation": {"n": 2}}},
     r"manifest.json: field 'metrics': field 'validation': missing required field 'accuracy'"),
    ({**V1_VARIANT, "wall_time_s": "slow"}, r"field 'wall_time_s': expected float"),
])
def test_damaged_or_foreign_manifest_is_one_line_naming_the_file(tmp_path, payload, message):
    _write(tmp_path / "v", payload)
    with pytest.raises(EdgekitError, match=message) as error:
        manifests.read(tmp_path / "v")
    assert "\n" not in str(error.value) and str(tmp_path / "v") in str(error.value)


def test_wrong_kind_and_missing_manifest_say_what_they_are(tmp_path):
    _write(tmp_path / "v", V1_VARIANT)
    with pytest.raises(EdgekitError, match=r"is a variant artifact, not a run"):
        manifests.read(tmp_path / "v", RunManifest)
    with pytest.raises(EdgekitError, match=r"no manifest.json, so not an edgekit run directory"):
        manifests.read(tmp_path, RunManifest)
    with pytest.raises(EdgekitError, match=r"no such directory"):
        manifests.read(tmp_path / "absent")
    assert manifests.read_optional(tmp_path) is None


def test_recipe_hash_ignores_name_and_description_but_not_stages():
    base = {"name": "a", "description": "x", "stages": [{"type": "convert", "mode": "int8"}]}
    assert manifests.recipe_hash(base) == manifests.recipe_hash({**base, "name": "b", "description": "y"})
    assert manifests.recipe_hash(base) != manifests.recipe_hash({**base, "stages": [{"type": "convert",
                                                                                      "mode": "float16"}]})


def test_verify_files_catches_a_changed_file(tmp_path):
    (tmp_path / "model.tflite").write_bytes(b"one")
    manifests.write(tmp_path, manifests.from_dict(V1_VARIANT, "test"), ["model.tflite"])
    (tmp_path / "model.tflite").write_bytes(b"two")
    with pytest.raises(EdgekitError, match=r"model.tflite: sha256 .* does not match"):
        manifests.verify_files(tmp_path)


def test_every_kind_round_trips(tmp_path):
    parent = ParentRef(path="/x", sha256="00" * 32)
    for cls in manifests.KINDS.values():
        folder = tmp_path / cls.KIND
        folder.mkdir()
        fields = {"parent": parent} if "parent" in cls.__dataclass_fields__ else {}
        written = manifests.write(folder, cls(**fields), [])
        assert manifests.read(folder) == written
