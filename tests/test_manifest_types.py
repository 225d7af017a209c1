"""Typed manifest payloads: the dataset record (with its full DataSpec), the TrainConfig and the Recipe a
manifest holds are the classes themselves, written to disk and read back unchanged; version-2 manifests,
which kept them as dicts, read into the same types; a damaged payload is one line naming file and field."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from edgekit import manifests
from edgekit.config import AugmentConfig, TrainConfig
from edgekit.data import DatasetRecord, DataSpec
from edgekit.data.types import DuplicateRecord, ExclusionRecord, ExtraDataRecord, SkippedFile, SplitRecord
from edgekit.errors import EdgekitError
from edgekit.info import describe_manifest
from edgekit.recipes import Recipe, load_recipe

CONTRACT = manifests.ModelContract(file="model.keras", input_size=(24, 24, 3), labels=("cat", "dog"))


def _write_read(directory, manifest: manifests.Manifest) -> manifests.Manifest:
    directory.mkdir(parents=True, exist_ok=True)
    written = manifests.write(directory, manifest, [])
    again = manifests.read(directory)
    assert again == written
    return again


def test_digits_default_spec_round_trips_through_a_run_manifest(tmp_path):
    record = DatasetRecord(spec=DataSpec(), source="digits", origin="sklearn.datasets.load_digits", n_files=1797,
                           fingerprint="ab" * 32, split=SplitRecord(train=1437, validation=360))
    run = _write_read(tmp_path / "run", manifests.RunManifest(name="r", dataset=record))
    assert isinstance(run.dataset, DatasetRecord) and run.dataset == record
    assert run.dataset.spec == DataSpec()


def test_folder_spec_with_every_field_set_round_trips(tmp_path):
    """Every DataSpec field comes back, the ones `spec_from_description` lost or guessed included
    (max_image_pixels, strict, group_duplicates), with what the load found. (Loading a folder and
    reloading it from the manifest: tests/test_data.py::test_spec_round_trips_through_a_run_manifest.)"""
    spec = DataSpec(data="/data/photos", extra_data=("/data/feedback", "/data/more"), image_size=24, seed=7,
                    validation_fraction=0.3, strict=True, max_image_pixels=1_000_000, exclude="/data/exclude.txt",
                    group_duplicates=False)
    record = DatasetRecord(
        spec=spec, source="folder", path="/data/photos", n_files=10, fingerprint="12" * 32,
        skipped=(SkippedFile("/data/photos/dog/huge.png", "over the pixel limit"),),
        split=SplitRecord(train=7, validation=3, test=2, layout="train/validation folders", duplicates=DuplicateRecord(
            method="sha256", exact_groups=1, near_groups=2, images_in_groups=5, handling="group-aware split",
            leaked={"validation": 1, "test": 0}, leak_examples=({"validation": "/v/a.png", "train": "/t/a.png",
                                                                "kind": "exact"},))),
        exclude=ExclusionRecord(path="/data/exclude.txt", sha256="34" * 32, listed=2, excluded=1),
        extra_data=(ExtraDataRecord(path="/data/feedback", n_files=2, fingerprint="56" * 32),
                    ExtraDataRecord(path="/data/more", n_files=1, fingerprint="78" * 32,
                                    skipped=(SkippedFile("/data/more/x.jpg", "truncated"),))))
    for cls in (manifests.RunManifest, manifests.VariantManifest, manifests.EvalManifest):
        again = _write_read(tmp_path / cls.KIND, cls(dataset=record))
        assert again.dataset == record and again.dataset.spec == spec
    assert record.reload_spec == dataclasses.replace(spec, strict=False)  # a reload never says "drop --strict"


def test_run_config_and_variant_recipe_are_their_classes(tmp_path):
    config = TrainConfig(data="/data/photos", image_size=96, epochs=3, learning_rate=1e-3, seed=5,
                         augment=AugmentConfig(flip=False, zoom=0.2), extra_data=("/data/feedback",))
    run = _write_read(tmp_path / "run", manifests.RunManifest(name="r", config=config))
    assert isinstance(run.config, TrainConfig) and run.config == config and run.config.augment.zoom == 0.2
    recipe = load_recipe("prune50-int8")
    variant = _write_read(tmp_path / "variant", manifests.VariantManifest(
        name=recipe.name, recipe=recipe, recipe_hash=manifests.recipe_hash(recipe.as_dict())))
    assert isinstance(variant.recipe, Recipe) and variant.recipe == recipe
    assert variant.recipe.convert.params.mode == "int8" and variant.recipe.stages[0].params.target_sparsity == 0.5
    raw = json.loads((tmp_path / "variant" / "manifest.json").read_text())
    assert raw["recipe"] == recipe.as_dict()  # in JSON, the mapping a recipe file holds
    # the JSON is what train_config.json holds
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["config"] == \
        json.loads(json.dumps(dataclasses.asdict(config)))


# A version-2 run as edgekit wrote it before the payloads were typed: the data layer's description dict.
V2_RUN = {
    "kind": "run", "schema_version": 2, "created": "2026-12-01T10:00:00+00:00", "name": "photos",
    "files": {"model.keras": {"sha256": "cd" * 32, "size": 10}}, "versions": {"python": "3.11"},
    "model": {"file": "model.keras", "input_size": [96, 96, 3], "labels": ["cat", "dog"]},
    "dataset": {
        "source": "folder", "path": "/data/photos", "n_files": 10, "fingerprint": "12" * 32,
        "skipped": [{"path": "/data/photos/cat/bad.jpg", "reason": "truncated"}],
        "split": {"layout": "class folders, stratified split", "validation_fraction": 0.3, "seed": 7,
                  "duplicates": {"method": "sha256 (exact) and 64-bit perceptual hash", "exact_groups": 1,
                                 "near_groups": 0, "images_in_groups": 2, "handling": "group-aware split",
                                 "leaked": {"validation": 0, "test": 0}, "leak_examples": []},
                  "train": 9, "validation": 3, "test": 0},
        "exclude": {"path": "/data/exclude.txt", "sha256": "34" * 32, "listed": 1, "excluded": 1},
        "max_image_pixels": 1_000_000,
        "extra_data": [{"path": "/data/feedback", "n_files": 2, "fingerprint": "56" * 32, "skipped": []}],
    },
    "config": {"data": "/data/photos", "image_size": 96, "epochs": 3, "seed": 7, "validation_fraction": 0.3,
               "augment": {"enabled": True, "flip": True, "rotation": 0.05, "zoom": 0.1, "translation": 0.1,
                           "contrast": 0.1}, "max_image_pixels": 1_000_000},
    "seed": 7, "hardware": {"gpus": 0, "strategy": "default", "replicas": 1, "mixed_precision": False},
}
V2_VARIANT = {
    "kind": "variant", "schema_version": 2, "created": "2026-12-01T11:00:00+00:00", "name": "int8-ptq",
    "recipe_hash": "0123456789abcdef", "run": "photos",
    "parent": {"path": "/runs/photos", "sha256": "cd" * 32, "kind": "run", "file": "model.keras"},
    "files": {"model.tflite": {"sha256": "ef" * 32, "size": 10}}, "versions": {"python": "3.11"},
    "model": {"file": "model.tflite", "input_size": [32, 32, 3], "labels": [str(i) for i in range(10)]},
    "dataset": {"source": "digits", "origin": "sklearn.datasets.load_digits (scikit-learn 1.5.2)",
                "n_images": 1797, "fingerprint": "78" * 32, "max_image_pixels": 40_000_000,
                "split": {"validation_fraction": 0.2, "seed": 42, "train": 1437, "validation": 360}},
    "recipe": {"name": "int8-ptq", "description": "post-training int8",
               "stages": [{"type": "convert", "mode": "int8", "calibration_samples": 50}]},
    "timings": [{"stage": "convert", "seconds": 3.5, "calibration_images": 50}],
    "runtime": {"name": "litert", "version": "1.4.0", "threads": None},
}


def test_version_2_run_reads_into_the_typed_record_and_config(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(V2_RUN))
    run = manifests.read(tmp_path / "run", manifests.RunManifest)
    assert run.schema_version == manifests.SCHEMA_VERSION
    # the spec `spec_from_description` rebuilt, at the model's input size
    assert run.dataset.spec == DataSpec(data="/data/photos", extra_data=("/data/feedback",), image_size=96, seed=7,
                                        validation_fraction=0.3, max_image_pixels=1_000_000,
                                        exclude="/data/exclude.txt", group_duplicates=True)
    assert run.dataset.split.duplicates.exact_groups == 1 and run.dataset.split.train == 9
    assert run.dataset.skipped == (SkippedFile("/data/photos/cat/bad.jpg", "truncated"),)
    assert run.dataset.exclude.sha256 == "34" * 32 and run.dataset.extra_data[0].fingerprint == "56" * 32
    assert isinstance(run.config, TrainConfig) and run.config.epochs == 3 and run.config.augment.flip
    assert run.hardware == manifests.Hardware(gpus=0, strategy="default", replicas=1, mixed_precision=False)
    # `edgekit info` prints what it printed for the dict
    assert "  data: folder /data/photos  train 9 / validation 3  fingerprint 121212121212…" in \
        describe_manifest(tmp_path / "run", run).splitlines()
    # written again, it is a version-3 manifest that reads back equal
    again = _write_read(tmp_path / "again", run)
    assert (again.schema_version, again.dataset, again.config) == (manifests.SCHEMA_VERSION, run.dataset, run.config)


def test_version_2_variant_reads_into_the_typed_record_and_recipe(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "manifest.json").write_text(json.dumps(V2_VARIANT))
    variant = manifests.read(tmp_path / "v", manifests.VariantManifest)
    assert variant.dataset.spec == DataSpec(image_size=32, group_duplicates=False)  # digits: no duplicate check
    assert variant.dataset.n_files == 1797 and variant.dataset.origin.startswith("sklearn")
    assert variant.recipe.name == "int8-ptq" and variant.recipe.convert.params.calibration_samples == 50
    assert variant.timings == (manifests.StageTiming("convert", 3.5, calibration_images=50),)
    assert variant.runtime == manifests.RuntimeRecord(name="litert", version="1.4.0")
    assert variant.recipe.as_dict() == V2_VARIANT["recipe"] | {"stages": [
        {"type": "convert", "mode": "int8", "calibration_samples": 50, "io_dtype": "float32"}]}
    older = copy.deepcopy(V2_VARIANT)
    del older["dataset"]["max_image_pixels"]  # runs made before the pixel limit was recorded
    (tmp_path / "v" / "manifest.json").write_text(json.dumps(older))
    assert manifests.read(tmp_path / "v").dataset.spec.max_image_pixels == DataSpec().max_image_pixels


def test_version_2_without_dataset_or_recipe_reads_as_none(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "manifest.json").write_text(json.dumps({**V2_VARIANT, "dataset": {}, "recipe": {}}))
    variant = manifests.read(tmp_path / "v")
    assert variant.dataset is None and variant.recipe is None


def _v3(payload: dict, **changes) -> dict:
    return {**json.loads(json.dumps(manifests.from_dict(payload, "test").as_dict())), **changes}


@pytest.mark.parametrize("payload, message", [
    (lambda: _v3(V2_RUN, dataset={**_v3(V2_RUN)["dataset"], "colour": 1}), r"field 'dataset': unknown field 'colour'"),
    (lambda: _v3(V2_RUN, dataset={**_v3(V2_RUN)["dataset"], "spec": {"data": "/x", "seed": "seven"}}),
     r"field 'dataset': field 'spec': field 'seed'"),
    (lambda: _v3(V2_RUN, config={"epoch": 3}), r"field 'config': unknown field 'epoch'"),
    (lambda: _v3(V2_VARIANT, recipe={"name": "x", "stages": [{"type": "convert", "mode": "int4"}]}),
     r"field 'recipe': stage 1 \(convert\): field 'mode'"),
    (lambda: {**V2_RUN, "dataset": {**V2_RUN["dataset"], "split": "all of it"}}, r"field 'dataset': damaged"),
    (lambda: {**V2_RUN, "dataset": {**V2_RUN["dataset"], "extra_data": ["/data/feedback"]}},
     r"field 'dataset': damaged"),
    (lambda: {**V2_RUN, "dataset": {**V2_RUN["dataset"], "colour": 1}}, r"field 'dataset': unknown field 'colour'"),
])
def test_a_damaged_payload_is_one_line_naming_file_and_field(tmp_path, payload, message):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(payload()))
    with pytest.raises(EdgekitError, match=message) as error:
        manifests.read(tmp_path / "m")
    assert "\n" not in str(error.value) and str(tmp_path / "m" / "manifest.json") in str(error.value)


def test_no_manifest_field_that_has_a_class_is_a_plain_dict():
    """`dataset`, `config`, `recipe`, `hardware`, `timings` and `runtime` store their classes."""
    typed = {"dataset": DatasetRecord, "config": TrainConfig, "recipe": Recipe, "hardware": manifests.Hardware,
             "timings": manifests.StageTiming, "runtime": manifests.RuntimeRecord}
    for cls in manifests.KINDS.values():
        hints = {f.name: f.type for f in dataclasses.fields(cls)}
        for name, expected in typed.items():
            if name in hints:
                assert expected.__name__ in str(hints[name]), (cls.KIND, name, hints[name])
