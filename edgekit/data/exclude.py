"""Exclusion lists: what `data check --write-exclusions` writes and `train --exclude` reads.

Acting on a check never touches the user's files; the list says which files to leave out, and the
run records the list (path, sha256, counts) in its dataset lineage. One path per line, relative to the
data folder or absolute; a tab followed by `#` starts the reason, lines starting with `#` are comments.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from edgekit.artifacts import sha256_file, utc_now, write_text_atomic
from edgekit.data.types import ScannedFolder
from edgekit.errors import EdgekitError

log = logging.getLogger(__name__)


@dataclass
class Exclusions:
    """The resolved paths an exclusion list names, and the lineage record of applying it."""

    path: Path
    paths: set[str]
    record: dict

    @classmethod
    def read(cls, file: str | Path, root: Path) -> Exclusions:
        file = Path(file).expanduser()
        if not file.is_file():
            raise EdgekitError(f"{file}: no such exclusion list; write one with "
                               "`edgekit data check DIR --write-exclusions FILE`")
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise EdgekitError(f"{file}: cannot read the exclusion list ({exc}); pass a UTF-8 text file") from None
        entries = [line.split("\t#")[0].strip() for line in lines if line.strip() and not line.startswith("#")]
        paths = {str((Path(root) / entry).expanduser().resolve()) for entry in entries}
        record = {"path": str(file.resolve()), "sha256": sha256_file(file), "listed": len(paths), "excluded": 0}
        return cls(file, paths, record)

    def apply(self, scan: ScannedFolder) -> ScannedFolder:
        """A copy of `scan` without the listed files; a class left empty is an error."""
        keep = [i for i, p in enumerate(scan.paths) if str(Path(p).resolve()) not in self.paths]
        removed = len(scan.paths) - len(keep)
        self.record["excluded"] += removed
        targets = [scan.targets[i] for i in keep]
        for index, label in enumerate(scan.labels):
            if index in scan.targets and index not in targets:
                raise EdgekitError(f"{self.path}: excludes every image of class {label!r}; remove some of its "
                                   "lines or the class folder")
        return dataclasses.replace(scan, paths=[scan.paths[i] for i in keep], targets=targets,
                                   tf_decodable=[scan.tf_decodable[i] for i in keep])

    def warn_unmatched(self) -> None:
        unmatched = self.record["listed"] - self.record["excluded"]
        if unmatched:
            log.warning("%s: %d listed file(s) are not in the dataset (moved, renamed or already unreadable)",
                        self.path, unmatched)


def write_exclusions(target: Path, root: Path, entries: list[tuple[str, str]]) -> int:
    """Write `(path, reason)` entries, paths relative to `root` where possible; returns how many."""
    root = Path(root).resolve()
    seen: dict[str, str] = {}
    for path, reason in entries:
        resolved = Path(path).resolve()
        shown = str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)
        seen.setdefault(shown, reason)
    header = [f"# edgekit exclusion list for {root}, written {utc_now()} by `edgekit data check`",
              "# use: edgekit train --data DIR --exclude THIS_FILE (your files are never changed)",
              "# one path per line, relative to the data folder; text after a tab and # is the reason"]
    body = [f"{path}\t# {reason}" for path, reason in sorted(seen.items())]
    write_text_atomic(Path(target), "\n".join(header + body) + "\n")
    return len(seen)
