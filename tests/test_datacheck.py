"""Data checks: duplicate groups, the leak-free split, exclusion lists, the report, label errors."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.data import DataSpec, load_dataset, stratified_split
from edgekit.data.hashing import duplicate_groups, hash_files
from edgekit.data.split import group_stratified_split
from edgekit.data.types import ExclusionRecord
from edgekit.datacheck.check import check_folder
from edgekit.devices import runner_path
from edgekit.errors import EdgekitError

cli = CliRunner()


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _copy_digits(digits_folder: Path, out: Path, per_class: int, copies: int = 1, start: int = 0) -> Path:
    """`per_class` digits of each class (from the `start`-th) of the session folder, each written `copies` times."""
    for folder in sorted(p for p in digits_folder.iterdir() if p.is_dir()):
        for source in sorted(folder.glob("*.png"))[start:start + per_class]:
            (out / folder.name).mkdir(parents=True, exist_ok=True)
            for k in range(copies):
                shutil.copyfile(source, out / folder.name / f"{source.stem}_{k}.png")
    return out


@pytest.fixture(scope="module")
def tripled(digits_folder, tmp_path_factory) -> Path:
    """10 digits per class, every file there three times (300 files)."""
    return _copy_digits(digits_folder, tmp_path_factory.mktemp("tripled") / "data", per_class=10, copies=3)


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in result.output, result.output
    return lines[-1]


# ---------------------------------------------------------------- hashing and the split


def test_exact_and_near_copies_form_groups(digits_folder, tmp_path):
    source = sorted((digits_folder / "3").glob("*.png"))[0]
    other = sorted((digits_folder / "7").glob("*.png"))[0]
    shutil.copyfile(source, tmp_path / "same.png")
    with Image.open(source) as image:
        image.convert("RGB").save(tmp_path / "resaved.jpg", quality=85)
        image.resize((64, 64), Image.BILINEAR).save(tmp_path / "bigger.png")
    paths = [str(source), str(tmp_path / "same.png"), str(other), str(tmp_path / "resaved.jpg"),
             str(tmp_path / "bigger.png")]
    groups = duplicate_groups(hash_files(paths))
    assert groups == [{"kind": "near", "members": [0, 1, 3, 4]}]
    assert duplicate_groups(hash_files(paths), max_distance=None) == [{"kind": "exact", "members": [0, 1]}]


def test_hashes_are_computed_once_per_unchanged_file(digits_folder, tmp_path, monkeypatch, edgekit_home):
    from edgekit.data import hashing

    paths = [str(p) for p in sorted((digits_folder / "3").glob("*.png"))[:4]]
    moved = tmp_path / "moving.png"
    shutil.copyfile(paths[0], moved)
    paths.append(str(moved))
    first = hash_files(paths)
    calls = []
    real = hashing.image_facts
    monkeypatch.setattr(hashing, "image_facts", lambda path, *a: calls.append(path) or real(path, *a))
    assert hash_files(paths) == first and calls == []  # all five from the cache
    with Image.open(paths[1]) as image:
        image.rotate(90).save(moved)  # same path, new content and mtime
    again = hash_files(paths)
    assert calls == [str(moved)] and again[:4] == first[:4] and again[4].sha256 != first[4].sha256
    calls.clear()
    assert hash_files(paths, use_cache=False) == again and len(calls) == 5
    [cache_file] = (edgekit_home / "cache" / "facts").glob("*.json")
    stored = json.loads(cache_file.read_text())
    stored["files"][paths[0]][3] = "not a hash"  # a tampered entry is recomputed, never trusted
    cache_file.write_text(json.dumps(stored))
    calls.clear()
    assert hash_files(paths) == again and calls == [paths[0]]
    calls.clear()
    assert hash_files(paths) == again and calls == []  # and the repaired entry is stored


def test_edited_hashing_code_hashes_every_file_again(digits_folder, tmp_path, monkeypatch):
    """The facts cache is keyed on edgekit/data/hashing.py's bytes: a changed hash is never mixed with old ones."""
    from edgekit.data import hashing

    paths = [str(p) for p in sorted((digits_folder / "4").glob("*.png"))[:3]]
    first = hash_files(paths)
    edited = tmp_path / "hashing.py"
    edited.write_text(Path(hashing.__file__).read_text() + "\n# an edit\n")
    monkeypatch.setattr(hashing, "__file__", str(edited))
    calls = []
    real = hashing.image_facts
    monkeypatch.setattr(hashing, "image_facts", lambda path, *a: calls.append(path) or real(path, *a))
    assert hash_files(paths) == first and sorted(calls) == paths  # hashed on worker threads: any order


