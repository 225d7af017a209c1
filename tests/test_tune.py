"""`edgekit tune`: search space validation, the latency-before-training check, the pruning rule, storage,
resume after a kill, a device that goes away, and two workers sharing one study on a real PostgreSQL.

One small study (32 px digits, alpha 0.35, 1 epoch of 2 steps, desktop timed for a few runs) is built once
per session and copied by the tests that change it. A size budget of 1000 KB rejects the float32 variant
(about 1.6 MB) before training deterministically, where a latency budget would depend on the load.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.errors import EdgekitError
from edgekit.tune.space import DEFAULT_SPACE, load_space

SPACE = {
    "width": [0.35], "image_size": [32], "recipe": ["float32", "int8-ptq"], "epochs": [1],
    # deterministic: false because op determinism is process-wide and these studies run inside pytest's
    # process; `train --deterministic` is tested in child processes (test_deterministic_training_...).
    "train": {"steps_per_epoch": 2, "batch_size": 32, "weights": "none", "augment": {"enabled": False},
              "deterministic": False},
    "pruning": {"min_trials": 1},
}
FAST_BENCH = ["--runs", "3", "--warmup", "1", "--min-seconds", "0.02", "--threads", "1"]
REPO = Path(__file__).resolve().parents[1]


def write_space(path: Path, mapping: dict) -> Path:
    path.write_text(yaml.safe_dump(mapping))
    return path


def local_profile(path: Path) -> Path:
    path.write_text("description: this machine, for the tune tests\narch: any\nconnection: local\nthreads: 1\n")
    return path


def run_cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result, (result.stderr if hasattr(result, "stderr") else result.output)


# ---------------------------------------------------------------- the search space


def test_default_space_is_valid_and_covers_the_issue():
    space = load_space()
    assert space.dimensions["width"].choices == (0.35, 0.5, 0.75, 1.0)
    assert {"float32", "float16", "int8-ptq", "int8-qat", "prune50-int8"} <= set(space.dimensions["recipe"].choices)
    assert DEFAULT_SPACE.is_file()


@pytest.mark.parametrize("mapping, expected", [
    ({}, "empty search space"),
    ({"width": [0.35], "image_size": [32]}, "field 'recipe' is missing"),
    ({**SPACE, "widht": [0.5]}, "unknown field 'widht'"),
    ({**SPACE, "width": []}, "field 'width': an empty list"),
    ({**SPACE, "image_size": [16]}, "field 'image_size'[0] must be a whole number of pixels from 32"),
    ({**SPACE, "recipe": ["int9"]}, "field 'recipe'[0]: unknown recipe 'int9'"),
    ({**SPACE, "learning_rate": {"low": 0.01, "high": 0.001}}, "field 'learning_rate': low 0.01 is above high"),
    ({**SPACE, "epochs": {"low": 1, "hi": 3}}, "field 'epochs': a range unknown key 'hi'"),
    ({**SPACE, "train": {"alpha": 0.5}}, "field 'train'.alpha: set by the tuner"),
    ({**SPACE, "train": {"batch_sise": 8}}, "unknown field 'batch_sise'"),
    ({**SPACE, "sampler": "random"}, "field 'sampler' must be one of tpe, nsga2"),
])
def test_invalid_space_is_one_line_naming_file_and_field(tmp_path, mapping, expected):
    path = write_space(tmp_path / "space.yaml", mapping)
    with pytest.raises(EdgekitError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message


def test_cli_rejects_an_invalid_space_before_any_work(tmp_path):
    path = write_space(tmp_path / "space.yaml", {**SPACE, "width": [3.0]})
    result, err = run_cli("tune", "--space", str(path), "--max-latency-ms", "10", "--out", str(tmp_path / "t"))
    assert result.exit_code == 1
    assert f"error: {path}: field 'width'[0] must be a number above 0 and up to 2 (MobileNetV2's width" in err
    assert not (tmp_path / "t").exists()


def test_unreachable_storage_is_one_line(tmp_path):
    path = write_space(tmp_path / "space.yaml", SPACE)
    result, err = run_cli("tune", "--space", str(path), "--max-latency-ms", "10", "--out", str(tmp_path / "t"),
                          "--storage", "postgresql://edgekit:secret@127.0.0.1:1/nowhere")
    assert result.exit_code == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: --storage postgresql://edgekit:***@127.0.0.1:1/nowhere: cannot open the study")
    assert "secret" not in err


def test_join_needs_an_existing_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    result, err = run_cli("tune", "--join", "nope", "--storage", url)
    assert result.exit_code == 1
    assert "--join nope: no such study in sqlite:///" in err


# ---------------------------------------------------------------- the pruning rule


def test_pruning_rule_stops_a_candidate_below_the_median_of_finished_feasible_trials():
    from optuna.trial import create_trial

    from edgekit.tune.candidate import epoch_rule
    from edgekit.tune.space import PruningRule

    study = optuna.create_study(directions=["maximize", "minimize"])
    for curve, feasible in (([0.5, 0.8], True), ([0.6, 0.9], True), ([0.9, 0.99], False)):
        study.add_trial(create_trial(values=[curve[-1], 1.0], user_attrs={"feasible": feasible,
                                                                           "val_accuracy_curve": curve}))
    rule = PruningRule(percentile=50, warmup_epochs=1, min_trials=2)
    good = epoch_rule(study.ask(), study, rule)
    good.on_epoch_end(0, {"val_accuracy": 0.1})  # warm-up epoch: never judged
    good.on_epoch_end(1, {"val_accuracy": 0.84})  # median of the feasible 0.8, 0.9 is 0.85: within min_delta
    bad_trial = study.ask()
    bad = epoch_rule(bad_trial, study, rule)
    bad.on_epoch_end(0, {"val_accuracy": 0.7})
    with pytest.raises(optuna.TrialPruned, match="epoch 2: validation accuracy 0.8200 more than 0.02 below the 50th"):
        bad.on_epoch_end(1, {"val_accuracy": 0.82})
    assert bad_trial.user_attrs["val_accuracy_curve"] == [0.7, 0.82]
    assert epoch_rule(study.ask(), study, PruningRule(enabled=False)).on_epoch_end(1, {"val_accuracy": 0.0}) is None


def test_latency_precheck_gives_pruned_recipes_their_best_case_speedup():
    from edgekit.recipes import load_recipe
    from edgekit.tune.candidate import Budget, precheck
    from edgekit.tune.latency import Probe

    probe = Probe("0" * 64, 500_000, p90_ms=1.8, p50_ms=1.5, runtime="litert", cached=False)
    budget = Budget(max_latency_ms=1.0)
    assert precheck(probe, load_recipe("int8-ptq"), budget).startswith("max_latency_ms: probe p90 1.800 ms")
    assert precheck(probe, load_recipe("prune50-int8"), budget) is None  # 1.8 x (1 - 0.5) = 0.9 may fit
    assert precheck(probe, load_recipe("int8-ptq"), Budget(2.0, max_size_kb=400)).startswith("max_size_kb: 488.3 KB")


# ---------------------------------------------------------------- a real study


@pytest.fixture(scope="session")
def tune_study(tmp_path_factory, digits_folder):
    """A finished 3-trial study: int8-ptq trained (enqueued), float32 rejected by size, the rest duplicates."""
    from edgekit.tune.study import create, load_config, run_tune

    root = tmp_path_factory.mktemp("tune")
    space = write_space(root / "space.yaml", SPACE)
    profile = local_profile(root / "bench-device.yaml")
    config = load_config(device=str(profile), max_latency_ms=1000.0, space_path=str(space), max_size_kb=1000.0,
                         data=str(digits_folder), runs=3, warmup=1, min_seconds=0.02, threads=1)
    tune_dir = root / "study"
    study, _, _ = create(tune_dir, config, None, "tiny")
    study.enqueue_trial({"recipe": "int8-ptq"})
    run_tune(study, tune_dir, trials=3, timeout=None)
    return tune_dir


def _trials(tune_dir: Path) -> list[dict]:
    return json.loads((tune_dir / "trials.json").read_text())["trials"]


@pytest.mark.slow
def test_study_trains_only_candidates_within_budget_and_names_study_and_trial(tune_study):
    rows = _trials(tune_study)
    assert len(rows) == 3 and rows[0]["recipe"] == "int8-ptq" and rows[0]["state"] == "complete"
    for row in rows:
        if row["recipe"] == "float32":
            assert row["state"] == "rejected" and row["note"].startswith("max_size_kb: ")
            assert not (tune_study / "runs" / f"t{row['trial']:04d}").exists()  # never trained
    run = json.loads((Path(rows[0]["run_dir"]) / "manifest.json").read_text())
    variant = json.loads((Path(rows[0]["variant_dir"]) / "manifest.json").read_text())
    for manifest in (run, variant):
        assert manifest["lineage"]["tune"] == {"study": "tiny", "trial": 0, "tune_dir": str(tune_study.resolve())}
    assert (Path(rows[0]["bench_dir"]) / "results.json").is_file()
    assert rows[0]["accuracy"] == variant["metrics"]["validation"]["accuracy"]  # measured on the .tflite
    assert rows[0]["size_kb"] < 1000 and rows[0]["feasible"] is True
    assert rows[0]["estimated_s"] > 0 and rows[0]["duration_s"] > 0  # estimate beside the wall time
    for name in ("trials.json", "trials.csv", "trials.md", "pareto.png", "manifest.json"):
        assert (tune_study / name).is_file()
    assert "est s" in (tune_study / "trials.md").read_text()


# ---------------------------------------------------------------- cost, budget, determinism


def test_cost_model_scales_with_macs_and_ranks_candidates():
    from edgekit.recipes import load_recipe
    from edgekit.tune.cost import TrainRate, candidate_seconds, mmacs, parse_duration, recipe_epochs, study_cost
    from edgekit.tune.space import space_from_mapping

    assert mmacs(1.0, 224) == 300 and mmacs(0.35, 224) == 59 and mmacs(1.0, 112) == pytest.approx(75)
    assert mmacs(0.35, 96) < mmacs(0.5, 96) < mmacs(0.5, 128)
    rate = TrainRate(base_s=0.001, per_mmac_s=0.0001)
    one = candidate_seconds(rate, 0.35, 96, 10, 0, n_train=1000, n_val=250)
    assert one == pytest.approx((0.001 + 0.0001 * mmacs(0.35, 96)) * (1000 + 250 / 3) * 10 + 30)
    assert recipe_epochs(load_recipe("int8-qat")) > 0 == recipe_epochs(load_recipe("int8-ptq"))
    space = space_from_mapping({"width": [0.35, 1.0], "image_size": [96, 224], "recipe": ["int8-ptq", "int8-qat"],
                                "epochs": [5, 30]}, "test")
    cost = study_cost(space, rate, 1000, 250, 20, load_recipe)
    assert cost["cheapest"]["width"] == 0.35 and cost["cheapest"]["image_size"] == 96
    assert cost["dearest"] == {**cost["dearest"], "width": 1.0, "image_size": 224, "epochs": 30, "recipe": "int8-qat"}
    assert cost["study_median_s"] == pytest.approx(20 * cost["median_s"])
    assert parse_duration("30m") == 1800 and parse_duration("2h") == 7200 and parse_duration("90") == 90
    with pytest.raises(EdgekitError, match="--budget 'soon': a duration like 900, 30m or 2h"):
        parse_duration("soon")


def test_a_candidate_that_cannot_finish_in_the_time_left_is_not_trained():
    from types import SimpleNamespace

    from edgekit.recipes import load_recipe
    from edgekit.tune.candidate import _over_time
    from edgekit.tune.cost import TrainRate

    class Trial:
        attrs: dict = {}

        def set_user_attr(self, key, value):
            self.attrs[key] = value

    splits = SimpleNamespace(train=range(10_000), validation=range(2_000))
    ctx = SimpleNamespace(rate=TrainRate(0.0, 0.0005), deadline=None)
    params = {"width": 1.0, "image_size": 224, "epochs": 30}
    trial = Trial()
    assert _over_time(trial, ctx, params, load_recipe("float32"), splits) is None  # no budget: only recorded
    assert trial.attrs["estimated_s"] > 3600
    ctx.deadline = time.time() + 600
    reason = _over_time(trial, ctx, params, load_recipe("float32"), splits)
    assert reason.startswith("time: estimated ") and "left of --budget" in reason
    assert _over_time(trial, ctx, {**params, "width": 0.35, "image_size": 64, "epochs": 1},
                      load_recipe("float32"), splits) is None


def test_without_a_gpu_the_default_space_is_the_laptop_one(caplog):
    from edgekit.tune.study import shipped_space

    cpu = load_space(shipped_space(None))
    assert max(cpu.dimensions["width"].choices) <= 0.5 and max(cpu.dimensions["image_size"].choices) <= 128
    assert cpu.train["deterministic"] is True
    assert "no GPU: searching the laptop-sized space" in caplog.text
    assert load_space(shipped_space("default")).dimensions["width"].choices == (0.35, 0.5, 0.75, 1.0)


@pytest.mark.slow
def test_deterministic_training_gives_the_same_weights_twice(tmp_path):
    """Two child processes (op determinism is process-wide), same seed: identical weights."""
    weights = []
    for i in range(2):
        env = {**os.environ, "PYTHONPATH": str(REPO), "EDGEKIT_HOME": str(tmp_path / f"home{i}"),
               "TF_CPP_MIN_LOG_LEVEL": "3"}
        done = subprocess.run([sys.executable, "-m", "edgekit.cli", "train", "--epochs", "2", "--steps-per-epoch",
                               "4", "--deterministic", "--name", "det", "--json"], env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        run_dir = Path(json.loads(done.stdout)["run_dir"])
        assert json.loads((run_dir / "manifest.json").read_text())["config"]["deterministic"] is True
        code = ("import sys, numpy as np; from edgekit.compat import keras; m = keras.models.load_model(sys.argv[1], "
                "compile=False); np.savez(sys.argv[2], *m.get_weights())")
        subprocess.run([sys.executable, "-c", code, str(run_dir / "model.keras"), str(tmp_path / f"w{i}.npz")],
                       env=env, check=True, capture_output=True, timeout=300)
        with np.load(tmp_path / f"w{i}.npz") as saved:
            weights.append([saved[k] for k in sorted(saved.files, key=lambda k: int(k.split("_")[1]))])
    assert all(np.array_equal(a, b) for a, b in zip(*weights, strict=True))


@pytest.mark.slow
def test_latency_cache_is_keyed_on_a_reproducible_random_model(tune_study, tmp_path):
    from edgekit.data import DataSpec, load_dataset
    from edgekit.recipes import load_recipe
    from edgekit.tune.latency import _build_probe, architecture_key

    splits = load_dataset(DataSpec(json.loads((tune_study / "tune.json").read_text())["config"]["data"], (), 32, 42))
    recipe = load_recipe("int8-ptq")
    key = architecture_key(0.35, 32, len(splits.labels), recipe, 42)
    assert key == architecture_key(0.35, 32, len(splits.labels), load_recipe("int8-qat"), 42)  # same probe file
    assert key != architecture_key(0.35, 32, len(splits.labels), load_recipe("float16"), 42)
    first = json.loads((tune_study / "probes" / key / "manifest.json").read_text())["files"]["model.tflite"]
    _build_probe(tmp_path / "again", 0.35, 32, recipe, splits, 42, {})
    again = json.loads((tmp_path / "again" / "manifest.json").read_text())["files"]["model.tflite"]
    assert again["sha256"] == first["sha256"]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tune_study / 'study.db'}")
    assert any(k.startswith(f"latency:{first['sha256'][:16]}:bench-device@localhost:") for k in study.user_attrs)


@pytest.mark.slow
def test_info_and_best_line_name_run_and_variant(tune_study):
    result, _ = run_cli("info", str(tune_study))
    assert result.exit_code == 0
    assert "tune study 'tiny' on" in result.stdout
    rows = _trials(tune_study)
    assert "best under budget: trial 0 (" in result.stdout and rows[0]["variant_dir"] in result.stdout
    assert "edgekit deploy" in result.stdout


@pytest.mark.slow
def test_resume_after_a_kill_keeps_finished_trials_and_fails_the_dead_one(tune_study, tmp_path):
    copy = tmp_path / "study"
    shutil.copytree(tune_study, copy)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{copy / 'study.db'}")
    before = {t.number: t.values for t in study.trials}
    killed = study.ask()  # what a killed worker leaves behind: RUNNING forever
    killed.set_user_attr("worker", f"{os.uname().nodename}:999999")
    result, err = run_cli("tune", "--resume", str(copy), "--trials", "4", "--json")
    assert result.exit_code == 0, err
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{copy / 'study.db'}")
    states = {t.number: t.state for t in study.trials}
    assert states[killed.number] == optuna.trial.TrialState.FAIL
    assert {n: t.values for n, t in ((t.number, t) for t in study.trials) if n in before} == before
    counted = [t for t in study.trials if t.state != optuna.trial.TrialState.FAIL]
    assert len(counted) == 4  # the killed trial does not use up the budget
    assert json.loads(result.stdout)["best"]["trial"] == 0


@pytest.mark.slow
def test_unreachable_device_stops_the_study_cleanly_keeping_finished_trials(tune_study, tmp_path):
    copy = tmp_path / "study"
    shutil.copytree(tune_study, copy)
    profile = Path(json.loads((copy / "tune.json").read_text())["config"]["device"])
    original = profile.read_text()
    try:  # the same profile now points at a closed port: a board that went away
        profile.write_text("description: gone\narch: any\nconnection: ssh\nhost: 127.0.0.1\nport: 9\n"
                           "threads: 1\npython: python3\n")
        result, err = run_cli("tune", "--resume", str(copy), "--trials", "5")
    finally:
        profile.write_text(original)
    assert result.exit_code == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: device bench-device (127.0.0.1:9): 127.0.0.1:9: cannot connect")
    assert f"the study stopped cleanly, its {len(_trials(tune_study))} finished trials kept in {copy}" in line
    assert f"--resume {copy}" in line
    assert [r["state"] for r in _trials(copy)][:3] == [r["state"] for r in _trials(tune_study)]


@pytest.mark.slow
def test_unsatisfiable_budget_names_the_constraint_and_the_closest_candidate(tmp_path, digits_folder):
    space = write_space(tmp_path / "space.yaml", {**SPACE, "recipe": ["float32"]})
    result, err = run_cli("tune", "--space", str(space), "--data", str(digits_folder), "--max-latency-ms",
                          "0.00001", "--out", str(tmp_path / "t"), "--device", str(local_profile(tmp_path / "d.yaml")),
                          *FAST_BENCH)
    assert result.exit_code == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: no candidate can meet --max-latency-ms: even the smallest, width 0.35, 32 px, "
                           "float32, has probe p90 ")
    assert "ms > 1e-05 ms on d;" in line
    assert "raise --max-latency-ms or add smaller widths" in line
    assert not (tmp_path / "t" / "runs").exists()


# ---------------------------------------------------------------- several workers, one study


# Runs `edgekit tune` with Optuna's Study.ask wrapped: after creating its first trial (RUNNING in the
# database), the worker leaves a file in BARRIER and waits until the other worker has left one too (or
# TIMEOUT seconds pass). Test code only: the product runs unchanged inside the same process.
BARRIER_WORKER = """
import runpy, sys, time
from pathlib import Path

