"""One `edgekit tune` trial: probe latency, then train, compress and bench through the ordinary commands' code.

The cheap checks come first: the probe (a random-weight conversion timed on the device, see
`edgekit.tune.latency`) decides size exactly and latency up to the weights, so an over-budget candidate
costs one conversion and one short bench and is never trained. A candidate that passes is trained with
`edgekit.train.train`, compressed with `edgekit.compress.pipeline.compress` and timed with
`edgekit.bench.run.run_bench`, so its artifacts are ordinary runs, variants and bench results whose
manifests name the study and trial.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

from edgekit.bench.report import write_results
from edgekit.bench.run import collect_variants, run_bench
from edgekit.config import TrainConfig
from edgekit.errors import EdgekitError
from edgekit.manifests import ParentRef
from edgekit.recipes import load_recipe
from edgekit.tune.cost import candidate_seconds, human_seconds, recipe_epochs
from edgekit.tune.latency import DeviceUnreachable, probe_latency, recipe_sparsity

log = logging.getLogger(__name__)


class CandidateFailed(EdgekitError):
    """This candidate cannot be built or measured; the study goes on with the next one."""


@dataclass(frozen=True)
class Budget:
    max_latency_ms: float
    max_size_kb: float | None = None
    min_accuracy: float | None = None

    def constraints(self, p90_ms: float, size_kb: float, accuracy: float | None) -> dict[str, float]:
        """Optuna constraint values: feasible when every value is <= 0."""
        found = {"max_latency_ms": p90_ms - self.max_latency_ms}
        if self.max_size_kb is not None:
            found["max_size_kb"] = size_kb - self.max_size_kb
        if self.min_accuracy is not None and accuracy is not None:
            found["min_accuracy"] = self.min_accuracy - accuracy
        return found


def describe(params: dict) -> str:
    parts = [f"width {params['width']}", f"{params['image_size']} px", str(params["recipe"])]
    if "epochs" in params:
        parts.append(f"{params['epochs']} epochs")
    if "learning_rate" in params:
        parts.append(f"lr {params['learning_rate']:.2g}")
    return ", ".join(parts)


def precheck(probe, recipe, budget: Budget) -> str | None:
    """Why the probe alone rules the candidate out, or None. Pruned recipes get the best-case speed-up."""
    best_case = probe.p90_ms * (1.0 - recipe_sparsity(recipe))
    if best_case > budget.max_latency_ms:
        note = f" (dense {probe.p90_ms:.3f} ms at best x{1 - recipe_sparsity(recipe):.2f} for sparsity)" \
            if recipe_sparsity(recipe) else ""
        return f"max_latency_ms: probe p90 {best_case:.3f} ms{note} > {budget.max_latency_ms} ms"
    if budget.max_size_kb is not None and probe.size / 1024 > budget.max_size_kb:
        return f"max_size_kb: {probe.size / 1024:.1f} KB > {budget.max_size_kb} KB"
    return None


def _over_time(trial, ctx, params: dict, recipe, splits) -> str | None:
    """Record the candidate's estimated cost; why it cannot finish in the time left (--budget), or None."""

    if ctx.rate is None:
        return None
    estimate = candidate_seconds(ctx.rate, float(params["width"]), int(params["image_size"]),
                                 int(params.get("epochs", 30)), recipe_epochs(recipe), len(splits.train),
                                 len(splits.validation))
    trial.set_user_attr("estimated_s", round(estimate, 1))
    if ctx.deadline is not None and estimate > ctx.deadline - time.time():
        return (f"time: estimated {human_seconds(estimate)} > {human_seconds(max(ctx.deadline - time.time(), 0))} "
                "left of --budget")
    return None


