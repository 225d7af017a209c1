"""edgekit.render: one number format, one table, one CSV writer and one Pareto plot for every command."""

from __future__ import annotations

import csv
import io
import json
import re
from types import SimpleNamespace

import pytest

from edgekit import render
from edgekit.bench.rows import BenchRow, LatencyStats, Placement
from edgekit.render import (
    ParetoPoint,
    csv_text,
    fit_table,
    fixed_line,
    fmt,
    label_box,
    markdown_table,
    place_labels,
)


@pytest.mark.parametrize(("value", "spec", "unit", "text"), [
    (None, ".2f", "", "-"), (None, "ms", "", "-"), (None, "size", "", "-"),
    (0.5678, "ms", "", "0.568"), (12.0, "ms", "", "12.00"),  # a 20 µs model and a 200 ms one both read
    (1023, "size", "", "1023 B"), (1536, "size", "", "1.5 KiB"), (5 * 10**9, "size", "", "4.7 GiB"),
    (123456789, "size-short", "", "117.7M"), (500, "size-short", "", "500B"),
    (0.123, ".0%", "", "12%"), (0.5, ".1%", "", "50.0%"), (-0.0123, "pt", "", "-1.2 pt"), (0.0, "pt", "", "+0.0 pt"),
    (7.34, "rate", "", "7.3"), (123.4, "rate", "", "123"), (1.0567, ".2f", "x", "1.06x"), (12.4, ".0f", " s", "12 s"),
    (3, "", "", "3"),
])
def test_fmt_is_the_one_number_format(value, spec, unit, text):
    assert fmt(value, spec, unit) == text


def test_markdown_table_escapes_pipes_and_line_breaks_so_a_cell_stays_one_cell():
    table = markdown_table(["file", "why"], [["x.jpg", "bad | file\nsecond line"]])
    row = table.splitlines()[2]
    assert row == "| x.jpg | bad \\| file second line |"
    assert row.replace("\\|", "").count("|") == 3  # the row still has exactly two cells


def test_markdown_table_pads_columns_and_fits_a_terminal_dropping_named_columns_first():
    rows = [[f"name-{i}" * 3, "desc " * 12, "source/path/" * 4] for i in range(3)]
    full = markdown_table(["name", "description", "source"], rows)
    assert len({len(line) for line in full.splitlines()}) == 1  # every line as wide: readable as plain text
    narrow = markdown_table(["name", "description", "source"], rows, 60, drop=("source",), keep=("name",))
    lines = narrow.splitlines()
    assert lines[-1] == "(--wide adds source)" and all(len(line) <= 60 for line in lines[:-1])
    assert "name-0name-0name-0" in narrow and "…" in narrow  # kept columns are never shortened
    headers, cells, hidden = fit_table(["a"], [["x" * 40]], 20)
    assert hidden == [] and cells == [["x" * 15 + "…"]]


def test_csv_text_writes_what_the_csv_module_reads_back():
    text = csv_text(["a", "b", "c"], [{"a": 1, "b": "x,y", "extra": "left out"}, [2, None, 'say "hi"']])
    assert text.splitlines()[0] == "a,b,c"
    assert list(csv.reader(io.StringIO(text))) == [["a", "b", "c"], ["1", "x,y", ""], ["2", "", 'say "hi"']]


def test_fixed_line_clips_and_pads_every_cell_to_its_column():
    assert fixed_line(["a-very-long-name", None, 3.5], [8, 4, 3], "  ") == "a-very-…  None  3.5"


