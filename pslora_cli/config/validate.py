"""The one validator of a task sequence: a parsed YAML mapping -> a typed Sequence, or an InputError whose one
line names the file, the key path and, where known, the line.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

from ..errors import InputError
from .backbones import DEFAULT_TARGETS, backbone_kind, backbone_modality
from .schema import SECTIONS, Backbone, Method, Sequence, Task

_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TYPE_NAMES = {int: "integer", float: "number", str: "string", bool: "true/false", list: "list", dict: "mapping",
               type(None): "null"}


def type_name(types: tuple) -> str:
    return " or ".join(dict.fromkeys(_TYPE_NAMES.get(t, t.__name__) for t in types))


class Where:
    """Formats error locations as `file: key.path (line N)`."""

    def __init__(self, file: str, lines: dict[str, int] | None = None):
        self.file, self.lines = file, lines or {}

    def __call__(self, path: str, message: str) -> InputError:
        line = self.lines.get(path)
        at = f" (line {line})" if line else ""
        return InputError(f"{self.file}: {path}{at}: {message}")


def check_value(value: Any, meta: dict, path: str, where: Where) -> Any:
    """One field's value against its declared types and choices (an int is accepted, as a float, for a number)."""
    types, choices = meta["types"], meta["choices"]
    if isinstance(value, bool) and bool not in types:
        raise where(path, f"expected {type_name(types)}, got {value!r}")
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, types):
        raise where(path, f"expected {type_name(types)}, got {type(value).__name__} {value!r}")
    if choices is not None and value not in choices:
        raise where(path, f"must be one of {', '.join(choices)}; got {value!r}")
    return value


def _fields(cls) -> dict[str, dict]:
    return {f.name: f.metadata for f in dataclasses.fields(cls) if f.metadata}


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else copy.deepcopy(f.default)


def validate_mapping(raw: Any, cls, path: str, where: Where, extra_keys: tuple = ()) -> dict:
    """Check a mapping against a dataclass's declared fields; returns every field's value (defaults filled in)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise where(path or "(top level)", f"expected a mapping, got {type(raw).__name__}")
    allowed = [f.name for f in dataclasses.fields(cls) if f.metadata or f.name in SECTIONS]
    unknown = [k for k in raw if k not in allowed and k not in extra_keys]
    if unknown:
        key = f"{path}.{unknown[0]}" if path else str(unknown[0])
        raise where(key, f"unknown key (allowed: {', '.join(allowed)})")
    out = {}
    for f in dataclasses.fields(cls):
        if not f.metadata:
            continue
        sub = f"{path}.{f.name}" if path else f.name
        if f.name not in raw:
            if f.metadata["required"]:
                raise where(sub, "required key is missing")
            out[f.name] = _default(f)
        else:
            out[f.name] = check_value(raw[f.name], f.metadata, sub, where)
    return out


def _check_bounds(values: dict, cls, section: str, where: Where) -> None:
    for name, meta in _fields(cls).items():
        value, key = values[name], f"{section}.{name}"
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if meta["positive"] and value <= 0:
            raise where(key, f"must be > 0, got {value!r}")
        if meta["minimum"] is not None and value < meta["minimum"]:
            raise where(key, f"must be >= 0, got {value!r}")


def _check_sections(sections: dict, where: Where) -> None:
    """Rules that tie fields together or go beyond a type."""
    for name, cls in SECTIONS.items():
        _check_bounds(sections[name], cls, name, where)
    backbone, lora, training = sections["backbone"], sections["lora"], sections["training"]
    if backbone["weights"] is not None and backbone["source"] != "timm":
        raise where("backbone.weights", "a local weights file is for backbone.source: timm")
    if not 0 <= lora["dropout"] < 1:
        raise where("lora.dropout", "must be in [0, 1)")
    if not lora["target_modules"] or not all(isinstance(m, str) and m for m in lora["target_modules"]):
        raise where("lora.target_modules", "must be a non-empty list of module names")
    if (training["steps"] is None) == (training["epochs"] is None):
        raise where("training.steps", "set exactly one of training.steps and training.epochs")
    from ..methods import TERMS

    for term in TERMS.values():  # rules tying a term's settings together, whichever method is chosen
        if term.validate is not None:
            _at(where, term.validate, sections["method"])


def _at(where: Where, check, *args) -> None:
    """Run a declaration's check, whose InputError reads "method.key: message", and locate it in the file."""
    try:
        check(*args)
    except InputError as exc:
        key, _, rest = str(exc).partition(": ")
        raise where(key, rest) from None


