"""The `edgekit tune` search space: a YAML file of dimensions, checked field by field before any work.

A dimension is a list of choices or a `{low, high[, step][, log]}` range. The file is validated like a
recipe (unknown keys, wrong types, impossible values and unknown recipes are one line naming the file and
the field), because a typo found after an hour of training costs far more than one found here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.config import EPOCHS, SEED, OneOf, Range, TrainConfig, from_mapping, rule_of, validate
from edgekit.errors import EdgekitError
from edgekit.recipes import load_recipe
from edgekit.yamlio import load_yaml_file

DEFAULT_SPACE = Path(__file__).resolve().parent.parent / "resources" / "tune" / "default.yaml"
DIMENSIONS = ("width", "image_size", "recipe", "epochs", "learning_rate")
TOP_LEVEL = (*DIMENSIONS, "train", "sampler", "seed", "pruning")
SAMPLERS = ("tpe", "nsga2")
MAX_GRID = 10_000  # values one range may enumerate (a benchmark's grid; also bounds what a trial can ask for)
# The TrainConfig field each numeric dimension sets: its values obey that field's declared rule.
DIMENSION_FIELDS = {"width": "alpha", "image_size": "image_size", "epochs": "epochs",
                    "learning_rate": "learning_rate"}
# TrainConfig fields the tuner sets itself (searched, or naming the candidate's run).
NOT_FIXABLE = ("alpha", "image_size", "epochs", "learning_rate", "data", "extra_data", "name", "runs_dir", "seed")


@dataclass(frozen=True)
class Dimension:
    """Choices (categorical), or a numeric range sampled by Optuna."""

    name: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False

    def suggest(self, trial) -> Any:
        if self.choices:
            return self.choices[0] if len(self.choices) == 1 else trial.suggest_categorical(self.name, self.choices)
        if self.name == "learning_rate":
            return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)
        return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)

    def values(self) -> list:
        """Every value of a discrete dimension (the grid a benchmark enumerates)."""
        if self.choices:
            return list(self.choices)
        if self.name == "learning_rate" and not self.step:
            raise EdgekitError(f"dimension {self.name!r} is continuous; give it a step or choices to enumerate it")
        step = self.step or 1
        count = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        return [type(self.low)(self.low + i * step) if self.name == "learning_rate" else int(self.low + i * step)
                for i in range(count)]


@dataclass(frozen=True)
class PruningRule:
    """Stop a candidate whose validation accuracy after an epoch is more than `min_delta` below the given
    percentile of the finished, within-budget candidates at the same epoch (Optuna's MedianPruner rule,
    applied by edgekit because Optuna cannot prune multi-objective trials). The margin matters: from
    scratch, every candidate sits at chance for the first epochs, and a bare median prunes on noise
    (benchmarks/tune_search.py pruned at 0.0975 vs a median of 0.1003 before it existed)."""

    enabled: bool = True
    percentile: float = Range(0, 100, integer=False).field(50.0)
    warmup_epochs: int = Range(0, EPOCHS.high, "epochs").field(1)
    min_trials: int = Range(1, 100_000, "trials").field(3)
    min_delta: float = Range(0, 1, integer=False, below=True).field(0.02)


@dataclass(frozen=True)
class SearchSpace:
    dimensions: dict[str, Dimension]
    train: dict = field(default_factory=dict)
    sampler: str = OneOf(SAMPLERS).field("tpe")
    seed: int = SEED.field(42)
    pruning: PruningRule = field(default_factory=PruningRule)
    source: str = "<memory>"

    def as_dict(self) -> dict:
        dims = {}
        for name, dim in self.dimensions.items():
            dims[name] = list(dim.choices) if dim.choices else {
                k: v for k, v in (("low", dim.low), ("high", dim.high), ("step", dim.step), ("log", dim.log)) if v}
        return {**dims, "train": dict(self.train), "sampler": self.sampler, "seed": self.seed,
                "pruning": dataclasses.asdict(self.pruning)}

    def grid(self) -> list[dict]:
        """Every combination of the discrete dimensions, in file order."""
        combos: list[dict] = [{}]
        for name, dim in self.dimensions.items():
            combos = [{**c, name: v} for c in combos for v in dim.values()]
        return combos


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_value(name: str, value, where: str) -> None:
    """Limits each dimension's values must respect; recipes must load."""
    if name == "recipe":
        if not isinstance(value, str):
            raise EdgekitError(f"{where}: a recipe is a shipped name or a .yaml path, got {value!r}")
        try:
            load_recipe(value)
        except EdgekitError as exc:
            raise EdgekitError(f"{where}: {exc}") from None
        return
    rule = rule_of(TrainConfig, DIMENSION_FIELDS[name])  # the words `edgekit train` uses for the same value
    if value not in rule:
        raise EdgekitError(f"{where} must be {rule.text}, got {value!r}")


