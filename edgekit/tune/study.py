"""`edgekit tune`: an Optuna study over models and recipes, measured on the user's own device.

The study is multi-objective (accuracy up, device p90 down, and size down when a size budget is given)
with the budgets as Optuna constraints, so the sampler steers towards feasible candidates and
`best_trials` is the feasible Pareto front. Storage is Optuna's RDB storage: a SQLite file in the tune
directory by default (`--resume DIR` continues it), or any database URL several machines share
(`--join STUDY --storage URL`); Optuna, not edgekit, hands out the trials.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from edgekit.artifacts import edgekit_home, process_alive, write_json_atomic
from edgekit.bench.run import BenchSettings
from edgekit.compat import gpus
from edgekit.config import TrainConfig, from_mapping
from edgekit.data import DataSpec, load_dataset
from edgekit.devices import load_profile
from edgekit.errors import EdgekitError
from edgekit.recipes import load_recipe
from edgekit.tune.candidate import Budget, CandidateFailed, describe, precheck, run_candidate
from edgekit.tune.cost import TrainRate, cost_lines, measure_rate, study_cost
from edgekit.tune.latency import DeviceUnreachable, probe_latency
from edgekit.tune.options import check_options
from edgekit.tune.report import BEYOND_LIMIT, unsatisfied, write_report
from edgekit.tune.space import SearchSpace, load_space, space_from_mapping

log = logging.getLogger(__name__)

CONFIG_FILE = "tune.json"
STUDY_DB = "study.db"
CONFIG_ATTR = "edgekit_tune"
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


@dataclass(frozen=True)
class TuneConfig:
    """What a study searches and measures; stored in the study so joining workers need only its name."""

    device: str = "desktop"
    max_latency_ms: float = 0.0
    max_size_kb: float | None = None
    min_accuracy: float | None = None
    data: str | None = None
    space: dict = field(default_factory=dict)  # the validated YAML mapping
    space_source: str = ""
    runs: int = 50
    warmup: int = 5
    min_seconds: float = 2.0
    threads: int | None = None

    @property
    def budget(self) -> Budget:
        return Budget(self.max_latency_ms, self.max_size_kb, self.min_accuracy)


@dataclass
class TuneResult:
    tune_dir: Path
    study_name: str
    storage: str
    trials: list
    stopped: str | None = None


def redact(url: str) -> str:
    """A storage URL without its password, for files and messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is reported by open_storage
        return url


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage with a heartbeat (a killed worker's trial turns FAIL, not RUNNING forever)."""
    engine_kwargs = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=30,
                                              grace_period=120)
        except ImportError:
            raise EdgekitError(f"--storage {redact(url)}: no database driver for this URL; PostgreSQL needs "
                               "psycopg (pip install 'psycopg[binary]'), which edgekit depends on") from None
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy/driver errors all mean the same to the user
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:200]
            raise EdgekitError(f"--storage {redact(url)}: cannot open the study database ({reason}); check the "
                               "host, port, user and that the database exists") from None


def _sampler(space: SearchSpace) -> optuna.samplers.BaseSampler:
    if space.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=space.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=space.seed, multivariate=True, n_startup_trials=4)


def _directions(config: TuneConfig) -> list[str]:
    return ["maximize", "minimize"] + (["minimize"] if config.max_size_kb is not None else [])


def create(tune_dir: Path, config: TuneConfig, storage_url: str | None, study_name: str | None):
    """A new study and its tune directory; the config goes into both."""
    tune_dir = Path(tune_dir)
    if (tune_dir / CONFIG_FILE).exists():
        raise EdgekitError(f"{tune_dir}: already holds a study; continue it with --resume {tune_dir}")
    tune_dir.mkdir(parents=True, exist_ok=True)
    url = storage_url or f"sqlite:///{(tune_dir / STUDY_DB).resolve()}"
    storage = open_storage(url)
    name = study_name or tune_dir.name
    space = space_from_mapping(config.space, config.space_source)
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=_directions(config),
                                    sampler=_sampler(space))
    except optuna.exceptions.DuplicatedStudyError:
        raise EdgekitError(f"study {name!r} already exists in {redact(url)}; add workers to it with "
                           f"--join {name}, or pick another --study name") from None
    study.set_user_attr(CONFIG_ATTR, dataclasses.asdict(config))
    write_json_atomic(tune_dir / CONFIG_FILE, {"study": name, "storage": redact(url), "storage_is_local":
                                               storage_url is None, "config": dataclasses.asdict(config)})
    return study, storage, url