def _task(raw: Any, i: int, seen: dict[str, int], where: Where) -> Task:
    from ..data import validate_source

    if not isinstance(raw, dict):
        raise where(f"tasks[{i}]", f"expected a mapping with id and data, got {type(raw).__name__}")
    t = validate_mapping(raw, Task, f"tasks[{i}]", where)
    if not _TASK_ID.match(t["id"]) or t["id"] in (".", ".."):
        raise where(f"tasks[{i}].id", f"invalid task id {t['id']!r} (letters, digits, _ . -; at most 64)")
    if t["id"] in seen:
        raise where(f"tasks[{i}].id", f"duplicate task id {t['id']!r} (also tasks[{seen[t['id']]}])")
    seen[t["id"]] = i
    try:
        t["data"] = validate_source(t["data"], where=f"tasks[{i}].data")
    except InputError as exc:  # the data layer names the key path; add the file and line
        key, _, rest = str(exc).partition(":")
        raise where(key, rest.strip() if rest else str(exc)) from None
    return Task(**t)


def _resolve_method(method: dict, raw: dict, where: Where, also_merges: tuple[str, ...] = ()) -> None:
    """Apply the method's fixed settings (methods registry) and check the merge against the merge registry
    (also_merges: merges a command runs besides the sequence's, whose options may be set too)."""
    from ..core.merges import DEFAULT_MERGE, MERGE_SCALE_DEFAULTS, MERGES
    from ..methods import METHODS, check_plugins

    check_plugins()
    name = method["name"]
    if name not in METHODS:
        raise where("method.name", f"must be one of {', '.join(METHODS)}; got {name!r}")
    spec = METHODS[name]
    if raw.get("merge") == "own":  # the per-task oracle's scoring, once written as a merge
        if not spec.own_adapters:
            raise where("method.merge", "'own' (each task scored with its own adapter) is the per-task method: "
                                        "set method.name: per-task")
        method["merge"] = raw["merge"] = DEFAULT_MERGE
    for key, fixed in (("merge", spec.merge), ("previous", spec.previous)):
        if fixed is not None:
            if key in raw and raw[key] != fixed:
                raise where(f"method.{key}", f"method {name} uses {key} {fixed!r}, not {raw[key]!r} "
                                             f"(set method.name: custom to choose it)")
            method[key] = fixed
    if method["merge"] not in MERGES:
        raise where("method.merge", f"must be one of {', '.join(MERGES)}; got {method['merge']!r}")
    _check_merge_options(method, raw, (method["merge"], *[m for m in also_merges if m in MERGES]), where)
    if method["merge_scale"] is None:
        method["merge_scale"] = MERGE_SCALE_DEFAULTS.get(method["merge"], 1.0)
    from ..merge_options import resolve_options

    for merge in dict.fromkeys((method["merge"], *[m for m in also_merges if m in MERGES])):
        try:  # each merge in play with the options it takes, in range (the one check every caller shares)
            resolve_options(merge, {"density": method["merge_density"], "scale": method["merge_scale"]})
        except InputError as exc:
            key, _, rest = str(exc).partition(" ")
            raise where(key, rest) from None
    from ..methods import TERMS

    for term in TERMS.values():
        on = spec.term_state(term.name)
        if method[term.weight] is None:
            method[term.weight] = term.default(method) if on else 0.0
        if on is False:
            method[term.weight] = 0.0
        elif on and method[term.weight] <= 0:
            raise where(f"method.{term.weight}", f"method {name} needs {term.weight} > 0")


