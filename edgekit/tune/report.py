"""What a tune directory says: every trial as JSON/CSV/Markdown, the Pareto plot, and the best candidate.

The trial table is read back from the Optuna study (the one source of truth, shared by all workers), so
any worker can rewrite the report at any time; `edgekit info DIR` summarises it.
"""

from __future__ import annotations

from pathlib import Path

from optuna.trial import TrialState

from edgekit import manifests, render
from edgekit.artifacts import write_json_atomic, write_text_atomic
from edgekit.render import ParetoPoint, csv_text, fmt, markdown_table

BEYOND_LIMIT = "beyond_limit"  # user attribute of a trial a racing worker started over --trials (tune.study)
COLUMNS = ("trial", "state", "width", "image_size", "recipe", "epochs", "learning_rate", "accuracy", "p90_ms",
           "size_kb", "feasible", "probe_p90_ms", "probe_cached", "note", "run_dir", "variant_dir", "bench_dir",
           "worker", "duration_s", "estimated_s")


def trial_rows(study) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs, params = t.user_attrs, t.params
        if BEYOND_LIMIT in attrs:  # never ran
            continue
        probe = attrs.get("probe") or {}
        state = "rejected" if "rejected" in attrs else t.state.name.lower()
        if t.state == TrialState.FAIL and "interrupted" in attrs:
            state = "interrupted"
        note = attrs.get("rejected") or attrs.get("pruned") or attrs.get("error") or attrs.get("interrupted") or (
            f"same candidate as trial {attrs['duplicate_of']}" if "duplicate_of" in attrs else "")
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and \
            t.datetime_start else None
        rows.append({
            "trial": t.number, "state": state, "candidate": attrs.get("candidate"),
            "width": params.get("width"), "image_size": params.get("image_size"), "recipe": params.get("recipe"),
            "epochs": params.get("epochs"), "learning_rate": params.get("learning_rate"),
            "accuracy": attrs.get("accuracy"), "p90_ms": attrs.get("p90_ms"), "size_kb": attrs.get("size_kb"),
            "feasible": attrs.get("feasible"), "probe_p90_ms": probe.get("p90_ms"),
            "probe_cached": probe.get("cached"), "note": note, "run_dir": attrs.get("run_dir"),
            "variant_dir": attrs.get("variant_dir"), "bench_dir": attrs.get("bench_dir"),
            "worker": attrs.get("worker"), "duration_s": round(duration, 1) if duration is not None else None,
            "val_accuracy_curve": attrs.get("val_accuracy_curve"), "estimated_s": attrs.get("estimated_s"),
        })
    return rows


def best_row(rows: list[dict]) -> dict | None:
    """The most accurate within-budget candidate; the faster one on a tie."""
    feasible = [r for r in rows if r["state"] == "complete" and r["feasible"]]
    return max(feasible, key=lambda r: (r["accuracy"], -r["p90_ms"]), default=None)


def best_line(best: dict | None, device: str) -> str:
    if best is None:
        return "no candidate within budget yet"
    return (f"best under budget: trial {best['trial']} ({best['candidate']}): accuracy {best['accuracy']:.4f}, "
            f"p90 {fmt(best['p90_ms'], 'ms')} ms, {best['size_kb']:.0f} KB; run {best['run_dir']}; variant "
            f"{best['variant_dir']} (`edgekit deploy {best['variant_dir']} --device {device}`)")


