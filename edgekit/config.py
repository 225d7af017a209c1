"""Frozen dataclasses for configuration, and strict loading of them from mappings (YAML, JSON).

Strict because a typo in a recipe (`epoch: 3`) that is silently ignored costs a user an afternoon:
unknown keys and wrong types are errors that name the file and the field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgekit.errors import EdgekitError

STRATEGIES = ("auto", "default", "mirrored", "multiworker")


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentations applied to training batches as a tf.data map step (0 disables a transform)."""

    enabled: bool = True
    flip: bool = True
    rotation: float = 0.05
    zoom: float = 0.1
    translation: float = 0.1
    contrast: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    """Everything `edgekit train` needs; saved in the run so `--resume` and lineage can replay it."""

    data: str | None = None  # None: the embedded digits dataset
    extra_data: tuple[str, ...] = ()
    exclude: str | None = None  # exclusion list from `edgekit data check --write-exclusions`
    image_size: int | None = None  # None: 32 for digits, 96 for folders
    alpha: float = 0.35
    weights: str | None = None  # None: none for digits, imagenet for folders
    epochs: int = 30
    fine_tune_epochs: int = 0
    fine_tune_at: int = 100  # body layer index from which fine-tuning unfreezes
    batch_size: int = 64
    learning_rate: float = 2e-3
    fine_tune_learning_rate: float = 1e-4
    validation_fraction: float = 0.2
    seed: int = 42
    dropout: float = 0.2
    bn_momentum: float = 0.9
    patience: int = 8
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    strategy: str = "auto"
    mixed_precision: Literal["auto", "on", "off"] = "auto"
    strict: bool = False
    cache: bool = True
    max_image_pixels: int = 40_000_000
    steps_per_epoch: int | None = None  # cap, for smoke tests and multi-worker checks
    deterministic: bool = False  # TensorFlow op determinism: the same seed gives the same weights, slower
    name: str | None = None
    runs_dir: str | None = None

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

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.fine_tune_epochs >= 0, "--fine-tune-epochs must be 0 or more"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (0.0 < self.validation_fraction < 1.0, "--validation-fraction must be between 0 and 1"),
            (self.alpha > 0, "--alpha must be positive"),
            (self.learning_rate > 0, "--learning-rate must be positive"),
            (self.strategy in STRATEGIES, f"--strategy must be one of {', '.join(STRATEGIES)}"),
            (0.0 <= self.dropout < 1.0, "--dropout must be in [0, 1)"),
            (self.exclude is None or self.data is not None,
             "--exclude needs --data: the embedded digits have no files to leave out"),
            (self.exclude is None or Path(self.exclude).is_file(),
             f"--exclude {self.exclude}: no such file; write one with `edgekit data check DIR --write-exclusions F`"),
        ]
        for ok, message in checks:
            if not ok:
                raise EdgekitError(message)


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


def wants(description: str, check=None) -> dict:
    """Field metadata for `from_mapping`: what a valid value is, in words, and an optional value check.

    `field(default=..., metadata=wants("an integer port between 1 and 65535", lambda v: 0 < v < 65536))`
    makes both a wrong type and a failed check read "field 'port' must be an integer port ..., got 70000".
    """
    return {"wants": description, "check": check}


def _field_value(f: dataclasses.Field, value: Any, hint: Any, where: str) -> Any:
    described = f.metadata.get("wants")
    try:
        value = _coerce(value, hint, f"{where}: field {f.name!r}")
    except EdgekitError:
        if not described:
            raise
        raise EdgekitError(f"{where}: field {f.name!r} must be {described}, got {_short(value)}") from None
    check = f.metadata.get("check")
    if check is not None and value is not None and not check(value):
        raise EdgekitError(f"{where}: field {f.name!r} must be {described}, got {_short(value)}")
    return value


def from_mapping(cls: type, mapping: dict, where: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys, missing required ones and wrong values.

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
            described = f.metadata.get("wants")
            raise EdgekitError(f"{where}: missing required field {f.name!r}" + (f" ({described})" if described else ""))
    values = {f.name: _field_value(f, mapping[f.name], hints[f.name], where) for f in fields if f.name in mapping}
    return cls(**values)
