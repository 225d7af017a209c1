"""Standard TFLite Model Metadata for image classifiers: written on every variant, read from any model.

MediaPipe Tasks, `litert run` and Android Studio read labels and input normalisation from the
metadata flatbuffer stored in the model's `TFLITE_METADATA` buffer (file identifier "M001"), with the
labels packed as a zip archive appended to the `.tflite` file. Without it MediaPipe refuses a float
model and names no category of a quantized one.

Why this library choice: the metadata flatbuffer is built with the `flatbuffers` package (a runtime
dependency of TensorFlow and LiteRT already) through the *official* generated binding of
`metadata_schema.fbs` (`edgekit/_metadata_schema_generated.py`, vendored unchanged). The ready-made
writers do not install at run time here: `tflite-support` 0.4.4 (the last release, 2023) pins
protobuf<4 against TensorFlow 2.21's protobuf 7, and mediapipe 0.10.35's `metadata_writers` fail to
import (`mediapipe.tasks.cc.metadata.python` is missing from the wheel; 1.2.x fails too), and
mediapipe is far too heavy for a runtime dependency. MediaPipe's `ImageClassifier` and its
`MetadataDisplayer` are used as the independent readers in the tests. The model flatbuffer itself
is rewritten with the schema LiteRT ships, as tflite-support's `MetadataPopulator` does.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field

import numpy as np

from edgekit import __version__, _metadata_schema_generated
from edgekit.errors import EdgekitError
from edgekit.runner import read_metadata as runner_read_metadata
from edgekit.tflite import METADATA_NAME, TFLITE_IDENTIFIER, has_identifier, litert_schema, parse, read_tflite

METADATA_IDENTIFIER = b"M001"
MIN_PARSER_VERSION = "1.0.0"  # every feature written here (image properties, normalisation, stats, files) is 1.0.0
LABELS_FILE = "labels.txt"
LINEAGE_FILE = "edgekit.json"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so the same model and labels give the same bytes and sha256
# The in-graph Rescaling layer maps raw 0..255 RGB to [-1, 1] itself: readers must feed raw pixels.
RAW_PIXELS = {"mean": (0.0,), "std": (1.0,)}


@dataclass(frozen=True)
class ClassifierMetadata:
    """What the standard metadata of an image classifier says, as edgekit and the runner use it."""

    name: str
    description: str
    version: str
    author: str
    labels: tuple[str, ...] | None  # from the output's TENSOR_AXIS_LABELS file, when packed
    mean: tuple[float, ...] | None  # input NormalizationOptions: readers feed (pixel - mean) / std
    std: tuple[float, ...] | None
    color_space: str | None  # RGB, GRAYSCALE or UNKNOWN, from the input's ImageProperties
    min_parser_version: str
    files: tuple[str, ...] = ()  # names of the associated files packed in the model's zip
    edgekit: dict | None = field(default=None)  # edgekit.json: version and lineage, for edgekit's own models

    def as_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "version": self.version,
                "author": self.author, "labels": list(self.labels) if self.labels is not None else None,
                "normalization": None if self.mean is None else {"mean": list(self.mean), "std": list(self.std)},
                "color_space": self.color_space, "min_parser_version": self.min_parser_version,
                "files": list(self.files), "edgekit": self.edgekit}


# ---------------------------------------------------------------------------------------------------
# Writing


def add_classifier_metadata(content: bytes, *, name: str, labels: list[str] | tuple[str, ...], version: str,
                            lineage: dict, description: str | None = None,
                            mean: tuple[float, ...] = RAW_PIXELS["mean"],
                            std: tuple[float, ...] = RAW_PIXELS["std"]) -> bytes:
    """`content` with standard image-classifier metadata, labels and `edgekit.json` packed in.

    `mean`/`std` describe what the model expects as (pixel - mean) / std; edgekit's own models
    normalise in-graph, so the default says "raw pixels". Any metadata already there is replaced,
    so adding it twice gives the same bytes as once.
    """
    model = parse(content)
    if not model.is_image_classifier or model.inputs[0].shape[-1] != 3:
        raise EdgekitError(f"{name}: inputs {_shapes(model.inputs)}, outputs {_shapes(model.outputs)}: not an RGB "
                           "image classifier ([1, H, W, 3] in, [1, N] out); cannot describe it as one")
    classes = model.outputs[0].shape[-1]
    if len(labels) != classes:
        raise EdgekitError(f"{name}: {len(labels)} labels for {classes} output scores; pass the model's labels")
    if len(mean) not in (1, 3) or len(std) != len(mean) or not all(s > 0 for s in std):
        raise EdgekitError(f"{name}: normalisation mean {list(mean)} std {list(std)}: give 1 or 3 values each, "
                           "std above 0")
    description = description or (f"Image classifier over {classes} classes made by edgekit {__version__}; "
                                  "feed raw RGB pixels in 0..255 (the model normalises them itself).")
    record = {"edgekit_version": __version__, "name": name, "version": version, "labels": list(labels),
              "normalization": {"mean": list(mean), "std": list(std)}, "lineage": lineage}
    metadata = _metadata_buffer(name, description, version, classes, (list(mean), list(std)))
    files = {LABELS_FILE: "".join(f"{label}\n" for label in labels).encode("utf-8"),
             LINEAGE_FILE: json.dumps(record, indent=2, sort_keys=True).encode("utf-8") + b"\n"}
    return _pack_files(_with_metadata_buffer(content, metadata), files)


def lineage_record(parent, run: str, recipe: str, recipe_hash: str, extra: dict | None = None) -> dict:
    """What `edgekit.json` records of where a variant came from (`parent`: a manifests.ParentRef)."""
    return {"parent_sha256": parent.sha256, "parent_kind": parent.kind, "parent_file": parent.file, "run": run,
            "recipe": recipe, "recipe_hash": recipe_hash, **(extra or {})}


def _metadata_buffer(name: str, description: str, version: str, classes: int, normalization) -> bytes:
    """The ModelMetadata flatbuffer ("M001") for an RGB classifier fed (pixel - mean) / std."""
    import flatbuffers

    md = _metadata_schema_generated
    image = md.TensorMetadataT()
    image.name, image.description = "image", "RGB image (pixel - mean) / std, pixels in 0..255; resize to the input"
    image.content = md.ContentT()
    image.content.contentPropertiesType = md.ContentProperties.ImageProperties
    image.content.contentProperties = md.ImagePropertiesT()
    image.content.contentProperties.colorSpace = md.ColorSpaceType.RGB
    options = md.NormalizationOptionsT()
    options.mean, options.std = normalization
    unit = md.ProcessUnitT()
    unit.optionsType, unit.options = md.ProcessUnitOptions.NormalizationOptions, options
    image.processUnits = [unit]
    image.stats = md.StatsT()
    mean, std = normalization  # Stats describe the values fed, after normalisation
    image.stats.min = [(0.0 - m) / s for m, s in zip(mean, std)]
    image.stats.max = [(255.0 - m) / s for m, s in zip(mean, std)]

    scores = md.TensorMetadataT()
    scores.name, scores.description = "probability", f"Probabilities of the {classes} labels (softmax)."
    scores.content = md.ContentT()
    scores.content.contentPropertiesType = md.ContentProperties.FeatureProperties
    scores.content.contentProperties = md.FeaturePropertiesT()
    scores.stats = md.StatsT()
    scores.stats.min, scores.stats.max = [0.0], [1.0]
    scores.associatedFiles = [_file(LABELS_FILE, "Labels of the output scores, one per line, in order.",
                                    md.AssociatedFileType.TENSOR_AXIS_LABELS)]

    graph = md.SubGraphMetadataT()
    graph.inputTensorMetadata, graph.outputTensorMetadata = [image], [scores]
    meta = md.ModelMetadataT()
    meta.name, meta.description, meta.version, meta.author = name, description, version, "edgekit"
    meta.subgraphMetadata = [graph]
    about = "edgekit version, labels, normalisation and lineage (parent sha256, recipe name and hash) as JSON."
    meta.associatedFiles = [_file(LINEAGE_FILE, about, md.AssociatedFileType.UNKNOWN)]
    meta.minParserVersion = MIN_PARSER_VERSION
    builder = flatbuffers.Builder(1024)
    builder.Finish(meta.Pack(builder), METADATA_IDENTIFIER)
    return bytes(builder.Output())


def _file(name: str, description: str, kind: int):
    entry = _metadata_schema_generated.AssociatedFileT()
    entry.name, entry.description, entry.type = name, description, kind
    return entry


def _with_metadata_buffer(content: bytes, metadata: bytes) -> bytes:
    """The model flatbuffer with `metadata` as its TFLITE_METADATA buffer (replacing any previous one)."""
    import flatbuffers


    schema = litert_schema()
    model = schema.ModelT.InitFromPackedBuf(bytes(content), 0)
    if any(buffer.offset > 1 for buffer in model.buffers or []):
        raise EdgekitError("the model keeps its weights outside the flatbuffer (a >2 GB export); metadata cannot "
                           "be added to it")
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata, dtype=np.uint8)
    entries = [e for e in model.metadata or [] if _text(e.name) == METADATA_NAME]
    if entries:
        model.buffers[entries[0].buffer] = buffer
    else:
        entry = schema.MetadataT()
        entry.name, entry.buffer = METADATA_NAME, len(model.buffers)
        model.buffers.append(buffer)
        model.metadata = [*(model.metadata or []), entry]
    builder = flatbuffers.Builder(len(content) + len(metadata) + 1024)
    builder.Finish(model.Pack(builder), TFLITE_IDENTIFIER)
    return bytes(builder.Output())


def _pack_files(content: bytes, files: dict[str, bytes]) -> bytes:
    """Append the associated files as a stored (uncompressed) zip, as the standard populator does."""
    stream = io.BytesIO(content)
    stream.seek(0, io.SEEK_END)
    with zipfile.ZipFile(stream, "a", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=_ZIP_TIME), data)
    return stream.getvalue()


# ---------------------------------------------------------------------------------------------------
# Reading


def packed_files(content: bytes) -> dict[str, bytes]:
    """The associated files zipped onto a model (empty when it has none)."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            return {info.filename: archive.read(info) for info in archive.infolist() if not info.is_dir()}
    except (zipfile.BadZipFile, OSError, ValueError):
        return {}