MERGE_OPTION_KEYS = {"merge_density": "density", "merge_scale": "scale"}


def applies_to_merge(override: str, merge: str | None) -> bool:
    """Whether a `--set key=value` can matter to a run whose merge is `merge` (None: the sequence chooses)."""
    from ..core.merges import MERGES

    key = override.split("=", 1)[0].strip()
    option = MERGE_OPTION_KEYS.get(key.removeprefix("method."))
    return merge is None or option is None or not key.startswith("method.") or option in MERGES[merge].options


def _check_merge_options(method: dict, raw: dict, merges: tuple[str, ...], where: Where) -> None:
    """A merge option set away from its default must belong to a merge in play: the sequence's, or one the
    command runs (`pslora merge --method ties --set method.merge_density=0.5`); else it would change nothing."""
    from ..core.merges import MERGE_SCALE_DEFAULTS, MERGES

    fields = {f.name: f for f in dataclasses.fields(Method)}
    defaults = {key: _default(fields[key]) for key in MERGE_OPTION_KEYS}  # density 0.2, scale null
    for key, option in MERGE_OPTION_KEYS.items():
        value = raw.get(key, defaults[key])
        unchanged = value == defaults[key] or (key == "merge_scale" and value == MERGE_SCALE_DEFAULTS.get(merges[0],
                                                                                                        1.0))
        if unchanged or any(option in MERGES[m].options for m in merges):
            continue
        takers = [m.name for m in MERGES.values() if option in m.options]
        raise where(f"method.{key}", f"merge {merges[0]!r} takes no {option}, which is an option of "
                                     f"{', '.join(takers)} (set method.merge, or run `pslora merge --method "
                                     f"{takers[0]}` on the store)")


def _resolve_hooks(sections: dict, where: Where) -> None:
    """Settings that depend on the backbone's kind (resolved before this), such as InfLoRA's recipe: every
    method's hooks resolve their own settings whichever method is chosen, so that a stored form holds the same
    resolved values under any method (and stores written before keep their form)."""
    from ..methods import METHODS

    for hooks in dict.fromkeys(spec.hooks for spec in METHODS.values() if spec.hooks is not None):
        _at(where, hooks.resolve, sections["method"], sections["backbone"]["kind"])


def _resolve_backbone(sections: dict, raw: dict, where: Where) -> None:
    """Resolve backbone.kind (auto: from the model) and the defaults that depend on it: the LoRA targets (the
    attention query/value projections of the architecture) and, for language models, a longer max_length."""
    backbone = sections["backbone"]
    try:
        kind = backbone_kind(Backbone(**backbone))
    except InputError as exc:
        raise where("backbone.name", str(exc).split(": ", 1)[-1]) from None
    backbone["kind"] = kind
    if kind in DEFAULT_TARGETS:
        if "target_modules" not in (raw.get("lora") or {}):
            sections["lora"]["target_modules"] = list(DEFAULT_TARGETS[kind])
        if "max_length" not in (raw.get("backbone") or {}):
            backbone["max_length"] = 128


def _check_generative(seq: Sequence, where: Where) -> None:
    """Prompts and scorers belong to language models; heads to encoders."""
    from ..data.prompts import check_prompt

    scorer = seq.evaluation.scorer
    if seq.generative and scorer == "heads":
        raise where("evaluation.scorer",
                    f"a language model ({seq.backbone.kind}) has no heads: use exact-match or rank")
    if not seq.generative and scorer in ("exact-match", "rank"):
        raise where("evaluation.scorer", f"{scorer} scores a language model's answers; this backbone is an encoder "
                                         f"with heads (use heads or auto)")
    for i, task in enumerate(seq.tasks):
        if task.prompt is not None and not seq.generative:
            raise where(f"tasks[{i}].prompt", "prompts are for language-model backbones (backbone.kind causal-lm or "
                                              "seq2seq-lm)")
        if seq.generative:
            try:
                check_prompt(task.prompt, f"tasks[{i}].prompt")
            except InputError as exc:
                key, _, rest = str(exc).partition(": ")
                raise where(key, rest) from None


