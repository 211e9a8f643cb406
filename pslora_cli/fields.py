"""How a setting is declared: a dataclass field carrying its validation rule and help text. A leaf (it imports
nothing of pslora's), so that the config's sections and the methods' own settings (methods/) declare settings
the same way without depending on each other."""

from __future__ import annotations

from dataclasses import field
from typing import Any

REQUIRED = object()
NUMBER = (int, float)
NO_LEGACY = object()


def setting(default: Any, types: tuple, *, choices: tuple | None = None, minimum: float | None = None,
            positive: bool = False, legacy: Any = NO_LEGACY, help: str = "") -> Any:
    """A dataclass field with its validation rule: allowed types, allowed values, lower bound, and its help text
    (docs/settings.md is generated from it: config/docs.py). `legacy`: for a field added after stores
    were written, the value those stores mean by its absence; the plain form (to_dict, which store identities hash)
    leaves the field out at that value, so that they keep their identity."""
    meta = {"types": types, "choices": choices, "minimum": minimum, "positive": positive,
            "required": default is REQUIRED, "legacy": legacy, "help": help}
    if default is REQUIRED:
        return field(metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)
