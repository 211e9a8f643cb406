"""Text templates of tabular sources (`text_template`: columns written into one text with {column} placeholders)
and how a cell becomes text."""

from __future__ import annotations

import math
import string
from dataclasses import dataclass

from pslora_cli.errors import InputError

@dataclass(frozen=True)
class TextTemplates:
    """A source's text template(s), parsed into (literal, column or None) pieces. A row's text is the first template
    all of whose columns hold text (not empty, not missing), or the last template if none does: a list of templates
    is how a text leaves out a part whose column is empty (e.g. Yahoo's question body)."""

    pieces: tuple[tuple[tuple[str, str | None], ...], ...]

    @property
    def columns(self) -> list[str]:
        """Every column the templates read, in order of first use."""
        return list(dict.fromkeys(c for t in self.pieces for _, c in t if c is not None))

    def render(self, values: dict[str, str]) -> str:
        """The text of one row; `values` maps each column to its text ("" for a missing value)."""
        chosen = next((t for t in self.pieces if all(values[c] for _, c in t if c is not None)), self.pieces[-1])
        return "".join(literal + (values[c] if c is not None else "") for literal, c in chosen)


def _parse_template(template, where: str) -> tuple[tuple[str, str | None], ...]:
    if not isinstance(template, str) or not template:
        raise InputError(f"{where}: expected a non-empty template string")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InputError(f"{where}: not a valid template ({exc}); write literal braces as {{{{ and }}}}") from None
    pieces = []
    for literal, name, spec, conversion in parsed:
        if name is not None and (not name.strip() or name.isdigit() or conversion or spec
                                 or any(ch in name for ch in ".[]")):
            shown = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise InputError(f"{where}: {{{shown}}} is not a column placeholder (write {{column}}; "
                             f"literal braces as {{{{ and }}}})")
        pieces.append((literal, name))
    if all(name is None for _, name in pieces):
        raise InputError(f"{where}: the template names no column (write {{column}} for a column's text)")
    return tuple(pieces)


def parse_text_templates(value, where: str) -> TextTemplates:
    """`text_template` (a string or a non-empty list of strings) parsed; an InputError naming `where` otherwise."""
    if isinstance(value, list):
        if not value:
            raise InputError(f"{where}: expected a template or a non-empty list of templates")
        return TextTemplates(tuple(_parse_template(t, f"{where}[{i}]") for i, t in enumerate(value)))
    return TextTemplates((_parse_template(value, where),))


def check_text_template(given: dict, filled: dict, where: str) -> None:
    """A source that gives `text_template`: the template checked, and not with `text_column` (whose default is then
    dropped from the filled mapping, so that filling it again is the same)."""
    if "text_column" in given:
        raise InputError(f"{where}.text_template: give either text_column or text_template, not both")
    filled.pop("text_column", None)
    parse_text_templates(filled["text_template"], f"{where}.text_template")


def cell_text(value) -> str | None:
    """A table cell as text for a template: missing values as "", numbers and booleans written out; None for a
    value that is no single cell (a list, a mapping)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()  # numpy scalar
        except (TypeError, ValueError):
            return None
        if isinstance(value, float) and math.isnan(value):
            return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return str(value)
    return None
