"""Frozen dataclasses for configuration, and strict loading of them from mappings (YAML, JSON).

Strict because a typo in a recipe (`epoch: 3`) that is silently ignored costs a user an afternoon:
unknown keys and wrong types are errors that name the file and the field.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from edgekit.errors import EdgekitError

STRATEGIES = ("auto", "default", "mirrored", "multiworker")
MIN_IMAGE_SIZE = 32  # MobileNetV2's smallest input


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _shown(value: Any) -> str:
    """A value as a user would have typed it (5, not 5.0; no thousands commas; a word without quotes)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, os.PathLike):
        return os.fspath(value)  # a path is shown whole: the error must name the file
    if isinstance(value, (tuple, list)) and all(isinstance(v, (str, int, float)) for v in value):
        value = ",".join(map(_shown, value))  # as a comma-separated option is typed: --waves canary,all
    return value if isinstance(value, str) and len(value) <= 80 else _short(value)


# --- value rules ---------------------------------------------------------------------------------------
# One idiom for every config class: a rule for one field is declared on the field (`Range(...).field(5)`,
# `OneOf(...).field("a")`, `Check("words", test).field(None)`); a rule across fields is a `Rule` in the
# class's `RULES` tuple. `from_mapping` (YAML, JSON) and `validate` (objects built from command-line
# options) both enforce them, so a YAML field and a CLI option are refused with the same words:
#     field 'epochs' must be a whole number of epochs from 1 to 1,000, got 0     (YAML)
#     --epochs 0: must be a whole number of epochs from 1 to 1,000               (--epochs)


class FieldRule:
    """What one field may hold: `value in rule`, and `rule.text` saying it in words after "must be"."""

    text: str

    def __contains__(self, value: Any) -> bool:
        raise NotImplementedError

    def check(self, value: Any, name: str) -> None:
        """None passes (an unset option); anything else outside the rule is one line naming `name`."""
        if value is not None and value not in self:
            raise EdgekitError(f"{name} {_shown(value)}: must be {self.text}")

    def field(self, default: Any = dataclasses.MISSING, *, option: str | None = None, **kwargs) -> Any:
        """A dataclass field carrying this rule; `option` names it on the command line when the option
        is not `--<field-name>` (e.g. `shadow_s` is `--shadow`)."""
        metadata = {"rule": self, "option": option}
        if default is not dataclasses.MISSING:
            kwargs["default"] = default
        return field(metadata=metadata, **kwargs)