def read_metadata(content: bytes, label: str = "<tflite bytes>") -> ClassifierMetadata | None:
    """The standard metadata of any .tflite (None when it has none), read by the on-device runner's reader
    so host and device agree on it; metadata that is present but unreadable is one EdgekitError line."""

    if not has_identifier(content):
        raise EdgekitError(f"{label}: not a TFLite model (no 'TFL3' flatbuffer identifier); pass a .tflite file")
    found = runner_read_metadata(content, label)
    if not found:
        return None
    files = packed_files(content)
    labels, mean, std = (found.get(key) for key in ("labels", "mean", "std"))
    return ClassifierMetadata(
        name=found["name"], description=found["description"], version=found["version"], author=found["author"],
        labels=tuple(labels) if labels else None, mean=tuple(mean) if mean else None,
        std=tuple(std) if std else None, color_space=found["color_space"],
        min_parser_version=found["min_parser_version"], files=tuple(sorted(files)),
        edgekit=_json(files.get(LINEAGE_FILE)))


def read_metadata_file(path) -> ClassifierMetadata | None:
    return read_metadata(read_tflite(path), label=str(path))


def _json(data: bytes | None) -> dict | None:
    try:
        found = json.loads(data.decode("utf-8")) if data else None
    except (UnicodeDecodeError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


def _shapes(tensors) -> list:
    return [f"{t.dtype}{list(t.shape)}" for t in tensors]


def describe_lines(meta: ClassifierMetadata) -> list[str]:
    """What `edgekit info` prints about a model's standard metadata."""
    labels = meta.labels
    shown = "none packed" if labels is None else ", ".join(labels[:10]) + (", ..." if len(labels) > 10 else "")
    norm = "none" if meta.mean is None else f"mean {list(meta.mean)} std {list(meta.std)}"
    about = "".join(f" {word} {value}" for word, value in (("version", meta.version), ("by", meta.author),
                                                            ("(parser >=", meta.min_parser_version)) if value)
    lines = [f"  standard metadata: {meta.name or '(no name)'}{about}{')' if meta.min_parser_version else ''}",
             f"    input: {meta.color_space or 'no image properties'}, normalisation {norm}",
             f"    labels ({0 if labels is None else len(labels)}): {shown}"]
    if meta.edgekit:
        lineage = meta.edgekit.get("lineage") or {}
        parent = str(lineage.get("parent_sha256") or "-")[:16]
        lines.append(f"    edgekit {meta.edgekit.get('edgekit_version', '-')}: recipe {lineage.get('recipe', '-')} "
                     f"(hash {lineage.get('recipe_hash', '-')}), parent sha256 {parent}")
    return lines