def _dimension(name: str, raw, source: str) -> Dimension:
    where = f"{source}: field {name!r}"
    if isinstance(raw, list):
        if not raw:
            raise EdgekitError(f"{where}: an empty list of choices; give at least one value")
        if len(set(map(repr, raw))) != len(raw):
            raise EdgekitError(f"{where}: lists a value twice")
        for index, value in enumerate(raw):
            _check_value(name, value, f"{where}[{index}]")
        return Dimension(name, choices=tuple(raw))
    if not isinstance(raw, dict) or name == "recipe":
        kind = "a list of recipe names" if name == "recipe" else "a list of values or {low, high[, step][, log]}"
        raise EdgekitError(f"{where}: expected {kind}, got {raw!r}")
    unknown = sorted(set(raw) - {"low", "high", "step", "log"})
    if unknown or "low" not in raw or "high" not in raw:
        bad = f"unknown key {unknown[0]!r}" if unknown else "needs both 'low' and 'high'"
        raise EdgekitError(f"{where}: a range {bad}; use low, high, step, log")
    for key in ("low", "high"):
        _check_value(name, raw[key], f"{where}.{key}")
    step, log = raw.get("step"), raw.get("log", False)
    if raw["low"] > raw["high"]:
        raise EdgekitError(f"{where}: low {raw['low']} is above high {raw['high']}")
    if step is not None and (not _is_number(step) or not step > 0 or (name != "learning_rate" and step % 1)):
        raise EdgekitError(f"{where}.step: must be a positive number (whole for {name}), got {step!r}")
    if step is not None and (raw["high"] - raw["low"]) / step >= MAX_GRID:
        raise EdgekitError(f"{where}.step: {step} makes more than {MAX_GRID:,} values; use a larger step")
    if not isinstance(log, bool) or (log and step is not None):
        raise EdgekitError(f"{where}.log: must be true or false, and cannot be combined with step")
    return Dimension(name, low=raw["low"], high=raw["high"], step=step, log=log)


def _train_fields(raw, source: str) -> dict:
    where = f"{source}: field 'train'"
    if not isinstance(raw, dict):
        raise EdgekitError(f"{where}: expected a mapping of `edgekit train` settings, got {raw!r}")
    for name in raw:
        if name in NOT_FIXABLE:
            raise EdgekitError(f"{where}.{name}: set by the tuner (searched or per candidate); remove it here")
    from_mapping(TrainConfig, raw, where)  # unknown fields, wrong types and TrainConfig's rules, named
    return dict(raw)


def space_from_mapping(mapping: Any, source: str) -> SearchSpace:
    if not isinstance(mapping, dict) or not mapping:
        raise EdgekitError(f"{source}: empty search space; a mapping with at least width, image_size and recipe")
    unknown = sorted(set(mapping) - set(TOP_LEVEL))
    if unknown:
        raise EdgekitError(f"{source}: unknown field {unknown[0]!r}; known fields are {', '.join(TOP_LEVEL)}")
    for required in ("width", "image_size", "recipe"):
        if required not in mapping:
            raise EdgekitError(f"{source}: field {required!r} is missing; the tuner needs width, image_size, recipe")
    dimensions = {name: _dimension(name, mapping[name], source) for name in DIMENSIONS if name in mapping}
    pruning = from_mapping(PruningRule, mapping.get("pruning") or {}, f"{source}: field 'pruning'")
    space = SearchSpace(dimensions, _train_fields(mapping.get("train") or {}, source),
                        mapping.get("sampler", "tpe"), mapping.get("seed", 42), pruning, source)
    validate(space, "field", where=source)  # sampler and seed, as declared on SearchSpace
    return space


def load_space(path: str | Path | None = None) -> SearchSpace:
    """The shipped default space, or a user's YAML file."""
    path = Path(path) if path else DEFAULT_SPACE
    if not path.is_file():
        raise EdgekitError(f"{path}: no such search-space file; start from a copy of {DEFAULT_SPACE}")
    return space_from_mapping(load_yaml_file(path, "search space"), str(path))
