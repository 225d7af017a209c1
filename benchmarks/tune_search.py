"""usage: python benchmarks/tune_search.py [--quick] [--phase all|grid|rebench|search|summary] [--budget-ms B]
                                         [--epochs E] [--steps S] [--trials N]

How fast does `edgekit tune` find the best model under a latency budget, against training everything?
Space: widths 0.35, 0.5 x input sizes 32, 40, 48 x recipes float32, int8-ptq on the embedded digits,
timed on `desktop` (1 thread). Both sides go through `edgekit.tune.study.run_tune`, so they train,
compress and bench exactly alike:

1. grid: Optuna's BruteForceSampler, no budget, no pruning: all 12 candidates trained and measured.
   Candidates differing only in recipe share one training (as by hand: train, then compress twice).
   The budget is then the median p90 of the grid (or --budget-ms), and the grid's best under it is the
   most accurate candidate whose measured p90 is within it.
2. tune: the default sampler (multivariate TPE), the budget as a constraint, the latency-before-training
   check and the pruning rule on, --trials trials (default 12, the size of the grid).

Prints and writes (benchmarks/results/tune_search[_quick].json): the grid's best under the budget, the
trial and wall time at which tune first held it or one within 0.5 pt, both sides' total wall time, the
share of tune's trials rejected before training, and how well the random-weight probe predicted each
trained candidate's real p90 (from the grid). --quick: 1 epoch of 3 steps and short timings.
Artifacts go to benchmarks/work/tune_search/ (scratch). --phase grid / search (needs --budget-ms) run one
side, so both can run at once on a machine with time to spare; --phase summary reads both studies as
they are (wall times then run from each study's first trial start to its last trial end).

Both sides train with `deterministic: true` (tune's default), so the same candidate scores the same in
the grid and in tune and accuracy does not depend on what else the machine runs; latency and wall time
do. --phase rebench times every grid variant again (one session, the same settings) and the summary then
uses those p90s: run it right before --phase search on a quiet machine when the grid had to share one.

Estimate vs actual: every trial that trained records tune's estimate made before training
(`estimated_s`, see `edgekit.tune.cost`) beside its wall time (`duration_s`, probe to bench); trials
that reused another trial's training are left out of the ratio. The study's own estimate (what `edgekit
tune` prints before the first trial) is recomputed from the rate the study stored and put beside its
wall time.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
from pathlib import Path

import optuna
import yaml
from _common import RESULTS, WORK, print_table, write_json

from edgekit.bench.run import BenchSettings, collect_variants, run_bench
from edgekit.devices import load_profile
from edgekit.recipes import load_recipe
from edgekit.tune.cost import TrainRate, study_cost
from edgekit.tune.report import trial_rows
from edgekit.tune.study import Context, create, load_config, run_tune, study_config

SPACE = {"width": [0.35, 0.5], "image_size": [32, 40, 48], "recipe": ["float32", "int8-ptq"]}
QUICK = {"epochs": 1, "steps": 3, "runs": 5, "min_seconds": 0.05}
FULL = {"epochs": 6, "steps": None, "runs": 20, "min_seconds": 0.3}  # 6 full epochs: ~85-90% from scratch


def study_run(name: str, space: dict, budget_ms: float, trials: int, settings: dict, sampler=None):
    """One study through the library, from scratch."""
    root = WORK / "tune_search" / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    (root / "space.yaml").write_text(yaml.safe_dump(space))
    config = load_config(device="desktop", max_latency_ms=budget_ms, space_path=str(root / "space.yaml"),
                         runs=settings["runs"], warmup=2, min_seconds=settings["min_seconds"], threads=1)
    study, _, _ = create(root / "study", config, None, name)
    if sampler is not None:
        study.sampler = sampler
    try:
        run_tune(study, root / "study", trials=trials, timeout=None)
    except Exception as exc:  # noqa: BLE001 - an unsatisfied budget is a result here, not a crash
        print(f"{name}: {exc}", file=sys.stderr)


def trainings(rows: list[dict]) -> int:
    return len({r["run_dir"] for r in rows if r["run_dir"] and r["state"] in ("complete", "pruned")})


def space_for(settings: dict, pruning: bool) -> dict:
    return {**SPACE, "epochs": [settings["epochs"]],
            "train": {"steps_per_epoch": settings["steps"], "batch_size": 64, "patience": 10},
            "pruning": {"enabled": pruning, "min_trials": 3}}


def load_rows(name: str) -> tuple[list[dict], float]:
    """A study's rows as it stands, with seconds since its first trial started, and its wall time so far."""
    database = WORK / "tune_search" / name / "study" / "study.db"
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{database}")
    trials = study.get_trials(deepcopy=False)
    start = min(t.datetime_start.timestamp() for t in trials if t.datetime_start)
    rows = trial_rows(study)
    for row, trial in zip(rows, trials):
        row["done_s"] = round(trial.datetime_complete.timestamp() - start, 1) if trial.datetime_complete else None
    return rows, max((r["done_s"] or 0) for r in rows)


