"""The one rule of pslora's name -> declaration tables (methods, loss terms, merges, data sources): a name is
registered once. A leaf: it imports nothing of pslora's."""

from __future__ import annotations

from typing import Iterable


def register_into(table: dict, items: Iterable, what: str) -> None:
    """Add each item under its `.name`; a ValueError naming it where the name is taken."""
    for item in items:
        if item.name in table:
            raise ValueError(f"{what} {item.name!r} is registered twice")
        table[item.name] = item
