"""Human-readable renderings of manifests and result tables (Markdown, plain text)."""

from __future__ import annotations

from pathlib import Path

from edgekit import manifests
from edgekit.artifacts import recover_swaps, visible_glob, write_json_atomic, write_text_atomic
from edgekit.data.types import DatasetRecord
from edgekit.errors import EdgekitError


def human_size(n: int | float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


TERMINAL_WIDTH = 100  # what tables printed to a terminal fit by default; `--wide` and results.md show all


def _table_width(headers: list[str], cells: list[list[str]]) -> int:
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    return sum(widths) + 3 * len(widths) + 1


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fit_table(headers: list[str], cells: list[list[str]], width: int, drop: tuple[str, ...] = (),
              min_text: int = 12, keep: tuple[str, ...] = ()) -> tuple[list[str], list[list[str]], list[str]]:
    """Make a table fit `width` columns: drop the `drop` columns in that order, then shorten the widest
    cells (text gets a trailing "…") down to `min_text`, never those in `keep`. Returns headers, cells and
    the dropped names."""
    hidden = []
    for name in drop:
        if _table_width(headers, cells) <= width:
            break
        if name in headers:
            i = headers.index(name)
            headers = headers[:i] + headers[i + 1:]
            cells = [row[:i] + row[i + 1:] for row in cells]
            hidden.append(name)
    while cells and _table_width(headers, cells) > width:
        widths = [0 if headers[i] in keep else max(len(r[i]) for r in cells) for i in range(len(headers))]
        i = max(range(len(headers)), key=lambda k: widths[k])
        limit = max(min_text, len(headers[i]), widths[i] - (_table_width(headers, cells) - width))
        if limit >= widths[i]:
            break  # nothing left to shorten: the table stays wider than asked
        cells = [[_clip(c, limit) if k == i else c for k, c in enumerate(row)] for row in cells]
    return headers, cells, hidden


def markdown_table(headers: list[str], rows: list[list], width: int | None = None,
                   drop: tuple[str, ...] = (), keep: tuple[str, ...] = ()) -> str:
    """A GitHub-style Markdown table; also readable as plain text in a terminal.

    With `width` (a terminal), the `drop` columns go first and long cells are shortened, and a last line
    says what was hidden; the full table belongs in files and `--wide`."""
    cells = [[str(c) for c in row] for row in rows]
    hidden: list[str] = []
    if width is not None:
        headers, cells, hidden = fit_table(list(headers), cells, width, drop, keep=keep)
    table = _render(headers, cells)
    if hidden:
        table += f"\n(--wide adds {', '.join(hidden)})"
    return table


def _render(headers: list[str], cells: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join([line, rule, *body])


def describe_manifest(directory: Path, manifest: manifests.Manifest) -> str:
    """What `edgekit info` prints: kind, lineage, model contract, data, metrics and files."""
    lines = [f"{directory}  ({manifest.KIND}, created {manifest.created}, schema {manifest.schema_version})"]
    parents = [manifest.parent] if getattr(manifest, "parent", None) else list(getattr(manifest, "parents", ()))
    for parent in parents:
        lines.append(f"  parent: {parent.path} [{parent.file or ''} sha256 {parent.sha256[:12]}…]")
    model = getattr(manifest, "model", None)
    if isinstance(model, manifests.ModelContract):
        arch = model.architecture
        lines.append(f"  model: {model.file}  input {list(model.input_size)}  pixels {list(model.pixel_range)}"
                     f"  {arch.get('family', '')} alpha={arch.get('alpha', '-')}  weights={model.weights or '-'}")
        labels = model.labels
        lines.append(f"  labels ({len(labels)}): {', '.join(labels[:20])}{' …' if len(labels) > 20 else ''}")
    lines += _dataset_lines(getattr(manifest, "dataset", None))
    if isinstance(manifest, manifests.VariantManifest):
        stages = " → ".join(s.type for s in manifest.recipe.stages) if manifest.recipe else ""
        lines.append(f"  recipe: {manifest.name} ({stages}), hash {manifest.recipe_hash}")
        lines.append("  " + _tflite_line(manifest.tflite, manifest.sparsity.get("overall")))
    if isinstance(manifest, manifests.RunManifest) and manifest.training:
        t = manifest.training
        lines.append(f"  training: {t.epochs_run} epochs, {t.fit_seconds} s, {t.throughput_images_per_s} images/s, "
                     f"wall {manifest.wall_time_s} s")
    lines += _metrics_lines(manifest)
    for key in ("lineage",):
        if getattr(manifest, key, None):
            lines.append(f"  {key}: " + ", ".join(f"{k}={v}" for k, v in getattr(manifest, key).items()))
    for name, record in manifest.files.items():
        lines.append(f"  file {name}: {human_size(record.size)}  sha256 {record.sha256[:16]}…")
    if manifest.versions:
        lines.append("  versions: " + ", ".join(f"{k} {v}" for k, v in manifest.versions.items()))
    return "\n".join(lines)


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


def _metrics_lines(manifest: manifests.Manifest) -> list[str]:
    metrics = getattr(manifest, "metrics", None)
    found = {"validation": metrics.validation} if hasattr(metrics, "validation") else {}
    if isinstance(metrics, manifests.Metrics):
        found = {"metrics": metrics}
    return [f"  {split}: accuracy {m.accuracy:.4f}  macro-F1 {m.macro_f1:.4f}  n={m.n}" for split, m in found.items()]


def _tflite_line(tflite: dict, sparsity: float | None = None) -> str:
    inputs = tflite.get("inputs") or [{}]
    n_ops = sum((tflite.get("ops") or {}).values())
    return (f"tflite: {human_size(tflite.get('size', tflite.get('size_bytes')))} (gzip "
            f"{human_size(tflite.get('gzip_size'))}), input {inputs[0].get('dtype')} {inputs[0].get('shape')}, "
            f"{n_ops} ops" + (f", sparsity {sparsity:.1%}" if sparsity is not None else ""))


def describe_tflite(path: Path, model) -> str:
    """What `edgekit info FILE.tflite` prints for any model, edgekit's or not (`model`: tflite.TFLiteModel)."""
    lines = [f"{path}  (TFLite model, {human_size(model.size)}, sha256 {model.sha256[:16]}…)",
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


def variant_rows(run_dir: Path) -> list[dict]:
    """One row per compressed variant of a run, float32 first, from their manifests."""
    rows = []
    recover_swaps(Path(run_dir) / "compressed")
    for manifest_path in visible_glob(Path(run_dir), "compressed/*/manifest.json"):
        manifest = manifests.read(manifest_path.parent, manifests.VariantManifest)
        validation = manifest.metrics.validation
        rows.append({
            "variant": manifest.name,
            "recipe_hash": manifest.recipe_hash,
            "size": manifest.tflite["size"],
            "gzip_size": manifest.tflite["gzip_size"],
            "sparsity": manifest.sparsity.get("overall"),
            "accuracy": validation.accuracy,
            "macro_f1": validation.macro_f1,
            "input": (manifest.tflite.get("inputs") or [{}])[0].get("dtype"),
            "delta_vs_float_keras": manifest.metrics.accuracy_delta_vs_float,
            "wall_time_s": manifest.wall_time_s,
            "path": str(manifest_path.parent / manifest.model.file),
        })
    baseline = next((r for r in rows if r["variant"] == "float32"), None)
    for row in rows:
        row["size_vs_float32"] = row["size"] / baseline["size"] if baseline else None
        row["gzip_vs_float32"] = row["gzip_size"] / baseline["gzip_size"] if baseline else None
        row["delta_vs_float32"] = (row["accuracy"] - baseline["accuracy"]) if baseline else None
    rows.sort(key=lambda r: (r["variant"] != "float32", r["size"]))
    return rows


def variants_markdown(rows: list[dict]) -> str:
    def pct(x):
        return "-" if x is None else f"{x * 100:.1f}%"

    def ratio(x):
        return "-" if x is None else f"{x:.2f}x"

    def delta(x):
        return "-" if x is None else f"{x * 100:+.1f} pt"

    table = [[r["variant"], human_size(r["size"]), ratio(r["size_vs_float32"]), human_size(r["gzip_size"]),
              ratio(r["gzip_vs_float32"]), pct(r["sparsity"]), pct(r["accuracy"]), delta(r["delta_vs_float32"]),
              f"{r['wall_time_s']:.0f} s" if r["wall_time_s"] is not None else "-"] for r in rows]
    return markdown_table(["variant", "size", "vs f32", "gzip", "gzip vs f32", "sparsity", "accuracy",
                           "Δ vs f32", "recipe time"], table)


def write_variant_report(run_dir: Path) -> tuple[list[dict], str]:
    """Write compressed/report.md and report.json for a run; returns the rows and the Markdown."""

    manifests.read(run_dir, manifests.RunManifest)  # a finished run, or one line saying what it is not
    rows = variant_rows(run_dir)
    if not rows:
        raise EdgekitError(f"{run_dir}: no compressed variants yet; run `edgekit compress {run_dir} --int8` first")
    markdown = variants_markdown(rows)
    out = Path(run_dir) / "compressed"
    write_text_atomic(out / "report.md", f"# Variants of {Path(run_dir).name}\n\nAccuracy is measured by running "
                      "each .tflite file on the validation split.\n\n" + markdown + "\n")
    write_json_atomic(out / "report.json", {"run": str(Path(run_dir).resolve()), "variants": rows})
    return rows, markdown
