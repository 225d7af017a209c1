"""Compression recipes: YAML files naming an ordered list of stages, validated before any work starts.

A recipe is a mapping with `name`, `description` and `stages`; each stage has a `type:` key and the
fields of that stage's parameter dataclass. Unknown stages or fields, wrong types and impossible values
are one-line errors naming the recipe file, the stage and the field — found in milliseconds, not after
an hour of fine-tuning.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgekit.artifacts import edgekit_home
from edgekit.config import Check, from_mapping, rule_of, validate
from edgekit.errors import EdgekitError
from edgekit.yamlio import load_yaml_file

RECIPES_DIR = Path(__file__).parent / "resources" / "recipes"
# type: → (module, parameter dataclass); the modules are imported only when a recipe uses them
STAGE_TYPES = {
    "prune": ("edgekit.compress.params", "PruneParams"),
    "cluster": ("edgekit.compress.params", "ClusterParams"),
    "qat": ("edgekit.compress.params", "QATParams"),
    "convert": ("edgekit.compress.params", "ConvertParams"),
    "edgetpu": ("edgekit.compress.params", "EdgeTPUParams"),
}
TRAINING_STAGES = ("prune", "cluster", "qat")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
RECIPE_NAME = Check("letters, digits, '.', '_' or '-' (it names the variant's folder), e.g. prune50-int8",
                    lambda name: isinstance(name, str) and _NAME.fullmatch(name) is not None)


@dataclass(frozen=True)
class Stage:
    type: str
    params: Any

    def as_dict(self) -> dict:
        return {"type": self.type, **dataclasses.asdict(self.params)}


@dataclass(frozen=True)
class Recipe:
    name: str = RECIPE_NAME.field()
    stages: tuple[Stage, ...]
    description: str = ""
    source: str = field(default="<memory>", compare=False)  # where it was read from, not what it says

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


def _check_context(stage_type: str, params: Any, has_qat: bool, where: str) -> None:
    """The one rule that needs the stages before this one (each stage's own rules are declared on its
    parameter class, and `from_mapping` enforced them): int8 without calibration images needs a qat stage."""
    if stage_type == "convert" and params.mode == "int8" and params.calibration_samples < 1 and not has_qat:
        raise EdgekitError(f"{where}: field 'calibration_samples' int8 needs calibration images (at least 1) "
                           "unless a qat stage comes first")


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
        _check_context(stage_type, params, "qat" in seen, where)
        stages.append(Stage(stage_type, params))
        seen.append(stage_type)
    _check_order(seen, source)
    recipe = Recipe(name=mapping.get("name") or Path(source).stem, stages=tuple(stages),
                    description=str(mapping.get("description", "")), source=source)
    validate(recipe, "field", where=source)
    return recipe


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
    """A shipped recipe by name (`int8-ptq`), a user recipe from $EDGEKIT_HOME/recipes, or a YAML file."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        found = _recipe_files().get(name_or_path)
        if found is None:
            raise EdgekitError(f"unknown recipe {name_or_path!r}; known recipes: {', '.join(shipped_recipes())}"
                               " (or pass a path to a .yaml file)")
        path = found
    if not path.is_file():
        raise EdgekitError(f"{path}: no such recipe file")
    return recipe_from_mapping(load_yaml_file(path, "recipe"), str(path))


def check_unique_names(recipes: list[Recipe]) -> None:
    """Two recipes with one name would write one variant directory: refuse before any work."""
    seen: dict[str, Recipe] = {}
    for recipe in recipes:
        if recipe.name in seen:
            raise EdgekitError(f"{recipe.source}: recipe name {recipe.name!r} is also used by "
                               f"{seen[recipe.name].source}; each variant needs its own name")
        seen[recipe.name] = recipe


def user_recipes_dir() -> Path:
    return edgekit_home() / "recipes"


def _recipe_files() -> dict[str, Path]:
    """Shipped recipes by name, then the user's own ($EDGEKIT_HOME/recipes), which override them."""
    found = {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"))}
    if user_recipes_dir().is_dir():
        found.update({p.stem: p for p in sorted(user_recipes_dir().glob("*.yaml"))})
    return found


def shipped_recipes() -> list[str]:
    """Names of the recipes `--all` applies: shipped ones plus the user's own."""
    return sorted(_recipe_files())


def recipe_sources() -> dict[str, str]:
    """Where each known recipe comes from: `shipped` or the user's file."""
    return {name: ("shipped" if path.parent == RECIPES_DIR else str(path)) for name, path in _recipe_files().items()}


def recipe_from_flags(*, int8: bool = False, float16: bool = False, dynamic: bool = False,
                      prune: float | None = None, qat: bool = False, cluster: int | None = None,
                      uint8_io: bool = False, calibration_samples: int = 100, epochs: int = 2) -> Recipe:
    """The recipe the CLI shorthands describe (`--prune 0.5 --qat --int8`), validated like a file."""
    modes = [m for m, on in (("int8", int8), ("float16", float16), ("dynamic", dynamic)) if on]
    if len(modes) > 1:
        raise EdgekitError(f"choose one of --int8, --float16, --dynamic (got {', '.join('--' + m for m in modes)})")
    mode = modes[0] if modes else ("int8" if qat else "float32")
    if uint8_io and mode != "int8":  # a float model's input and output stay float: uint8 I/O needs int8
        raise EdgekitError(f"--uint8-io needs full-integer quantization (--int8 or --qat); {mode} keeps float "
                           "input and output")
    if qat and mode != "int8":
        raise EdgekitError(f"--qat trains for int8 quantization; it cannot end in --{mode}")
    rule_of(params_class("prune"), "target_sparsity").check(prune, "--prune")  # before it names the variant
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
    # Names say every stage, so a shorthand never takes a shipped recipe's name with other content
    # (--prune 0.5 --int8 is prune50-int8-ptq; the shipped prune50-int8 also has a qat stage).
    parts.append("int8-ptq" if mode == "int8" and not qat else mode)
    if uint8_io:
        parts.append("uint8io")
    name = "-".join(parts)
    return recipe_from_mapping({"name": name, "stages": stages}, "command-line flags")