def test_group_split_never_separates_a_group_and_stays_stratified():
    rng = np.random.default_rng(0)
    targets = np.repeat(np.arange(4), 60)
    groups = rng.integers(0, 80, len(targets)) + 1000 * targets  # groups of ~3 inside each class
    train, val = group_stratified_split(targets, groups, 0.2, seed=7)
    assert not set(groups[train]) & set(groups[val])
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(targets)))
    for cls in range(4):
        assert 8 <= np.sum(targets[val] == cls) <= 12  # 20% of 60, give or take a group
    again = group_stratified_split(targets, groups, 0.2, seed=7)
    assert np.array_equal(again[1], val)
    assert not np.array_equal(group_stratified_split(targets, groups, 0.2, seed=8)[1], val)


def test_train_split_of_a_tripled_folder_leaks_nothing(tripled):
    splits = load_dataset(DataSpec(data=str(tripled), image_size=32))
    train_hashes = {_sha(p) for p in splits.train.paths}
    assert len(splits.validation) == 60 and not any(_sha(p) in train_hashes for p in splits.validation.paths)
    record = splits.record.split.duplicates
    assert record.exact_groups == 100 and record.leaked == {"validation": 0, "test": 0}
    assert record.handling.startswith("group-aware")
    # the split a plain stratified shuffle makes of the same folder: most validation images leak
    _, val_idx = stratified_split(np.asarray([Path(p).parent.name for p in sorted(tripled.rglob("*.png"))]),
                                  0.2, 42)
    files = sorted(tripled.rglob("*.png"))
    plain_train = {_sha(f) for i, f in enumerate(files) if i not in set(val_idx)}
    assert sum(_sha(files[i]) in plain_train for i in val_idx) > 40
    # eval, compress and bench reload the split from the manifest and must get the same one
    again = load_dataset(splits.record.reload_spec)
    assert again.validation.paths == splits.validation.paths


def test_validation_folder_is_kept_and_its_leaks_named(digits_folder, tmp_path, caplog):
    root = tmp_path / "data"
    _copy_digits(digits_folder, root / "train", per_class=4)
    _copy_digits(digits_folder, root / "validation", per_class=1)  # the first of each class: copies of train
    with caplog.at_level(logging.WARNING):
        splits = load_dataset(DataSpec(data=str(root), image_size=32))
    assert len(splits.validation) == 10 and len(splits.train) == 40
    record = splits.record.split.duplicates
    assert record.leaked["validation"] == 10 and record.handling == "validation folder kept as it is"
    assert "10 validation image(s) have a copy in training" in caplog.text
    assert str(root / "validation" / "0") in caplog.text


def test_a_folder_of_one_image_copied_cannot_be_split(tmp_path):
    for cls, colour in (("a", (200, 10, 10)), ("b", (10, 10, 200))):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (40, 40), colour).save(tmp_path / "data" / cls / f"{i}.png")
    line = _one_line_error(cli.invoke(app, ["train", "--data", str(tmp_path / "data"), "--weights", "none"]))
    assert "nothing can be held out without leaking" in line


# ---------------------------------------------------------------- data check and exclusion lists


def _messy_folder(digits_folder: Path, root: Path) -> Path:
    """train/validation with a leak, a label conflict, corrupt, truncated, tiny and odd-aspect files."""
    _copy_digits(digits_folder, root / "train", per_class=5)
    _copy_digits(digits_folder, root / "validation", per_class=2, start=5)
    leaked = sorted((root / "train" / "4").glob("*.png"))[-1]
    shutil.copyfile(leaked, root / "validation" / "4" / "leaked.png")
    shutil.copyfile(sorted((root / "train" / "1").glob("*.png"))[0], root / "train" / "7" / "which_label.png")
    good = sorted((root / "train" / "2").glob("*.png"))[0].read_bytes()
    (root / "train" / "2" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "train" / "5" / "garbage.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 40)
    (root / "train" / "5" / "notes.txt").write_text("not an image")
    Image.new("RGB", (8, 8), (90, 90, 90)).save(root / "train" / "6" / "tiny.png")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 400, 3), dtype=np.uint8)).save(
        root / "train" / "9" / "banner.png")
    return root


