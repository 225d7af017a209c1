"""Metrics for Keras and .tflite models through one code path.

Both kinds of model are wrapped as a `Predictor` (float32 pixels in [0, 255] → class probabilities),
so the accuracy reported for a `.tflite` file is measured by running that exact file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit import manifests
from edgekit.artifacts import MANIFEST, atomic_path, check_writable, sha256_file, write_json_atomic
from edgekit.data import DatasetRecord, DataSpec, ImageSet, iter_pixel_batches, load_dataset, scan_class_folders
from edgekit.errors import EdgekitError
from edgekit.runner import load_model


class KerasPredictor:
    """A Keras classifier as a predictor."""

    runtime = {"name": "keras", "version": None}

    def __init__(self, model, batch_size: int = 128):
        self.model = model
        self.batch_size = batch_size
        self.input_size = tuple(model.input_shape[1:3])

    def predict(self, images: np.ndarray) -> np.ndarray:
        # predict_on_batch, not predict: model.predict builds a new data pipeline per call and the
        # process grows with every call when evaluation streams batches (+550 MB over 8 batches at 224 px)
        outputs = [np.asarray(self.model.predict_on_batch(images[i:i + self.batch_size]), dtype=np.float32)
                   for i in range(0, len(images), self.batch_size)]
        return np.concatenate(outputs) if outputs else np.zeros((0, self.model.output_shape[-1]), np.float32)


class TFLitePredictor:
    """A .tflite file run by the on-device runner's own `Model`, one image per invoke.

    Interpreter choice, loading, pixel range, normalisation, quantization and dequantization are the
    runner's code (`edgekit.runner`), so the accuracy edgekit reports is what a device computes.
    """

    def __init__(self, path: Path, num_threads: int | None = None, runtime: str | None = None):

        self.path = Path(path)
        self.model = load_model(self.path, threads=num_threads, runtime=runtime)
        rt = self.model.runtime
        self.runtime = {"name": rt.name, "version": rt.version, "threads": num_threads}
        self.input_size = (self.model.height, self.model.width)
        # A bare .tflite's own labels, from its standard metadata.
        self.labels = self.model.standard_metadata.get("labels")

    def predict(self, images: np.ndarray) -> np.ndarray:
        model = self.model
        outputs = [model.scores(model.run(model.to_input(image))[0]) for image in images]
        return np.stack(outputs) if outputs else np.zeros((0, model.num_outputs), np.float32)


def open_predictor(path: Path, num_threads: int | None = None, trust_model: bool = False):
    """A predictor for a .keras/.h5 file or a .tflite file, chosen by suffix (.h5 needs `trust_model`)."""
    path = Path(path)
    if path.suffix == ".tflite":
        return TFLitePredictor(path, num_threads=num_threads)
    if path.suffix in (".keras", ".h5"):
        from edgekit.model import load_keras_model

        return KerasPredictor(load_keras_model(path, trust=trust_model))
    raise EdgekitError(f"{path}: unknown model type; pass a .keras, .h5 or .tflite file or a run directory")


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, labels: tuple[str, ...]) -> dict:
    """Metrics from class probabilities [n, classes] or, when streamed, predicted class ids [n]."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_pred = probs.argmax(axis=1) if probs.ndim == 2 else probs
    ids = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=ids, zero_division=0
    )
    return {
        "n": int(len(y_true)),
        "accuracy": float(np.mean(y_pred == y_true)) if len(y_true) else 0.0,
        "macro_precision": float(np.mean(precision)),
        "macro_recall": float(np.mean(recall)),
        "macro_f1": float(np.mean(f1)),
        "per_class": {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    }


def plot_confusion(matrix: list[list[int]], labels: tuple[str, ...], title: str, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(matrix)
    size = max(4.0, 0.5 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = cm.max() / 2 if cm.size else 0
    for (row, col), count in np.ndenumerate(cm):
        ax.text(col, row, str(count), ha="center", va="center", color="white" if count > threshold else "black",
                fontsize=8)
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


@dataclass
class EvalResult:
    metrics: dict
    runtime: dict
    out_dir: Path | None


def find_manifest_for(model_path: Path) -> tuple[Path, manifests.Manifest] | None:
    """The manifest that describes a model file: the one in its directory (runs and variants)."""
    directory = Path(model_path).parent
    if (directory / MANIFEST).is_file():
        return directory, manifests.read(directory)
    return None


def evaluate_predictor(predictor, images, targets: np.ndarray | None, labels: tuple[str, ...],
                       observe=None) -> dict:
    """Metrics over an array of images, or over an iterable of (images, targets) batches (then
    `targets` is None): only predicted class ids are kept, so memory does not grow with the dataset.
    `observe(probs)` sees every batch's outputs (compress builds the drift reference in the same pass)."""
    batches = [(images, targets)] if isinstance(images, np.ndarray) else images
    predicted, truth = [], []
    for x, y in batches:
        probs = predictor.predict(x)
        if probs.shape[1] != len(labels):
            raise EdgekitError(f"model has {probs.shape[1]} outputs but the dataset has {len(labels)} classes")
        if observe is not None:
            observe(probs)
        predicted.append(probs.argmax(axis=1))
        truth.append(np.asarray(y))
    y_pred = np.concatenate(predicted) if predicted else np.zeros(0, np.int64)
    metrics = classification_metrics(np.concatenate(truth) if truth else np.zeros(0, np.int64), y_pred, labels)
    metrics["predictions"] = y_pred.tolist()
    return metrics


def write_eval(out_dir: Path, model_path: Path, metrics: dict, runtime: dict, labels: tuple[str, ...],
               dataset: DatasetRecord | None) -> None:
    """Write metrics.json, confusion.png and a manifest naming the evaluated file as parent."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "metrics.json", {"metrics": metrics, "runtime": runtime})
    plot_confusion(metrics["confusion_matrix"], labels, f"{model_path.name}: accuracy {metrics['accuracy']:.3f}",
                   out_dir / "confusion.png")
    parent = manifests.ParentRef(path=str(model_path.resolve()), sha256=sha256_file(model_path), file=model_path.name)
    manifests.write(out_dir, manifests.EvalManifest(parent=parent, dataset=dataset,
                                                    runtime=manifests.RuntimeRecord(**runtime),
                                                    metrics=manifests.to_metrics(metrics)),
                    ["metrics.json", "confusion.png"])


def summary_line(metrics: dict) -> str:
    return (f"accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  "
            f"precision {metrics['macro_precision']:.4f}  recall {metrics['macro_recall']:.4f}  (n={metrics['n']})")


def manifest_model_file(directory: Path, manifest) -> Path:
    """The model file a run or variant manifest names, refused unless it is the kind of file that stage
    writes (`model.keras` for a run, a `.tflite` for a variant): a copied run whose manifest was edited to
    name a `model.h5` must not lead edgekit into loading a legacy model, which can run code."""
    name = manifest.model.file
    expected = Path(manifest.MAIN_FILE).suffix
    if Path(name).name != name or Path(name).suffix != expected:
        raise EdgekitError(f"{Path(directory) / MANIFEST}: model.file {name!r} is not a {expected} file in this "
                           f"folder, but a {manifest.KIND} writes {manifest.MAIN_FILE}; refusing to follow it "
                           "(pass the model file itself to load it explicitly)")
    return Path(directory) / name


def resolve_model(path: Path) -> tuple[Path, manifests.RunManifest | manifests.VariantManifest | None]:
    """A model file and its manifest (checked against the file's sha256), from a file or directory."""
    path = Path(path)
    if path.is_dir():
        manifest = manifests.read(path)
        if not isinstance(manifest, (manifests.RunManifest, manifests.VariantManifest)):
            raise EdgekitError(f"{path}: is a {manifest.KIND} artifact; pass a run or variant directory or a model")
        model_file = manifest_model_file(path, manifest)
        manifests.verify_files(path, manifest, [model_file.name])
        return model_file, manifest
    if not path.exists():
        raise EdgekitError(f"{path}: no such model file or directory")
    found = find_manifest_for(path)
    if found and path.name in found[1].files and isinstance(found[1], (manifests.RunManifest,
                                                                      manifests.VariantManifest)):
        manifests.verify_files(found[0], found[1], [path.name])
        return path, found[1]
    return path, None


def evaluation_data(manifest, data: str | None, image_size: int, strict: bool = False,
                    model_labels: tuple[str, ...] | None = None):
    """(pixel batches, None, labels, dataset record): `--data` when given, else the run's validation split.

    Labels come from the manifest, else from the model's standard metadata (`model_labels`).
    """
    labels = tuple(manifest.model.labels) if manifest else (tuple(model_labels) if model_labels else None)
    if data is None:
        if manifest is None or not manifest.dataset:
            raise EdgekitError("this model has no manifest naming its dataset; pass --data DIR")
        splits = load_dataset(dataclasses.replace(manifest.dataset.reload_spec, image_size=image_size))
        images = splits.validation
        record = manifest.dataset
    else:
        root = Path(data)
        for split in ("test", "validation", "val"):
            if (root / split).is_dir():
                root = root / split
                break
        spec = DataSpec(data=str(root), image_size=image_size, strict=strict)
        scan = scan_class_folders(root, spec, labels, pixels=True)  # one read per file: verdict and pixels
        labels = scan.labels
        images = ImageSet(labels, np.asarray(scan.targets, dtype=np.int32), tuple(scan.paths),
                          tuple(scan.tf_decodable))
        record = DatasetRecord(spec=spec, source="folder", path=str(root.resolve()), n_files=len(scan.paths),
                               fingerprint=scan.fingerprint)
    return iter_pixel_batches(images, image_size), None, labels, record


def evaluate_model(path: Path, data: str | None = None, out_dir: Path | None = None,
                   num_threads: int | None = None, strict: bool = False, write: bool = True,
                   trust_model: bool = False) -> EvalResult:
    """`edgekit eval`: metrics of a .keras or .tflite model on its validation split or a folder."""

    model_file, manifest = resolve_model(Path(path))
    if write:
        out_dir = Path(out_dir) if out_dir else model_file.parent / f"eval-{model_file.stem}"
        check_writable(out_dir)
    predictor = open_predictor(model_file, num_threads=num_threads, trust_model=trust_model)
    model_labels = getattr(predictor, "labels", None)  # a bare .tflite's own labels
    pixels, targets, labels, record = evaluation_data(manifest, data, predictor.input_size[0], strict, model_labels)
    metrics = evaluate_predictor(predictor, pixels, targets, labels)
    if write:
        write_eval(out_dir, model_file, metrics, predictor.runtime, labels, record)
    return EvalResult(metrics, predictor.runtime, out_dir if write else None)