def epoch_rule(trial, study, rule):
    """A Keras callback applying the pruning rule after every epoch (see `edgekit.tune.space.PruningRule`).

    Optuna's `Trial.report`/`should_prune` raise NotImplementedError for multi-objective studies, so the
    curve is kept as a user attribute and compared with the curves of finished, within-budget trials.
    """
    from edgekit.compat import keras

    class EpochRule(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.curve: list[float] = []

        def on_epoch_end(self, epoch, logs=None):
            accuracy = float((logs or {}).get("val_accuracy", float("nan")))
            self.curve.append(accuracy)
            trial.set_user_attr("val_accuracy_curve", self.curve)
            if not rule.enabled or len(self.curve) <= rule.warmup_epochs or np.isnan(accuracy):
                return
            peers = [t.user_attrs["val_accuracy_curve"][epoch] for t in study.get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if t.user_attrs.get("feasible") and len(t.user_attrs.get("val_accuracy_curve", [])) > epoch]
            if len(peers) < rule.min_trials:
                return
            threshold = float(np.percentile(peers, rule.percentile))
            if accuracy < threshold - rule.min_delta:
                reason = (f"epoch {epoch + 1}: validation accuracy {accuracy:.4f} more than {rule.min_delta:g} below "
                          f"the {rule.percentile:g}th percentile {threshold:.4f} of {len(peers)} finished "
                          "within-budget trials")
                trial.set_user_attr("pruned", reason)
                raise optuna.TrialPruned(reason)

    return EpochRule()


def _bench_variant(variant_dir: Path, ctx, trial) -> dict:
    variants = collect_variants([variant_dir])
    result = run_bench(variants, ctx.profile, ctx.settings)
    if result.device.get("error"):
        raise DeviceUnreachable(f"device {ctx.profile.name} ({ctx.profile.address}): {result.device['error']}")
    out_dir = variant_dir / "bench" / f"{ctx.profile.name}-{ctx.study_name}-t{trial.number:04d}"
    parents = [ParentRef(path=str(v.path.resolve()), sha256=v.sha256, kind="variant", file=v.path.name)
               for v in variants]
    write_results(out_dir, ctx.profile.name, result, {"threads": ctx.settings.threads, "runs": ctx.settings.runs,
                  "warmup": ctx.settings.warmup, "min_seconds": ctx.settings.min_seconds, "delegate": None,
                  "lineage": ctx.lineage(trial)}, parents)
    row = result.rows[0]
    if row.status == "error" or not (row.latency_ms and row.latency_ms.p90):
        raise CandidateFailed(f"bench {variant_dir}: {row.error or 'no latency measured'}")
    return {"row": row, "bench_dir": str(out_dir)}


def run_candidate(trial, ctx) -> tuple[float, ...]:
    """The objective: (accuracy, p90 ms[, size KB]) of one candidate, or TrialPruned before/during training."""
    from edgekit.compress.pipeline import compress

    params = {name: dim.suggest(trial) for name, dim in ctx.space.dimensions.items()}
    started = time.time()
    trial.set_user_attr("worker", ctx.worker)
    trial.set_user_attr("candidate", describe(params))
    recipe = load_recipe(params["recipe"])
    splits = ctx.splits(params["image_size"])
    try:
        probe = probe_latency(ctx.study, ctx.tune_dir / "probes", params["width"], params["image_size"], recipe,
                              splits, ctx.profile, ctx.settings, ctx.space.seed, ctx.lineage(trial))
    except DeviceUnreachable:
        raise
    except EdgekitError as exc:
        raise CandidateFailed(f"latency probe: {exc}") from None
    trial.set_user_attr("probe", {"p90_ms": probe.p90_ms, "p50_ms": probe.p50_ms, "size": probe.size,
                                  "sha256": probe.sha256, "cached": probe.cached, "runtime": probe.runtime})
    reason = precheck(probe, recipe, ctx.budget)
    if reason:
        trial.set_user_attr("rejected", reason)
        log.info("trial %d: %s: rejected before training: %s", trial.number, describe(params), reason)
        raise optuna.TrialPruned(f"rejected before training: {reason}")
    reason = _over_time(trial, ctx, params, recipe, splits)
    if reason:
        trial.set_user_attr("rejected", reason)
        log.info("trial %d: %s: rejected before training: %s", trial.number, describe(params), reason)
        raise optuna.TrialPruned(f"rejected before training: {reason}")
    duplicate = ctx.duplicate_of(trial, params)
    if duplicate is not None:
        return _reuse(trial, duplicate, ctx)
    log.info("trial %d: %s: probe p90 %.3f ms%s", trial.number, describe(params), probe.p90_ms,
             " (cached)" if probe.cached else "")
    run_dir = _trained_run(trial, ctx, params)
    try:
        variant = compress(run_dir, recipe, lineage=ctx.lineage(trial))
    except EdgekitError as exc:
        raise CandidateFailed(f"compress {run_dir} with {recipe.name}: {exc}") from None
    trial.set_user_attr("variant_dir", str(variant.directory))
    bench = _bench_variant(variant.directory, ctx, trial)
    return _finish(trial, ctx, variant, bench, started)


def _trained_run(trial, ctx, params: dict) -> Path:
    """Train the candidate with `edgekit.train.train`, or reuse a run with the same training settings."""
    from edgekit.train import train

    found = ctx.trained_run(trial)
    if found is not None:
        run_dir, other = found
        log.info("trial %d: same training as trial %d; compressing its run %s", trial.number, other.number, run_dir)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("run_of_trial", other.number)
        trial.set_user_attr("val_accuracy_curve", other.user_attrs.get("val_accuracy_curve", []))
        return run_dir
    config = TrainConfig(data=ctx.data, alpha=float(params["width"]), image_size=int(params["image_size"]),
                         epochs=int(params.get("epochs", 30)),
                         learning_rate=float(params.get("learning_rate", TrainConfig.learning_rate)),
                         seed=ctx.space.seed, name=f"t{trial.number:04d}", runs_dir=str(ctx.tune_dir / "runs"),
                         **ctx.train_fields)
    trial.set_user_attr("run_dir", str(ctx.tune_dir / "runs" / config.name))
    try:
        run = train(config, callbacks=(epoch_rule(trial, ctx.study, ctx.space.pruning),), lineage=ctx.lineage(trial))
    except EdgekitError as exc:  # a setting every candidate shares: stop the study, say where to change it
        raise EdgekitError(f"trial {trial.number}: training: {exc} (in `edgekit tune`, settings shared by every "
                           f"candidate go under `train:` in the space file)") from None
    return run.run_dir


def _reuse(trial, duplicate, ctx) -> tuple[float, ...]:
    """Samplers re-propose finished candidates in small discrete spaces: answer from the earlier trial."""
    log.info("trial %d: same candidate as trial %d; reusing its measurements", trial.number, duplicate.number)
    for key in ("run_dir", "variant_dir", "bench_dir", "accuracy", "p90_ms", "size_kb", "feasible",
                "val_accuracy_curve"):
        if key in duplicate.user_attrs:
            trial.set_user_attr(key, duplicate.user_attrs[key])
    trial.set_user_attr("duplicate_of", duplicate.number)
    attrs = duplicate.user_attrs
    for name, value in ctx.budget.constraints(attrs["p90_ms"], attrs["size_kb"], attrs["accuracy"]).items():
        trial.set_constraint(name, value)
    return tuple(duplicate.values)


def _finish(trial, ctx, variant, bench, started: float) -> tuple[float, ...]:
    accuracy = float(variant.manifest.metrics.validation.accuracy)
    p90 = float(bench["row"].latency_ms.p90)
    size_kb = variant.manifest.tflite["size"] / 1024
    constraints = ctx.budget.constraints(p90, size_kb, accuracy)
    for name, value in constraints.items():
        trial.set_constraint(name, value)
    feasible = all(v <= 0 for v in constraints.values())
    trial.set_user_attr("bench_dir", bench["bench_dir"])
    for key, value in (("accuracy", accuracy), ("p90_ms", p90), ("p50_ms", bench["row"].latency_ms.p50),
                       ("size_kb", round(size_kb, 2)), ("feasible", feasible),
                       ("wall_s", round(time.time() - started, 1))):
        trial.set_user_attr(key, value)
    log.info("trial %d: accuracy %.4f, p90 %.3f ms, %.0f KB, %s, %.0f s", trial.number, accuracy, p90, size_kb,
             "within budget" if feasible else "over budget", time.time() - started)
    return (accuracy, p90, size_kb) if ctx.budget.max_size_kb is not None else (accuracy, p90)
