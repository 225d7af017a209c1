"""`edgekit feedback export --select ...` from the fleet store: the hard cases first, labels checked."""

from __future__ import annotations

import csv
import json
import sqlite3
import sys
from pathlib import Path

from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from fleet_data import log_path, make_fleet  # noqa: E402

from edgekit.cli import app  # noqa: E402
from edgekit.data.scan import class_folders  # noqa: E402

cli = CliRunner()


def pulled_fleet(tmp_path):
    fleet = make_fleet(tmp_path, local=("a",), rows=60, sample_every=1, corrections_every=10)
    with sqlite3.connect(log_path(tmp_path, "a")) as db:
        ids = [r[0] for r in db.execute("SELECT id, top_k FROM predictions ORDER BY rowid")]
        predicted = {r[0]: json.loads(r[1])[0]["label"] for r in db.execute("SELECT id, top_k FROM predictions")}
        db.execute("INSERT INTO feedback (prediction_id, label, time, source) VALUES (?, ?, "
                   "'2026-01-01T00:00:00+00:00', 'cli')", (ids[1], predicted[ids[1]]))  # a confirmation
        db.execute("INSERT INTO feedback (prediction_id, label, time, source) VALUES (?, 'horse', "
                   "'2026-01-01T00:00:00+00:00', 'cli')", (ids[2],))  # not one of the model's labels
    assert cli.invoke(app, ["fleet", "pull", str(fleet)]).exit_code == 0
    return fleet


def export(*args):
    result = cli.invoke(app, ["feedback", "export", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def rows(out: Path) -> list[dict]:
    with open(out / "selection.csv") as handle:
        return list(csv.DictReader(handle))


def test_corrected_writes_a_class_folder_dataset_with_checked_labels(tmp_path):
    pulled_fleet(tmp_path)
    out = tmp_path / "corrected"
    report = export("--select", "corrected", "--out", out)
    assert report["written"] == report["labelled"] == 7 and report["rejected_labels"] == 1
    assert {p.name for p in class_folders(out)} <= {"cat", "dog", "bird"}
    assert sum(len(list(p.iterdir())) for p in class_folders(out)) == 7
    assert json.loads((out / "manifest.json").read_text())["kind"] == "feedback-dataset"


def test_disagreement_leaves_out_confirmations(tmp_path):
    pulled_fleet(tmp_path)
    out = tmp_path / "disagree"
    report = export("--select", "disagreement", "--out", out)
    assert report["written"] == 6  # 6 corrections naming another label; the confirmation and 'horse' are out
    assert all(r["label"] != r["predicted"] for r in rows(out))


def test_low_confidence_is_hardest_first_and_unlabelled_samples_are_not_a_class(tmp_path):
    pulled_fleet(tmp_path)
    out = tmp_path / "hard"
    report = export("--select", "low-confidence", "--threshold", "0.9", "--limit", "10", "--out", out)
    listed = rows(out)
    assert report["written"] == len(listed) == 10
    scores = [float(r["score"]) for r in listed]
    assert scores == sorted(scores) and scores[-1] < 0.9
    unlabelled = [r for r in listed if not r["label"]]
    assert unlabelled and all(r["file"].startswith(".to-label/") for r in unlabelled)
    assert all((out / r["file"]).is_file() for r in listed)


def test_an_empty_selection_and_a_used_out_folder_are_one_line(tmp_path):
    make_fleet(tmp_path, local=("a",), rows=5)
    result = cli.invoke(app, ["feedback", "export", "--select", "corrected", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no sample in the store" in result.output
    result = cli.invoke(app, ["feedback", "export", "--select", "sideways", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "choose one of low-confidence, disagreement, corrected" in result.output


def test_the_same_bytes_seen_twice_are_exported_once(tmp_path):
    from edgekit.fleet.store import open_store

    pulled_fleet(tmp_path)  # the simulated camera keeps identical bytes for rows 2k and 2k+1
    with open_store(None) as store:
        qualifying = store.query("SELECT count(*), count(DISTINCT sample_sha256) FROM predictions "
                                 "WHERE sample_sha256 IS NOT NULL AND top_score < 0.95")[0]
    assert qualifying[0] > qualifying[1]
    report = export("--select", "low-confidence", "--threshold", "0.95", "--out", tmp_path / "once")
    listed = rows(tmp_path / "once")
    assert len({(r["sha256"], r["label"]) for r in listed}) == len(listed) == report["written"]
    assert report["written"] <= qualifying[1] + 8  # a corrected copy may stand beside its unlabelled twin


def test_select_and_imports_together_are_one_line(tmp_path):
    result = cli.invoke(app, ["feedback", "export", str(tmp_path / "imp"), "--select", "corrected", "--out",
                              str(tmp_path / "o")])
    assert result.exit_code == 1 and "pass them or imports, not both" in result.output


def test_disagreement_includes_predictions_a_shadow_candidate_disagreed_with(tmp_path):
    from fleet_data import LABELS, MODEL_SHA

    fleet = make_fleet(tmp_path, local=("a",), rows=30, sample_every=1)
    with sqlite3.connect(log_path(tmp_path, "a")) as db:
        picked = db.execute("SELECT id, time, top_k FROM predictions ORDER BY rowid LIMIT 3").fetchall()
        for (_, when, top_k), agree, shift in zip(picked, (0, 1, 0), (0.0, 0.0, 0.01)):
            top = json.loads(top_k)[0]
            db.execute("INSERT INTO shadow (time, tag, model_sha256, candidate_sha256, model_top, candidate_top, "
                       "agree, model_score, candidate_score, model_ms, candidate_ms, error) VALUES "
                       "(?, 'r1', ?, ?, ?, ?, ?, ?, 0.5, 1.0, 1.0, NULL)",
                       (when, MODEL_SHA, "cd" * 32, LABELS.index(top["label"]), 0, agree, top["score"] + shift))
    assert cli.invoke(app, ["fleet", "pull", str(fleet)]).exit_code == 0
    out = tmp_path / "shadowed"
    report = export("--select", "disagreement", "--out", out)
    # only the first: the second agreed, the third's score matches no logged prediction
    assert report["written"] == 1 and [r["prediction_id"] for r in rows(out)] == [picked[0][0]]
