"""`edgekit info`: every manifest kind is described through its own describer, an unknown one generically."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from edgekit import info, manifests
from edgekit.cli import app
from edgekit.data.types import DatasetRecord, DataSpec, SplitRecord
from edgekit.recipes import recipe_from_mapping

PARENT = manifests.ParentRef(path="/p/run", sha256="f" * 64, kind="run", file="model.keras")
MODEL = manifests.ModelContract(file="model.tflite", input_size=(96, 96, 3), labels=("a", "b", "c"),
                                architecture={"family": "mobilenet_v2", "alpha": 0.35}, weights="imagenet")
DATASET = DatasetRecord(spec=DataSpec(data="/data", image_size=96), source="folder", path="/data",
                        split=SplitRecord(train=80, validation=20), fingerprint="abcdef0123456789", n_files=100)
RECIPE = recipe_from_mapping({"name": "int8", "stages": [{"type": "prune", "target_sparsity": 0.5},
                                                         {"type": "convert", "mode": "int8"}]}, "test")
METRICS = manifests.Metrics(n=20, accuracy=0.9, macro_precision=0.7, macro_recall=0.75, macro_f1=0.8)
COMMON = {"created": "2026-01-01T00:00:00Z", "versions": {"edgekit": "0.9"}}
TFLITE = {"size": 1000, "gzip_size": 800, "inputs": [{"dtype": "int8", "shape": [1, 96, 96, 3]}], "ops": {"CONV_2D": 3}}

# one sample per kind and a line only its own describer prints
SAMPLES = {
    "run": (manifests.RunManifest(name="r", model=MODEL, dataset=DATASET, **COMMON),
            "  labels (3): a, b, c"),
    "variant": (manifests.VariantManifest(name="int8", recipe_hash="abc", parent=PARENT, model=MODEL, dataset=DATASET,
                                          recipe=RECIPE, tflite=TFLITE,
                                          sparsity={"overall": 0.5}, **COMMON),
                "  tflite: 1000 B (gzip 800 B), input int8 [1, 96, 96, 3], 3 ops, sparsity 50.0%"),
    "probe": (manifests.ProbeManifest(name="probe", tflite=TFLITE, **COMMON),
              "  probe: random weights, converted only to time the architecture (no accuracy)"),
    "eval": (manifests.EvalManifest(parent=PARENT, dataset=DATASET, metrics=METRICS, **COMMON),
             "  metrics: accuracy 0.9000  macro-F1 0.8000  n=20"),
    "bench": (manifests.BenchManifest(device="pi", parents=(PARENT,), partial=True, settings={"runs": 5}, **COMMON),
              "  device: pi  (partial: some variants failed)"),
    "feedback-import": (manifests.FeedbackImportManifest(source="pi:/x", counts={"predictions": 5}, **COMMON),
                        "  counts: predictions 5"),
    "feedback-dataset": (manifests.FeedbackDatasetManifest(report={"written": 3, "labelled": 2}, parents=(PARENT,),
                                                           **COMMON), "  feedback dataset: written 3, labelled 2"),
    "deployment": (manifests.DeploymentManifest(device="pi", address="1.2.3.4", workdir="/w", model="m.tflite",
                                                model_sha256="e" * 64, parent=PARENT, **COMMON),
                   "  device: pi (1.2.3.4), work directory /w"),
    "tune": (manifests.TuneManifest(name="st", device="pi", budget={"max_latency_ms": 5}, counts={"complete": 1},
                                    **COMMON), "  trials: 1 complete"),
    "datacheck": (manifests.DataCheckManifest(data="/data", summary=("10 images",), run=PARENT, **COMMON),
                  "  labels checked with the run /p/run"),
}


def test_every_manifest_kind_has_a_describer():
    assert set(manifests.KINDS) <= set(info.DESCRIBERS)
    assert set(SAMPLES) == set(manifests.KINDS), "a new kind needs a sample here"


def _artifact(tmp_path, manifest):
    directory = tmp_path / manifest.KIND
    directory.mkdir()
    (directory / "f.txt").write_text("hello")
    manifests.write(directory, manifest, ["f.txt"])
    return directory


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_each_kind_is_described_from_its_own_fields(kind, tmp_path):
    manifest, line = SAMPLES[kind]
    payload, text = info.describe_path(_artifact(tmp_path, manifest))
    assert payload["kind"] == kind
    assert line in text.splitlines()
    assert "f.txt" in text  # the files every artifact lists


def test_variant_description_keeps_its_layout(tmp_path):
    directory = _artifact(tmp_path, SAMPLES["variant"][0])
    assert info.describe_path(directory)[1].splitlines() == [
        f"{directory}  (variant, created 2026-01-01T00:00:00Z, schema {manifests.SCHEMA_VERSION})",
        "  parent: /p/run [model.keras sha256 ffffffffffff…]",
        "  model: model.tflite  input [96, 96, 3]  pixels [0.0, 255.0]  mobilenet_v2 alpha=0.35  weights=imagenet",
        "  labels (3): a, b, c",
        "  data: folder /data  train 80 / validation 20  fingerprint abcdef012345…",
        "  recipe: int8 (prune → convert), hash abc",
        "  tflite: 1000 B (gzip 800 B), input int8 [1, 96, 96, 3], 3 ops, sparsity 50.0%",
        "  file f.txt: 5 B  sha256 2cf24dba5fb0a30e…",
        "  versions: edgekit 0.9",
    ]


@dataclass(frozen=True)
class _FutureManifest(manifests.Manifest):
    KIND: ClassVar[str] = "from-the-future"
    parents: tuple[manifests.ParentRef, ...] = ()
    novelty: str = ""


def test_a_kind_without_a_describer_gets_the_generic_description_not_a_crash(tmp_path):
    manifest = _FutureManifest(parents=(PARENT,), novelty="x", files={"f.txt": manifests.FileRecord("0" * 64, 2048)},
                               **COMMON)
    text = info.describe_manifest(tmp_path, manifest)
    assert text.splitlines() == [f"{tmp_path}  (from-the-future, created 2026-01-01T00:00:00Z, schema "
                                 f"{manifests.SCHEMA_VERSION})",
                                 "  parent: /p/run [model.keras sha256 ffffffffffff…]",
                                 "  file f.txt: 2.0 KiB  sha256 0000000000000000…", "  versions: edgekit 0.9"]


def test_info_cli_prints_a_deployment_and_its_json(tmp_path):
    directory = _artifact(tmp_path, SAMPLES["deployment"][0])
    text = CliRunner().invoke(app, ["info", str(directory)])
    assert text.exit_code == 0, text.output
    assert "  model: m.tflite  sha256 eeeeeeeeeeeeeeee…" in text.stdout
    machine = CliRunner().invoke(app, ["info", str(directory), "--json"])
    assert json.loads(machine.stdout)["workdir"] == "/w"
