"""Bounded input, table-driven: every number a user can pass has a range, every YAML file has limits, and
contradictory flags are refused. Each case is one line on stderr, exit code 1, nothing written, before
TensorFlow loads (the project's convention for user mistakes; typer's own usage errors, exit 2, are left
for values that are not numbers at all).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.errors import EdgekitError
from edgekit.yamlio import MAX_BYTES, load_yaml_file, load_yaml_text

cli = CliRunner()

# ~340 bytes that expand to 9^9 (387 million) strings: PyYAML shares the lists, but anything that walks them
# (validation, printing, JSON) walks every copy.
BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n" for prev, name in zip("abcdefgh", "bcdefghi"))
DEEP = "name: deep\nstages: " + "[" * 5000 + "]" * 5000 + "\n"
SPACE = {"width": [0.35], "image_size": [32], "recipe": ["float32"]}
PROFILE = {"description": "a box", "arch": "any", "connection": "local"}
TUNE = ["tune", "--max-latency-ms", "10", "--out", "{tmp}/t"]


def _files(tmp: Path) -> None:
    """The YAML files the table names, each wrong in one way."""
    def dump(name: str, mapping: dict) -> None:
        (tmp / name).write_text(yaml.safe_dump(mapping))

    convert = {"type": "convert", "mode": "int8"}
    dump("epochs.yaml", {"name": "e", "stages": [{"type": "prune", "epochs": 10**12}, convert]})
    dump("calibration.yaml", {"name": "c", "stages": [{**convert, "calibration_samples": 10**30}]})
    dump("clusters.yaml", {"name": "k", "stages": [{"type": "cluster", "clusters": 10**12}, convert]})
    dump("compiler.yaml", {"name": "t", "stages": [convert, {"type": "edgetpu", "compiler_timeout_s": 10**9}]})
    (tmp / "bomb.yaml").write_text(BOMB)
    (tmp / "deep.yaml").write_text(DEEP)
    (tmp / "big.yaml").write_text("# " + "x" * MAX_BYTES + "\nname: big\n")
    (tmp / "self.yaml").write_text("name: &n [x, *n]\n")
    dump("threads.yaml", {**PROFILE, "threads": 100_000})
    dump("reference.yaml", {**PROFILE, "reference_latency_ms": {"int8-ptq": -1}})
    (tmp / "profile-bomb.yaml").write_text(BOMB)
    (tmp / "dup-space.yaml").write_text("width: [0.35]\nimage_size: [32]\nrecipe: [float32]\nwidth: [1.0]\n")
    dump("size-space.yaml", {**SPACE, "image_size": [100_000]})
    dump("epochs-space.yaml", {**SPACE, "epochs": {"low": 1, "high": 10**12}})
    dump("seed-space.yaml", {**SPACE, "seed": -1})
    dump("grid-space.yaml", {**SPACE, "learning_rate": {"low": 0.0001, "high": 0.1, "step": 1e-12}})
    dump("train-space.yaml", {**SPACE, "train": {"patience": -3}})
    dump("pruning-space.yaml", {**SPACE, "pruning": {"min_trials": 10**12}})
    (tmp / "bomb-space.yaml").write_text(BOMB)
    (tmp / "deep-space.yaml").write_text(DEEP)


# (command line, expected part of the one-line error)
NUMBERS = [
    (["train", "--image-size", "100000"], "--image-size 100000: must be a whole number of pixels from 32 to 1,024"),
    (["train", "--alpha", "nan"], "--alpha nan: must be"),
    (["train", "--epochs", "1000000000000"], "--epochs 1000000000000: must be"),
    (["train", "--fine-tune-epochs", "-1"], "--fine-tune-epochs -1: must be"),
    (["train", "--weights", "imagenet", "--fine-tune-epochs", "1", "--fine-tune-at", "-1"], "--fine-tune-at -1"),
    (["train", "--batch-size", "100000"], "--batch-size 100000: must be"),
    (["train", "--learning-rate", "inf"], "--learning-rate inf: must be"),
    (["train", "--weights", "imagenet", "--fine-tune-epochs", "1", "--fine-tune-learning-rate", "5"],
     "--fine-tune-learning-rate 5: must be"),
    (["train", "--validation-fraction", "1"], "--validation-fraction 1: must be a number above 0 and below 1"),
    (["train", "--seed", "-1"], "--seed -1: must be"),
    (["train", "--rotation", "2"], "--rotation 2: must be a number from 0 to 1"),
    (["train", "--zoom", "-0.1"], "--zoom -0.1: must be"),
    (["train", "--translation", "nan"], "--translation nan: must be"),
    (["train", "--contrast", "7"], "--contrast 7: must be"),
    (["train", "--patience", "-3"], "--patience -3: must be a whole number of epochs from 0 to 1,000"),
    (["train", "--steps-per-epoch", "0"], "--steps-per-epoch 0: must be"),
    (["eval", "{tmp}/m.tflite", "--threads", "100000"], "--threads 100000: must be"),
    (["compress", "--prune", "nan"], "--prune nan: must be a number at least 0 and below 1"),
    (["compress", "--cluster", "1000000000000", "--int8"], "field 'clusters' must be a whole number of centroids"),
    (["compress", "--int8", "--calibration-samples", str(10**30)], "field 'calibration_samples' must be"),
    (["compress", "--prune", "0.5", "--epochs", "1000000000000"], "field 'epochs' must be"),
    (["compress", "--int8", "--threads", "0"], "--threads 0: must be"),
    (["bench", "{tmp}/m.tflite", "--runs", str(10**20)], f"--runs {10**20}: must be a whole number of timed runs"),
    (["bench", "{tmp}/m.tflite", "--warmup", "-1"], "--warmup -1: must be"),
    (["bench", "{tmp}/m.tflite", "--min-seconds", "inf"], "--min-seconds inf: must be"),
    (["bench", "{tmp}/m.tflite", "--accuracy-samples", "0"], "--accuracy-samples 0: must be"),
    (["bench", "{tmp}/m.tflite", "--max-latency-ms", "-1"], "--max-latency-ms -1: must be"),
    (["bench", "{tmp}/m.tflite", "--min-accuracy", "7"], "--min-accuracy 7: must be a number from 0 to 1"),
    (["bench", "{tmp}/m.tflite", "--threads", "1,100000"], "thread counts must be"),
    (["bench", "{tmp}/m.tflite", "--paired-rounds", "1"], "--paired-rounds 1: must be 0 (off) or 2..1000"),
    (["feedback", "pull", "--device", "desktop", "--max-size-mb", "0"], "--max-size-mb 0: must be"),
    (["feedback", "export", "--out", "{tmp}/fb", "--limit", "0"], "--limit 0: must be"),
    (["feedback", "export", "--out", "{tmp}/fb", "--threshold", "2"], "--threshold 2: must be a number from 0 to 1"),
    (["fleet", "deploy", "{tmp}/m.tflite", "{tmp}/fleet.yaml", "--parallel", "0"], "--parallel 0: must be"),
    (["fleet", "doctor", "{tmp}/fleet.yaml", "--parallel", "100000"], "--parallel 100000: must be"),
    (["fleet", "bench", "{tmp}/m.tflite", "{tmp}/fleet.yaml", "--parallel", "-1"], "--parallel -1: must be"),
    (["fleet", "bench", "{tmp}/m.tflite", "{tmp}/fleet.yaml", "--runs", str(10**20)], f"--runs {10**20}: must be"),
    (["fleet", "bench", "{tmp}/m.tflite", "{tmp}/fleet.yaml", "--min-seconds", "nan"], "--min-seconds nan: must"),
    (["fleet", "pull", "{tmp}/fleet.yaml", "--parallel", "0"], "--parallel 0: must be"),
    (["fleet", "status", "{tmp}/fleet.yaml", "--parallel", "0"], "--parallel 0: must be"),
    (["fleet", "status", "{tmp}/fleet.yaml", "--window-hours", "0"], "--window-hours 0: must be"),
    (["fleet", "rollout", "{tmp}/m.tflite", "{tmp}/fleet.yaml", "--parallel", "0"], "--parallel 0: must be"),
    (["fleet", "rollout", "{tmp}/m.tflite", "{tmp}/fleet.yaml", "--min-agreement", "1.5"],
     "--min-agreement 1.5: must be a number from 0 to 1"),
    (["fleet", "rollout", "{tmp}/m.tflite", "{tmp}/fleet.yaml", "--max-errors", "-1"], "--max-errors -1: must"),
    (["fleet", "rollout", "{tmp}/m.tflite", "{tmp}/fleet.yaml", "--min-samples", "-1"], "--min-samples -1: must"),
    (["fleet", "rollout", "{tmp}/m.tflite", "{tmp}/fleet.yaml", "--max-p90-ms", "-5"], "--max-p90-ms -5: must"),
    (["tune", "--max-latency-ms", "0"], "--max-latency-ms 0: must be"),
    ([*TUNE, "--max-size-kb", "-5"], "--max-size-kb -5: must be"),
    ([*TUNE, "--min-accuracy", "1.5"], "--min-accuracy 1.5: must be"),
    ([*TUNE, "--trials", "0"], "--trials 0: must be"),
    ([*TUNE, "--timeout", "0"], "--timeout 0: must be"),
    ([*TUNE, "--runs", str(10**20)], "--runs 100000000000000000000: must be"),
    ([*TUNE, "--warmup", "100000"], "--warmup 100000: must be"),
    ([*TUNE, "--min-seconds", "-1"], "--min-seconds -1: must be"),
    ([*TUNE, "--threads", "1000"], "--threads 1000: must be"),
    (["data", "check", "{tmp}/none", "--near-distance", "99"], "--near-distance 99"),
    (["data", "check", "{tmp}/none", "--seed", "-1"], "--seed -1: must be"),
    (["--cache-limit", "nan", "info", "{tmp}/m.tflite"], "--cache-limit='nan': a size must be a finite number"),
    (["--cache-limit", "infG", "info", "{tmp}/m.tflite"], "--cache-limit='infG': a size must be a finite"),
]

FILES = [
    (["compress", "--recipe", "{tmp}/epochs.yaml", "--dry-run"], "field 'epochs' must be a whole number of epochs"),
    (["compress", "--recipe", "{tmp}/calibration.yaml", "--dry-run"], "field 'calibration_samples' must be"),
    (["compress", "--recipe", "{tmp}/clusters.yaml", "--dry-run"], "field 'clusters' must be"),
    (["compress", "--recipe", "{tmp}/compiler.yaml", "--dry-run"], "field 'compiler_timeout_s' must be"),
    (["compress", "--recipe", "{tmp}/bomb.yaml", "--dry-run"], "bomb.yaml: YAML refused at line"),
    (["compress", "--recipe", "{tmp}/deep.yaml", "--dry-run"], "deep.yaml: YAML refused at line 2: nested more"),
    (["compress", "--recipe", "{tmp}/big.yaml", "--dry-run"], "big.yaml: recipe is larger than 1024 KB"),
    (["compress", "--recipe", "{tmp}/self.yaml", "--dry-run"], "an alias refers to the value that contains it"),
    (["bench", "{tmp}/m.tflite", "--device", "{tmp}/threads.yaml"], "threads.yaml: field 'threads' must be"),
    (["bench", "{tmp}/m.tflite", "--device", "{tmp}/reference.yaml"], "field 'reference_latency_ms' must be"),
    (["doctor", "--device", "{tmp}/profile-bomb.yaml"], "profile-bomb.yaml: YAML refused"),
    ([*TUNE, "--space", "{tmp}/dup-space.yaml"], "dup-space.yaml: not valid YAML at line 4 (duplicate key 'width'"),
    ([*TUNE, "--space", "{tmp}/size-space.yaml"], "field 'image_size'[0] must be a whole number of pixels from 32"),
    ([*TUNE, "--space", "{tmp}/epochs-space.yaml"], "field 'epochs'.high must be a whole number of epochs"),
    ([*TUNE, "--space", "{tmp}/seed-space.yaml"], "field 'seed' must be"),
    ([*TUNE, "--space", "{tmp}/grid-space.yaml"], "makes more than 10,000 values"),
    ([*TUNE, "--space", "{tmp}/train-space.yaml"], "field 'patience' must be a whole number of epochs"),
    ([*TUNE, "--space", "{tmp}/pruning-space.yaml"], "'pruning': field 'min_trials' must be a whole number"),
    ([*TUNE, "--space", "{tmp}/bomb-space.yaml"], "bomb-space.yaml: YAML refused"),
    ([*TUNE, "--space", "{tmp}/deep-space.yaml"], "deep-space.yaml: YAML refused"),
]

CONTRADICTIONS = [
    (["compress", "--float16", "--uint8-io"], "--uint8-io needs full-integer quantization"),
    (["compress", "--dynamic", "--uint8-io"], "--uint8-io needs full-integer quantization"),
    (["compress", "--recipe", "int8-ptq", "--uint8-io"], "--uint8-io: shapes the recipe that --int8"),
    (["compress", "--recipe", "int8-ptq", "--calibration-samples", "10"], "--calibration-samples: shapes"),
    (["compress", "--float16", "--calibration-samples", "10"], "--calibration-samples: only a full-integer"),
    (["compress", "--int8", "--epochs", "3"], "--epochs: the fine-tuning epochs of --prune, --cluster or --qat"),
    (["compress", "--all", "--recipe", "int8-ptq"], "--recipe: --all already applies every known recipe"),
    (["compress", "--qat", "--float16"], "--qat trains for int8 quantization"),
    (["compress", "--int8", "--dry-run", "--compare"], "--compare: --dry-run makes no variant to compare"),
    (["compress", "--int8", "--float16"], "choose one of --int8, --float16, --dynamic"),
    (["bench", "--compare", "{tmp}/a.json", "--compare", "{tmp}/b.json", "--runs", "3"],
     "--runs: --compare reads two results.json files"),
    (["bench", "{tmp}/m.tflite", "--compare", "{tmp}/a.json", "--compare", "{tmp}/b.json"], "MODELS: --compare"),
    (["tune", "--resume", "{tmp}/t", "--max-latency-ms", "5"], "--max-latency-ms: --resume and --join use the"),
    (["tune", "--join", "shared", "--storage", "sqlite:///x.db", "--space", "{tmp}/s.yaml"], "--space: --resume"),
    (["train", "--resume", "{tmp}/run", "--epochs", "3"], "--epochs: --resume continues with the run's own"),
    (["train", "--no-augment", "--rotation", "0.2"], "--rotation: --no-augment turns augmentation off"),
    (["train", "--fine-tune-at", "50"], "--fine-tune-at: only used with --fine-tune-epochs"),
    (["train", "--fine-tune-epochs", "2"], "--fine-tune-epochs: training from scratch"),
]

TABLE = NUMBERS + FILES + CONTRADICTIONS
_STUBBED = {"edgekit.train": "train", "edgekit.tune.study": "tune", "edgekit.compress.pipeline": "compress_all"}


def _stub_work(monkeypatch=None) -> None:
    """Where the real work (and TensorFlow) would start: reaching it means a check was missed. With
    `monkeypatch` the stubs leave sys.modules after the test (a stub left behind broke later tests' imports)."""
    for module, function in _STUBBED.items():
        stub = types.ModuleType(module)

        def reached(*args, _name=module, **kwargs):
            raise AssertionError(f"{_name} started work: the input was not refused")

        setattr(stub, function, reached)
        if monkeypatch is None:
            sys.modules[module] = stub
        else:
            monkeypatch.setitem(sys.modules, module, stub)


def _tree(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")}


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    _files(tmp_path)
    monkeypatch.chdir(tmp_path)
    _stub_work(monkeypatch)
    return tmp_path


@pytest.mark.parametrize("args, expected", TABLE, ids=lambda v: " ".join(v)[:70] if isinstance(v, list) else None)
def test_out_of_range_and_contradictory_input_is_one_line_and_writes_nothing(args, expected, workdir, edgekit_home):
    args = [a.format(tmp=workdir) for a in args]
    before = _tree(workdir)
    result = cli.invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1, (result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.output
    assert _tree(workdir) == before, "the refused command wrote files"


def _numeric_options() -> set[tuple[str, str]]:
    """(command path, option) for every int or float option of every command."""
    import typer.main

    found = set()

    def walk(command, path):
        for param in command.params:
            if param.opts[0].startswith("--") and str(param.bare_type()) in ("int", "float"):
                found.add((" ".join(path), param.opts[0]))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def test_every_numeric_option_has_a_range_case():
    """A new numeric option needs its range, and a case here proving it."""
    covered = set()
    for args, _ in NUMBERS:
        command = " ".join(a for a in args[:2] if not a.startswith(("-", "{")))
        covered |= {(command, a) for a in args if a.startswith("--")}
    missing = sorted(_numeric_options() - covered)
    assert not missing, f"numeric options without a bounds case: {missing}"


_BEFORE_TF = """
import json, sys
sys.path.insert(0, sys.argv[1])
from test_bounds import _stub_work
_stub_work()
from typer.testing import CliRunner
from edgekit.cli import app
loaded = []
for args in json.loads(sys.stdin.read()):
    result = CliRunner().invoke(app, args)
    loaded.append([" ".join(args), result.exit_code, "tensorflow" in sys.modules or "tf_keras" in sys.modules])
print(json.dumps(loaded))
"""


def test_every_case_is_refused_before_tensorflow_loads(tmp_path):
    _files(tmp_path)
    cases = [[a.format(tmp=tmp_path) for a in args] for args, _ in TABLE]
    env = {**os.environ, "EDGEKIT_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-c", _BEFORE_TF, str(Path(__file__).parent)], input=json.dumps(cases),
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.splitlines()[-1])
    assert [r for r in results if r[1] != 1 or r[2]] == []


def test_compress_dry_run_json_is_json():
    result = cli.invoke(app, ["compress", "--int8", "--uint8-io", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    recipes = json.loads(result.stdout)["recipes"]
    assert recipes[0]["name"] == "int8-ptq-uint8io" and recipes[0]["stages"][-1]["io_dtype"] == "uint8"


# --- the YAML loader itself ---------------------------------------------------------------------------


def test_a_few_anchors_aliases_and_merge_keys_still_load():
    text = "base: &base [1, 2]\nfirst: *base\nsecond: *base\nnested: {a: {b: {c: [*base]}}}\n"
    assert load_yaml_text(text, "f.yaml")["nested"]["a"]["b"]["c"] == [[1, 2]]
    merged = load_yaml_text("defaults: &d {threads: 2, arch: any}\npi: {<<: *d, threads: 4}\n", "f.yaml")
    assert merged["pi"] == {"threads": 4, "arch": "any"}


@pytest.mark.parametrize("text, expected", [
    (BOMB, "f.yaml: YAML refused at line 6: expands to more than 100,000 values"),
    ("[" * 5000 + "]" * 5000, "f.yaml: YAML refused at line 1: nested more than 50 levels deep"),
    ("a: &a " + "[" * 30 + "1" + "]" * 30 + "\nb: " + "[" * 25 + "*a" + "]" * 25 + "\n",
     "nested more than 50 levels deep once aliases are expanded"),
    ("a: &a\n  b: *a\n", "an alias refers to the value that contains it"),
    ("".join(f"k{i}: &a{i} 1\n" for i in range(101)) + "".join(f"v{i}: *a{i}\n" for i in range(101)),
     "more than 100 aliases"),
    ("a: 1\na: 2\n", "not valid YAML at line 2 (duplicate key 'a' (first at line 1))"),
])
def test_yaml_over_the_limits_is_one_line(text, expected):
    with pytest.raises(EdgekitError) as info:
        load_yaml_text(text, "f.yaml")
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_only_small_regular_files_are_read(tmp_path):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    for path, expected in [(fifo, "is not a regular file"), (Path("/dev/zero"), "is not a regular file"),
                           (tmp_path, "is not a regular file"), (tmp_path / "none.yaml", "cannot read recipe")]:
        with pytest.raises(EdgekitError, match=f"^{path}: .*{expected}"):
            load_yaml_file(path, "recipe")
    big = tmp_path / "big.yaml"
    big.write_text("a: 1\n" + "#" * 4096)
    with pytest.raises(EdgekitError, match="larger than 2 KB"):
        load_yaml_file(big, "fleet", max_bytes=2048)
    assert load_yaml_file(big, "fleet") == {"a": 1}


# --- the runner's own options ---------------------------------------------------------------------------


@pytest.mark.parametrize("argv, expected", [
    (["bench", "m.tflite", "--runs", "10000000"], "must be at most 1,000,000"),
    (["bench", "m.tflite", "--warmup", "-1"], "must be 0 or more"),
    (["bench", "m.tflite", "--min-seconds", "inf"], "is not a finite number"),
    (["bench", "m.tflite", "--min-seconds", "nan"], "is not a finite number"),
    (["bench", "m.tflite", "--max-images", "1000000"], "must be at most"),
    (["bench", "m.tflite", "--threads", "1000"], "must be at most 256"),
    (["classify", "m.tflite", "x.jpg", "--top-k", "5000"], "must be at most 1,000"),
    (["classify", "m.tflite", "x.jpg", "--max-megapixels", "1e9"], "must be at most 1,000"),
    (["classify", "m.tflite", "x.jpg", "--busy-timeout", "nan"], "is not a finite number"),
])
def test_runner_options_are_bounded(runner, argv, expected, capsys):
    with pytest.raises(SystemExit) as info:
        runner.build_parser().parse_args(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 1 and expected in err and len(err.splitlines()) == 1, err


@pytest.mark.slow
def test_a_variant_records_how_many_calibration_images_it_used(variants):
    from edgekit import manifests

    manifest = manifests.read(variants["int8-ptq"], manifests.VariantManifest)
    asked = manifest.recipe.convert.params.calibration_samples
    used = next(t for t in manifest.timings if t.stage == "convert").calibration_images
    assert 0 < used <= asked
