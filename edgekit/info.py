"""`edgekit info`: what an artifact directory or any `.tflite` file is, without importing TensorFlow.

Each manifest kind has one describer, registered in `DESCRIBERS`; a kind without one (a newer edgekit's)
still gets the lines every artifact has: its kind, parents, files and versions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgekit import manifests
from edgekit.artifacts import MANIFEST
from edgekit.data.types import DatasetRecord
from edgekit.errors import EdgekitError
from edgekit.render import fmt
from edgekit.tflite import parse, read_tflite
from edgekit.tflite_metadata import describe_lines, read_metadata


def describe_path(path: Path) -> tuple[dict, str]:
    """(JSON payload, text) for a run/variant/result directory, a file inside one, or a bare .tflite."""
    path = Path(path)
    if not path.exists():
        raise EdgekitError(f"{path}: no such file or directory")
    if path.is_file() and path.suffix == ".tflite":
        return _describe_model_file(path)
    directory = path if path.is_dir() else path.parent
    if path.is_file() and path.name != manifests.MANIFEST and manifests.read_optional(directory) is None:
        raise EdgekitError(f"{path}: not a .tflite file, and its folder has no edgekit manifest.json; pass a .tflite "
                           "file or a run, variant, eval or bench folder")
    manifest = manifests.read(directory)
    return manifest.as_dict(), describe_manifest(directory, manifest)


def describe_manifest(directory: Path, manifest: manifests.Manifest) -> str:
    """What `edgekit info` prints for an artifact: through its kind's describer, or the generic one."""
    return DESCRIBERS.get(manifest.KIND, describe_generic)(directory, manifest)


def _framed(body: Callable[[manifests.Manifest], list[str]]) -> Callable[[Path, manifests.Manifest], str]:
    """A describer: the header and parents, `body`'s lines for the kind, then lineage, files and versions."""
    def describe(directory: Path, manifest: manifests.Manifest) -> str:
        lines = [f"{directory}  ({manifest.KIND}, created {manifest.created}, schema {manifest.schema_version})"]
        parent = getattr(manifest, "parent", None)
        for ref in [parent] if parent else list(getattr(manifest, "parents", ())):
            lines.append(f"  parent: {ref.path} [{ref.file or ''} sha256 {ref.sha256[:12]}…]")
        lines += body(manifest)
        if getattr(manifest, "lineage", None):
            lines.append("  lineage: " + ", ".join(f"{k}={v}" for k, v in manifest.lineage.items()))
        for name, record in manifest.files.items():
            lines.append(f"  file {name}: {fmt(record.size, 'size')}  sha256 {record.sha256[:16]}…")
        if manifest.versions:
            lines.append("  versions: " + ", ".join(f"{k} {v}" for k, v in manifest.versions.items()))
        return "\n".join(lines)

    return describe


describe_generic = _framed(lambda manifest: [])


def _model_lines(model: manifests.ModelContract | None) -> list[str]:
    if model is None:
        return []
    arch, labels = model.architecture, model.labels
    return [f"  model: {model.file}  input {list(model.input_size)}  pixels {list(model.pixel_range)}"
            f"  {arch.get('family', '')} alpha={arch.get('alpha', '-')}  weights={model.weights or '-'}",
            f"  labels ({len(labels)}): {', '.join(labels[:20])}{' …' if len(labels) > 20 else ''}"]


def _dataset_lines(dataset: DatasetRecord | None) -> list[str]:
    if dataset is None:
        return []
    split = dataset.split
    lines = [f"  data: {dataset.source} {dataset.path or dataset.origin}  "
             f"train {split.train if split else '?'} / validation {split.validation if split else '?'}  "
             f"fingerprint {dataset.fingerprint[:12]}…"]
    if dataset.extra_data:
        lines.append(f"  extra data: {', '.join(e.path for e in dataset.extra_data)}")
    return lines


def _metrics_line(split: str, m: manifests.Metrics | None) -> list[str]:
    return [] if m is None else [f"  {split}: accuracy {m.accuracy:.4f}  macro-F1 {m.macro_f1:.4f}  n={m.n}"]


def _run(m: manifests.RunManifest) -> list[str]:
    lines = _model_lines(m.model) + _dataset_lines(m.dataset)
    if m.training:
        t = m.training
        lines.append(f"  training: {t.epochs_run} epochs, {t.fit_seconds} s, {t.throughput_images_per_s} images/s, "
                     f"wall {m.wall_time_s} s")
    return lines + _metrics_line("validation", m.metrics.validation if m.metrics else None)


def _variant(m: manifests.VariantManifest) -> list[str]:
    stages = " → ".join(s.type for s in m.recipe.stages) if m.recipe else ""
    tflite, sparsity = m.tflite, m.sparsity.get("overall")
    inputs = tflite.get("inputs") or [{}]
    return [*_model_lines(m.model), *_dataset_lines(m.dataset), f"  recipe: {m.name} ({stages}), hash {m.recipe_hash}",
            f"  tflite: {fmt(tflite.get('size', tflite.get('size_bytes')), 'size')} (gzip "
            f"{fmt(tflite.get('gzip_size'), 'size')}), input {inputs[0].get('dtype')} {inputs[0].get('shape')}, "
            f"{sum((tflite.get('ops') or {}).values())} ops" + (f", sparsity {sparsity:.1%}" if sparsity is not None
                                                                 else ""),
            *_metrics_line("validation", m.metrics.validation if m.metrics else None)]