import optuna.study

barrier, me, timeout = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
sys.argv = ["edgekit", *sys.argv[4:]]
ask = optuna.study.Study.ask
waited = []


def ask_then_wait(self, *args, **kwargs):
    trial = ask(self, *args, **kwargs)
    if not waited:
        waited.append(trial.number)
        (barrier / me).write_text(str(trial.number))
        deadline = time.time() + timeout
        while len(list(barrier.iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.1)
    return trial


optuna.study.Study.ask = ask_then_wait
runpy.run_module("edgekit.cli", run_name="__main__")
"""


@pytest.mark.slow
def test_two_workers_share_one_postgresql_study_and_run_trials_at_the_same_time(tmp_path, digits_folder,
                                                                                postgres_url):
    """Two `tune --join` processes on one study: both run trials, with overlapping trial windows, and
    together make exactly the study's trials, each once.

    A worker that starts late on a loaded machine could find the study already full, so each worker
    waits, inside its first trial, for the other to have a trial running too (BARRIER_WORKER). That
    makes the overlap certain if the product lets two workers run at once; one that serialised them
    (a lock around trials) would leave the other worker outside until the timeout, and fail here.
    """
    from edgekit.tune.study import create, load_config

    url, name = postgres_url, "two-workers"
    space = write_space(tmp_path / "space.yaml", SPACE)
    config = load_config(device=str(local_profile(tmp_path / "d.yaml")), max_latency_ms=1000.0,
                         space_path=str(space), max_size_kb=1000.0, data=str(digits_folder), runs=3, warmup=1,
                         min_seconds=0.02, threads=1)
    create(tmp_path / "origin", config, url, name)
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGEKIT_HOME": str(tmp_path / "home"),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    (tmp_path / "worker.py").write_text(BARRIER_WORKER)
    (tmp_path / "barrier").mkdir()
    workers = [subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(tmp_path / "barrier"), str(i),
                                 "600", "tune", "--join", name, "--storage", url, "--trials", "4",
                                 "--out", str(tmp_path / f"worker{i}"), "--json"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
    outputs = [w.communicate(timeout=900) for w in workers]
    for worker, (_, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # each trial once, no gaps
    assert len({t._trial_id for t in trials}) == len(trials) == 4
    by_worker: dict[str, list] = {}
    for trial in trials:
        by_worker.setdefault(trial.user_attrs["worker"].rpartition(":")[2], []).append(trial)
    assert set(by_worker) == {str(w.pid) for w in workers}, {p: [t.number for t in ts] for p, ts in by_worker.items()}
    first, second = by_worker.values()
    windows = [(a.number, b.number) for a in first for b in second
               if a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete]
    assert windows, [(t.number, t.user_attrs["worker"], str(t.datetime_start), str(t.datetime_complete))
                     for t in trials]
    for i in range(2):  # both workers wrote the report from the shared study
        assert len(_trials(tmp_path / f"worker{i}")) >= 3


def test_tune_pareto_plot_places_labels_like_bench_so_they_never_overlap(tmp_path, monkeypatch):
    import edgekit.tune.report as report
    from edgekit import render
    from edgekit.render import label_box, place_labels

    boxes = []

    def placed(ax, points, labels):
        notes = place_labels(ax, points, labels)
        boxes.extend(label_box(note) for note in notes if note.axes is ax)
        return notes

    monkeypatch.setattr(render, "place_labels", placed)
    rows = [{"trial": i, "state": "complete", "p90_ms": 5.0 + 0.01 * i, "accuracy": 0.9 + 0.0005 * (i % 3),
             "feasible": i % 2 == 0, "recipe": "int8-ptq"} for i in range(12)]
    config = type("Config", (), {"max_latency_ms": 6.0})()
    assert report.pareto_plot(rows, config, "tiny", tmp_path / "pareto.png")
    assert len(boxes) == 12 and not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_a_trial_started_over_the_limit_by_a_racing_worker_never_runs_and_is_not_reported():
    """Two workers that finish a trial at the same moment both see room for one more; the one whose new
    trial got the later number finds the limit used up, stops, and its trial is neither run nor counted."""
    from edgekit.tune.report import trial_rows
    from edgekit.tune.study import TrialLimit, _objective

    study = optuna.create_study(directions=["maximize"])
    study.enqueue_trial({"x": 1})
    for _ in range(2):  # another worker's two trials: one finished, one still running
        study.ask()
    study.tell(0, 1.0)
    limit = TrialLimit(2)
    assert limit.remaining(study) == 0 and not limit.beyond(study, study.trials[1])

    ran = []

    class Context:  # run_candidate is never reached for a trial beyond the limit
        def __getattr__(self, name):
            ran.append(name)
            raise AssertionError("a trial beyond the limit touched the tune context")

    study.optimize(_objective(Context(), limit), n_trials=3)
    extra = study.trials[2]
    assert not ran and len(study.trials) == 3  # stopped after the one extra trial
    assert extra.state == optuna.trial.TrialState.FAIL and "beyond_limit" in extra.user_attrs
    assert limit.used(study) == 2 and limit.beyond(study, extra)
    assert [row["trial"] for row in trial_rows(study)] == [0, 1]
