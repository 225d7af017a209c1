"""Value rules in config classes: one idiom (a rule declared on each field, cross-field rules in RULES),
enforced alike by `from_mapping` (YAML, JSON) and `validate` (objects built from command-line options)."""

from __future__ import annotations

import dataclasses
import importlib
import re
import types
import typing
from dataclasses import dataclass
from typing import ClassVar

import pytest
import yaml
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.config import Check, OneOf, Range, Rule, from_mapping, validate
from edgekit.errors import EdgekitError

cli = CliRunner()

# Every module that defines classes a user fills in (a YAML file, a recipe, command-line options).
CONFIG_MODULES = ("edgekit.config", "edgekit.devices", "edgekit.compress.params", "edgekit.tune.space",
                  "edgekit.fleet.rollout", "edgekit.service", "edgekit.recipes", "edgekit.datacheck.check")
# Dataclasses in those modules that are not filled in by a user, and why.
NOT_CONFIG = {
    "Range": "a rule itself", "OneOf": "a rule itself", "Check": "a rule itself", "Rule": "a rule itself",
    "DeviceProfile": "built from ProfileFile, which carries the rules",
    "Dimension": "its values obey the TrainConfig field each dimension sets (tune.space._check_value)",
    "Images": "what a scan found, not settings",
}


def _config_classes() -> list[type]:
    found = []
    for name in CONFIG_MODULES:
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if dataclasses.is_dataclass(obj) and isinstance(obj, type) and obj.__module__ == name \
                    and obj.__name__ not in NOT_CONFIG:
                found.append(obj)
    return found


def _is_numeric(tp) -> bool:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_is_numeric(a) for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) in (dict, tuple, list):
        return any(_is_numeric(a) for a in typing.get_args(tp) if a is not Ellipsis)
    return tp in (int, float)


def test_the_config_classes_are_found():
    names = {cls.__name__ for cls in _config_classes()}
    assert {"TrainConfig", "AugmentConfig", "ProfileFile", "PruneParams", "ConvertParams", "PruningRule",
            "SearchSpace", "RolloutSettings", "ServiceSpec"} <= names


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda cls: cls.__name__)
def test_every_numeric_config_field_declares_its_rule(cls):
    """A number a user can set without a declared range is a number nobody checks (10^12 epochs)."""
    hints = typing.get_type_hints(cls)
    missing = [f.name for f in dataclasses.fields(cls) if _is_numeric(hints[f.name]) and "rule" not in f.metadata]
    assert not missing, f"{cls.__name__}: numeric fields without a declared rule: {missing}"


def test_rules_are_declared_in_one_idiom():
    """No config class keeps a hand-written check beside its declarations."""
    for cls in _config_classes():
        for legacy in ("problems", "validate", "check", "__post_init__"):
            assert legacy not in vars(cls), f"{cls.__name__}.{legacy}: declare the rule on a field or in RULES"
        assert all(isinstance(r, Rule) for r in getattr(cls, "RULES", ()))


# --- the same words on both paths ------------------------------------------------------------------------

def _words(message: str) -> str:
    """What a rule says, whichever path reported it: `--x V: must be W` and `field 'x' must be W, got V`."""
    found = re.search(r"must be (.*?)(?:, got .*)?$", message)
    assert found, message
    return found.group(1)