@dataclass(frozen=True)
class Range(FieldRule):
    """The values of a number that a user could mean; outside it is a typo (or a hostile file), and is
    refused in one line before any work: 10^12 epochs, 10^20 benchmark runs or a 100,000-pixel input
    would otherwise hang, or die in a traceback after a run folder was made.

    One declaration serves a command-line option (`check(value, "--epochs")`) and a YAML field
    (`field(default)` for `from_mapping`). Not-a-number and infinity are never in a range.
    """

    low: float
    high: float
    unit: str = ""  # "epochs": "a whole number of epochs from 1 to 1,000"
    integer: bool = True
    above: bool = False  # low itself is excluded: (low, high]
    below: bool = False  # high itself is excluded: [low, high)
    why: str = ""  # appended in brackets: "(1 would remove every weight)"

    def __contains__(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return (value > self.low if self.above else value >= self.low) and \
            (value < self.high if self.below else value <= self.high)

    @property
    def text(self) -> str:
        kind = ("a whole number" if self.integer else "a number") + (f" of {self.unit}" if self.unit else "")
        low, high = _num(self.low), _num(self.high)
        if self.below:  # [low, high) or (low, high)
            span = f"{'above' if self.above else 'at least'} {low} and below {high}"
        else:
            span = f"above {low} and up to {high}" if self.above else f"from {low} to {high}"
        return f"{kind} {span}" + (f" ({self.why})" if self.why else "")


@dataclass(frozen=True)
class OneOf(FieldRule):
    """A choice set: "one of float32, float16, dynamic, int8"."""

    choices: tuple

    def __contains__(self, value: Any) -> bool:
        return isinstance(value, typing.Hashable) and value in self.choices

    @property
    def text(self) -> str:
        return "one of " + ", ".join(map(str, self.choices))


@dataclass(frozen=True)
class Check(FieldRule):
    """A named predicate: the words a user reads ("an integer port between 1 and 65535") and the test."""

    words: str
    test: Callable[[Any], bool] = field(compare=False)

    def __contains__(self, value: Any) -> bool:
        try:
            return bool(self.test(value))
        except (TypeError, ValueError, AttributeError):  # a value of the wrong shape is simply not valid
            return False

    @property
    def text(self) -> str:
        return self.words


@dataclass(frozen=True)
class Rule:
    """A rule across fields of one class, declared once in the class's `RULES` tuple.

    `check(obj)` is true when the object is fine. `message` is formatted with each field's name as the
    path that built the object spells it (`{exclude}` is `field 'exclude'` from YAML, `--exclude` from
    the command line) and with the object as `v` (`{v.begin_step}`).
    """

    check: Callable[[Any], bool]
    message: str


def rule_of(cls: type, name: str) -> FieldRule | None:
    """The rule declared on field `name` of config class `cls` (None when it has none)."""
    found = next((f for f in dataclasses.fields(cls) if f.name == name), None)
    if found is None:
        raise KeyError(f"{cls.__name__} has no field {name!r}")
    return found.metadata.get("rule")


def _option(f: dataclasses.Field) -> str:
    return f.metadata.get("option") or "--" + f.name.replace("_", "-")


def _names(obj: Any, style: str) -> dict[str, str]:
    if style == "option":
        return {f.name: _option(f) for f in dataclasses.fields(obj)}
    return {f.name: f"field {f.name!r}" for f in dataclasses.fields(obj)}


def _prefixed(where: str | None, message: str) -> str:
    return f"{where}: {message}" if where else message


def _field_failure(f: dataclasses.Field, value: Any, style: str, where: str | None) -> str:
    text = f.metadata["rule"].text
    if style == "option":
        shown = _shown(value)
        return _prefixed(where, f"{_option(f)}{' ' + shown if shown else ''}: must be {text}")
    return _prefixed(where, f"field {f.name!r} must be {text}, got {_short(value)}")


def _check_rules(obj: Any, style: str, where: str | None) -> None:
    for rule in getattr(type(obj), "RULES", ()):
        if not rule.check(obj):
            raise EdgekitError(_prefixed(where, rule.message.format(v=obj, **_names(obj, style))))


def validate(obj: Any, style: str = "option", where: str | None = None) -> None:
    """Enforce the rules declared on a config object's fields and class; the first broken one raises.

    `style="option"` names fields as the command-line options that set them (`--epochs 0: must be ...`),
    `style="field"` as YAML fields (`field 'epochs' must be ..., got 0`), the words being the same.
    Nested config objects (`TrainConfig.augment`) are checked too: by their own option names, or as
    `field 'augment'`. `where` prefixes every message (a file, a stage).
    """
    if style not in ("option", "field"):
        raise ValueError(f"style must be 'option' or 'field', not {style!r}")
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            inner = where if style == "option" else _prefixed(where, f"field {f.name!r}")
            validate(value, style, inner)
        elif "rule" in f.metadata and value is not None and value not in f.metadata["rule"]:
            raise EdgekitError(_field_failure(f, value, style, where))
    _check_rules(obj, style, where)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|)\s*$")


def duration_seconds(text: str) -> float | None:
    """`90`, `90s`, `30m`, `2h` as seconds; None when `text` is not a duration (callers name their option)."""
    match = _DURATION.match(str(text))
    return None if match is None else float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