def rebench(settings: dict) -> None:
    """Time every grid variant again in one session; the summary prefers these p90s to the grid's own."""
    rows = [r for r in load_rows("grid")[0] if r["state"] == "complete" and r["variant_dir"]]
    variants = sorted({r["variant_dir"] for r in rows})
    bench = BenchSettings(threads=(1,), runs=settings["runs"], warmup=2, min_seconds=settings["min_seconds"],
                          paired_rounds=0)
    result = run_bench(collect_variants([Path(v) for v in variants]), load_profile("desktop"), bench)
    p90 = {}
    for row in result.rows:
        if row.status == "error" or row.latency_ms is None:
            raise SystemExit(f"rebench {row.path}: {row.error or 'no latency measured'}")
        p90[str(Path(row.path).parent)] = row.latency_ms.p90
    write_json("tune_search_rebench", {"settings": settings, "p90_ms": p90})
    print(f"re-timed {len(p90)} grid variants")


def with_rebench(grid: list[dict]) -> list[dict]:
    """The grid rows with the re-timed p90s (when --phase rebench ran), the grid's own kept as grid_p90_ms."""
    path = RESULTS / "tune_search_rebench.json"
    if not path.is_file():
        return grid
    p90 = json.loads(path.read_text())["p90_ms"]
    return [{**r, "grid_p90_ms": r["p90_ms"], "p90_ms": p90.get(r["variant_dir"], r["p90_ms"])} for r in grid]


def estimates(rows: list[dict]) -> list[dict]:
    """Trials that trained (not reused another's training): tune's estimate beside the wall time."""
    seen, out = set(), []
    for r in sorted(rows, key=lambda r: r["trial"]):
        if r["state"] not in ("complete", "pruned") or not r["run_dir"] or r["run_dir"] in seen:
            continue
        seen.add(r["run_dir"])
        if r["estimated_s"] and r["duration_s"]:
            out.append({"trial": r["trial"], "candidate": r["candidate"], "state": r["state"],
                        "estimated_s": r["estimated_s"], "duration_s": r["duration_s"],
                        "actual_over_estimate": round(r["duration_s"] / r["estimated_s"], 2)})
    return out


def study_estimate_s(name: str, trials: int) -> float | None:
    """What `edgekit tune` said the study would cost before its first trial (median candidate x trials)."""
    root = WORK / "tune_search" / name / "study"
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'study.db'}")
    rates = [v for k, v in study.user_attrs.items() if k.startswith("edgekit_rate:")]
    if not rates:
        return None
    ctx = Context(study, study_config(study), root)
    splits = ctx.splits(min(ctx.space.dimensions["image_size"].values()))
    cost = study_cost(ctx.space, TrainRate.from_dict(rates[0]), len(splits.train), len(splits.validation), trials,
                      load_recipe)
    return round(cost["study_median_s"], 1)


def ratio_summary(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2), "n": len(values)}


