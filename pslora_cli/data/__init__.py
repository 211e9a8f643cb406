"""Data layer: turn a task's ``data:`` mapping into labelled train/test examples.

    validate_source(source, where)                          -> filled source dict (or InputError)
    load_task_data(source, *, seed, base_dir, where)        -> TaskData

Each source type is one record in ``SOURCES`` (data/sources.py): its keys (``fields``: key -> (expected python
type(s), default), the default ``REQUIRED`` for mandatory keys), loader, modality, allowed values, checks and
prompt; the text sources register in ``text_sources.py`` and ``cl_benchmark.py``, the image ones in
``image_sources.py``.
"""

from __future__ import annotations

import copy
import pathlib

from pslora_cli.data._common import ABSENT, REQUIRED, TaskData, compute_fingerprint
from pslora_cli.data.sources import SOURCES, Source, register_source
from pslora_cli.data.templates import check_text_template
from pslora_cli.errors import InputError

__all__ = ["REQUIRED", "SOURCES", "Source", "TaskData", "compute_fingerprint", "load_task_data",
           "prompt_defaults", "register_source", "source_modality", "validate_source"]

# The source modules register their records (data/sources.py) when imported: text, then images.
from pslora_cli.data import text_sources, image_sources  # noqa: E402,F401,I001


def source_modality(source: dict) -> str:
    """"image" or "text": what a (validated) ``data:`` mapping yields, without loading it."""
    return SOURCES[source["type"]].modality if source.get("type") in SOURCES else "text"


_NoneType = type(None)


def _type_name(types) -> str:
    names = {bool: "bool", int: "int", float: "number", str: "string", list: "list", dict: "mapping",
             _NoneType: "null"}
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(names.get(t, t.__name__) for t in types)


def _describe(value) -> str:
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{_type_name(type(value))} {text}"


def _type_ok(value, types) -> bool:
    types = types if isinstance(types, tuple) else (types,)
    for t in types:
        if t is _NoneType and value is None:
            return True
        if isinstance(value, bool):
            if t is bool:
                return True
            continue  # bool is not an int (nor a float)
        if t is float and isinstance(value, (int, float)):
            return True
        if t is not _NoneType and t is not float and isinstance(value, t):
            return True
    return False


def validate_source(source: dict, where: str) -> dict:
    """Check a task's ``data:`` mapping and return a copy with defaults filled in.

    Checks: ``type`` is a known source type; no unknown keys; each value has the schema's type (bool is not
    an int, an int is accepted where a number is expected and becomes a float, null is accepted where the
    default is null); required keys are present; plus value checks (``pos``, ``format``, positive caps,
    ``0 < test_fraction < 1``, ``classes`` a non-empty list of distinct names, known names for the
    fixed-vocabulary sources). Errors are InputErrors naming ``f"{where}.{key}"``.
    """
    if not isinstance(source, dict):
        raise InputError(f"{where}: expected a mapping with a 'type' key, got {_describe(source)}")
    known_types = ", ".join(SOURCES)
    if "type" not in source:
        raise InputError(f"{where}.type: missing (known types: {known_types})")
    kind = source["type"]
    if not isinstance(kind, str) or kind not in SOURCES:
        raise InputError(f"{where}.type: unknown data source type {kind!r} (known types: {known_types})")
    schema = SOURCES[kind].fields
    for key in source:
        if key != "type" and key not in schema:
            raise InputError(f"{where}.{key}: unknown key for data type '{kind}' "
                             f"(allowed: type, {', '.join(schema)})")
    out = {"type": kind}
    for key, (types, default) in schema.items():
        if default is ABSENT and source.get(key) is None:
            continue  # a field added later, left out unless given: older sources keep their filled form
        if key not in source:
            if default is REQUIRED:
                raise InputError(f"{where}.{key}: required for data type '{kind}' (expected {_type_name(types)})")
            out[key] = copy.deepcopy(default)
            continue
        value = source[key]
        if not (_type_ok(value, types) or (value is None and default is None)):
            raise InputError(f"{where}.{key}: expected {_type_name(types)}, got {_describe(value)}")
        if isinstance(value, int) and not isinstance(value, bool) and _type_ok(value, float) \
                and float in (types if isinstance(types, tuple) else (types,)):
            value = float(value)
        out[key] = copy.deepcopy(value)
    if "text_template" in out:
        check_text_template(source, out, where)
    _check_values(out, SOURCES[kind], where)
    if SOURCES[kind].check is not None:
        SOURCES[kind].check(out, where)
    return out


