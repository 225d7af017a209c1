"""How edgekit shows figures: number formatting, terminal and Markdown tables, CSV, and the Pareto plot.

One module so that a latency, a size or a table looks the same whichever command prints it; the commands
decide what goes in a table, this module decides how it looks.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgekit.artifacts import atomic_path

TERMINAL_WIDTH = 100  # what tables printed to a terminal fit by default; `--wide` and files show all
MISSING = "-"


def fmt(value, spec: str = ".2f", unit: str = "") -> str:
    """One figure as text, `-` when it is missing; `unit` is appended ("x", " s").

    `spec` is a format spec (".4f", ".0%", "d") or one of:
    - "ms": milliseconds with 3 decimals under 1 ms, 2 above (a 20 µs model and a 200 ms one both read);
    - "size": bytes as B/KiB/MiB/GiB; "size-short": B/K/M/G, for narrow columns;
    - "rate": one decimal under 10, none above;
    - "pt": a difference of two fractions (accuracies) in percentage points, signed.
    """
    if value is None:
        return MISSING
    if spec == "ms":
        text = format(value, ".3f" if value < 1 else ".2f")
    elif spec in ("size", "size-short"):
        text = _size(value, ("B", "KiB", "MiB", "GiB") if spec == "size" else ("B", "K", "M", "G"),
                     " " if spec == "size" else "")
    elif spec == "rate":
        text = format(value, ".0f" if value >= 10 else ".1f")
    elif spec == "pt":
        text = f"{value * 100:+.1f} pt"
    else:
        text = format(value, spec)
    return text + unit


def _size(n: float, units: tuple[str, ...], space: str) -> str:
    for unit in units:
        if abs(n) < 1024 or unit == units[-1]:
            return f"{n:.0f}{space}{unit}" if unit == "B" else f"{n:.1f}{space}{unit}"
        n /= 1024
    raise AssertionError("unreachable: the last unit always returns")


def clip(text: str, width: int) -> str:
    """`text` cut to `width` characters, the cut marked with "…"."""
    return text if len(text) <= width else text[: width - 1] + "…"


def fixed_line(cells: Sequence, widths: Sequence[int], sep: str = " ", right: Collection[int] = ()) -> str:
    """One line of a fixed-width terminal table: each cell clipped and padded to its column's width,
    flush left, or flush right for the column numbers in `right` (figures line up by their last digit)."""
    return sep.join(f"{clip(str(cell), width):{'>' if i in right else '<'}{width}}"
                    for i, (cell, width) in enumerate(zip(cells, widths)))


def _table_width(headers: list[str], cells: list[list[str]]) -> int:
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    return sum(widths) + 3 * len(widths) + 1


def fit_table(headers: list[str], cells: list[list[str]], width: int, drop: tuple[str, ...] = (),
              min_text: int = 12, keep: tuple[str, ...] = ()) -> tuple[list[str], list[list[str]], list[str]]:
    """Make a table fit `width` columns: drop the `drop` columns in that order, then shorten the widest
    cells (text gets a trailing "…") down to `min_text`, never those in `keep`. Returns headers, cells and
    the dropped names."""
    hidden = []
    for name in drop:
        if _table_width(headers, cells) <= width:
            break
        if name in headers:
            i = headers.index(name)
            headers = headers[:i] + headers[i + 1:]
            cells = [row[:i] + row[i + 1:] for row in cells]
            hidden.append(name)
    while cells and _table_width(headers, cells) > width:
        widths = [0 if headers[i] in keep else max(len(r[i]) for r in cells) for i in range(len(headers))]
        i = max(range(len(headers)), key=lambda k: widths[k])
        limit = max(min_text, len(headers[i]), widths[i] - (_table_width(headers, cells) - width))
        if limit >= widths[i]:
            break  # nothing left to shorten: the table stays wider than asked
        cells = [[clip(c, limit) if k == i else c for k, c in enumerate(row)] for row in cells]
    return headers, cells, hidden


def _cell(value) -> str:
    """A Markdown cell: a `|` or a line break inside it would end the cell or the row."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: list[str], rows: list[list], width: int | None = None,
                   drop: tuple[str, ...] = (), keep: tuple[str, ...] = ()) -> str:
    """A GitHub-style Markdown table, padded so that it also reads as plain text in a terminal.

    With `width` (a terminal), the `drop` columns go first and long cells are shortened, and a last line
    says what was hidden; the full table belongs in files and `--wide`."""
    cells = [[_cell(c) for c in row] for row in rows]
    hidden: list[str] = []
    if width is not None:
        headers, cells, hidden = fit_table(list(headers), cells, width, drop, keep=keep)
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    if hidden:
        lines.append(f"(--wide adds {', '.join(hidden)})")
    return "\n".join(lines)