def summarize(grid: list[dict], grid_wall: float, search: list[dict], search_wall: float, budget: float | None):
    trained = [r for r in grid if r["state"] == "complete"]
    budget = budget or round(statistics.median(r["p90_ms"] for r in trained), 4)
    within = [r for r in trained if r["p90_ms"] <= budget]
    best = max(within, key=lambda r: (r["accuracy"], -r["p90_ms"]))
    found = next((r for r in search if r["state"] == "complete" and r["feasible"]
                  and r["accuracy"] >= best["accuracy"] - 0.005), None)
    rejected = [r for r in search if r["state"] == "rejected"]
    same = next((r for r in search if r["state"] == "complete" and r["candidate"] == best["candidate"]), None)
    probe_ratio = [r["p90_ms"] / r["probe_p90_ms"] for r in trained if r["probe_p90_ms"]]
    return {
        "budget_p90_ms": budget, "grid_candidates": len(trained), "grid_within_budget": len(within),
        "grid_best": {k: best[k] for k in ("candidate", "accuracy", "p90_ms", "size_kb")},
        "grid_wall_s": round(grid_wall, 1), "grid_trainings": trainings(grid),
        "tune_trials": len(search), "tune_finished": sum(1 for r in search if r["done_s"] is not None),
        "tune_wall_s": round(search_wall, 1), "tune_trainings": trainings(search),
        "tune_found_at_trial": found["trial"] if found else None,
        "tune_found_after_s": found["done_s"] if found else None,
        "tune_found": {k: found[k] for k in ("candidate", "accuracy", "p90_ms")} if found else None,
        # Training is not bit-reproducible on a multi-threaded CPU: the same candidate, same seed, can score
        # differently in the grid and in tune, so also say when tune first trained the grid's best candidate.
        "tune_same_candidate_as_grid_best_at_trial": same["trial"] if same else None,
        "tune_same_candidate_after_s": same["done_s"] if same else None,
        "tune_same_candidate_accuracy": same["accuracy"] if same else None,
        "tune_rejected_before_training": len(rejected),
        "tune_rejected_share": round(len(rejected) / len(search), 3) if search else None,
        "probe_real_over_probe_p90": {"median": round(statistics.median(probe_ratio), 3),
                                      "min": round(min(probe_ratio), 3), "max": round(max(probe_ratio), 3)},
        "probe_wrong_side_of_budget": [r["candidate"] for r in trained
                                       if (r["probe_p90_ms"] > budget) != (r["p90_ms"] > budget)],
        # Deterministic training: the grid's best, retrained by tune with the same seed, scores the same.
        "same_candidate_same_accuracy": (same["accuracy"] == best["accuracy"]) if same else None,
        "estimate_actual_over_estimate": {
            "grid": ratio_summary([e["actual_over_estimate"] for e in estimates(grid)]),
            "tune": ratio_summary([e["actual_over_estimate"] for e in estimates(search)])},
        "latency_from": "rebench" if any("grid_p90_ms" in r for r in grid) else "grid",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--phase", choices=("all", "grid", "rebench", "search", "summary"), default="all")
    parser.add_argument("--budget-ms", type=float, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--trials", type=int, default=12)
    args = parser.parse_args()
    settings = dict(QUICK if args.quick else FULL)
    settings.update({k: v for k, v in (("epochs", args.epochs), ("steps", args.steps)) if v})
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    for noisy in ("absl", "tensorflow", "h5py"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if args.phase in ("all", "grid"):
        study_run("grid", space_for(settings, pruning=False), 1e9, 12, settings,
                  optuna.samplers.BruteForceSampler(seed=0))
    if args.phase == "rebench":
        rebench(settings)
        return
    budget = args.budget_ms
    if args.phase in ("all", "search"):
        if budget is None:
            trained = [r for r in with_rebench(load_rows("grid")[0]) if r["state"] == "complete"]
            budget = round(statistics.median(r["p90_ms"] for r in trained), 4)
        study_run("search", space_for(settings, pruning=True), budget, args.trials, settings)
    if args.phase in ("grid", "search"):
        return
    (grid, grid_wall), (search, search_wall) = load_rows("grid"), load_rows("search")
    grid = with_rebench(grid)
    summary = summarize(grid, grid_wall, search, search_wall, budget)
    summary["tune_study_estimate_s"] = study_estimate_s("search", len(search))
    summary["grid_study_estimate_s"] = study_estimate_s("grid", len(grid))
    print_table(grid, ["trial", "candidate", "accuracy", "p90_ms", "probe_p90_ms", "size_kb", "done_s"])
    print()
    print_table(search, ["trial", "state", "candidate", "accuracy", "p90_ms", "probe_p90_ms", "done_s", "note"])
    print()
    print("estimate vs actual, per trial that trained (seconds; tune's estimate before training, wall time after)")
    print_table([{"side": side, **e} for side, rows in (("grid", grid), ("tune", search)) for e in estimates(rows)],
                ["side", "trial", "candidate", "state", "estimated_s", "duration_s", "actual_over_estimate"])
    print()
    for key, value in summary.items():
        print(f"{key}: {value}")
    path = write_json("tune_search_quick" if args.quick else "tune_search",
                      {"benchmark": "tune_search", "quick": args.quick, "settings": settings, "space": SPACE,
                       "summary": summary, "grid": grid, "search": search,
                       "estimates": {"grid": estimates(grid), "tune": estimates(search)}})
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
