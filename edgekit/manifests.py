"""The typed contract for every artifact: one dataclass per kind, read and written only here.

A manifest is how one stage hands its work to the next (run → variant → bench result → deployment →
feedback), so a renamed or missing field must fail when the manifest is read, in one place, with a line
naming the file — not in whichever reader meets it first. Readers ask the dataclass, never the JSON.

Payloads that have a class store that class: a run's `dataset` is a `DatasetRecord` holding the full
`DataSpec`, its `config` a `TrainConfig`, a variant's `recipe` a `Recipe`; each round-trips through JSON.

Schema history: version 1 (edgekit 0.1) had `schema: 1` and no `schema_version`; variants had no
`recipe_hash`. Variants gained an optional `drift_reference` in version 2 (absent: made before it, "no
reference"). Version 3 typed the payloads; versions 1 and 2 kept `dataset` as the data layer's description
dict (the spec spread over `split`, `path`, `exclude`, ...), which `_upgrade` rebuilds. Older versions are
read and upgraded in memory; what is written is always the current version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from edgekit.artifacts import MANIFEST, file_record, library_versions, sha256_file, utc_now, write_json_atomic
from edgekit.config import TrainConfig, from_mapping
from edgekit.data.types import DEFAULT_MAX_IMAGE_PIXELS, DatasetRecord, DataSpec
from edgekit.errors import EdgekitError
from edgekit.recipes import Recipe, recipe_from_mapping

SCHEMA_VERSION = 3


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    size: int


@dataclass(frozen=True)
class ParentRef:
    """How a child artifact names its parent: the directory, its kind and its main file's sha256."""

    path: str
    sha256: str
    kind: str | None = None
    file: str | None = None


@dataclass(frozen=True)
class ModelContract:
    """What a consumer needs to feed the model: input size, pixel range, preprocessing and labels."""

    file: str
    input_size: tuple[int, ...]
    labels: tuple[str, ...]
    pixel_range: tuple[float, ...] = (0, 255)
    color: str = "RGB"
    resize: str = "bilinear"
    resize_mode: str = ""
    normalization: str = ""
    architecture: dict = field(default_factory=dict)
    weights: str | None = None
    parameters: int | None = None

    @property
    def image_size(self) -> int:
        return int(self.input_size[0])


@dataclass(frozen=True)
class Metrics:
    """Classification figures on one split (see `edgekit.evaluate.classification_metrics`)."""

    n: int
    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_class: dict = field(default_factory=dict)
    confusion_matrix: tuple = ()


@dataclass(frozen=True)
class TrainingStats:
    epochs_run: int
    fit_seconds: float
    throughput_images_per_s: float | None = None


@dataclass(frozen=True)
class Hardware:
    """What a run was trained on: its speed, and with mixed precision its numbers, depend on it."""

    gpus: int = 0
    strategy: str = ""
    replicas: int = 1
    mixed_precision: bool = False


@dataclass(frozen=True)
class RuntimeRecord:
    """The interpreter that measured a model's accuracy (`evaluate.TFLitePredictor.runtime`)."""

    name: str
    version: str | None = None
    threads: int | None = None  # None: the runtime's default (and Keras, which has no such setting)


@dataclass(frozen=True)
class StageTiming:
    """How long one recipe stage took (`compress`)."""

    stage: str
    seconds: float
    calibration_images: int | None = None  # convert to int8: the calibration images used (the split may have fewer)


@dataclass(frozen=True)
class RunMetrics:
    validation: Metrics


@dataclass(frozen=True)
class OutputDiff:
    max: float
    mean: float
    n: int


@dataclass(frozen=True)
class VariantMetrics:
    validation: Metrics
    float_keras_accuracy: float
    accuracy_delta_vs_float: float
    output_abs_diff_vs_float: OutputDiff


@dataclass(frozen=True)
class DriftReference:
    """What the variant's top-1 answers look like on the validation split, measured with the shipped .tflite:
    the field's answers are compared with it (`edgekit fleet status`, see `edgekit.fleet.drift`)."""

    n: int
    score_histogram: tuple[int, ...]  # counts of the top-1 score in equal bins over [0, 1]
    class_counts: dict[str, int]  # how often each label was the top-1 answer
    median_score: float = 0.0
    split: str = "validation"


