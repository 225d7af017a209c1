"""`edgekit compress` and `edgekit report`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli import (
    JsonOption,
    TrustModelOption,
    app,
    emit,
    given,
    refuse,
    resolve_run_dir,
    user_errors,
)
from edgekit.errors import EdgekitError


@app.command()
@user_errors
def compress(
    ctx: typer.Context,
    run_dir: Annotated[Path | None, typer.Argument(help="A training run directory; default: the latest run.")]
    = None,
    recipe: Annotated[list[str] | None, typer.Option(
        help="A shipped recipe name (int8-ptq, prune50-int8, ...) or a YAML file; repeatable.")] = None,
    all_recipes: Annotated[bool, typer.Option("--all", help="Every shipped recipe.")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Full-integer int8 conversion.")] = False,
    float16: Annotated[bool, typer.Option("--float16", help="Float16 weights.")] = False,
    dynamic: Annotated[bool, typer.Option("--dynamic", help="Dynamic-range (int8 weights) conversion.")] = False,
    prune: Annotated[float | None, typer.Option(help="Magnitude-prune to this sparsity first (e.g. 0.5).")]
    = None,
    cluster: Annotated[int | None, typer.Option(help="Cluster weights to this many centroids first.")] = None,
    qat: Annotated[bool, typer.Option("--qat", help="Quantization-aware fine-tuning before int8.")] = False,
    uint8_io: Annotated[bool, typer.Option("--uint8-io", help="uint8 model input/output (integer-only targets).")]
    = False,
    calibration_samples: Annotated[int, typer.Option(help="Training images used to calibrate int8 (at most).")]
    = 100,
    epochs: Annotated[int, typer.Option(help="Fine-tuning epochs per shorthand stage.")] = 2,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the recipe(s) (YAML, or JSON with --json) and "
                                                            "stop.")] = False,
    compare: Annotated[bool, typer.Option("--compare", help="Then print the table of every variant of the run.")]
    = False,
    threads: Annotated[int | None, typer.Option(help="Interpreter threads for the accuracy pass.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a variant of the same name made by a different "
                                                        "recipe (an identical recipe is never redone).")] = False,
    trust_model: TrustModelOption = False,
    as_json: JsonOption = False,
) -> None:
    """Turn a trained run into .tflite variants, each measured on the validation split.

    $ edgekit compress --int8
    $ edgekit compress runs/digits-20260101-120000 --prune 0.5 --qat --int8
    $ edgekit compress --recipe prune50-int8 --recipe cluster16-int8 --compare
    """
    from edgekit.config import THREADS
    from edgekit.recipes import check_unique_names, load_recipe, recipe_from_flags, shipped_recipes

    THREADS.check(threads, "--threads")
    _refuse_contradictions(ctx, all_recipes, int8, qat, prune is not None or cluster is not None or qat)
    recipes = [load_recipe(name) for name in list(recipe or []) + (shipped_recipes() if all_recipes else [])]
    shorthand = any((int8, float16, dynamic, prune is not None, cluster is not None, qat))
    if shorthand:
        recipes.append(recipe_from_flags(int8=int8, float16=float16, dynamic=dynamic, prune=prune, qat=qat,
                                         cluster=cluster, uint8_io=uint8_io,
                                         calibration_samples=calibration_samples, epochs=epochs))
    if not recipes:
        raise EdgekitError("nothing to do: pass --recipe NAME, --all, or a shorthand such as --int8")
    check_unique_names(recipes)
    if dry_run:
        if as_json:
            typer.echo(json.dumps({"recipes": [r.as_dict() for r in recipes]}, indent=2))
        else:
            typer.echo("---\n".join(r.to_yaml() for r in recipes))
        return
    from edgekit.compress.pipeline import compress_all
    from edgekit.report import write_variant_report

    run = resolve_run_dir(run_dir)
    variants = compress_all(run, recipes, threads=threads, force=force, trust_model=trust_model)
    results = [{"variant": v.manifest.name, "dir": str(v.directory), "status": v.status,
                "recipe_hash": v.manifest.recipe_hash, "accuracy": v.manifest.metrics.validation.accuracy,
                "size": v.manifest.tflite["size"]} for v in variants]
    if not as_json:
        for r in results:
            typer.echo(f"{r['variant']}: {r['dir']}/model.tflite  accuracy {r['accuracy']:.4f}  size {r['size']:,} B"
                       f"  ({r['status']})")
    if compare:
        rows, markdown = write_variant_report(run)
        emit({"variants": results, "report": rows}, as_json, markdown)
    elif as_json:
        typer.echo(json.dumps({"variants": results}, indent=2))


def _refuse_contradictions(ctx: typer.Context, all_recipes: bool, int8: bool, qat: bool, fine_tunes: bool) -> None:
    """Options another option makes meaningless are refused, never silently dropped."""
    if all_recipes:
        refuse(ctx, ("recipe",), "--all already applies every known recipe; pass --all or --recipe, not both")
    if not given(ctx, "int8", "float16", "dynamic", "prune", "cluster", "qat"):
        refuse(ctx, ("uint8_io", "calibration_samples", "epochs"),
               "shapes the recipe that --int8/--prune/--cluster/--qat describe, and none is given (a recipe file "
               "sets these in its own stages)")
    if not (int8 or qat):
        refuse(ctx, ("calibration_samples",), "only a full-integer conversion calibrates; add --int8 or drop it")
    if not fine_tunes:
        refuse(ctx, ("epochs",), "the fine-tuning epochs of --prune, --cluster or --qat, and none is given")
    if given(ctx, "dry_run"):
        refuse(ctx, ("compare",), "--dry-run makes no variant to compare; drop one of them")


@app.command()
@user_errors
def report(
    run_dir: Annotated[Path | None, typer.Argument(help="A training run directory; default: the latest run.")]
    = None,
    as_json: JsonOption = False,
) -> None:
    """One table of every compressed variant of a run: size, gzip size, sparsity, accuracy, delta vs float.

    $ edgekit report runs/digits-20260101-120000
    """
    from edgekit.report import write_variant_report

    run = resolve_run_dir(run_dir)
    rows, markdown = write_variant_report(run)
    emit({"run": str(run), "variants": rows}, as_json, markdown)