def test_data_check_reports_every_kind_of_problem(digits_folder, tmp_path):
    root = _messy_folder(digits_folder, tmp_path / "data")
    before = {p: _sha(p) for p in root.rglob("*") if p.is_file()}
    out = tmp_path / "report"
    result = cli.invoke(app, ["data", "check", str(root), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["unreadable"] == 2 and summary["flagged"] == 2
    assert summary["duplicates"]["label_conflicts"] == 1 and summary["leakage"]["groups"] == 1
    assert summary["leakage"]["held_out_images_with_a_train_copy"] == {"validation": 1}
    report = json.loads((out / "report.json").read_text())
    assert {u["path"] for u in report["unreadable"]} == {"train/2/truncated.png", "train/5/garbage.jpg"}
    reasons = {f["path"]: f["reasons"][0] for f in report["flagged"]}
    assert reasons["train/6/tiny.png"].startswith("tiny") and reasons["train/9/banner.png"].startswith("odd aspect")
    leak = next(g for g in report["duplicates"]["groups"] if g["leak"])
    assert leak["members"][0]["path"] == "validation/4/leaked.png"
    assert report["balance"]["total"]["7"] == 8 and report["balance"]["imbalance_ratio"] == round(8 / 7, 2)
    markdown = (out / "report.md").read_text()
    assert "validation/4/leaked.png" in markdown and "train/7/which_label.png" in markdown
    for sheet in report["sheets"]:
        with Image.open(out / sheet) as image:
            assert image.format == "PNG" and image.width > 96
    assert {"sheets/duplicates-01.png", "sheets/flagged.png"} <= set(report["sheets"])
    assert json.loads((out / "manifest.json").read_text())["kind"] == "datacheck"
    assert before == {p: _sha(p) for p in root.rglob("*") if p.is_file()}  # only read


def test_exclusion_list_round_trips_into_training_lineage(tripled, tmp_path):
    listing = tmp_path / "exclude.txt"
    result = cli.invoke(app, ["data", "check", str(tripled), "--out", str(tmp_path / "r"),
                              "--write-exclusions", str(listing), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["exclusions"]["count"] == 200
    assert "0/digit_" in listing.read_text() and str(tripled) not in listing.read_text().split("\n", 3)[3]
    splits = load_dataset(DataSpec(data=str(tripled), image_size=32, exclude=str(listing)))
    assert len(splits.train) + len(splits.validation) == 100
    record = splits.record.exclude
    assert record == ExclusionRecord(path=str(listing.resolve()), sha256=_sha(listing), listed=200, excluded=200)
    assert splits.record.split.duplicates.exact_groups == 0
    assert load_dataset(splits.record.reload_spec).validation.paths == \
        splits.validation.paths


def test_bad_input_is_one_line(tmp_path, digits_folder):
    (tmp_path / "empty").mkdir()
    assert "no class folders" in _one_line_error(cli.invoke(app, ["data", "check", str(tmp_path / "empty")]))
    one = _copy_digits(digits_folder, tmp_path / "one", per_class=3)
    for extra in [p for p in one.iterdir() if p.name != "3"]:
        shutil.rmtree(extra)
    assert "only one class" in _one_line_error(cli.invoke(app, ["data", "check", str(one)]))
    assert "no such data folder" in _one_line_error(cli.invoke(app, ["data", "check", str(tmp_path / "nope")]))
    line = _one_line_error(cli.invoke(app, ["train", "--data", str(one), "--exclude", str(tmp_path / "x.txt")]))
    assert "x.txt: no such file" in line
    listing = tmp_path / "all3.txt"
    listing.write_text("\n".join(f"3/{p.name}" for p in (one / "3").glob("*.png")) + "\n")
    two = _copy_digits(digits_folder, tmp_path / "two", per_class=3)
    with pytest.raises(EdgekitError, match="excludes every image of class '3'"):
        load_dataset(DataSpec(data=str(two), exclude=str(listing)))


# ---------------------------------------------------------------- label errors and device corrections


def _runner_module():
    spec = importlib.util.spec_from_file_location("edgekit_runner_for_tests", runner_path())
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_device_corrections_that_contradict_the_folder_are_listed(digits_folder, tmp_path, edgekit_home):
    root = _copy_digits(digits_folder, tmp_path / "data", per_class=3)
    sample = sorted((root / "8").glob("*.png"))[0]
    agreeing = sorted((root / "2").glob("*.png"))[0]
    runner = _runner_module()
    log = runner.PredictionLog(str(edgekit_home / "feedback" / "pi-1" / "device.db"))
    result = {"top_k": [{"label": "8", "score": 0.9}], "latency_ms": {"invoke": 1.0}}
    wrong = log.log_prediction("abc", "file", result, sample=sample.read_bytes(), sample_ext="png")
    log.add_feedback(wrong, "3", "cli")
    right = log.log_prediction("abc", "file", result, sample=agreeing.read_bytes(), sample_ext="png")
    log.add_feedback(right, "2", "cli")
    log.close()
    report = check_folder(root)
    device = report["label_errors"]["device"]
    assert device["corrections"] == 2 and device["matched"] == 2
    assert [(d["path"], d["folder_label"], d["device_label"], d["match"]) for d in device["contradictions"]] == \
        [(str(sample.relative_to(root)), "8", "3", "exact")]


def _flipped_labels(seed: int, n: int = 600, classes: int = 4, rate: float = 0.1):
    """Out-of-sample probabilities of a good classifier (about 91% right) and labels with known flips.

    Each image's true class gets a logit boost of 1 to 6 over unit Gaussian noise, so some images are
    easy, some ambiguous and some misclassified, like held-out predictions of a trained run; then `rate`
    of the labels are moved to a different class at random. Returns probs, true, given labels, flipped.
    """
    rng = np.random.default_rng(seed)
    truth = rng.permutation(np.arange(n) % classes)
    logits = rng.normal(0.0, 1.0, (n, classes))
    logits[np.arange(n), truth] += rng.uniform(1.0, 6.0, n)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    flipped = rng.choice(n, int(rate * n), replace=False)
    given = truth.copy()
    given[flipped] = (truth[flipped] + rng.integers(1, classes, len(flipped))) % classes
    return probs, truth, given, {int(i) for i in flipped}


def _assert_finds_the_flips(issues: list[dict], truth, flipped: set[int]) -> None:
    """Precision and recall far beyond chance, flips first, and the true class suggested for them.

    A flagger listing the same number of images at random has expected precision len(flipped)/n (0.1
    here) and recall len(issues)/n; cleanlab on these probabilities gets about 0.8 of each on every seed
    tried (0..19), so 0.7 and 0.65 leave room for cleanlab's tie-breaking to change.
    """
    from scipy.stats import hypergeom

    listed = [i["index"] for i in issues]
    found = set(listed) & flipped
    precision, recall = len(found) / max(1, len(listed)), len(found) / len(flipped)
    # chance that listing len(listed) of the n images at random catches at least len(found) flips
    chance = hypergeom(len(truth), len(flipped), len(listed)).sf(len(found) - 1)
    assert precision >= 0.7 and recall >= 0.65 and chance < 1e-30, (precision, recall, chance)
    top = listed[:len(flipped) // 2]  # most doubtful first: the top of the list is almost all flips
    assert sum(i in flipped for i in top) >= 0.9 * len(top), top
    right = sum(issues[k]["suggested"] == truth[i] for k, i in enumerate(listed) if i in found)
    assert right >= 0.85 * len(found), f"the true class suggested for {right} of {len(found)} found flips"


def test_label_issues_find_known_flips_in_synthetic_probabilities():
    from edgekit.datacheck.labels import label_issues

    probs, truth, given, flipped = _flipped_labels(seed=5)
    issues = label_issues(probs, given)
    _assert_finds_the_flips(issues, truth, flipped)
    for issue in issues:  # each entry describes its own row
        i = issue["index"]
        assert issue["given"] == given[i] and issue["suggested"] == probs[i].argmax() != given[i]
        assert issue["given_probability"] == round(float(probs[i, given[i]]), 4)
        assert issue["suggested_probability"] == round(float(probs[i].max()), 4)
    self_confidence = [issue["given_probability"] for issue in issues]
    assert self_confidence == sorted(self_confidence)


def test_a_random_flagger_fails_the_label_error_bounds(monkeypatch):
    """The bounds above reject chance: the same count of images listed at random does not pass them."""
    import cleanlab.filter

    from edgekit.datacheck.labels import label_issues

    probs, truth, given, flipped = _flipped_labels(seed=5)
    count = len(label_issues(probs, given))
    rng = np.random.default_rng(0)
    monkeypatch.setattr(cleanlab.filter, "find_label_issues",
                        lambda labels, pred_probs, **_: rng.choice(len(labels), count, replace=False))
    with pytest.raises(AssertionError):
        _assert_finds_the_flips(label_issues(probs, given), truth, flipped)


@pytest.mark.slow
def test_label_errors_with_a_run_reach_the_report_and_the_exclusion_list(digits_folder, tiny_run, tmp_path):
    """Plumbing only: the run's features, the probabilities and cleanlab's verdicts end up as well-formed
    entries naming real files. How well the list finds flips is the synthetic test's job (tiny_run is a
    weak 4-epoch model); benchmarks/data_check.py measures it on a properly trained run."""
    root = _copy_digits(digits_folder, tmp_path / "data", per_class=20)
    rng = np.random.default_rng(3)
    files = sorted(root.rglob("*.png"))
    for index in rng.choice(len(files), 10, replace=False):  # some flips, so the list is not empty
        source = files[index]
        source.rename(root / str((int(source.parent.name) + 1 + rng.integers(0, 9)) % 10) / source.name)
    listing = tmp_path / "exclude.txt"
    result = cli.invoke(app, ["data", "check", str(root), "--run", str(tiny_run), "--out", str(tmp_path / "r"),
                              "--write-exclusions", str(listing), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    section = report["label_errors"]
    assert section["method"]["library"] == "cleanlab.filter.find_label_issues"
    assert section["method"]["model_sha256"] and Path(section["method"]["run"]) == tiny_run.resolve()
    issues = section["issues"]
    assert issues and len({i["path"] for i in issues}) == len(issues)
    for issue in issues:
        path = root / issue["path"]
        assert path.is_file() and issue["folder_label"] == path.parent.name == report["labels"][issue["given"]]
        assert issue["suggested_label"] in report["labels"] and issue["suggested_label"] != issue["folder_label"]
        assert report["labels"][issue["suggested"]] == issue["suggested_label"] and issue["split"] in report["layout"]
        assert 0 <= issue["given_probability"] <= issue["suggested_probability"] <= 1
    listed = dict(line.split("\t# ", 1) for line in listing.read_text().splitlines() if not line.startswith("#"))
    copies = {m["path"] for g in report["duplicates"]["groups"] for m in g["members"]}  # listed for that first
    for issue in issues:
        assert issue["path"] in listed
        if issue["path"] not in copies:
            assert listed[issue["path"]] == f"likely mislabeled: {issue['folder_label']} -> {issue['suggested_label']}"
    assert "sheets/label-errors.png" in report["sheets"] and (tmp_path / "r" / "sheets" / "label-errors.png").is_file()


def test_flat_images_are_not_near_duplicates_of_each_other(tmp_path):
    """A 1 px image, a flat GIF and a flat 16-bit PNG in different classes: valid, unrelated, and their
    perceptual hashes are all alike, so only byte-identical copies may group them."""
    for label in ("a", "b", "c"):
        (tmp_path / label).mkdir()
    Image.new("RGB", (1, 1), (200, 30, 30)).save(tmp_path / "a" / "dot.png")
    Image.new("P", (40, 40), 3).save(tmp_path / "b" / "flat.gif")
    Image.fromarray(np.full((48, 48), 40000, np.uint16)).save(tmp_path / "c" / "flat16.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(tmp_path / "c" / "n.png")
    shutil.copy(tmp_path / "a" / "dot.png", tmp_path / "a" / "dot-copy.png")  # exact copies still group
    paths = sorted(str(p) for p in tmp_path.rglob("*.*"))
    facts = hash_files(paths, use_cache=False)
    flat = {Path(p).name: f.flat for p, f in zip(paths, facts)}
    assert flat == {"dot.png": True, "dot-copy.png": True, "flat.gif": True, "flat16.png": True, "n.png": False}
    groups = duplicate_groups(facts)
    assert [(g["kind"], sorted(Path(paths[i]).name for i in g["members"])) for g in groups] == \
        [("exact", ["dot-copy.png", "dot.png"])]
