"""Strict YAML reading for every file a user writes (recipes, device profiles, search spaces).

PyYAML quietly keeps the last of two equal keys and raises deep exceptions on bad bytes; a user's file
deserves one line naming the file, the line and the fix instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from edgekit.errors import EdgekitError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_yaml_text(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise EdgekitError(f"{where}: not valid YAML{line} ({problem}); fix the file") from None


def load_yaml_file(path: Path, what: str = "file") -> Any:
    """Parse a UTF-8 YAML file; unreadable, undecodable or invalid files are one line naming the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise EdgekitError(f"{path}: cannot read {what} ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EdgekitError(f"{path}: {what} is not UTF-8 text (bad byte at offset {exc.start}); save it as "
                           "UTF-8") from None
    return load_yaml_text(text, str(path))