@dataclass(frozen=True)
class Manifest:
    """Fields every artifact has; `kind` says which subclass describes the rest."""

    KIND: ClassVar[str] = ""
    MAIN_FILE: ClassVar[str | None] = None
    schema_version: int = SCHEMA_VERSION
    created: str = ""
    files: dict[str, FileRecord] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # library versions that change results

    def sha256(self, name: str | None = None) -> str:
        name = name or self.MAIN_FILE
        if name not in self.files:
            raise EdgekitError(f"{self.KIND} manifest lists no file {name!r}")
        return self.files[name].sha256

    def as_dict(self) -> dict:
        out = {"kind": self.KIND, **dataclasses.asdict(self)}
        recipe = getattr(self, "recipe", None)
        if recipe is not None:  # the mapping a recipe file holds, not the stage objects' fields
            out["recipe"] = recipe.as_dict()
        return out


@dataclass(frozen=True)
class RunManifest(Manifest):
    KIND: ClassVar[str] = "run"
    MAIN_FILE: ClassVar[str] = "model.keras"
    name: str = ""
    model: ModelContract | None = None
    dataset: DatasetRecord | None = None  # its spec reloads the same splits (eval, compress, bench)
    config: TrainConfig = field(default_factory=TrainConfig)  # the resolved config, as in train_config.json
    seed: int = 0
    hardware: Hardware | None = None
    training: TrainingStats | None = None
    wall_time_s: float = 0.0
    finished: str = ""
    metrics: RunMetrics | None = None
    lineage: dict = field(default_factory=dict)  # e.g. the tune study and trial that made this run


@dataclass(frozen=True)
class VariantManifest(Manifest):
    KIND: ClassVar[str] = "variant"
    MAIN_FILE: ClassVar[str] = "model.tflite"
    name: str = ""
    recipe_hash: str = ""
    parent: ParentRef | None = None
    run: str = ""
    model: ModelContract | None = None
    dataset: DatasetRecord | None = None
    recipe: Recipe | None = None  # in JSON as the recipe file's mapping (`Recipe.as_dict`)
    tflite: dict = field(default_factory=dict)  # edgekit.tflite.TFLiteModel.describe() + size, gzip_size
    sparsity: dict[str, float] = field(default_factory=dict)  # per kernel, plus "overall" (prune stages)
    runtime: RuntimeRecord | None = None
    metrics: VariantMetrics | None = None
    timings: tuple[StageTiming, ...] = ()
    wall_time_s: float = 0.0
    edgetpu: dict | None = None
    lineage: dict = field(default_factory=dict)
    drift_reference: DriftReference | None = None  # absent from variants made before edgekit tracked drift


@dataclass(frozen=True)
class EvalManifest(Manifest):
    KIND: ClassVar[str] = "eval"
    parent: ParentRef | None = None
    dataset: DatasetRecord | None = None
    runtime: RuntimeRecord | None = None
    metrics: Metrics | None = None


@dataclass(frozen=True)
class BenchManifest(Manifest):
    KIND: ClassVar[str] = "bench"
    MAIN_FILE: ClassVar[str] = "results.json"
    device: str = ""
    parents: tuple[ParentRef, ...] = ()
    partial: bool = False
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FeedbackImportManifest(Manifest):
    KIND: ClassVar[str] = "feedback-import"
    MAIN_FILE: ClassVar[str] = "device.db"
    source: str = ""
    counts: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FeedbackDatasetManifest(Manifest):
    KIND: ClassVar[str] = "feedback-dataset"
    report: dict = field(default_factory=dict)
    parents: tuple[ParentRef, ...] = ()


@dataclass(frozen=True)
class TlsRecord:
    """The certificate a deployed `serve` presents: paths on the device and the SHA-256 clients pin."""

    sha256: str
    cert: str = ""
    key: str = ""


@dataclass(frozen=True)
class DeploymentManifest(Manifest):
    """What was installed where: the device, its work directory and the sha256 of every file copied."""

    KIND: ClassVar[str] = "deployment"
    device: str = ""
    address: str = ""
    workdir: str = ""
    model: str = ""
    model_sha256: str = ""
    parent: ParentRef | None = None
    remote_files: dict = field(default_factory=dict)
    service: dict | None = None
    tls: TlsRecord | None = None  # `deploy --service serve --tls`; absent in older manifests


