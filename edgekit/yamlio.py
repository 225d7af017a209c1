"""Strict, bounded YAML reading: the one loader for every YAML file edgekit reads.

Recipes, device profiles, search spaces (and any new kind of file, e.g. fleets) go through
`load_yaml_file(path, what)`. PyYAML quietly keeps the last of two equal keys, raises deep exceptions on
bad bytes, lets ~300 bytes of anchors and aliases expand to gigabytes ("billion laughs") and recurses
once per nesting level; a user's file, or one handed over by someone else, deserves one line naming the
file, the line and the fix instead, before any work starts.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import yaml

from edgekit.errors import EdgekitError

# Limits far above any file edgekit writes or ships (a few KB, a handful of levels, an anchor or two)
# and far below what hurts: a bigger file is refused, not parsed.
MAX_BYTES = 1 << 20  # file size read at most
MAX_DEPTH = 50  # nesting levels, counted through aliases
MAX_ALIASES = 100  # `*name` references in one file
MAX_NODES = 100_000  # values in the document once every alias is expanded


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that is too big to load (a limit above); the message says which limit."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice, and YAML over the limits above."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent, index):
        # Checked while composing: PyYAML recurses once per level, so a list 5,000 deep is a RecursionError.
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Refused(None, None, f"more than {MAX_ALIASES} aliases (*name); write the values out",
                               self.peek_event().start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(None, None, f"nested more than {MAX_DEPTH} levels deep",
                               self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        node = super().compose_document()
        _check_expanded(node)
        return node


def _check_expanded(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand past MAX_NODES values or MAX_DEPTH levels, or refer to
    themselves: a consumer that walks it (validation, printing, JSON) would walk every expanded copy."""
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) once expanded
    active: set[int] = set()

    def walk(node: yaml.Node) -> tuple[int, int]:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _Refused(None, None, "an alias refers to the value that contains it", node.start_mark)
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            children = []
        active.add(key)
        count, depth = 1, 0
        for child in children:
            child_count, child_depth = walk(child)
            count, depth = count + child_count, max(depth, child_depth)
            if count > MAX_NODES:
                raise _Refused(None, None, f"expands to more than {MAX_NODES:,} values (aliases of aliases?)",
                               node.start_mark)
        active.discard(key)
        if depth + 1 > MAX_DEPTH:
            raise _Refused(None, None, f"nested more than {MAX_DEPTH} levels deep once aliases are expanded",
                           node.start_mark)
        sizes[key] = (count, depth + 1)
        return sizes[key]

    if root is not None:
        walk(root)


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: merged keys may be overridden
            continue
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
        if isinstance(exc, _Refused):
            raise EdgekitError(f"{where}: YAML refused{line}: {problem}; edgekit reads small, plain files") from None
        raise EdgekitError(f"{where}: not valid YAML{line} ({problem}); fix the file") from None


def load_yaml_file(path: Path, what: str = "file", *, max_bytes: int = MAX_BYTES) -> Any:
    """Parse a UTF-8 YAML file of at most `max_bytes`; anything else is one line naming the file.

    Only regular files are read (a FIFO would block, /dev/zero never ends), and no more than the cap.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise EdgekitError(f"{path}: {what} is not a regular file; pass a .yaml file")
        with open(path, "rb") as stream:
            raw = stream.read(max_bytes + 1)
    except OSError as exc:
        raise EdgekitError(f"{path}: cannot read {what} ({exc.strerror})") from None
    if len(raw) > max_bytes:
        raise EdgekitError(f"{path}: {what} is larger than {max_bytes // 1024} KB; edgekit reads small YAML files"
                           " (is this the right file?)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EdgekitError(f"{path}: {what} is not UTF-8 text (bad byte at offset {exc.start}); save it as "
                           "UTF-8") from None
    return load_yaml_text(text, str(path))
