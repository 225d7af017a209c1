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
        lines.append(f"  recipe: {recipe.get('name')} ({' → '.join(s.get('type', '?') for s in recipe.get('stages', []))})")
    training = manifest.get("training")
    if training:
        lines.append(f"  training: {training.get('epochs_run')} epochs, {training.get('fit_seconds')} s, "
                     f"{training.get('throughput_images_per_s')} images/s, wall {manifest.get('wall_time_s')} s")
    for split_name, metrics in (manifest.get("metrics") or {}).items():
        if isinstance(metrics, dict) and "accuracy" in metrics:
            lines.append(f"  {split_name}: accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics.get('macro_f1', 0):.4f}"
                         f"  n={metrics.get('n', '?')}")
    for name, record in (manifest.get("files") or {}).items():
        lines.append(f"  file {name}: {human_size(record['size'])}  sha256 {record['sha256'][:16]}…")
    versions = manifest.get("versions") or {}
    if versions:
        lines.append("  versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return "\n".join(lines)
