"""Task sequences: typed settings (schema.py), the one validator (validate.py), YAML and `--set` (yaml_io.py).

    load_sequence(path, overrides)      -> (Sequence, YAML text)
    sequence_from_text(text, file, ...) -> Sequence
    sequence_from_stored(dict, ...)     -> Sequence (a store's recorded form, validated again)
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..hashing import canonical_hash
from .schema import IDENTITY_KEYS, Backbone, Lora, Method, Sequence, Task, Training
from .validate import stored_form, validate_sequence
from .yaml_io import apply_overrides, line_map, parse_yaml, read_sequence_file

__all__ = ["IDENTITY_KEYS", "Backbone", "Lora", "Method", "Sequence", "Task", "Training", "apply_overrides",
           "canonical_hash", "identity_hash", "load_sequence", "parse_yaml", "sequence_from_stored",
           "sequence_from_text", "validate_sequence"]


def load_sequence(path: str | Path, overrides: list[str] | None = None, base_dir: Path | None = None,
                  also_merges: tuple[str, ...] = ()) -> tuple[Sequence, str]:
    """Read, override and validate a sequence file. Returns (sequence, raw YAML text). also_merges: the merges a
    command runs besides the sequence's, whose options the overrides may set."""
    text = read_sequence_file(path)
    return sequence_from_text(text, str(path), base_dir or Path(path).parent, overrides, also_merges), text


def sequence_from_text(text: str, file: str, base_dir: Path, overrides: list[str] | None = None,
                       also_merges: tuple[str, ...] = ()) -> Sequence:
    raw = parse_yaml(text, file)
    if not isinstance(raw, dict):
        raise InputError(f"{file}: expected a mapping at the top level (name, backbone, tasks, ...)")
    if overrides:
        raw = apply_overrides(raw, overrides, file)
    return validate_sequence(raw, file, base_dir, line_map(text), also_merges)


def sequence_from_stored(stored: dict, file: str, overrides: list[str] | None = None,
                         also_merges: tuple[str, ...] = ()) -> Sequence:
    """The sequence a store recorded (Sequence.to_dict), with `--set` overrides applied (also_merges: merges the
    command runs besides the sequence's, whose options the overrides may set)."""
    raw = stored_form(stored)
    if overrides:
        raw = apply_overrides(raw, overrides, file)
    return validate_sequence(raw, file, Path(stored.get("base_dir", ".")), also_merges=also_merges)


def identity_hash(seq: Sequence) -> str:
    """Hash of what defines a store's contents (backbone, LoRA, scenario, tasks and their data)."""
    return canonical_hash(seq.section(*IDENTITY_KEYS))
