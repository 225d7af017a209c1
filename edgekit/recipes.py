"""Compression recipes: YAML files naming an ordered list of stages, validated before any work starts.

A recipe is a mapping with `name`, `description` and `stages`; each stage has a `type:` key and the
fields of that stage's parameter dataclass. Unknown stages or fields, wrong types and impossible values
are one-line errors naming the recipe file, the stage and the field — found in milliseconds, not after
an hour of fine-tuning.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edgekit.config import from_mapping
from edgekit.errors import EdgekitError

RECIPES_DIR = Path(__file__).parent / "resources" / "recipes"
# type: → (module, parameter dataclass); the modules are imported only when a recipe uses them
STAGE_TYPES = {
    "prune": ("edgekit.compress.prune", "PruneParams"),
    "cluster": ("edgekit.compress.cluster", "ClusterParams"),
    "qat": ("edgekit.compress.qat", "QATParams"),
    "convert": ("edgekit.compress.convert", "ConvertParams"),
    "edgetpu": ("edgekit.recipes", "EdgeTPUParams"),
}
TRAINING_STAGES = ("prune", "cluster", "qat")


@dataclass(frozen=True)
class EdgeTPUParams:
    """Check the converted model against the Edge TPU and run edgetpu_compiler when it is installed."""

    run_compiler: bool = True
    compiler_timeout_s: int = 600


@dataclass(frozen=True)
class Stage:
    type: str
    params: Any

    def as_dict(self) -> dict:
        return {"type": self.type, **dataclasses.asdict(self.params)}


@dataclass(frozen=True)
class Recipe:
    name: str
    stages: tuple[Stage, ...]
    description: str = ""
    source: str = "<memory>"

    def as_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "stages": [s.as_dict() for s in self.stages]}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.as_dict(), sort_keys=False, width=120)

    @property
    def convert(self) -> Stage:
        return next(s for s in self.stages if s.type == "convert")


def params_class(stage_type: str) -> type:
    module, name = STAGE_TYPES[stage_type]
    return getattr(importlib.import_module(module), name)


def _value_problems(stage_type: str, params: Any, has_qat: bool) -> list[tuple[str, str]]:
    """(field, why) for values that have the right type but cannot work.

    Each stage's parameters know their own limits (`problems()`); the recipe adds what needs context:
    int8 without calibration images works only after a qat stage.
    """
    problems = list(params.problems()) if hasattr(params, "problems") else []
    if stage_type == "convert" and params.mode == "int8" and params.calibration_samples < 1 and not has_qat:
        problems.append(("calibration_samples", "int8 needs calibration images (at least 1) unless a qat stage "
                                                "comes first"))
    return problems


def recipe_from_mapping(mapping: Any, source: str) -> Recipe:
    if not isinstance(mapping, dict):
        raise EdgekitError(f"{source}: a recipe is a mapping with 'name' and 'stages'")
    unknown = sorted(set(mapping) - {"name", "description", "stages"})
    if unknown:
        raise EdgekitError(f"{source}: unknown top-level field {unknown[0]!r}; use name, description, stages")
    raw_stages = mapping.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise EdgekitError(f"{source}: 'stages' must be a non-empty list of stages, each with a 'type'")
    stages, seen = [], []
    for index, raw in enumerate(raw_stages, start=1):
        if not isinstance(raw, dict) or "type" not in raw:
            raise EdgekitError(f"{source}: stage {index} has no 'type'; one of {', '.join(STAGE_TYPES)}")
        stage_type = raw["type"]
        where = f"{source}: stage {index} ({stage_type})"
        if stage_type not in STAGE_TYPES:
            raise EdgekitError(f"{source}: stage {index}: unknown type {stage_type!r}; "
                               f"one of {', '.join(STAGE_TYPES)}")
        fields = {k: v for k, v in raw.items() if k != "type"}
        params = from_mapping(params_class(stage_type), fields, where)
        for field_name, why in _value_problems(stage_type, params, "qat" in seen):
            raise EdgekitError(f"{where}: field {field_name!r} {why}")
        stages.append(Stage(stage_type, params))
        seen.append(stage_type)
    _check_order(seen, source)
    name = mapping.get("name") or Path(source).stem
    if not isinstance(name, str):
        raise EdgekitError(f"{source}: 'name' must be a string")
    return Recipe(name=name, stages=tuple(stages), description=str(mapping.get("description", "")), source=source)


def _check_order(types: list[str], source: str) -> None:
    if types.count("convert") != 1:
        raise EdgekitError(f"{source}: a recipe needs exactly one convert stage (it has {types.count('convert')})")
    convert_at = types.index("convert")
    if any(t in TRAINING_STAGES for t in types[convert_at:]):
        raise EdgekitError(f"{source}: training stages (prune, cluster, qat) must come before convert")
    if any(t != "edgetpu" for t in types[convert_at + 1:]):
        raise EdgekitError(f"{source}: only an edgetpu stage may follow convert")
    if types.count("qat") > 1 or ("qat" in types and types.index("qat") != convert_at - 1):
        raise EdgekitError(f"{source}: qat must be the last training stage, once, right before convert")


def load_recipe(name_or_path: str) -> Recipe:
    """A shipped recipe by name (`int8-ptq`) or a YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = RECIPES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise EdgekitError(f"unknown recipe {name_or_path!r}; shipped recipes: {', '.join(shipped_recipes())}"
                               " (or pass a path to a .yaml file)")
    if not path.is_file():
        raise EdgekitError(f"{path}: no such recipe file")
    try:
        mapping = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise EdgekitError(f"{path}: not valid YAML{where} ({getattr(exc, 'problem', exc)})") from None
    return recipe_from_mapping(mapping, str(path))


def shipped_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_from_flags(*, int8: bool = False, float16: bool = False, dynamic: bool = False,
                      prune: float | None = None, qat: bool = False, cluster: int | None = None,
                      uint8_io: bool = False, calibration_samples: int = 100, epochs: int = 2) -> Recipe:
    """The recipe the CLI shorthands describe (`--prune 0.5 --qat --int8`), validated like a file."""
    modes = [m for m, on in (("int8", int8), ("float16", float16), ("dynamic", dynamic)) if on]
    if len(modes) > 1:
        raise EdgekitError(f"choose one of --int8, --float16, --dynamic (got {', '.join('--' + m for m in modes)})")
    mode = modes[0] if modes else ("int8" if qat else "float32")
    stages: list[dict] = []
    parts = []
    if prune is not None:
        stages.append({"type": "prune", "target_sparsity": prune, "epochs": epochs})
        parts.append(f"prune{round(prune * 100)}")
    if cluster is not None:
        stages.append({"type": "cluster", "clusters": cluster, "epochs": epochs})
        parts.append(f"cluster{cluster}")
    if qat:
        stages.append({"type": "qat", "epochs": epochs})
        parts.append("qat")
    convert = {"type": "convert", "mode": mode}
    if mode == "int8":
        convert["calibration_samples"] = calibration_samples
        if uint8_io:
            convert["io_dtype"] = "uint8"
    stages.append(convert)
    parts.append(mode if not (mode == "int8" and not qat and prune is None and cluster is None) else "int8-ptq")
    return recipe_from_mapping({"name": "-".join(parts), "stages": stages}, "command-line flags")