def spill_table(rows: list[Mapping], width: int | None) -> list[str]:
    """An aligned table of `rows` (the first key names the row), indented two spaces. With `width`, the
    longest columns move under it as `name column: value` lines until it fits: nothing is cut short, so an
    install command or an error stays whole and pasteable (`doctor`). Booleans read yes/no, None "-"."""
    def cell(value) -> str:
        if isinstance(value, bool):
            return "yes" if value else "no"
        return "-" if value is None or value == "" else str(value)

    headers = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[cell(row.get(h)) for h in headers] for row in rows]
    hidden: list[str] = []
    if width is not None:
        longest = sorted(headers[1:], key=lambda h: -max(len(row[headers.index(h)]) for row in cells))
        _, _, hidden = fit_table(headers, cells, width - 2, drop=tuple(longest), keep=tuple(headers))
    shown = [i for i, h in enumerate(headers) if h not in hidden]
    widths = {i: max(len(headers[i]), *(len(row[i]) for row in cells)) for i in shown}
    lines = ["  " + " ".join(headers[i].ljust(widths[i]) for i in shown).rstrip()]
    lines += ["  " + " ".join(row[i].ljust(widths[i]) for i in shown).rstrip() for row in cells]
    for row in cells:
        lines += [f"  {row[0]} {headers[i]}: {row[i]}" for i, h in enumerate(headers) if h in hidden
                  and row[i] != "-"]
    return lines


def csv_text(fields: Sequence[str], rows: Iterable[Mapping | Sequence]) -> str:
    """CSV (as Python's csv module writes it) with a header line; a row is a mapping (keys not in
    `fields` are left out, missing ones are empty) or a sequence in the order of `fields`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(fields)
    for row in rows:
        writer.writerow([row.get(name) for name in fields] if isinstance(row, Mapping) else row)
    return buffer.getvalue()


@dataclass(frozen=True)
class ParetoPoint:
    """One measured model on the accuracy-vs-latency plot."""

    latency: float
    accuracy: float
    label: str
    size: float | None = None  # marker area grows with it (file size); None: all markers alike
    eligible: bool = True  # within budget: only these form the frontier; the others are drawn grey


def pareto_plot(points: list[ParetoPoint], target: Path, title: str, *, xlabel: str, ylabel: str,
                budget_ms: float | None = None) -> bool:
    """Write a PNG of accuracy against latency with the Pareto frontier of the eligible points, the
    latency budget as a vertical line, and every point labelled where its label overlaps no other.
    Returns False (and writes nothing) when there is no point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not points:
        return False
    largest = max((p.size for p in points if p.size), default=None)
    greyed = any(not p.eligible for p in points)
    fig, ax = plt.subplots(figsize=(7, 5))
    legend = {True: "within budget", False: "over budget"} if greyed else {}
    for point in points:
        area = 40 + 800 * point.size / largest if largest and point.size else 40
        colour = None if not greyed else "tab:blue" if point.eligible else "tab:gray"
        ax.scatter(point.latency, point.accuracy, s=area, alpha=0.6, color=colour,
                   label=legend.pop(point.eligible, None))
    frontier, best = [], float("-inf")
    for point in sorted(points, key=lambda p: (p.latency, p.accuracy)):
        if point.eligible and point.accuracy > best:
            frontier.append((point.latency, point.accuracy))
            best = point.accuracy
    if frontier:
        # a step: until the next frontier point, the best accuracy at that latency is the last one's
        ax.step(*zip(*frontier), where="post", color="gray", linestyle="--", linewidth=1, label="Pareto frontier")
    if budget_ms is not None:
        ax.axvline(budget_ms, color="tab:red", linewidth=1, label=f"budget p90 {budget_ms} ms")
    latencies = [p.latency for p in points] + ([budget_ms] if budget_ms is not None else [])
    if min(latencies) > 0 and max(latencies) / min(latencies) > 10:
        ax.set_xscale("log")  # one slow outlier must not squash every other point into a dot
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()  # before placing labels: it moves the axes, and with them every point
    place_labels(ax, [(p.latency, p.accuracy) for p in points], [p.label for p in points])
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return True


def place_labels(ax, points: list[tuple[float, float]], labels: list[str]) -> list:
    """Annotate each point where its label's text overlaps no label placed before it.

    Candidates are tried in a fixed order (eight directions, growing distance), so the layout is the
    same on every run; the text's drawn extent decides (not its leader line, which would make a crowded
    cluster unplaceable), so long labels and close points both work. Should every candidate overlap, the
    label goes to the first one rather than vanish.
    """
    renderer = ax.figure.canvas.get_renderer()
    placed, annotations = [], []
    directions = [(1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)]
    candidates = [(dx * distance, dy * distance) for distance in range(6, 6 + 12 * 40, 12) for dx, dy in directions]
    for (x, y), label in zip(points, labels):
        for tried, (dx, dy) in enumerate([*candidates, candidates[0]]):
            note = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=8,
                               ha="left" if dx >= 0 else "right", va="bottom" if dy >= 0 else "top",
                               arrowprops={"arrowstyle": "-", "color": "gray", "lw": 0.5})
            box = label_box(note, renderer)
            if tried == len(candidates) or not any(box.overlaps(other) for other in placed):
                break
            note.remove()
        placed.append(box)
        annotations.append(note)
    return annotations


def label_box(note, renderer=None):
    """Where an annotation's text is drawn, without its leader line (which may cross other labels)."""
    from matplotlib.text import Text

    renderer = renderer or note.figure.canvas.get_renderer()
    note.update_positions(renderer)
    return Text.get_window_extent(note, renderer)