@dataclass(frozen=True)
class ProbeManifest(VariantManifest):
    """A seeded random-weight conversion of a candidate architecture that `edgekit tune` times before
    training it: shaped like a variant (so `bench` measures it the same way) but with no accuracy."""

    KIND: ClassVar[str] = "probe"


@dataclass(frozen=True)
class TuneManifest(Manifest):
    """An `edgekit tune` directory: the study, its budget, how the trials ended and the best candidate."""

    KIND: ClassVar[str] = "tune"
    MAIN_FILE: ClassVar[str] = "trials.json"
    name: str = ""
    device: str = ""
    budget: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    best: dict | None = None


@dataclass(frozen=True)
class DataCheckManifest(Manifest):
    """`edgekit data check`: which folder was checked, the headline counts, and the run used for labels."""

    KIND: ClassVar[str] = "datacheck"
    MAIN_FILE: ClassVar[str] = "report.json"
    data: str = ""
    summary: tuple[str, ...] = ()
    run: ParentRef | None = None


KINDS: dict[str, type[Manifest]] = {cls.KIND: cls for cls in (
    RunManifest, VariantManifest, EvalManifest, BenchManifest, FeedbackImportManifest, FeedbackDatasetManifest,
    DeploymentManifest, ProbeManifest, TuneManifest, DataCheckManifest)}
M = TypeVar("M", bound=Manifest)


def to_metrics(values: dict, where: str = "metrics") -> Metrics:
    """The typed figures from `classification_metrics` output (per-image predictions are not kept)."""
    return from_mapping(Metrics, {k: v for k, v in values.items() if k != "predictions"}, where)