def _cli_error(args: list[str]) -> str:
    result = cli.invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def _yaml_error(path, mapping: dict, load) -> str:
    path.write_text(yaml.safe_dump(mapping))
    with pytest.raises(EdgekitError) as info:
        load(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    return str(info.value)


SPACE = {"width": [0.35], "image_size": [32], "recipe": ["float32"]}


def _space(**train) -> dict:
    return {**SPACE, "train": train}


@pytest.mark.parametrize("option, value, mapping", [
    ("--patience", "-3", _space(patience=-3)),
    ("--batch-size", "100000", _space(batch_size=100_000)),
    ("--validation-fraction", "1", _space(validation_fraction=1)),
    ("--fine-tune-epochs", "-1", _space(fine_tune_epochs=-1)),
    ("--strategy", "fast", _space(strategy="fast")),
    ("--mixed-precision", "maybe", _space(mixed_precision="maybe")),
    ("--rotation", "2", _space(augment={"rotation": 2})),
    ("--steps-per-epoch", "0", _space(steps_per_epoch=0)),
    ("--epochs", "0", {**SPACE, "epochs": [0]}),  # a searched dimension obeys the field it sets
    ("--image-size", "16", {**SPACE, "image_size": [16]}),
    ("--alpha", "3", {**SPACE, "width": [3]}),
    ("--learning-rate", "5", {**SPACE, "learning_rate": [5]}),
])
def test_a_train_option_and_a_search_space_field_give_the_same_words(option, value, mapping, tmp_path,
                                                                     edgekit_home):
    from edgekit.tune.space import load_space

    line = _cli_error(["train", option, value])
    assert line.startswith(f"error: {option} {value}: must be "), line
    assert _words(line) == _words(_yaml_error(tmp_path / "space.yaml", mapping, load_space))


@pytest.mark.parametrize("args, stage", [
    (["compress", "--prune", "1.5"], {"type": "prune", "target_sparsity": 1.5}),
    (["compress", "--cluster", "1", "--int8"], {"type": "cluster", "clusters": 1}),
    (["compress", "--int8", "--calibration-samples", str(10**9)], {"type": "convert", "mode": "int8",
                                                                   "calibration_samples": 10**9}),
])
def test_a_compress_option_and_a_recipe_field_give_the_same_words(args, stage, tmp_path, edgekit_home):
    from edgekit.recipes import load_recipe

    stages = [stage] if stage["type"] == "convert" else [stage, {"type": "convert", "mode": "int8"}]
    yaml_line = _yaml_error(tmp_path / "r.yaml", {"name": "r", "stages": stages}, load_recipe)
    assert _words(_cli_error(args)) == _words(yaml_line)


def test_a_cross_field_rule_names_options_or_fields_by_path(tmp_path, edgekit_home):
    line = _cli_error(["train", "--exclude", str(tmp_path / "x.txt")])
    assert line == "error: --exclude needs --data: the embedded digits have no files to leave out"
    from edgekit.config import TrainConfig

    with pytest.raises(EdgekitError, match="^run.json: field 'exclude' needs field 'data': the embedded digits"):
        from_mapping(TrainConfig, {"exclude": "x.txt"}, "run.json")


# --- the machinery ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Job:
    size: int = Range(1, 10, "pixels").field(4)
    mode: str = OneOf(("a", "b")).field("a")
    label: str | None = Check("a non-empty label", lambda v: v.strip() != "").field(None)
    wait_s: float = Range(0, 60, "seconds", integer=False).field(0.0, option="--wait")
    low: int = Range(0, 10).field(0)
    high: int = Range(0, 10).field(5)

    RULES: ClassVar[tuple[Rule, ...]] = (Rule(lambda j: j.low < j.high, "{low} must be below {high} ({v.high})"),)


@pytest.mark.parametrize("values, option_message, field_message", [
    ({"size": 11}, "--size 11: must be a whole number of pixels from 1 to 10",
     "f.yaml: field 'size' must be a whole number of pixels from 1 to 10, got 11"),
    ({"mode": "c"}, "--mode c: must be one of a, b", "f.yaml: field 'mode' must be one of a, b, got 'c'"),
    ({"label": " "}, "--label  : must be a non-empty label",
     "f.yaml: field 'label' must be a non-empty label, got ' '"),
    ({"wait_s": -1.5}, "--wait -1.5: must be a number of seconds from 0 to 60",
     "f.yaml: field 'wait_s' must be a number of seconds from 0 to 60, got -1.5"),
    ({"low": 7, "high": 3}, "--low must be below --high (3)", "f.yaml: field 'low' must be below field 'high' (3)"),
])
def test_validate_and_from_mapping_enforce_the_same_declarations(values, option_message, field_message):
    with pytest.raises(EdgekitError) as info:
        validate(_Job(**values))
    assert str(info.value) == option_message
    with pytest.raises(EdgekitError) as info:
        from_mapping(_Job, values, "f.yaml")
    assert str(info.value) == field_message
    with pytest.raises(EdgekitError) as info:
        validate(_Job(**values), "field", where="f.yaml")
    assert str(info.value) == field_message


def test_a_wrong_type_reads_as_the_rule_and_none_is_unset():
    with pytest.raises(EdgekitError, match="^f.yaml: field 'size' must be a whole number of pixels from 1 to 10, "
                                           "got 'four'$"):
        from_mapping(_Job, {"size": "four"}, "f.yaml")
    validate(_Job(label=None))
    assert from_mapping(_Job, {"label": None}, "f.yaml") == _Job()


@pytest.mark.parametrize("span, inside, outside, text", [
    (Range(0, 1, integer=False), [0, 0.5, 1], [-0.1, 1.1, float("nan"), True], "a number from 0 to 1"),
    (Range(0, 1, integer=False, above=True), [0.1, 1], [0, float("inf")], "a number above 0 and up to 1"),
    (Range(0, 1, integer=False, below=True), [0, 0.9], [1], "a number at least 0 and below 1"),
    (Range(0, 1, integer=False, above=True, below=True), [0.5], [0, 1], "a number above 0 and below 1"),
    (Range(1, 2000, "epochs", why="say why"), [1, 2000], [0, 1.5], "a whole number of epochs from 1 to 2,000 "
                                                                   "(say why)"),
])
def test_range_bounds_and_words(span, inside, outside, text):
    assert all(v in span for v in inside) and not any(v in span for v in outside)
    assert span.text == text
