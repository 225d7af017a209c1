"""Human-readable renderings of manifests and result tables (Markdown, plain text)."""

from __future__ import annotations

from pathlib import Path


def human_size(n: int | float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-style Markdown table; also readable as plain text in a terminal."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join([line, rule, *body])


def describe_manifest(directory: Path, manifest: dict) -> str:
    """What `edgekit info` prints: kind, lineage, model contract, data, metrics and files."""
    lines = [f"{directory}  ({manifest.get('kind', '?')}, created {manifest.get('created', '?')})"]
    parent = manifest.get("parent")
    if parent:
        lines.append(f"  parent: {parent.get('path')} [{parent.get('file', '')} sha256 {parent['sha256'][:12]}…]")
    model = manifest.get("model", {})
    if model:
        arch = model.get("architecture", {})
        lines.append(f"  model: {model.get('file')}  input {model.get('input_size')}  pixels {model.get('pixel_range')}"
                     f"  {arch.get('family', '')} alpha={arch.get('alpha', '-')}  weights={model.get('weights', '-')}")
        labels = model.get("labels", [])
        lines.append(f"  labels ({len(labels)}): {', '.join(labels[:20])}{' …' if len(labels) > 20 else ''}")
    dataset = manifest.get("dataset")
    if dataset:
        split = dataset.get("split", {})
        lines.append(f"  data: {dataset.get('source')} {dataset.get('path', dataset.get('origin', ''))}  "
                     f"train {split.get('train', '?')} / validation {split.get('validation', '?')}  "
                     f"fingerprint {str(dataset.get('fingerprint', ''))[:12]}…")
        if dataset.get("extra_data"):
            lines.append(f"  extra data: {', '.join(e['path'] for e in dataset['extra_data'])}")
    recipe = manifest.get("recipe")
    if recipe:
        stages = " → ".join(s.get("type", "?") for s in recipe.get("stages", []))
        lines.append(f"  recipe: {recipe.get('name')} ({stages})")
    tflite = manifest.get("tflite")
    if tflite:
        inputs = tflite.get("inputs") or [{}]
        sparsity = (manifest.get("sparsity") or {}).get("overall")
        n_ops = sum((tflite.get("ops") or {}).values())
        lines.append(f"  tflite: {human_size(tflite.get('size'))} (gzip {human_size(tflite.get('gzip_size'))}), "
                     f"input {inputs[0].get('dtype')} {inputs[0].get('shape')}, {n_ops} ops"
                     + (f", sparsity {sparsity:.1%}" if sparsity is not None else ""))
    training = manifest.get("training")
    if training:
        lines.append(f"  training: {training.get('epochs_run')} epochs, {training.get('fit_seconds')} s, "
                     f"{training.get('throughput_images_per_s')} images/s, wall {manifest.get('wall_time_s')} s")
    for split_name, metrics in (manifest.get("metrics") or {}).items():
        if isinstance(metrics, dict) and "accuracy" in metrics:
            lines.append(f"  {split_name}: accuracy {metrics['accuracy']:.4f}  "
                         f"macro-F1 {metrics.get('macro_f1', 0):.4f}  n={metrics.get('n', '?')}")
    for name, record in (manifest.get("files") or {}).items():
        lines.append(f"  file {name}: {human_size(record['size'])}  sha256 {record['sha256'][:16]}…")
    versions = manifest.get("versions") or {}
    if versions:
        lines.append("  versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return "\n".join(lines)


def variant_rows(run_dir: Path) -> list[dict]:
    """One row per compressed variant of a run, float32 first, from their manifests."""
    import json

    rows = []
    for manifest_path in sorted(Path(run_dir).glob("compressed/*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        metrics = manifest.get("metrics", {})
        validation = metrics.get("validation", {})
        sparsity = manifest.get("sparsity") or {}
        rows.append({
            "variant": manifest.get("name"),
            "size": manifest["tflite"]["size"],
            "gzip_size": manifest["tflite"]["gzip_size"],
            "sparsity": sparsity.get("overall"),
            "accuracy": validation.get("accuracy"),
            "macro_f1": validation.get("macro_f1"),
            "input": manifest["tflite"].get("inputs", [{}])[0].get("dtype"),
            "delta_vs_float_keras": metrics.get("accuracy_delta_vs_float"),
            "wall_time_s": manifest.get("wall_time_s"),
            "path": str(manifest_path.parent / "model.tflite"),
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
    from edgekit.artifacts import write_json_atomic, write_text_atomic

    rows = variant_rows(run_dir)
    markdown = variants_markdown(rows)
    out = Path(run_dir) / "compressed"
    write_text_atomic(out / "report.md", f"# Variants of {Path(run_dir).name}\n\nAccuracy is measured by running "
                      "each .tflite file on the validation split.\n\n" + markdown + "\n")
    write_json_atomic(out / "report.json", {"run": str(Path(run_dir).resolve()), "variants": rows})
    return rows, markdown
