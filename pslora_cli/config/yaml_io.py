"""Reading a sequence: YAML (safe loader, YAML 1.2 numbers), line numbers of every key path, `--set` overrides."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError


class _SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no Python objects, ever), reading 1e-3 as a number as YAML 1.2 does."""


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_yaml(text: str, file: str) -> Any:
    try:
        _refuse_recursion(yaml.compose(text, Loader=_SafeLoader), file)
        return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise InputError(f"{file}: {at}invalid YAML: {problem}") from None


MAX_VALUES = 1_000_000  # values a sequence file may expand to through aliases (a task list is a few thousand)


def _refuse_recursion(root, file: str) -> None:
    """Refuse a node that contains itself (an alias inside its own anchor, e.g. `a: &x [*x]`), and aliases that
    expand to more than MAX_VALUES values (an alias bomb): neither can be a setting."""
    sizes: dict[int, int] = {}  # expanded size of each node walked: an alias used many times is walked once

    def size(node, ancestors: tuple) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if any(node is a for a in ancestors):
            raise InputError(f"{file}: line {node.start_mark.line + 1}: a YAML alias refers to a value that contains "
                             f"it (a recursive alias); write the value out")
        if isinstance(node, yaml.MappingNode):
            _refuse_duplicate_keys(node, file)
        children = [v for pair in node.value for v in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        sizes[id(node)] = 1 + sum(size(child, ancestors + (node,)) for child in children)
        if sizes[id(node)] > MAX_VALUES:
            raise InputError(f"{file}: line {node.start_mark.line + 1}: aliases expand this value to more than "
                             f"{MAX_VALUES:,} values; write it out")
        return sizes[id(node)]

    if root is not None:
        size(root, ())


def _refuse_duplicate_keys(node: yaml.MappingNode, file: str) -> None:
    """A key given twice in one mapping: YAML loaders keep the later silently (a second `training:` block replaced
    the first and set a run off for 99,999 steps); refused, naming both lines."""
    seen: dict[str, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        line = key_node.start_mark.line + 1
        if key_node.value in seen:
            raise InputError(f"{file}: line {line}: key {key_node.value!r} is given twice in one mapping (lines "
                             f"{seen[key_node.value]} and {line}); keep one")
        seen[key_node.value] = line


def line_map(text: str) -> dict[str, int]:
    """key path -> 1-based line number, from YAML's node marks (list items by position)."""
    lines: dict[str, int] = {}
    walked: set[int] = set()  # an aliased node is walked at its first place only (no blow-up on alias bombs)

    def walk(node, path: str) -> None:
        if id(node) in walked:
            return
        walked.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                sub = f"{path}.{key_node.value}" if path else str(key_node.value)
                lines[sub] = key_node.start_mark.line + 1
                walk(value_node, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                sub = f"{path}[{i}]"
                lines[sub] = item.start_mark.line + 1
                walk(item, sub)

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, "")
    return lines


def apply_overrides(raw: dict, overrides: list[str], file: str) -> dict:
    """Apply `--set key.path=value` overrides; the value is parsed as YAML (so 0.5, true, [a, b] work).

    Lists are indexed by position (`tasks.0.data.train_per_class=50`) or, for tasks, by id
    (`tasks.t2.data.train_per_class=50`).
    """
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise InputError(f"--set {item!r}: expected key.path=value")
        path, value_text = item.split("=", 1)
        parts = path.strip().split(".")
        if not path.strip() or any(not p for p in parts):
            raise InputError(f"--set {item!r}: empty key in {path!r}")
        _set_path(raw, parts, parse_yaml(value_text, f"--set {path}"), path, file)
    return raw


def _set_path(node: Any, parts: list[str], value: Any, path: str, file: str) -> None:
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            index = _list_index(node, part)
            if index is None:
                raise InputError(f"--set {path}: no list item {part!r} at {'.'.join(parts[: i + 1])} in {file}")
            if last:
                node[index] = value
            node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            elif node.get(part) is None:
                node[part] = {}
            node = node[part]
        else:
            raise InputError(f"--set {path}: {'.'.join(parts[:i])} is not a mapping or list in {file}")


def _list_index(items: list, key: str) -> int | None:
    if key.isdigit():
        return int(key) if int(key) < len(items) else None
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("id") == key:
            return i
    return None


def read_sequence_file(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: sequence file not found")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read sequence file: {exc}") from None
