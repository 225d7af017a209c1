"""Standard TFLite Model Metadata on every variant, checked with the real clients that read it.

MediaPipe Tasks (the `clients` extra) loads each variant kind and must name the same top-1 labels as
`edgekit eval`; its MetadataDisplayer must read the metadata back. The runner, `info` and `eval` must
take labels and normalisation from a bare model's metadata, including a stock-style model that
declares mean/std 127.5. Conversions are shared per session (about 6 s each on 2 cores).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edgekit import manifests
from edgekit.cli import app
from edgekit.errors import EdgekitError
from edgekit.tflite_metadata import add_classifier_metadata, read_metadata, read_metadata_file

pytestmark = pytest.mark.slow

RUNNER = Path(__file__).resolve().parents[1] / "edgekit" / "resources" / "devices" / "edgekit_runner.py"
# Variant kinds: recipe name → (mode, io_dtype). Names are unique to this file (tiny_run is shared).
KINDS = {"md-float32": ("float32", "float32"), "md-float16": ("float16", "float32"),
         "md-dynamic": ("dynamic", "float32"), "md-int8": ("int8", "float32"),
         "md-int8-io": ("int8", "int8"), "md-uint8-io": ("int8", "uint8")}
MEDIAPIPE_KINDS = [k for k, (_, io) in KINDS.items() if io != "int8"]  # MediaPipe takes uint8/float32 input only


def _mediapipe():
    try:
        import mediapipe
        from mediapipe.tasks.python import BaseOptions, vision
    except ImportError as exc:
        pytest.skip(f"mediapipe Tasks not importable ({exc}); install it: pip install --no-deps -r .ci/clients.txt")
    return mediapipe, BaseOptions, vision


@pytest.fixture(scope="session")
def variants(tiny_run) -> dict[str, Path]:
    from edgekit.compress.pipeline import compress_all
    from edgekit.recipes import recipe_from_mapping

    recipes = [recipe_from_mapping({"name": name, "stages": [
        {"type": "convert", "mode": mode, "io_dtype": io, "calibration_samples": 50}]}, "test_metadata")
        for name, (mode, io) in KINDS.items()]
    return {v.manifest.name: v.directory for v in compress_all(tiny_run, recipes)}


@pytest.fixture(scope="session")
def val_images(tiny_run) -> np.ndarray:
    """24 validation images as whole-number pixels, so MediaPipe (uint8 images) and eval see the same input."""
    from edgekit.data import load_dataset, load_pixels

    run = manifests.read(tiny_run, manifests.RunManifest)
    splits = load_dataset(run.dataset.reload_spec)
    return np.round(load_pixels(splits.validation, run.model.image_size)[:24]).astype(np.float32)


def _mediapipe_scores(content: bytes, images: np.ndarray) -> tuple[np.ndarray, list[str]]:
    mp, BaseOptions, vision = _mediapipe()
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_buffer=content), max_results=-1)
    scores, names = [], []
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for image in images:
            frame = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image.astype(np.uint8)))
            categories = classifier.classify(frame).classifications[0].categories
            row = np.zeros(len(categories), np.float32)
            for category in categories:
                row[category.index] = category.score
            scores.append(row)
            names.append(max(categories, key=lambda c: c.score).category_name)
    return np.stack(scores), names


def _tolerance(kind: str, path: Path) -> float:
    """Two output quantization steps for integer outputs. Dynamic range quantizes activations to int8 at
    run time, and MediaPipe's TFLite build and LiteRT do that in different kernels (seen: 0.018)."""
    from edgekit.tflite import parse_file

    quant = parse_file(path).outputs[0].quantization
    if quant:
        return 2.0 * quant.per_tensor[0] + 1e-4
    return 0.05 if KINDS[kind][0] == "dynamic" else 2e-3


@pytest.mark.parametrize("kind", MEDIAPIPE_KINDS)
def test_mediapipe_names_the_same_top1_as_eval(variants, val_images, kind):
    from edgekit.evaluate import TFLitePredictor

    path = variants[kind] / "model.tflite"
    labels = manifests.read(variants[kind], manifests.VariantManifest).model.labels
    ours = TFLitePredictor(path).predict(val_images)  # edgekit eval's path, through LiteRT
    theirs, names = _mediapipe_scores(path.read_bytes(), val_images)
    assert names == [labels[i] for i in ours.argmax(1)]
    np.testing.assert_allclose(theirs, ours, atol=_tolerance(kind, path))


def test_mediapipe_refuses_int8_input_models(variants):
    """MediaPipe 0.10 feeds images as uint8 or float32 only; the int8-I/O variant is for other runtimes."""
    _, BaseOptions, vision = _mediapipe()
    content = (variants["md-int8-io"] / "model.tflite").read_bytes()
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_buffer=content))
    with pytest.raises((ValueError, RuntimeError), match="uint8/float32, got INT8"):
        vision.ImageClassifier.create_from_options(options)
    assert read_metadata(content).labels is not None


