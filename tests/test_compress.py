"""`edgekit compress`: recipes, variant directories and manifests, accuracy measured on the .tflite."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.compress.pipeline import compress
from edgekit.devices import runner_path
from edgekit.errors import EdgekitError
from edgekit.manifests import VariantManifest, verify_files
from edgekit.recipes import load_recipe, recipe_from_flags, shipped_recipes

cli = CliRunner()


def test_every_shipped_recipe_validates():
    names = shipped_recipes()
    assert {"float32", "float16", "dynamic-range", "int8-ptq", "int8-qat", "prune50-int8", "cluster16-int8",
            "edgetpu"} <= set(names)
    for name in names:
        recipe = load_recipe(name)
        assert recipe.name == name and recipe.stages[-1].type in ("convert", "edgetpu")


@pytest.mark.parametrize("body, message", [
    ("name: x\nstages:\n  - type: sharpen\n", r"stage 1: unknown type 'sharpen'"),
    ("name: x\nstages:\n  - type: prune\n    target_sparsity: 1.0\n  - type: convert\n",
     r"stage 1 \(prune\): field 'target_sparsity' must be a number at least 0 and below 1 \(1 would remove"),
    ("name: x\nstages:\n  - type: prune\n    epochs: 0\n  - type: convert\n", r"stage 1 \(prune\): field 'epochs'"),
    ("name: x\nstages:\n  - type: prune\n    sparsity: 0.5\n  - type: convert\n",
     r"stage 1 \(prune\): unknown field 'sparsity'"),
    ("name: x\nstages:\n  - type: convert\n    mode: int8\n    calibration_samples: 0\n",
     r"stage 1 \(convert\): field 'calibration_samples' int8 needs calibration images"),
    ("name: x\nstages:\n  - type: convert\n    mode: int4\n", r"stage 1 \(convert\): field 'mode'"),
    ("name: x\nstages:\n  - type: prune\n    target_sparsity: half\n  - type: convert\n",
     r"field 'target_sparsity' must be a number at least 0 and below 1 .*, got 'half'"),
    ("name: x\nstages:\n  - type: prune\n", r"exactly one convert stage"),
    ("name: x\nstages: [\n", r"not valid YAML at line"),
])
def test_malformed_recipes_name_file_stage_and_field(tmp_path, body, message):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(EdgekitError, match=message) as info:
        load_recipe(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_shorthands_build_and_print_a_recipe():
    recipe = recipe_from_flags(prune=0.5, qat=True, int8=True)
    assert [s.type for s in recipe.stages] == ["prune", "qat", "convert"]
    assert recipe.convert.params.mode == "int8"
    result = cli.invoke(app, ["compress", "--prune", "0.5", "--qat", "--int8", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "type: prune" in result.output and "target_sparsity: 0.5" in result.output


def test_unknown_recipe_lists_the_shipped_ones():
    result = cli.invoke(app, ["compress", "--recipe", "int9", "--dry-run"])
    assert result.exit_code == 1 and "unknown recipe 'int9'" in result.output and "int8-ptq" in result.output


def test_variant_manifest_describes_the_exact_file(variants, tiny_run):
    int8 = variants["int8-ptq"]
    manifest = verify_files(int8)
    run_manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert isinstance(manifest, VariantManifest) and len(manifest.recipe_hash) == 16
    assert manifest.parent.sha256 == run_manifest["files"]["model.keras"]["sha256"]
    assert manifest.recipe.stages[0].params.mode == "int8"
    assert (int8 / "recipe.yaml").read_text().startswith("name: int8-ptq")
    tflite = manifest.tflite
    assert tflite["size"] == (int8 / "model.tflite").stat().st_size and 0 < tflite["gzip_size"] < tflite["size"]
    assert list(manifest.model.labels) == run_manifest["model"]["labels"]
    validation = manifest.metrics.validation
    assert validation.n == 359 and 0 <= validation.macro_f1 <= 1
    assert manifest.runtime.name == "litert"
    assert 0 <= manifest.metrics.output_abs_diff_vs_float.mean <= 1


def test_variant_manifest_holds_the_drift_reference_of_its_accuracy_pass(variants):
    manifest = verify_files(variants["int8-ptq"])
    reference, validation = manifest.drift_reference, manifest.metrics.validation
    assert reference.n == validation.n and sum(reference.score_histogram) == validation.n
    assert len(reference.score_histogram) == 20 and 0 < reference.median_score <= 1
    predicted = [sum(column) for column in zip(*validation.confusion_matrix)]  # the same pass's answers
    assert list(reference.class_counts.values()) == predicted
    assert list(reference.class_counts) == list(manifest.model.labels)


def test_int8_is_a_fraction_of_float32(variants):
    """About 0.39x at alpha 0.35: per-channel scales and int64 zero points are a fixed cost per channel,
    large next to so few weights (alpha 1.0 gets closer to the ideal 0.25x)."""
    float32 = (variants["float32"] / "model.tflite").stat().st_size
    int8 = (variants["int8-ptq"] / "model.tflite").stat().st_size
    assert int8 <= 0.42 * float32


def test_float32_variant_matches_keras_accuracy(variants, tiny_run):
    manifest = json.loads((variants["float32"] / "manifest.json").read_text())
    assert abs(manifest["metrics"]["accuracy_delta_vs_float"]) <= 0.003
    assert manifest["metrics"]["output_abs_diff_vs_float"]["max"] < 1e-3


def test_eval_of_a_tflite_reproduces_its_manifest_accuracy(variants, tmp_path):
    result = cli.invoke(app, ["eval", str(variants["int8-ptq"] / "model.tflite"), "--json",
                              "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((variants["int8-ptq"] / "manifest.json").read_text())
    assert json.loads(result.stdout)["metrics"]["accuracy"] == manifest["metrics"]["validation"]["accuracy"]


@pytest.mark.parametrize("variant", ["float32", "int8-ptq"])
def test_runner_matches_eval_predictions(variants, digits_folder, variant, tmp_path):
    from edgekit.evaluate import evaluate_model

    model = variants[variant] / "model.tflite"
    ours = evaluate_model(model, data=str(digits_folder), write=False)
    run = subprocess.run([sys.executable, str(runner_path()), "classify", str(model), str(digits_folder), "--json",
                          "--no-log", "--top-k", "1"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    theirs = {r["path"]: r["top_k"][0]["index"] for r in json.loads(run.stdout)}
    from edgekit.data import DataSpec, scan_class_folders

    scan = scan_class_folders(digits_folder, DataSpec(data=str(digits_folder)))
    assert [theirs[p] for p in scan.paths] == ours.metrics["predictions"]


def test_tampered_run_is_refused(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy, ignore=shutil.ignore_patterns("compressed", "bench"))
    with open(copy / "model.keras", "ab") as handle:
        handle.write(b"\0")
    result = cli.invoke(app, ["compress", str(copy), "--float16"])
    assert result.exit_code == 1 and "model.keras: sha256" in result.output
    assert not (copy / "compressed").exists()


@pytest.mark.slow
def test_failed_conversion_leaves_nothing_half_written(tiny_run, tmp_path, monkeypatch):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy, ignore=shutil.ignore_patterns("compressed", "bench"))
    import edgekit.compress.pipeline as pipeline

    def explode(*args, **kwargs):
        raise pipeline.EdgekitError("boom in the accuracy pass")

    monkeypatch.setattr(pipeline, "evaluate_predictor", explode)
    with pytest.raises(EdgekitError, match="boom"):
        compress(copy, load_recipe("float16"))
    assert list((copy / "compressed").iterdir()) == []


def test_report_tabulates_every_variant(variants, tiny_run):
    result = cli.invoke(app, ["report", str(tiny_run), "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["variant"]: row for row in json.loads(result.stdout)["variants"]}
    assert {"float32", "int8-ptq"} <= set(rows)
    assert rows["float32"]["size_vs_float32"] == 1.0 and rows["int8-ptq"]["size_vs_float32"] < 0.42
    assert (tiny_run / "compressed" / "report.md").read_text().startswith("# Variants of")


def test_eval_of_a_truncated_tflite_is_one_line(variants, tmp_path):
    data = (variants["int8-ptq"] / "model.tflite").read_bytes()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[: len(data) // 3])
    result = cli.invoke(app, ["eval", str(cut), "--data", str(tmp_path)])
    assert result.exit_code == 1 and "cut.tflite" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_prune_qat_int8_shorthand_end_to_end(tiny_run):
    variant = compress(tiny_run, recipe_from_flags(prune=0.5, qat=True, int8=True, epochs=1))
    manifest = variant.manifest
    assert manifest.sparsity["overall"] == pytest.approx(0.5, abs=0.06)
    assert manifest.tflite["gzip_size"] < 0.8 * manifest.tflite["size"]


@pytest.mark.slow
def test_edgetpu_recipe_writes_a_uint8_static_model_and_a_report(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("compressed", "bench"))
    variant = compress(run, load_recipe("edgetpu"))
    tflite = variant.manifest.tflite
    assert tflite["inputs"][0]["dtype"] == "uint8" and tflite["outputs"][0]["dtype"] == "uint8"
    assert tflite["inputs"][0]["shape"][0] == 1
    report = json.loads((variant.directory / "edgetpu_report.json").read_text())
    assert report["n_ops"] > 50 and report["compatible"], report["summary"]
    assert variant.manifest.edgetpu["compiler"]["found"] is False
    assert "edgetpu_compiler not found" in variant.manifest.edgetpu["compiler"]["message"]


def test_run_without_a_model_is_refused(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy, ignore=shutil.ignore_patterns("compressed", "bench", "model.keras"))
    result = cli.invoke(app, ["compress", str(copy), "--int8"])
    assert result.exit_code == 1 and "model.keras: missing" in result.output and "Traceback" not in result.output


def test_folder_that_is_not_a_run_is_refused(tmp_path):
    result = cli.invoke(app, ["compress", str(tmp_path), "--int8"])
    assert result.exit_code == 1 and "no manifest.json" in result.output


def test_identical_recipe_again_is_a_no_op(variants, tiny_run, monkeypatch):
    import edgekit.compress.pipeline as pipeline

    monkeypatch.setattr(pipeline, "load_context", lambda *a: pytest.fail("an identical variant must not reload"))
    before = (variants["int8-ptq"] / "manifest.json").read_bytes()
    [variant] = pipeline.compress_all(tiny_run, [load_recipe("int8-ptq")])
    assert variant.status == "unchanged" and (variants["int8-ptq"] / "manifest.json").read_bytes() == before


def test_other_recipe_under_an_existing_name_needs_force(variants, tiny_run):
    other = recipe_from_flags(int8=True, calibration_samples=7)
    assert other.name == "int8-ptq"
    with pytest.raises(EdgekitError, match=r"int8-ptq: a variant named 'int8-ptq' exists from a different recipe"
                                           r".*pass --force"):
        compress(tiny_run, other)
    result = cli.invoke(app, ["compress", str(tiny_run), "--int8", "--calibration-samples", "7"])
    assert result.exit_code == 1 and "--force" in result.output


def test_shorthands_never_take_a_shipped_recipe_name_with_other_stages():
    assert recipe_from_flags(int8=True, uint8_io=True).name == "int8-ptq-uint8io"
    assert recipe_from_flags(prune=0.5, int8=True).name == "prune50-int8-ptq"
    shipped = load_recipe("prune50-int8")
    assert recipe_from_flags(prune=0.5, qat=True, int8=True).name != shipped.name


@pytest.mark.slow
def test_compress_all_loads_the_run_once(tiny_run, tmp_path, monkeypatch):
    import edgekit.compress.pipeline as pipeline

    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy, ignore=shutil.ignore_patterns("compressed", "bench"))
    loads, real = [], pipeline.load_context
    monkeypatch.setattr(pipeline, "load_context", lambda run, **kw: loads.append(run) or real(run, **kw))
    monkeypatch.setattr(pipeline, "_build_tflite", lambda context, recipe: (
        (tiny_run / "compressed" / "float32" / "model.tflite").read_bytes(), {}, []))
    made = pipeline.compress_all(copy, [load_recipe("float32"), load_recipe("float16")])
    assert len(loads) == 1 and [v.status for v in made] == ["written", "written"]


def test_stale_scratch_of_a_killed_compress_is_removed(tmp_path):
    from edgekit.compress.pipeline import remove_stale_scratch

    dead = tmp_path / ".float16.tmp-999999999-abc"
    live = tmp_path / f".int8.tmp-{os.getpid()}-def"
    dead.mkdir()
    live.mkdir()
    assert remove_stale_scratch(tmp_path) == [dead] and live.exists()


@pytest.mark.parametrize("body, message", [
    ("name: ../evil\nstages:\n  - type: convert\n", r"field 'name' must be letters, digits, .*, got '../evil'"),
    ("name: x\nname: y\nstages:\n  - type: convert\n", r"not valid YAML at line 2 \(duplicate key 'name'"),
    (b"name: caf\xe9\nstages:\n  - type: convert\n", r"recipe is not UTF-8 text"),
])
def test_recipe_names_keys_and_encoding_are_checked_before_any_work(tmp_path, body, message):
    path = tmp_path / "r.yaml"
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    result = cli.invoke(app, ["compress", "--recipe", str(path), "--dry-run"])
    assert result.exit_code == 1 and re.search(message, result.output) and str(path) in result.output


def test_two_recipes_with_one_name_are_refused_before_any_work(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: float16\nstages:\n  - type: convert\n")
    result = cli.invoke(app, ["compress", "--recipe", "float16", "--recipe", str(path), "--dry-run"])
    assert result.exit_code == 1 and "recipe name 'float16' is also used by" in result.output


def test_bare_tflite_is_described_by_info(variants, tmp_path):
    bare = tmp_path / "other.tflite"
    shutil.copyfile(variants["int8-ptq"] / "model.tflite", bare)
    result = cli.invoke(app, ["info", str(bare), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["inputs"][0]["shape"] == [1, 32, 32, 3] and payload["outputs"][0]["shape"] == [1, 10]
    assert payload["ops"]["CONV_2D"] > 10 and "manifest" not in payload
    text = cli.invoke(app, ["info", str(bare)]).output
    assert "looks like: image classifier" in text and "minimum runtime" in text