# Ranges more than one command shares.
THREADS = Range(1, 256, "threads")
SEED = Range(0, 2**32 - 1)  # numpy's seeds are 32-bit
EPOCHS = Range(1, 1000, "epochs")
IMAGE_SIZE = Range(MIN_IMAGE_SIZE, 1024, "pixels")  # square input; MobileNetV2's own sizes end at 224
LEARNING_RATE = Range(0, 1, integer=False, above=True)
LATENCY_MS = Range(0, 3_600_000, "milliseconds", integer=False, above=True)
ACCURACY = Range(0, 1, integer=False)
FRACTION = Range(0, 1, integer=False)
PARALLEL = Range(1, 256, "devices at once")
WIDTH = Range(0, 2, integer=False, above=True, why="MobileNetV2's width multiplier, e.g. 0.35, 0.5, 0.75, 1.0")


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentations applied to training batches as a tf.data map step (0 disables a transform)."""

    enabled: bool = True
    flip: bool = True
    rotation: float = FRACTION.field(0.05)
    zoom: float = FRACTION.field(0.1)
    translation: float = FRACTION.field(0.1)
    contrast: float = FRACTION.field(0.1)


@dataclass(frozen=True)
class TrainConfig:
    """Everything `edgekit train` needs; saved in the run so `--resume` and lineage can replay it."""

    data: str | None = None  # None: the embedded digits dataset
    extra_data: tuple[str, ...] = ()
    exclude: str | None = None  # exclusion list from `edgekit data check --write-exclusions`
    image_size: int | None = IMAGE_SIZE.field(None)  # None: 32 for digits, 96 for folders
    alpha: float = WIDTH.field(0.35)
    weights: str | None = None  # None: none for digits, imagenet for folders
    epochs: int = EPOCHS.field(30)
    fine_tune_epochs: int = Range(0, 1000, "epochs").field(0)
    fine_tune_at: int = Range(0, 1000, "layers").field(100)  # body layer index from which fine-tuning unfreezes
    batch_size: int = Range(1, 4096, "images").field(64)
    learning_rate: float = LEARNING_RATE.field(2e-3)
    fine_tune_learning_rate: float = LEARNING_RATE.field(1e-4)
    validation_fraction: float = Range(0, 1, integer=False, above=True, below=True).field(0.2)
    seed: int = SEED.field(42)
    dropout: float = Range(0, 1, integer=False, below=True).field(0.2)
    bn_momentum: float = FRACTION.field(0.9)
    patience: int = Range(0, 1000, "epochs").field(8)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    strategy: str = OneOf(STRATEGIES).field("auto")
    mixed_precision: str = OneOf(("auto", "on", "off")).field("auto")
    strict: bool = False
    cache: bool = True
    max_image_pixels: int = Range(1, 1_000_000_000, "pixels").field(40_000_000)
    steps_per_epoch: int | None = Range(1, 10_000_000, "steps").field(None)  # cap, for smoke tests
    deterministic: bool = False  # TensorFlow op determinism: the same seed gives the same weights, slower
    name: str | None = None
    runs_dir: str | None = None

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(lambda c: c.exclude is None or c.data is not None,
             "{exclude} needs {data}: the embedded digits have no files to leave out"),
    )

    def resolved(self) -> TrainConfig:
        """Fill the dataset-dependent defaults so the saved config says what actually ran."""
        digits = self.data is None
        updates: dict[str, Any] = {}
        if self.image_size is None:
            updates["image_size"] = 32 if digits else 96
        if self.weights is None:
            updates["weights"] = "none" if digits else "imagenet"
        if not digits:  # absolute, so --resume and lineage work from any directory
            updates["data"] = str(Path(self.data).expanduser().resolve())
        if self.exclude:
            updates["exclude"] = str(Path(self.exclude).expanduser().resolve())
        updates["extra_data"] = tuple(str(Path(p).expanduser().resolve()) for p in self.extra_data)
        if digits and self.augment.flip:
            # a mirrored 2 is not a 2: flipping digits teaches the model the wrong thing
            updates["augment"] = dataclasses.replace(self.augment, flip=False)
        return dataclasses.replace(self, **updates)

    @property
    def from_scratch(self) -> bool:
        """No pretrained body: `--weights none`, which is the default for the digits."""
        return self.weights == "none" or (self.weights is None and self.data is None)


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against a (simple) annotation; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if value is not None and len(options) == 1:  # `X | None`: X's own message is the useful one
            return _coerce(value, options[0], where)
        for option in args:
            try:
                return _coerce(value, option, where)
            except EdgekitError:
                continue
        raise EdgekitError(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {_short(value)}")
    if origin is Literal:
        if value not in args:
            raise EdgekitError(f"{where}: must be one of {', '.join(map(str, args))}, got {_short(value)}")
        return value
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise EdgekitError(f"{where}: expected a list, got {_short(value)}")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise EdgekitError(f"{where}: expected a mapping, got {_short(value)}")
        inner = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, inner, f"{where}[{k!r}]") for k, v in value.items()}
    if tp is type(None):
        if value is not None:
            raise EdgekitError(f"{where}: expected nothing (null), got {_short(value)}")
        return None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise EdgekitError(f"{where}: expected int, got {_short(value)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise EdgekitError(f"{where}: expected a mapping, got {_short(value)}")
        return from_mapping(tp, value, where)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise EdgekitError(f"{where}: expected {_type_name(tp)}, got {_short(value)}")
    return value


def _field_value(f: dataclasses.Field, value: Any, hint: Any, where: str) -> Any:
    rule = f.metadata.get("rule")
    try:
        value = _coerce(value, hint, f"{where}: field {f.name!r}")
    except EdgekitError:
        if rule is None:
            raise
        raise EdgekitError(_field_failure(f, value, "field", where)) from None
    if rule is not None and value is not None and value not in rule:
        raise EdgekitError(_field_failure(f, value, "field", where))
    return value


def from_mapping(cls: type, mapping: dict, where: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys, missing required ones and values that
    break a rule declared on a field or on the class (see `validate`, which gives the same words).

    This is edgekit's one strict loader for everything a user writes (recipes, device profiles, search
    spaces) and everything edgekit reads back (manifests). `where` prefixes every message
    (e.g. "recipes/int8.yaml: stage 2 (prune)").
    """
    if not isinstance(mapping, dict):
        raise EdgekitError(f"{where}: expected a mapping of fields, got {mapping!r}")
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    known = [f.name for f in fields]
    unknown = sorted(str(key) for key in mapping if key not in known)
    if unknown:
        raise EdgekitError(f"{where}: unknown field {unknown[0]!r}; known fields: {', '.join(known)}")
    for f in fields:
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and mapping.get(f.name) is None:
            rule = f.metadata.get("rule")
            raise EdgekitError(f"{where}: missing required field {f.name!r}" + (f" ({rule.text})" if rule else ""))
    values = {f.name: _field_value(f, mapping[f.name], hints[f.name], where) for f in fields if f.name in mapping}
    built = cls(**values)
    _check_rules(built, "field", where)
    return built