def test_every_variant_carries_metadata_and_lineage(variants, tiny_run):
    run = manifests.read(tiny_run, manifests.RunManifest)
    for kind, directory in variants.items():
        manifest = manifests.read(directory, manifests.VariantManifest)
        content = (directory / "model.tflite").read_bytes()
        # The manifest (and so the accuracy pass) describes the file with its metadata.
        assert manifest.files["model.tflite"].sha256 == hashlib.sha256(content).hexdigest()
        meta = read_metadata(content)
        assert meta.labels == tuple(run.model.labels) and meta.color_space == "RGB", kind
        assert (meta.mean, meta.std, meta.name, meta.version) == ((0.0,), (1.0,), kind, manifest.recipe_hash)
        lineage = meta.edgekit["lineage"]
        assert lineage["parent_sha256"] == run.sha256(run.MAIN_FILE) == manifest.parent.sha256
        assert (lineage["recipe"], lineage["recipe_hash"], lineage["run"]) == (kind, manifest.recipe_hash, run.name)
        again = add_classifier_metadata(content, name=kind, labels=run.model.labels, version=manifest.recipe_hash,
                                        lineage=lineage)
        assert again == content  # rewriting replaces, and the bytes are reproducible


def test_metadata_reads_back_with_mediapipe_displayer(variants):
    _mediapipe()
    # mediapipe 0.10.35's wheel lacks the compiled version helper that only its metadata *writer* calls;
    # register the missing module names so the displayer (MediaPipe's own C flatbuffer parser) imports.
    for name in ("mediapipe.tasks.cc", "mediapipe.tasks.cc.metadata", "mediapipe.tasks.cc.metadata.python",
                 "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"):
        sys.modules.setdefault(name, types.ModuleType(name))
    from mediapipe.tasks.python.metadata.metadata import MetadataDisplayer

    directory = variants["md-uint8-io"]
    displayer = MetadataDisplayer.with_model_buffer((directory / "model.tflite").read_bytes())
    shown = json.loads(displayer.get_metadata_json())
    tensor = shown["subgraph_metadata"][0]["input_tensor_metadata"][0]
    assert shown["name"] == "md-uint8-io" and shown["min_parser_version"] == "1.0.0"
    assert tensor["content"]["content_properties"]["color_space"] == "RGB"
    assert tensor["process_units"][0]["options"] == {"mean": [0.0], "std": [1.0]}
    output = shown["subgraph_metadata"][0]["output_tensor_metadata"][0]
    assert output["associated_files"][0] == {"name": "labels.txt", "type": "TENSOR_AXIS_LABELS",
                                             "description": "Labels of the output scores, one per line, in order."}
    assert sorted(displayer.get_packed_associated_file_list()) == ["edgekit.json", "labels.txt"]
    assert displayer.get_associated_file_buffer("labels.txt") == (directory / "labels.txt").read_bytes()


def test_uint8_variant_still_passes_the_edge_tpu_static_check(variants):
    from edgekit.compress.edgetpu import analyze_model

    report = analyze_model(variants["md-uint8-io"] / "model.tflite")
    assert report["compatible"], report["summary"]