def resume(tune_dir: Path, storage_url: str | None = None):
    """The study a tune directory belongs to; stale trials of dead local workers are marked failed."""
    tune_dir = Path(tune_dir)
    path = tune_dir / CONFIG_FILE
    if not path.is_file():
        raise EdgekitError(f"{tune_dir}: no {CONFIG_FILE}; is this a directory made by `edgekit tune`?")
    saved = json.loads(path.read_text())
    if saved.get("storage_is_local"):
        storage_url = f"sqlite:///{(tune_dir / STUDY_DB).resolve()}"
    elif not storage_url:
        raise EdgekitError(f"{tune_dir}: the study lives in {saved['storage']}; pass --storage URL (with its "
                           "password) to resume it")
    study, storage = join(saved["study"], storage_url)
    _fail_dead_local_trials(study, storage)
    return study, storage, storage_url


def join(study_name: str, storage_url: str):
    storage = open_storage(storage_url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise EdgekitError(f"--join {study_name}: no such study in {redact(storage_url)}; start it with "
                           f"`edgekit tune --storage URL --study {study_name} ...`") from None
    if CONFIG_ATTR not in study.user_attrs:
        raise EdgekitError(f"study {study_name!r} in {redact(storage_url)} was not made by `edgekit tune`")
    config = TuneConfig(**study.user_attrs[CONFIG_ATTR])
    study.sampler = _sampler(space_from_mapping(config.space, config.space_source))
    return study, storage


def study_config(study) -> TuneConfig:
    return TuneConfig(**study.user_attrs[CONFIG_ATTR])


def _fail_dead_local_trials(study, storage) -> None:
    """After a kill or a reboot: RUNNING trials of processes on this host that no longer exist."""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host == host and pid.isdigit() and not _alive(int(pid)):
            storage.set_trial_user_attr(trial._trial_id, "interrupted", "its worker process ended (killed?)")
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            log.info("trial %d was interrupted; marked failed (finished trials are kept)", trial.number)


def _alive(pid: int) -> bool:
    """A worker's process still runs (this process cannot be running a trial it finds RUNNING)."""
    return process_alive(pid) and pid != os.getpid()


def default_tune_dir(name: str) -> Path:
    return edgekit_home() / "tunes" / name


def new_study_name() -> str:
    return f"tune-{time.strftime('%Y%m%d-%H%M%S')}"


def shipped_space(space_path: str | None) -> Path | str:
    """`default`, `cpu` or a file; with none given, `cpu` where TensorFlow sees no GPU, saying so."""
    shipped = Path(__file__).resolve().parent.parent / "resources" / "tune"
    if space_path in ("default", "cpu"):
        return shipped / f"{space_path}.yaml"
    if space_path is not None:
        return space_path

    if gpus():
        return shipped / "default.yaml"
    log.warning("no GPU: searching the laptop-sized space (%s: widths 0.35-0.5, 64-128 px, up to 15 epochs); "
                "--space default searches up to width 1.0, 224 px, 30 epochs", shipped / "cpu.yaml")
    return shipped / "cpu.yaml"


def load_config(device: str, max_latency_ms: float, space_path: str | None, **options) -> TuneConfig:
    """Validate everything a study needs before any work: the space file and the device profile."""

    if max_latency_ms <= 0:
        raise EdgekitError(f"--max-latency-ms {max_latency_ms}: must be a positive number of milliseconds")
    if options.get("max_size_kb") is not None and options["max_size_kb"] <= 0:
        raise EdgekitError(f"--max-size-kb {options['max_size_kb']}: must be positive")
    if options.get("min_accuracy") is not None and not 0 < options["min_accuracy"] <= 1:
        raise EdgekitError(f"--min-accuracy {options['min_accuracy']}: a fraction in (0, 1], e.g. 0.9")
    if options.get("data") and not Path(options["data"]).expanduser().is_dir():
        raise EdgekitError(f"--data {options['data']}: no such folder; pass a folder with one sub-folder per class")
    if options.get("data"):
        options["data"] = str(Path(options["data"]).expanduser().resolve())
    space = load_space(shipped_space(space_path))
    load_profile(device)
    return TuneConfig(device=device, max_latency_ms=max_latency_ms, space=space.as_dict(),
                      space_source=space.source, **options)


class Context:
    """What every trial of one worker shares: the study, device, settings and loaded datasets."""

    def __init__(self, study, config: TuneConfig, tune_dir: Path):
        self.study, self.config, self.tune_dir = study, config, Path(tune_dir)
        self.study_name = study.study_name
        self.space = space_from_mapping(config.space, config.space_source)
        self.budget = config.budget
        self.data = config.data

        fixed = from_mapping(TrainConfig, self.space.train, self.space.source)  # nested mappings → dataclasses
        self.train_fields = {name: getattr(fixed, name) for name in self.space.train}
        self.profile = load_profile(config.device)
        threads = config.threads or self.profile.threads
        self.settings = BenchSettings(threads=(threads,), runs=config.runs, warmup=config.warmup,
                                      min_seconds=config.min_seconds)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._splits: dict[int, object] = {}
        # Reproducible candidates: the same parameters train to the same model, so a retrained duplicate or a
        # benchmark against a grid compares search, not run-to-run noise. A space may say `deterministic: false`.
        self.train_fields.setdefault("deterministic", True)
        self.rate = None  # training seconds per image on this machine (edgekit.tune.cost), set before trials
        self.deadline: float | None = None  # --budget / --timeout: candidates that cannot finish are not trained

    def lineage(self, trial) -> dict:
        return {"tune": {"study": self.study_name, "trial": trial.number, "tune_dir": str(self.tune_dir.resolve())}}

    def splits(self, image_size: int):
        if image_size not in self._splits:
            defaults = TrainConfig()
            self._splits[image_size] = load_dataset(DataSpec(
                self.data, (), image_size, self.space.seed,
                self.train_fields.get("validation_fraction", defaults.validation_fraction),
                self.train_fields.get("strict", defaults.strict),
                self.train_fields.get("max_image_pixels", defaults.max_image_pixels)))
        return self._splits[image_size]

    def duplicate_of(self, trial, params: dict):
        """A finished trial with the same parameters: its measurements are reused instead of retraining."""
        for other in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if other.number != trial.number and other.params == trial.params and "p90_ms" in other.user_attrs:
                return other
        return None

    def trained_run(self, trial) -> tuple[Path, object] | None:
        """A finished run with the same training settings (all but the recipe) to compress again.

        Candidates differing only in recipe share their training, as a user compressing one run several
        ways would: the grid of 2 widths x 3 sizes x 2 recipes needs 6 trainings, not 12.
        """
        wanted = {k: v for k, v in trial.params.items() if k != "recipe"}
        for other in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            run_dir = Path(other.user_attrs.get("run_dir", ""))
            if {k: v for k, v in other.params.items() if k != "recipe"} == wanted and \
                    (run_dir / "manifest.json").is_file() and (run_dir / "model.keras").is_file():
                return run_dir, other
        return None


class TrialLimit:
    """Stop once the study as a whole has `n` trials, counting every worker's (Optuna's MaxTrialsCallback
    counts finished trials only, so two workers would overshoot): finished, rejected, pruned, failed
    candidates and trials still running elsewhere count; trials of killed workers do not."""

    def __init__(self, n: int | None):
        self.n = n

    def used(self, study) -> int:
        return self.used_by(study.get_trials(deepcopy=False))

    def remaining(self, study) -> int | None:
        return None if self.n is None else self.n - self.used(study)

    def __call__(self, study, trial) -> None:
        if self.n is not None and self.used(study) >= self.n:
            study.stop()

    def beyond(self, study, trial) -> bool:
        """This just-started trial is one too many: two workers that finished a trial at the same moment
        both saw room for one more. Trial numbers are handed out in order by the storage, so the later
        one finds the earlier trials already using up the limit."""
        if self.n is None:
            return False
        earlier = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
        return self.used_by(earlier) >= self.n

    @staticmethod
    def used_by(trials) -> int:
        return sum(1 for t in trials if t.state in COUNTED or (t.state == TrialState.FAIL and "error" in t.user_attrs))


def check_satisfiable(ctx: Context) -> None:
    """Before any training: the smallest width and size with each recipe. If none fits, no candidate will."""
    dims = ctx.space.dimensions
    width = min(dims["width"].choices or (dims["width"].low,))
    size = min(dims["image_size"].choices or (int(dims["image_size"].low),))
    closest = None
    for name in dims["recipe"].values():
        recipe = load_recipe(name)
        lineage = {"tune": {"study": ctx.study_name, "trial": None, "purpose": "budget check"}}
        probe = probe_latency(ctx.study, ctx.tune_dir / "probes", width, size, recipe, ctx.splits(size),
                              ctx.profile, ctx.settings, ctx.space.seed, lineage)
        reason = precheck(probe, recipe, ctx.budget)
        if reason is None:
            return
        if closest is None or probe.p90_ms < closest[0]:
            closest = (probe.p90_ms, reason, describe({"width": width, "image_size": size, "recipe": name}))
    constraint, _, detail = closest[1].partition(": ")
    flag = "--" + constraint.replace("_", "-")
    raise EdgekitError(f"no candidate can meet {flag}: even the smallest, {closest[2]}, has {detail} on "
                       f"{ctx.profile.name}; raise {flag} or add smaller widths, sizes or faster recipes to the space")


def estimate_cost(ctx: Context, trials: int | None) -> dict:
    """Time two training steps on this machine and say what the study will cost, before the first trial.

    The fitted rate is kept in the study (per host and batch size), so a resumed study does not time again.
    """

    dims = ctx.space.dimensions
    widths, sizes = dims["width"].values(), dims["image_size"].values()
    batch = int(ctx.train_fields.get("batch_size", TrainConfig.batch_size))
    key = f"edgekit_rate:{socket.gethostname()}:{batch}"
    splits = ctx.splits(min(sizes))
    if key in ctx.study.user_attrs:
        ctx.rate = TrainRate.from_dict(ctx.study.user_attrs[key])
    else:
        log.info("timing two training steps to estimate the study's cost (smallest and largest candidate)")
        ctx.rate = measure_rate(widths, sizes, len(splits.labels), batch)
        ctx.study.set_user_attr(key, ctx.rate.as_dict())
    cost = study_cost(ctx.space, ctx.rate, len(splits.train), len(splits.validation), trials, load_recipe)
    for line in cost_lines(cost):
        log.warning("%s", line)
    return cost


def _objective(ctx: Context, limit: TrialLimit):
    def objective(trial):
        if limit.beyond(trial.study, trial):
            trial.set_user_attr(BEYOND_LIMIT, f"not run: the study already had its {limit.n} trials")
            trial.study.stop()
            return None  # FAIL without an error: not counted, not reported, never trained
        try:
            return run_candidate(trial, ctx)
        except CandidateFailed as exc:
            trial.set_user_attr("error", str(exc))
            log.warning("trial %d failed: %s", trial.number, exc)
            return None  # Optuna records the trial as FAIL and goes on with the next candidate

    return objective


def run_tune(study, tune_dir: Path, trials: int | None, timeout: float | None) -> TuneResult:
    """Run this worker's share of the study, then write the report (also when the device goes away)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    started = time.time()
    ctx = Context(study, study_config(study), tune_dir)
    limit = TrialLimit(trials)
    stopped = None
    try:
        check_satisfiable(ctx)
        estimate_cost(ctx, limit.remaining(study))
        if timeout is not None:
            ctx.deadline = started + timeout
        if limit.remaining(study) is None or limit.remaining(study) > 0:
            left = None if ctx.deadline is None else max(ctx.deadline - time.time(), 1.0)
            study.optimize(_objective(ctx, limit), timeout=left, callbacks=[limit], gc_after_trial=True)
    except DeviceUnreachable as exc:
        stopped = str(exc)
    finally:
        write_report(tune_dir, study, ctx.config)
    finished = [t for t in study.get_trials(deepcopy=False)
                if t.state.is_finished() and BEYOND_LIMIT not in t.user_attrs]
    if stopped:
        raise EdgekitError(f"{stopped}; the study stopped cleanly, its {len(finished)} finished trials kept in "
                           f"{tune_dir}; fix the device, then continue with `edgekit tune --resume {tune_dir}`")
    problem = unsatisfied(study, ctx.config)
    if problem:
        raise EdgekitError(problem + f"; all trials are in {tune_dir}")
    return TuneResult(Path(tune_dir), study.study_name, "", finished)


def tune(*, resume_dir: Path | None = None, join_study: str | None = None, storage: str | None = None,
         study_name: str | None = None, out: Path | None = None, trials: int | None = 20,
         timeout: float | None = None, **options) -> TuneResult:
    """What `edgekit tune` does: start, resume or join a study, run this worker, write the report."""
    if resume_dir and join_study:
        raise EdgekitError("pass either --resume DIR or --join STUDY, not both")
    check_options(trials=trials, timeout=timeout, **options)
    if resume_dir:
        study, _, url = resume(resume_dir, storage)
        tune_dir = Path(resume_dir)
    elif join_study:
        if not storage:
            raise EdgekitError("--join needs --storage URL: the database the study lives in")
        study, _ = join(join_study, storage)
        url, tune_dir = storage, Path(out) if out else default_tune_dir(join_study)
        tune_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(tune_dir / CONFIG_FILE, {"study": join_study, "storage": redact(storage),
                                                   "storage_is_local": False, "config": study.user_attrs[CONFIG_ATTR]})
    else:
        if options.get("max_latency_ms") is None:
            raise EdgekitError("--max-latency-ms is required for a new study: the p90 budget on the device, in ms")
        config = load_config(**options)
        name = study_name or new_study_name()
        tune_dir = Path(out) if out else default_tune_dir(name)
        study, _, url = create(tune_dir, config, storage, name)
    log.info("study %s in %s; artifacts in %s", study.study_name, redact(url), tune_dir)
    result = run_tune(study, tune_dir, trials, timeout)
    result.storage = redact(url)
    return result
