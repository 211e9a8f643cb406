"""The one place a merge's name is checked and its options resolved, for every caller: the sequence (config),
`pslora merge` (a store's tasks or adapters from anywhere), export and serving, the API. The options are the ones
the merge declares (core/merges: MergeOption, typed, with its default and range); one error message each."""

from __future__ import annotations

from .core.merges import MERGES, MergeInfo
from .errors import InputError


def check_merge_name(method: str, key: str = "--method", allowed: tuple[str, ...] | None = None) -> MergeInfo:
    """The merge named `method`, or the InputError every caller gives for an unknown name."""
    allowed = tuple(MERGES) if allowed is None else allowed
    if method not in allowed:
        raise InputError(f"{key} {method!r}: expected one of {', '.join(allowed)}")
    return MERGES[method]


def resolve_options(method: str, given: dict | None = None, keys: dict[str, str] | None = None) -> dict:
    """Each option the merge named `method` declares, from `given` (keyword -> value; None or absent: its default),
    checked against its range; an InputError names `keys[option]` (default: method.<its setting>)."""
    info = check_merge_name(method, keys.get("method", "--method") if keys else "--method")
    given, keys = given or {}, keys or {}
    declared = {p.name: p for p in info.parameters}
    # an option given for another merge is still checked against its declaration (a bad value is bad input)
    others = {p.name: p for m in MERGES.values() for p in m.parameters if p.name not in declared}
    out = {}
    for name, p in {**others, **declared}.items():
        if name not in declared and given.get(name) is None:
            continue
        value = p.default if given.get(name) is None else given[name]
        if not p.valid(value):
            raise InputError(f"{keys.get(name, f'method.{p.setting}')} {value!r}: {p.help}; give {p.allowed}")
        if name in declared:
            out[name] = float(value)
    return out
