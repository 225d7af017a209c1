"""Rendering a data check: Markdown for people, and contact sheets, because people would rather look.

Each duplicate group is one row of thumbnails (pages of `GROUPS_PER_SHEET` rows); flagged images and
likely label errors get grids with a caption under each thumbnail.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.artifacts import atomic_path
from edgekit.render import markdown_table

THUMB = 96
CAPTION = 26
GROUPS_PER_SHEET = 20
ROW_LIMIT = 8  # thumbnails shown per group row; the rest is counted in the caption
MAX_SHEETS = 25  # a folder with thousands of groups gets its first pages; the JSON lists them all
LISTED = 30  # rows per Markdown table


def _thumb(path: Path):
    from PIL import Image

    canvas = Image.new("RGB", (THUMB, THUMB), (235, 235, 235))
    try:
        with Image.open(path) as image:
            image.draft("RGB", (THUMB, THUMB))
            image = image.convert("RGB")
            scale = THUMB / max(image.size)  # small images are enlarged too: a 32 px digit should be seen
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
            canvas.paste(image, ((THUMB - image.width) // 2, (THUMB - image.height) // 2))
    except Exception:  # unreadable files are flagged; their tile stays grey with the caption
        pass
    return canvas


def _sheet(rows: list[list[tuple[Path, str]]], target: Path) -> None:
    """Rows of (image, caption) tiles written as one PNG."""
    from PIL import Image, ImageDraw

    columns = max(len(row) for row in rows)
    sheet = Image.new("RGB", (columns * (THUMB + 4) + 4, len(rows) * (THUMB + CAPTION + 6) + 4), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        for c, (path, caption) in enumerate(row):
            x, y = 4 + c * (THUMB + 4), 4 + r * (THUMB + CAPTION + 6)
            sheet.paste(_thumb(path), (x, y))
            for line_no, line in enumerate(caption.split("\n")[:2]):
                draw.text((x, y + THUMB + 2 + 12 * line_no), line[:16], fill=(0, 0, 0))
    with atomic_path(target) as tmp:
        sheet.save(tmp, format="PNG")


def _grid(tiles: list[tuple[Path, str]], columns: int = 10) -> list[list[tuple[Path, str]]]:
    return [tiles[i:i + columns] for i in range(0, len(tiles), columns)]


def contact_sheets(report: dict, out_dir: Path) -> list[str]:
    """Write the sheets under out_dir/sheets/; returns their paths relative to out_dir."""
    root = Path(report["data"])
    written = []
    groups = sorted(report["duplicates"]["groups"], key=lambda g: (not g["leak"], not g["label_conflict"]))
    for page in range(min(MAX_SHEETS, -(-len(groups) // GROUPS_PER_SHEET))):
        rows = []
        for group in groups[page * GROUPS_PER_SHEET:(page + 1) * GROUPS_PER_SHEET]:
            members = group["members"]
            row = [(root / m["path"], f"{m['split']}/{m['label']}\n{Path(m['path']).name}") for m in
                   members[:ROW_LIMIT]]
            if len(members) > ROW_LIMIT:
                row[-1] = (row[-1][0], f"+{len(members) - ROW_LIMIT + 1} more")
            rows.append(row)
        name = f"sheets/duplicates-{page + 1:02d}.png"
        _sheet(rows, out_dir / name)
        written.append(name)
    flagged = [(root / f["path"], f"{f['label']}\n{f['reasons'][0]}") for f in report["flagged"][:200]]
    flagged += [(root / u["path"], f"unreadable\n{Path(u['path']).name}") for u in report["unreadable"][:100]]
    if flagged:
        _sheet(_grid(flagged), out_dir / "sheets/flagged.png")
        written.append("sheets/flagged.png")
    labels = report["label_errors"]
    tiles = [(root / i["path"], f"{i['folder_label']} -> {i['suggested_label']}\n{Path(i['path']).name}")
             for i in labels.get("issues", [])[:200]]
    tiles += [(root / d["path"], f"{d['folder_label']} -> {d['device_label']}\ndevice")
              for d in labels["device"]["contradictions"][:100]]
    if tiles:
        _sheet(_grid(tiles), out_dir / "sheets/label-errors.png")
        written.append("sheets/label-errors.png")
    return written


def _more(items: list) -> str:
    return f"\n\n… and {len(items) - LISTED} more in report.json" if len(items) > LISTED else ""


def summary_lines(report: dict) -> list[str]:
    """The one-screen summary the CLI prints."""
    dup, leak, labels = report["duplicates"], report["leakage"], report["label_errors"]
    lines = [
        f"{report['n_images']} images, {len(report['labels'])} classes ({', '.join(report['layout'])}); "
        f"{len(report['unreadable'])} unreadable",
        f"duplicates: {dup['exact_groups']} exact and {dup['near_groups']} near groups, "
        f"{dup['redundant_images']} redundant images, {dup['label_conflicts']} with conflicting labels",
        f"leakage: {leak['groups']} groups span splits; held-out images with a training copy: "
        f"{leak['held_out_images_with_a_train_copy'] or 'none'}",
        f"balance: imbalance ratio {report['balance']['imbalance_ratio']}"
        f"{' (imbalanced)' if report['balance']['imbalanced'] else ''}; greyscale share "
        f"{report['grayscale_share']:.0%}; {len(report['flagged'])} flagged (tiny, huge, odd aspect)",
        f"device corrections contradicting the folder: {len(labels['device']['contradictions'])} "
        f"(of {labels['device']['corrections']} corrections in {labels['device']['imports']} imports)",
    ]
    if "issues" in labels:
        lines.append(f"likely label errors: {len(labels['issues'])} ({labels['method']['probabilities']})")
    return lines


def markdown(report: dict) -> str:
    dup, labels = report["duplicates"], report["label_errors"]
    parts = [f"# Data check: {report['data']}", "\n".join(f"- {line}" for line in summary_lines(report))]
    balance = report["balance"]
    parts += ["## Class counts", markdown_table(["class", *balance["counts"], "total"], [
        [label, *[c[label] for c in balance["counts"].values()], balance["total"][label]]
        for label in report["labels"]])]
    groups = sorted(dup["groups"], key=lambda g: (not g["leak"], not g["label_conflict"]))
    parts += [f"## Duplicate groups ({dup['method']})", markdown_table(
        ["kind", "leak", "labels differ", "members"],
        [[g["kind"], "yes" if g["leak"] else "", "yes" if g["label_conflict"] else "",
          "<br>".join(f"{m['split']}: {m['path']}" for m in g["members"][:6])] for g in groups[:LISTED]])
        + _more(groups)]
    parts += ["## Flagged images", markdown_table(["file", "label", "why"], [
        [f["path"], f["label"], ", ".join(f["reasons"])] for f in report["flagged"][:LISTED]])
        + _more(report["flagged"])]
    parts += ["## Unreadable (skipped by `train`)", markdown_table(["file", "why"], [
        [u["path"], u["reason"]] for u in report["unreadable"][:LISTED]]) + _more(report["unreadable"])]
    if "issues" in labels:
        parts += [f"## Likely label errors ({labels['method']['probabilities']}, {labels['method']['library']})",
                  markdown_table(["file", "folder label", "suggested", "p(folder label)"], [
                      [i["path"], i["folder_label"], i["suggested_label"], i["given_probability"]]
                      for i in labels["issues"][:LISTED]]) + _more(labels["issues"])]
    fixes = labels["device"]["contradictions"]
    parts += ["## Device corrections that contradict the folder", markdown_table(
        ["file", "folder label", "device says", "import", "match"],
        [[d["path"], d["folder_label"], d["device_label"], d["import"], d["match"]] for d in fixes[:LISTED]])
        + _more(fixes)]
    if report.get("sheets"):
        parts += ["## Contact sheets", "\n".join(f"- ![{s}]({s})" for s in report["sheets"])]
    return "\n\n".join(parts) + "\n"