def unsatisfied(study, config) -> str | None:
    """Why no trained candidate is within budget, naming the constraint and the closest candidate; or None."""
    rows = trial_rows(study)
    if best_row(rows) is not None:
        return None
    done = [r for r in rows if r["state"] == "complete"]
    if not done:
        rejected = [r for r in rows if r["state"] == "rejected" and r["probe_p90_ms"] is not None]
        if not rejected:
            return None  # nothing measured yet (e.g. every trial failed); the report says why
        closest = min(rejected, key=lambda r: r["probe_p90_ms"])
        return (f"no trained candidate: all {len(rejected)} sampled candidates were over budget before training; "
                f"closest: trial {closest['trial']} ({closest['candidate']}): {closest['note']}")
    checks = [("--max-latency-ms", config.max_latency_ms, "p90_ms", 1), ("--max-size-kb", config.max_size_kb,
              "size_kb", 1), ("--min-accuracy", config.min_accuracy, "accuracy", -1)]
    for flag, limit, key, sign in checks:
        if limit is not None and all(sign * (r[key] - limit) > 0 for r in done):
            closest = min(done, key=lambda r: sign * (r[key] - limit))
            return (f"no candidate meets {flag} {limit}: closest is trial {closest['trial']} ({closest['candidate']}) "
                    f"with {key} {closest[key]:.4g}; relax {flag} or widen the search space")
    return "no candidate meets all budgets at once; relax one of them (see trials.md for each candidate)"


def markdown(rows: list[dict], header: str) -> str:
    table = markdown_table(
        ["trial", "state", "width", "size", "recipe", "epochs", "lr", "accuracy", "p90 ms", "KB", "in budget",
         "probe p90 ms", "est s", "wall s", "note"],
        [[r["trial"], r["state"], r["width"], r["image_size"], r["recipe"], fmt(r["epochs"], ""),
          fmt(r["learning_rate"], ".2g"), fmt(r["accuracy"], ".4f"), fmt(r["p90_ms"], "ms"),
          fmt(r["size_kb"], ".0f"), {True: "yes", False: "no"}.get(r["feasible"], "-"),
          fmt(r["probe_p90_ms"], "ms"), fmt(r["estimated_s"], ".0f"), fmt(r["duration_s"], ".0f"),
          r["note"] or ""] for r in rows])
    return f"{header}\n\n{table}\n"


def pareto_plot(rows: list[dict], config, title: str, target: Path) -> bool:
    """Accuracy against device p90 for trained candidates: bench's plot, with the budget drawn and the
    candidates over it greyed and off the frontier."""
    done = [r for r in rows if r["state"] == "complete" and r["p90_ms"] is not None]
    points = [ParetoPoint(r["p90_ms"], r["accuracy"], f"t{r['trial']} {r['recipe']}", eligible=bool(r["feasible"]))
              for r in done]
    return render.pareto_plot(points, target, title, xlabel="p90 latency on the device (ms)",
                              ylabel="accuracy (validation, measured on the .tflite)", budget_ms=config.max_latency_ms)


def summary(rows: list[dict]) -> dict:
    states = [r["state"] for r in rows]
    return {name: states.count(name) for name in sorted(set(states))}


def write_report(tune_dir: Path, study, config) -> dict:
    """trials.json/.csv/.md and pareto.png in `tune_dir`, described by a manifest of kind `tune`."""
    tune_dir = Path(tune_dir)
    rows = trial_rows(study)
    best = best_row(rows)
    budget = {"max_latency_ms": config.max_latency_ms, "max_size_kb": config.max_size_kb,
              "min_accuracy": config.min_accuracy}
    payload = {"study": study.study_name, "device": config.device, "budget": budget, "counts": summary(rows),
               "best": best, "best_line": best_line(best, config.device), "space": config.space, "trials": rows}
    write_json_atomic(tune_dir / "trials.json", payload)
    write_text_atomic(tune_dir / "trials.csv", csv_text(COLUMNS, rows))
    limits = ", ".join(f"{k} {v}" for k, v in budget.items() if v is not None)
    header = (f"# edgekit tune `{study.study_name}` on {config.device}\n\nbudget: {limits}\n\n"
              f"{best_line(best, config.device)}")
    write_text_atomic(tune_dir / "trials.md", markdown(rows, header))
    files = ["trials.json", "trials.csv", "trials.md"]
    if pareto_plot(rows, config, f"{study.study_name} on {config.device}", tune_dir / "pareto.png"):
        files.append("pareto.png")
    manifests.write(tune_dir, manifests.TuneManifest(name=study.study_name, device=config.device, budget=budget,
                                                     counts=summary(rows), best=best), files)
    return payload