def _check_modality(seq: Sequence, where: Where) -> None:
    """Every task's data must be what the backbone takes (text or images)."""
    from ..data import source_modality
    backbone = seq.backbone
    wants = backbone_modality(backbone)
    if wants == "text" and not backbone.pretrained:
        raise where("backbone.pretrained", "false (random weights) is for image backbones only")
    for i, task in enumerate(seq.tasks):
        has = source_modality(task.data)
        if has != wants:
            kind = "an image" if wants == "image" else "a text"
            raise where(f"tasks[{i}].data", f"task {task.id!r} has {has} data ({task.data['type']}), but the "
                        f"backbone ({backbone.source} {backbone.name}) is {kind} model")


def validate_sequence(raw: Any, file: str, base_dir: Path, lines: dict[str, int] | None = None,
                      also_merges: tuple[str, ...] = ()) -> Sequence:
    """Validate a parsed sequence mapping; returns the typed Sequence with every default filled in
    (also_merges: the merges a command runs besides the sequence's, whose options may be set)."""
    where = Where(file, lines)
    top = validate_mapping(raw, Sequence, "", where, extra_keys=("tasks",))
    sections = {name: validate_mapping(raw.get(name), cls, name, where) for name, cls in SECTIONS.items()}
    raw_training = raw.get("training") or {}
    if raw_training.get("epochs") is not None and "steps" not in raw_training:
        sections["training"]["steps"] = None  # epochs given alone replace the default step count
    tasks = raw.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise where("tasks", "required: a non-empty list of tasks")
    seen: dict[str, int] = {}
    typed_tasks = tuple(_task(task, i, seen, where) for i, task in enumerate(tasks))
    _check_sections(sections, where)
    _resolve_method(sections["method"], dict(raw.get("method") or {}), where, also_merges)
    _resolve_backbone(sections, raw, where)
    _resolve_hooks(sections, where)
    seq = Sequence(**top, **{name: cls(**sections[name]) for name, cls in SECTIONS.items()}, tasks=typed_tasks,
                   base_dir=str(Path(base_dir).resolve()))
    _check_modality(seq, where)
    _check_generative(seq, where)
    return seq


def stored_form(seq: dict) -> dict:
    """A sequence as a store records it (Sequence.to_dict), back in the form a user writes: without the keys its
    method derived (init; the settings the method fixes or switches off), so that `--set method.name=...` can
    choose another method for a command (keys at their default are left out too: validation refills them)."""
    from ..methods import METHODS

    raw = {k: v for k, v in seq.items() if k != "base_dir"}
    method = dict(raw.get("method") or {})
    spec = METHODS.get(method.get("name"))
    derived = {"init"}
    if spec is not None:
        from ..methods import TERMS

        derived |= {key for key in ("merge", "previous") if getattr(spec, key) is not None}
        derived |= {term.weight for term in TERMS.values() if spec.term_state(term.name) is False}
    defaults = {f.name: _default(f) for f in dataclasses.fields(Method)}  # refilled by validation anyway
    # the weights and scale a null resolved to, for this method and merge, are left out too: another method chosen
    # with --set method.name=... resolves its own
    defaults |= resolved_defaults(spec, method.get("merge"), {**defaults, **method})
    raw["method"] = {k: v for k, v in method.items() if k not in derived and v != defaults.get(k)}
    return raw


def resolved_defaults(spec, merge: str | None, method: dict) -> dict:
    """What validation puts in place of a null term weight (for this method) and merge_scale."""
    from ..core.merges import MERGE_SCALE_DEFAULTS
    from ..methods import TERMS

    out = {"merge_scale": MERGE_SCALE_DEFAULTS.get(merge, 1.0)}
    if spec is not None:
        for term in TERMS.values():
            if METHOD_FIELDS[term.weight].default is None:  # a weight whose null means "the method's own"
                out[term.weight] = term.default(method) if spec.term_state(term.name) else 0.0
    return out


METHOD_FIELDS = {f.name: f for f in dataclasses.fields(Method)}
