"""`edgekit report`: the compressed variants of a run side by side, as report.md and report.json."""

from __future__ import annotations

from pathlib import Path

from edgekit import manifests
from edgekit.artifacts import recover_swaps, visible_glob, write_json_atomic, write_text_atomic
from edgekit.errors import EdgekitError
from edgekit.render import fmt, markdown_table


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
    table = [[r["variant"], fmt(r["size"], "size"), fmt(r["size_vs_float32"], ".2f", "x"), fmt(r["gzip_size"], "size"),
              fmt(r["gzip_vs_float32"], ".2f", "x"), fmt(r["sparsity"], ".1%"), fmt(r["accuracy"], ".1%"),
              fmt(r["delta_vs_float32"], "pt"), fmt(r["wall_time_s"], ".0f", " s")] for r in rows]
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