def _probe(m: manifests.ProbeManifest) -> list[str]:
    return [*_variant(m), "  probe: random weights, converted only to time the architecture (no accuracy)"]


def _eval(m: manifests.EvalManifest) -> list[str]:
    return _dataset_lines(m.dataset) + _metrics_line("metrics", m.metrics)


def _bench(m: manifests.BenchManifest) -> list[str]:
    settings = ", ".join(f"{k}={v}" for k, v in m.settings.items() if v not in (None, "", [], {}))
    return [f"  device: {m.device}" + ("  (partial: some variants failed)" if m.partial else ""),
            f"  settings: {settings or '-'}"]


def _feedback_import(m: manifests.FeedbackImportManifest) -> list[str]:
    counts = ", ".join(f"{k} {v}" for k, v in m.counts.items())
    return [f"  source: {m.source}", f"  counts: {counts or '-'}"]


def _feedback_dataset(m: manifests.FeedbackDatasetManifest) -> list[str]:
    figures = {k: v for k, v in m.report.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return [f"  feedback dataset: {', '.join(f'{k} {v}' for k, v in figures.items()) or '-'}"]


def _deployment(m: manifests.DeploymentManifest) -> list[str]:
    lines = [f"  device: {m.device} ({m.address}), work directory {m.workdir}",
             f"  model: {m.model}  sha256 {m.model_sha256[:16]}…"]
    if m.service:
        lines.append("  service: " + ", ".join(f"{k}={v}" for k, v in m.service.items()))
    if m.tls:
        lines.append(f"  tls: certificate sha256 {m.tls.sha256[:16]}…")
    return lines


def _datacheck(m: manifests.DataCheckManifest) -> list[str]:
    lines = [f"  data: {m.data}"] + [f"  {line}" for line in m.summary]
    if m.run:
        lines.append(f"  labels checked with the run {m.run.path}")
    return lines


def _tune(directory: Path, manifest: manifests.TuneManifest) -> str:
    from edgekit.tune.report import best_line  # loads Optuna

    counts = ", ".join(f"{n} {state}" for state, n in manifest.counts.items())
    budget = ", ".join(f"{k} {v}" for k, v in manifest.budget.items() if v is not None)
    lines = [f"{directory}  (tune study {manifest.name!r} on {manifest.device}, updated {manifest.created})",
             f"  budget: {budget}", f"  trials: {counts or 'none'}", "  " + best_line(manifest.best, manifest.device),
             f"  files: {', '.join(manifest.files)} ({MANIFEST} lists their sha256)"]
    return "\n".join(lines)


# One describer per manifest kind (tests check every kind in manifests.KINDS is here).
DESCRIBERS: dict[str, Callable[[Path, manifests.Manifest], str]] = {
    "run": _framed(_run), "variant": _framed(_variant), "probe": _framed(_probe), "eval": _framed(_eval),
    "bench": _framed(_bench), "feedback-import": _framed(_feedback_import),
    "feedback-dataset": _framed(_feedback_dataset), "deployment": _framed(_deployment),
    "datacheck": _framed(_datacheck), "tune": _tune,
}


def describe_tflite(path: Path, model) -> str:
    """What `edgekit info FILE.tflite` prints for any model, edgekit's or not (`model`: tflite.TFLiteModel)."""
    lines = [f"{path}  (TFLite model, {fmt(model.size, 'size')}, sha256 {model.sha256[:16]}…)",
             f"  schema version {model.version}, {model.subgraph_count} subgraph(s), {model.tensor_count} tensors, "
             f"minimum runtime {model.min_runtime_version or 'not recorded'}"]
    if model.description:
        lines.append(f"  description: {model.description}")
    for role, tensors in (("input", model.inputs), ("output", model.outputs)):
        for tensor in tensors:
            quant = tensor.quantization
            q = "" if quant is None else (f"  scale {quant.scales[0]:.6g} zero point {quant.zero_points[0]}"
                                          if quant.axis is None else f"  per-channel (axis {quant.axis})")
            lines.append(f"  {role} {tensor.name}: {tensor.dtype} {list(tensor.shape)}{q}")
    ops, custom = model.op_counts, set(model.custom_ops)
    lines.append(f"  ops ({sum(ops.values())}): " + ", ".join(f"{k}{' (custom)' if k in custom else ''} {v}"
                                                             for k, v in ops.items()))
    if custom:
        lines.append(f"  custom ops: {', '.join(sorted(custom))} — stock LiteRT and tflite-runtime cannot load this "
                     "model unless these ops are registered with the interpreter")
    lines.append("  metadata entries: " + (", ".join(sorted(model.metadata)) or "none"))
    kind = "image classifier ([1, H, W, C] in, [1, N] out)" if model.is_image_classifier else \
        "not a single-input image classifier"
    lines.append(f"  looks like: {kind}")
    return "\n".join(lines)


def _describe_model_file(path: Path) -> tuple[dict, str]:

    content = read_tflite(path)
    model = parse(content, str(path))
    standard = read_metadata(content, str(path))
    payload = {"path": str(path), **model.describe(),
               "standard_metadata": standard.as_dict() if standard is not None else None}
    text = describe_tflite(path, model)
    if standard is not None:
        text += "\n" + "\n".join(describe_lines(standard))
    manifest = manifests.read_optional(path.parent)
    if manifest is not None and path.name in manifest.files:
        payload["manifest"] = manifest.as_dict()
        text += "\n" + describe_manifest(path.parent, manifest)
    return payload, text