def test_info_shows_the_metadata(variants):
    path = variants["md-int8"] / "model.tflite"
    result = CliRunner().invoke(app, ["info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)["standard_metadata"]
    assert shown["normalization"] == {"mean": [0.0], "std": [1.0]}
    assert shown["edgekit"]["lineage"]["recipe"] == "md-int8"
    text = CliRunner().invoke(app, ["info", str(path)]).stdout
    assert "normalisation mean [0.0] std [1.0]" in text and f"labels ({len(shown['labels'])})" in text
    assert "standard metadata:" in text and "metadata entries:" in text and " - by -" not in text


@pytest.fixture(scope="session")
def stock_model(tiny_run, tmp_path_factory) -> Path:
    """A bare model that wants (pixel - 127.5) / 127.5, as stock MobileNets do, with metadata saying so.

    It is the run's model behind an input layer that undoes that normalisation, so fed correctly it
    must predict exactly what the float variant predicts, and fed raw pixels it would not.
    """
    from edgekit.compat import keras
    from edgekit.compress.convert import convert
    from edgekit.compress.params import ConvertParams
    from edgekit.model import load_keras_model

    run = manifests.read(tiny_run, manifests.RunManifest)
    inner = load_keras_model(tiny_run / run.MAIN_FILE)
    inputs = keras.Input(inner.input_shape[1:])
    outputs = inner(keras.layers.Rescaling(127.5, offset=127.5)(inputs))
    content = convert(keras.Model(inputs, outputs), ConvertParams(mode="float32"))
    content = add_classifier_metadata(content, name="stock", labels=[f"digit {x}" for x in run.model.labels],
                                      version="1", lineage={}, mean=(127.5,), std=(127.5,))
    path = tmp_path_factory.mktemp("stock") / "stock.tflite"
    path.write_bytes(content)
    return path


def test_eval_and_runner_agree_on_a_stock_model_with_metadata(stock_model, variants, digits_folder, tmp_path):
    from edgekit.evaluate import evaluate_model

    folder = tmp_path / "data"  # the stock model's labels name the class folders
    for sub in digits_folder.iterdir():
        shutil.copytree(sub, folder / f"digit {sub.name}")
    stock = evaluate_model(stock_model, data=str(folder), write=False)
    float_variant = evaluate_model(variants["md-float32"] / "model.tflite", data=str(digits_folder), write=False)
    assert stock.metrics["predictions"] == float_variant.metrics["predictions"]
    run = subprocess.run([sys.executable, str(RUNNER), "classify", str(stock_model), str(folder), "--json",
                          "--no-log", "--top-k", "1"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    from edgekit.data import DataSpec, scan_class_folders

    scan = scan_class_folders(folder, DataSpec(data=str(folder)), tuple(read_metadata_file(stock_model).labels))
    results = {r["path"]: r["top_k"][0] for r in json.loads(run.stdout)}
    assert [results[p]["index"] for p in scan.paths] == stock.metrics["predictions"]
    assert all(results[p]["label"].startswith("digit ") for p in scan.paths)


def test_runner_refuses_a_model_that_is_not_a_classifier(tmp_path):
    from edgekit.compat import keras
    from edgekit.compress.convert import convert
    from edgekit.compress.params import ConvertParams

    inputs = keras.Input((32, 32, 3))
    features = keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)
    path = tmp_path / "features.tflite"
    path.write_bytes(convert(keras.Model(inputs, features), ConvertParams(mode="float32")))
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    for command in (["classify", str(path), str(image)], ["serve", str(path), "--port", "0"]):
        run = subprocess.run([sys.executable, str(RUNNER), *command, "--no-log"], capture_output=True, text=True,
                             timeout=120)
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        assert run.returncode == 1 and run.stdout == "", run.stderr
        assert "not an image classifier (inputs float32[1, 32, 32, 3]; outputs float32[1, 16, 16, 4])" in lines[-1]
        assert "classifies images" in lines[-1] and len(lines) == 1, run.stderr


def test_damaged_metadata_is_one_line(variants):
    from edgekit.tflite_metadata import _with_metadata_buffer

    content = (variants["md-float32"] / "model.tflite").read_bytes()
    damaged = _with_metadata_buffer(content, b"\x08\x00\x00\x00XXXX" + b"\x00" * 16)
    with pytest.raises(EdgekitError, match="not TFLite Model Metadata"):
        read_metadata(damaged, label="damaged.tflite")


@pytest.mark.parametrize("kind", ["md-float32", "md-uint8-io"])
def test_bare_variant_is_labelled_by_its_metadata_in_eval_and_runner(variants, digits_folder, tmp_path, kind):
    """The .tflite alone (no manifest, no labels.txt): eval and the runner take labels from its metadata."""
    from edgekit.data import DataSpec, scan_class_folders
    from edgekit.evaluate import evaluate_model

    bare = tmp_path / "bare.tflite"
    shutil.copyfile(variants[kind] / "model.tflite", bare)
    labels = read_metadata_file(bare).labels
    ours = evaluate_model(bare, data=str(digits_folder), write=False)
    run = subprocess.run([sys.executable, str(RUNNER), "classify", str(bare), str(digits_folder), "--json",
                          "--no-log", "--top-k", "1"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    results = {r["path"]: r["top_k"][0] for r in json.loads(run.stdout)}
    scan = scan_class_folders(digits_folder, DataSpec(data=str(digits_folder)), labels)
    assert [results[p]["index"] for p in scan.paths] == ours.metrics["predictions"]
    assert [results[p]["label"] for p in scan.paths] == [labels[i] for i in ours.metrics["predictions"]]


def test_wrong_labels_or_normalisation_are_refused_in_one_line(variants):
    content = (variants["md-float32"] / "model.tflite").read_bytes()
    with pytest.raises(EdgekitError, match="3 labels for 10 output scores"):
        add_classifier_metadata(content, name="x", labels=["a", "b", "c"], version="1", lineage={})
    with pytest.raises(EdgekitError, match="std above 0"):
        add_classifier_metadata(content, name="x", labels=[str(i) for i in range(10)], version="1", lineage={},
                                mean=(127.5,), std=(0.0,))


def test_runner_and_host_refuse_damaged_metadata_alike(variants, runner):
    from edgekit.tflite_metadata import _with_metadata_buffer

    content = (variants["md-float32"] / "model.tflite").read_bytes()
    found = runner.read_standard_metadata(content, "good.tflite")
    assert found["mean"] == [0.0] and found["std"] == [1.0] and found["labels"] == list(read_metadata(content).labels)
    truncated = _with_metadata_buffer(content, b"\x10\x00\x00\x00M001\xff\xff")
    with pytest.raises(runner.RunnerError, match="bad.tflite: its TFLITE_METADATA buffer is damaged") as device:
        runner.read_standard_metadata(truncated, "bad.tflite")
    with pytest.raises(EdgekitError) as host:
        read_metadata(truncated, label="bad.tflite")
    assert str(host.value) == str(device.value)