def test_pareto_plot_labels_never_overlap(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    points = [(5.0 + 0.01 * i, 0.9 + 0.0005 * (i % 3)) for i in range(12)]
    ax.scatter(*zip(*points))
    fig.tight_layout()
    notes = place_labels(ax, points, [f"int8-variant-{i} t2" for i in range(12)])
    boxes = [label_box(note) for note in notes]
    assert len(boxes) == 12 and all(note.axes is ax for note in notes)  # every label drawn, none removed
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    plt.close(fig)


def _capture_axes(monkeypatch) -> list:
    """Run pareto_plot's label placement as usual, keeping its axes to look at afterwards."""
    seen = []

    def placed(ax, points, labels):
        notes = place_labels(ax, points, labels)
        seen.append((ax, labels, [label_box(note) for note in notes]))  # before the figure is closed
        return notes

    monkeypatch.setattr(render, "place_labels", placed)
    return seen


def test_pareto_plot_frontier_skips_points_over_budget_and_draws_the_budget(tmp_path, monkeypatch):
    seen = _capture_axes(monkeypatch)
    points = [ParetoPoint(1.0, 0.80, "a"), ParetoPoint(2.0, 0.95, "over", eligible=False),
              ParetoPoint(3.0, 0.90, "b"), ParetoPoint(4.0, 0.85, "dominated")]
    assert render.pareto_plot(points, tmp_path / "p.png", "t", xlabel="x", ylabel="y", budget_ms=3.5)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax, labels, boxes = seen[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["Pareto frontier"].get_xdata()) == [1.0, 3.0]  # not the over-budget or the dominated one
    assert list(lines["budget p90 3.5 ms"].get_xdata()) == [3.5, 3.5]
    assert labels == ["a", "over", "b", "dominated"]
    assert len(boxes) == 4 and not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert not render.pareto_plot([], tmp_path / "none.png", "t", xlabel="x", ylabel="y")
    assert not (tmp_path / "none.png").exists()


def _bench_row(variant: str, p90: float, accuracy: float, size: int) -> BenchRow:
    return BenchRow(variant=variant, path=f"{variant}.tflite", size=size, accuracy=accuracy,
                    ran=Placement(device="pi", runtime="tflite_runtime", runtime_version="2.14", delegate="cpu",
                                  threads=1),
                    latency_ms=LatencyStats(n=5, mean=p90, p50=p90, p90=p90, p99=p90, min=p90, max=p90))


def test_bench_results_are_plotted_by_the_one_pareto_plot(tmp_path, monkeypatch):
    from edgekit.bench.report import write_results

    seen = _capture_axes(monkeypatch)
    rows = [_bench_row("float32", 10.0, 0.95, 4000), _bench_row("int8", 2.0, 0.94, 1000)]
    result = SimpleNamespace(rows=rows, partial=False, device={})
    write_results(tmp_path, "pi", result, {"runs": 5}, [])
    assert seen and seen[0][1] == ["float32 t1", "int8 t1"]
    assert (tmp_path / "pareto.png").is_file()
    csv_rows = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
    assert [r["p90"] for r in csv_rows] == ["10.0", "2.0"]
    assert json.loads((tmp_path / "results.json").read_text())["rows"][1]["variant"] == "int8"


def test_fixed_line_puts_figures_flush_right_in_the_columns_asked():
    assert fixed_line(["cam-1", 0.5, "-"], [6, 6, 4], "  ", right={1, 2}) == "cam-1      0.5     -"


def test_rollout_summary_fits_the_terminal_and_marks_what_it_cut():
    from edgekit.fleet.rollout_manifest import summary_text

    manifest = {"id": "r1", "state": "shadow", "reason": "", "devices": {
        "a-very-long-device-name": {"wave": "canary", "state": "rolled-back", "error": "x " * 60,
                                    "gate": {"agreement": 0.99876, "rows": 1234, "errors": 0, "p90_ms": 0.5}}}}
    lines = summary_text(manifest).splitlines()
    assert all(len(line) <= 100 for line in lines)
    assert lines[1].startswith("a-very-long-dev…  canary") and lines[1].endswith("…")
    assert "  0.999   1234     0    0.500  " in lines[1]  # figures flush right; latency as every table shows ms


def test_csv_and_label_placement_live_only_in_render():
    """One CSV writer and one Pareto plot: no other module grows its own copy again."""
    from pathlib import Path

    import edgekit

    root = Path(edgekit.__file__).parent
    for path in root.rglob("*.py"):
        if path.name == "render.py" or "resources" in path.parts:
            continue
        text = path.read_text()
        assert not re.search(r"^\s*import csv\b", text, re.M), path
        assert "def place_labels" not in text and ".annotate(" not in text, path