def _check_values(src: dict, record: Source, where: str) -> None:
    """The checks every source shares, by key (caps, fractions, non-empty names, a list of distinct classes), and
    the record's allowed values; the record's own check runs after."""
    for key, allowed in record.choices.items():
        if src.get(key) is not None and src[key] not in allowed:
            raise InputError(f"{where}.{key}: {src[key]!r} is not one of {', '.join(allowed)}")
    for key in ("train_per_class", "test_per_class"):
        if src.get(key) is not None and src[key] < 1:
            raise InputError(f"{where}.{key}: must be at least 1, got {src[key]}")
    if "test_fraction" in src and not 0.0 < src["test_fraction"] < 1.0:
        raise InputError(f"{where}.test_fraction: must be between 0 and 1 (exclusive), got {src['test_fraction']}")
    if src.get("validation_per_class") is not None and src["validation_per_class"] < 1:
        raise InputError(f"{where}.validation_per_class: must be at least 1, got {src['validation_per_class']}")
    if src.get("validation_fraction") is not None:
        if not 0.0 < src["validation_fraction"] < 1.0:
            raise InputError(f"{where}.validation_fraction: must be between 0 and 1 (exclusive), "
                             f"got {src['validation_fraction']}")
        if src.get("validation_per_class") is not None:
            raise InputError(f"{where}.validation_fraction: give either validation_per_class (drawn from the "
                             f"examples train and test leave unused) or validation_fraction, not both")
    for key in ("path", "train", "test", "text_column", "label_column", "train_split", "test_split", "name",
                "dataset", "root", "image_column"):
        if isinstance(src.get(key), str) and not src[key].strip():
            raise InputError(f"{where}.{key}: must not be empty")
    classes = src.get("classes")
    if classes is None:
        return
    if not classes:
        raise InputError(f"{where}.classes: must list at least one class")
    names_only = record.names_only
    for i, c in enumerate(classes):
        ok = isinstance(c, str) or (not names_only and isinstance(c, int) and not isinstance(c, bool))
        if not ok:
            wanted = "a class name" if names_only else "a class name or label"
            raise InputError(f"{where}.classes[{i}]: expected {wanted}, got {_describe(c)}")
    seen = set()
    for c in classes:
        key = c.lower() if isinstance(c, str) and names_only else c
        if key in seen:
            raise InputError(f"{where}.classes: class {c!r} is listed twice")
        seen.add(key)


def load_task_data(source: dict, *, seed: int, base_dir: pathlib.Path, where: str) -> TaskData:
    """Load the train/test examples of one task.

    ``source`` is the task's ``data:`` mapping (validated again here, so a raw mapping works too);
    relative file paths resolve against ``base_dir`` (the YAML file's folder); ``seed`` fixes the split,
    the per-class caps and the order; ``where`` prefixes error messages (e.g. ``"task t2: data"``).
    """
    filled = validate_source(source, where)
    return SOURCES[filled["type"]].load(filled, seed=int(seed), base_dir=pathlib.Path(base_dir), where=where)


def prompt_defaults(source: dict, *, base_dir: pathlib.Path, where: str) -> dict | None:
    """A source's own prompt ({"instruction", "template"}) where it has one (cl-benchmark: O-LoRA's prompt of the
    dataset), found without loading the data: for `predict` and `export`, which build prompts from the store. The
    loader attaches the same to its TaskData (``prompt_defaults``), which `prompts.prompted` reads."""
    filled = validate_source(source, where)
    prompt = SOURCES[filled["type"]].prompt
    return prompt(filled, pathlib.Path(base_dir), where) if prompt is not None else None


def joint_task_data(parts: list[TaskData], task_ids: list[str]) -> TaskData:
    """Tasks trained together (the multitask upper bound): examples concatenated, each task's labels shifted
    past the earlier tasks' classes, so one joint head covers them all. ``task_slices`` records which rows of
    the joint head belong to which task: (task id, first row, end row)."""
    import hashlib

    classes, train_x, train_y, slices = [], [], [], []
    for task_id, part in zip(task_ids, parts):
        offset = len(classes)
        slices.append((task_id, offset, offset + len(part.classes)))
        classes += [f"{task_id}:{c}" for c in part.classes]
        train_x += list(part.train_x)
        train_y += [y + offset for y in part.train_y]
    fingerprint = hashlib.sha256("+".join(p.fingerprint for p in parts).encode()).hexdigest()
    last = parts[-1]
    joint = TaskData(classes=classes, train_x=train_x, train_y=train_y, test_x=last.test_x, test_y=last.test_y,
                     fingerprint=fingerprint, source=f"tasks {', '.join(task_ids)} jointly", modality=last.modality,
                     val_x=last.val_x, val_y=last.val_y, val_fingerprint=last.val_fingerprint)
    joint.task_slices = slices
    if all(hasattr(p, "answers") for p in parts):  # prompted tasks: each joint label keeps its task's answer text
        joint.answers = [a for p in parts for a in p.answers]
    return joint
