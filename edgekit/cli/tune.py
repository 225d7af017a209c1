"""`edgekit tune`: the most accurate model that meets a budget on the device."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli import (
    JsonOption,
    app,
    emit,
    refuse,
    user_errors,
)


@app.command()
@user_errors
def tune(
    ctx: typer.Context,
    device: Annotated[str | None, typer.Option("--device", "-d", help="Device profile to measure on (desktop, pi, "
                                                                      "coral, FILE.yaml); default desktop.")] = None,
    max_latency_ms: Annotated[float | None, typer.Option(help="Budget: p90 latency on the device, ms.")] = None,
    max_size_kb: Annotated[float | None, typer.Option(
        help="Budget: .tflite size in KB (also makes size a third objective).")] = None,
    min_accuracy: Annotated[float | None, typer.Option(help="Budget: validation accuracy, e.g. 0.95.")] = None,
    data: Annotated[str | None, typer.Option(help="Image folder; default: the embedded digits.")] = None,
    space: Annotated[str | None, typer.Option(help="Search-space YAML, or `default` / `cpu` for a shipped one; "
                                                   "default: `cpu` without a GPU, else `default`.")] = None,
    trials: Annotated[int, typer.Option(help="Trials for the whole study (all workers), rejected ones "
                                             "included.")] = 20,
    timeout: Annotated[float | None, typer.Option(help="Stop this worker after S seconds.")] = None,
    budget: Annotated[str | None, typer.Option(
        help="Time for this worker, e.g. 30m or 2h: stops then, and candidates estimated not to finish in the "
             "time left are not trained.")] = None,
    storage: Annotated[str | None, typer.Option(help="Study database URL (postgresql://user:pw@host/db); "
                                                     "default: study.db in the tune directory.")] = None,
    study: Annotated[str | None, typer.Option(help="Study name; default tune-<time>.")] = None,
    join: Annotated[str | None, typer.Option(help="Work on an existing study in --storage (another "
                                                  "machine's).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the study of this tune directory.")] = None,
    out: Annotated[Path | None, typer.Option(help="Tune directory; default $EDGEKIT_HOME/tunes/<study>.")] = None,
    runs: Annotated[int, typer.Option(help="Bench: at least this many timed runs per model.")] = 50,
    warmup: Annotated[int, typer.Option(help="Bench: untimed runs first.")] = 5,
    min_seconds: Annotated[float, typer.Option(help="Bench: and at least this long per model.")] = 2.0,
    threads: Annotated[int | None, typer.Option(help="Bench: interpreter threads; default: the profile's.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Find the most accurate model that meets a latency budget on the device (Optuna, multi-objective).

    Each candidate is timed as a random-weight model first (over budget: never trained), then trained,
    compressed and benchmarked like `edgekit train`, `compress` and `bench` would. --resume and --join use
    the study's own device, budget and space.

    $ edgekit tune --device pi --max-latency-ms 33 --trials 30
    $ edgekit tune --device pi --max-latency-ms 33 --budget 2h
    $ edgekit tune --resume tunes/tune-20260101-120000
    $ edgekit tune --join shared --storage postgresql://edgekit@db.lan/edgekit
    """
    from edgekit.tune.cost import parse_duration
    from edgekit.tune.options import check_options
    from edgekit.tune.space import load_space

    if resume is not None or join is not None:
        refuse(ctx, ("device", "max_latency_ms", "max_size_kb", "min_accuracy", "data", "space", "runs", "warmup",
                     "min_seconds", "threads", "study") + (("out",) if resume is not None else ()),
               "--resume and --join use the study's own device, budgets, space and bench settings; drop them")
    check_options(trials=trials, timeout=timeout, max_latency_ms=max_latency_ms, max_size_kb=max_size_kb,
                  min_accuracy=min_accuracy, runs=runs, warmup=warmup, min_seconds=min_seconds, threads=threads)
    if resume is None and join is None and space not in (None, "default", "cpu"):
        load_space(space)  # the file checked before TensorFlow and Optuna load
    if budget is not None:
        timeout = min(parse_duration(budget), timeout) if timeout is not None else parse_duration(budget)
    from edgekit.tune.study import tune as run_study

    result = run_study(resume_dir=resume, join_study=join, storage=storage, study_name=study, out=out,
                       trials=trials, timeout=timeout, device=device or "desktop", max_latency_ms=max_latency_ms,
                       max_size_kb=max_size_kb, min_accuracy=min_accuracy, data=data, space_path=space, runs=runs,
                       warmup=warmup, min_seconds=min_seconds, threads=threads)
    from edgekit import manifests
    from edgekit.tune.report import best_line

    manifest = manifests.read(result.tune_dir, manifests.TuneManifest)
    emit({"tune_dir": str(result.tune_dir), "study": result.study_name, "storage": result.storage,
          "counts": manifest.counts, "best": manifest.best}, as_json,
         f"{best_line(manifest.best, manifest.device)}\ntrials: "
         + ", ".join(f"{n} {state}" for state, n in manifest.counts.items())
         + f"\nreport: {result.tune_dir / 'trials.md'}, {result.tune_dir / 'pareto.png'}")