def recipe_hash(recipe: dict) -> str:
    """A variant's identity beside its name: the sha256 of its recipe's stages, canonically serialised."""
    stages = json.dumps(recipe.get("stages", []), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(stages.encode()).hexdigest()[:16]


def _upgrade(raw: dict, where: str) -> dict:
    """Bring a version-1 or -2 manifest to the current shape (in memory only)."""
    raw = dict(raw)
    version = raw.pop("schema", None)
    raw.setdefault("schema_version", version if version is not None else SCHEMA_VERSION)
    if raw.get("schema_version", SCHEMA_VERSION) == 1:
        if raw.get("kind") == "variant" and "recipe_hash" not in raw:
            raw["recipe_hash"] = recipe_hash(raw.get("recipe") or {})
        raw["schema_version"] = 2
    if raw.get("schema_version") == 2:
        if isinstance(raw.get("dataset"), dict):
            raw["dataset"] = _dataset_from_description(raw["dataset"], _image_size(raw), f"{where}: field 'dataset'")
        for key in ("recipe", "hardware", "runtime"):  # {}: none recorded (a run has no recipe; hand-made ones)
            if not raw.get(key):
                raw.pop(key, None)
        raw["schema_version"] = SCHEMA_VERSION
    return raw


def _image_size(raw: dict) -> int:
    """The input size a version-2 manifest's model was trained at: its data spec's image size."""
    try:
        return int(raw["model"]["input_size"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        return DataSpec().image_size  # an eval manifest names no model; its spec is a record, not reloaded


def _dataset_from_description(old: dict, image_size: int, where: str) -> dict | None:
    """A version-2 dataset description as the version-3 `DatasetRecord` mapping: the spec rebuilt from the
    fields that decide the file list and split (as `spec_from_description` did), the findings kept."""
    if not old:
        return None
    old = dict(old)
    try:
        split = dict(old.pop("split", None) or {})
        exclude = old.pop("exclude", None)
        extra = old.pop("extra_data", None) or []
        source = old.get("source")
        spec = {"data": old.get("path") if source == "folder" else None,
                "extra_data": [e["path"] for e in extra], "image_size": image_size,
                "seed": split.pop("seed", 42), "validation_fraction": split.pop("validation_fraction", 0.2),
                "max_image_pixels": old.pop("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS),
                "exclude": exclude.get("path") if exclude else None, "group_duplicates": "duplicates" in split}
    except (AttributeError, TypeError, KeyError, ValueError) as exc:
        raise EdgekitError(f"{where}: damaged ({type(exc).__name__}: {exc}); re-create the artifact") from None
    if "n_images" in old:  # the digits counted images, folders files
        old["n_files"] = old.pop("n_images")
    return {**old, "spec": spec, "split": split or None, "exclude": exclude, "extra_data": extra}


def from_dict(raw: Any, where: str, expected: type[M] | None = None) -> M:
    """Build the manifest dataclass for `raw`; every problem is one line starting with `where`."""
    if not isinstance(raw, dict) or "kind" not in raw:
        raise EdgekitError(f"{where}: not an edgekit manifest (no 'kind'); was it written by another tool?")
    kind = raw["kind"]
    if kind not in KINDS:
        raise EdgekitError(f"{where}: unknown artifact kind {kind!r}; known kinds: {', '.join(KINDS)}")
    raw = _upgrade(raw, where)
    if not isinstance(raw["schema_version"], int) or raw["schema_version"] > SCHEMA_VERSION:
        raise EdgekitError(f"{where}: schema version {raw['schema_version']!r} is newer than this edgekit "
                           f"understands ({SCHEMA_VERSION}); upgrade edgekit")
    cls = KINDS[kind]
    if expected is not None and cls is not expected:
        raise EdgekitError(f"{where}: is a {kind} artifact, not a {expected.KIND}")
    fields = {k: v for k, v in raw.items() if k != "kind"}
    recipe = fields.pop("recipe", None) if "recipe" in {f.name for f in dataclasses.fields(cls)} else None
    manifest = from_mapping(cls, fields, where)
    if recipe is not None:  # a recipe is validated like a recipe file, stage by stage
        manifest = dataclasses.replace(manifest, recipe=recipe_from_mapping(recipe, f"{where}: field 'recipe'"))
    return manifest


def read(directory: Path, expected: type[M] | None = None) -> M:
    """The manifest of an artifact directory; missing, damaged, foreign or of the wrong kind is one line."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.exists():
        raise EdgekitError(f"{directory}: no such directory")
    if not path.is_file():
        what = f"an edgekit {expected.KIND}" if expected else "an edgekit artifact (run, variant, ...)"
        raise EdgekitError(f"{directory}: no {MANIFEST}, so not {what} directory")
    return read_file(path, expected)


def read_file(path: Path, expected: type[M] | None = None) -> M:
    """A manifest file by path (the one `read` finds in a directory, or one passed on its own)."""
    path = Path(path)
    if not path.is_file():
        raise EdgekitError(f"{path}: no such manifest file")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EdgekitError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); the file is damaged") \
            from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgekitError(f"{path}: cannot be read ({exc}); the file is damaged") from None
    return from_dict(raw, str(path), expected)


def read_optional(directory: Path, expected: type[M] | None = None) -> M | None:
    """Like `read`, but None when the directory has no manifest at all (a bare .tflite's folder)."""
    if not (Path(directory) / MANIFEST).is_file():
        return None
    return read(directory, expected)


def write(directory: Path, manifest: M, files: list[str]) -> M:
    """Record sha256 and size of `files` (relative to `directory`) and write manifest.json atomically."""
    directory = Path(directory)
    records = {name: FileRecord(**file_record(directory / name)) for name in files}
    manifest = dataclasses.replace(manifest, schema_version=SCHEMA_VERSION, created=manifest.created or utc_now(),
                                   files=records, versions=manifest.versions or library_versions())
    write_json_atomic(directory / MANIFEST, manifest.as_dict())
    return manifest


def parent_ref(directory: Path, manifest: Manifest, main_file: str | None = None) -> ParentRef:
    main_file = main_file or manifest.MAIN_FILE
    return ParentRef(path=str(Path(directory).resolve()), sha256=manifest.sha256(main_file), kind=manifest.KIND,
                     file=main_file)


def verify_files(directory: Path, manifest: Manifest | None = None, names: list[str] | None = None) -> Manifest:
    """Check that files listed in the manifest still have their recorded sha256; returns the manifest."""
    directory = Path(directory)
    manifest = manifest if manifest is not None else read(directory)
    for name in names if names is not None else list(manifest.files):
        if name not in manifest.files:
            raise EdgekitError(f"{directory / MANIFEST}: lists no file {name!r}")
        path = directory / name
        if not path.is_file():
            raise EdgekitError(f"{path}: missing, but listed in {MANIFEST}; the artifact is incomplete")
        actual, recorded = sha256_file(path), manifest.files[name].sha256
        if actual != recorded:
            raise EdgekitError(f"{path}: sha256 {actual[:12]}… does not match {recorded[:12]}… in {MANIFEST}; the "
                               "file was changed after it was written — re-create it")
    return manifest
