"""Task sequences: the YAML schema, validation with exact key paths, `--set` overrides and defaults.

A sequence file names the backbone, the LoRA settings, the method, the training settings, the scenario
and the tasks. `load_sequence` returns a plain, fully resolved dict (every default filled in); every
error is an InputError whose one-line message names the file, the key path and, where known, the line.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError

REQUIRED = object()
_NUMBER = (int, float)

# field -> (allowed types, default, allowed values or None). Nested dicts are sub-schemas.
SCHEMA: dict[str, Any] = {
    "name": ((str,), REQUIRED, None),
    "description": ((str,), "", None),
    "scenario": ((str,), "class-incremental", ("class-incremental", "task-incremental")),
    "seed": ((int,), 0, None),
    "backbone": {
        # builtin: a model that ships inside a Python package (offline); huggingface: a hub id or local
        # folder loaded with transformers; timm: any timm image model name.
        "source": ((str,), "builtin", ("builtin", "huggingface", "timm")),
        "name": ((str,), "all-minilm-l6-v2", None),
        "pooling": ((str,), "mean", ("mean", "cls")),
        "max_length": ((int,), 64, None),
        "trust_remote_code": ((bool,), False, None),
        # Image backbones (timm, builtin efficientnet-lite0). pretrained: hub weights for timm names (false:
        # random init, fixed seed); weights: a local .safetensors/.pth file for a timm model instead of the hub;
        # image_size: the side images are resized to (null: the model's own input size); model_kwargs: passed
        # to timm.create_model (e.g. img_size, patch_size, depth for a small ViT).
        "pretrained": ((bool,), True, None),
        "weights": ((str, type(None)), None, None),
        "image_size": ((int, type(None)), None, None),
        "model_kwargs": ((dict,), {}, None),
    },
    "lora": {
        "rank": ((int,), 8, None),
        "alpha": (_NUMBER, 16, None),
        "target_modules": ((list,), ["query", "value"], None),
        "dropout": (_NUMBER, 0.0, None),
    },
    "method": {
        # Which continual-learning method (see METHOD_PRESETS): it fixes the merge and how earlier tasks
        # enter training, and switches the stability and orthogonality terms on or off.
        "name": ((str,), "ps-lora", None),
        # lambda: weight of the Parameter Stability Loss when the method uses it. 0.01 was the best of the values
        # > 0 measured on the default text sequence, 3 seeds (benchmarks/RESULTS.md: ACC 66.1 at 0.01, 65.7 at
        # 0.03, 64.1 at 0.1, 51.4 at 1); the loss never beat lambda = 0 (ps-merge-only, 66.1) there.
        "stability_weight": (_NUMBER, 0.01, None),
        # alpha of tanh(alpha*x): fixed value, or adaptive = alpha_c / median|H| per module.
        "alpha_mode": ((str,), "adaptive", ("adaptive", "fixed")),
        "alpha": (_NUMBER, 2.0, None),
        "reduction": ((str,), "mean", ("mean", "sum")),
        "variant": ((str,), "dir+fro", ("dir+fro", "weighted-dir+fro", "dir+factor", "deviation")),
        # O-LoRA's lambda_1 for sum_{i<t} ||A_i A_t^T||_1, when the method uses it.
        "orthogonality_weight": (_NUMBER, 0.5, None),
        "merge": ((str,), "magnitude", ("magnitude", "sum", "mean", "ties", "task-arithmetic", "last", "own")),
        "merge_density": (_NUMBER, 0.2, None),   # TIES: fraction of each update kept by the trim step
        "merge_scale": (_NUMBER, 1.0, None),     # task arithmetic: scale of the summed updates
        # How earlier tasks enter task t's training forward pass: their running merge, their sum, or not.
        "previous": ((str,), "merge", ("merge", "sum", "none")),
    },
    "training": {
        "steps": ((int, type(None)), 120, None),
        "epochs": ((int, type(None)), None, None),
        "batch_size": ((int,), 16, None),
        "learning_rate": (_NUMBER, 1e-3, None),
        "head_learning_rate": (_NUMBER, 5e-3, None),
        "weight_decay": (_NUMBER, 0.0, None),
        "eval_batch_size": ((int,), 128, None),
        # Save the training state every this many steps (0: only when interrupted), so a crash loses at most
        # that much work; `train-task`/`run` resume from it.
        "checkpoint_every": ((int,), 25, None),
        # Forward-pass precision: bf16 autocast ("auto": on GPUs that support it); loss, merge, adapters: float32.
        "precision": ((str,), "auto", ("auto", "fp32", "bf16")),
    },
}
TASK_SCHEMA: dict[str, Any] = {
    "id": ((str,), REQUIRED, None),
    "description": ((str,), "", None),
    "data": ((dict,), REQUIRED, None),
}
# name -> (stability term on, orthogonality term on, merge, previous, adapter init). None = the method
# leaves that setting to the sequence. "init: previous" continues from the last task's adapter; "joint" trains
# on tasks 1..t together.
METHOD_PRESETS: dict[str, tuple] = {
    "ps-lora":        (True, False, "magnitude", None, "new"),
    "ps-lora+o-lora": (True, True, "magnitude", None, "new"),
    "ps-loss-only":   (True, False, "sum", "sum", "new"),       # ablation: the loss, summed like inc-lora
    "ps-merge-only":  (False, False, "magnitude", None, "new"),  # ablation: the merge without the loss
    "inc-lora":       (False, False, "sum", "sum", "new"),       # a new adapter per task, earlier ones summed
    "o-lora":         (False, True, "sum", "sum", "new"),
    "seq-lora":       (False, False, "last", "none", "previous"),  # one adapter trained on through all tasks
    "per-task":       (False, False, "own", "none", "new"),      # each task's own adapter on its own task
    # Upper bound: stage t trains one adapter and one joint head on the data of tasks 1..t together, for
    # training.steps x t steps (each task's data seen as often as in the sequential methods); stage t is scored
    # with that adapter alone and its heads.
    "multitask":      (False, False, "last", "none", "joint"),
    "custom":         (None, None, None, None, "new"),           # every knob as given
}
_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Parts of the sequence that define what a store holds; the rest (training, method) may be overridden
# per command and is recorded with each task.
IDENTITY_KEYS = ("backbone", "lora", "scenario", "tasks")


def _type_name(types: tuple) -> str:
    names = {int: "integer", float: "number", str: "string", bool: "true/false", list: "list",
             dict: "mapping", type(None): "null"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


class _Where:
    """Formats error locations as `file: key.path (line N)`."""

    def __init__(self, file: str, lines: dict[str, int]):
        self.file, self.lines = file, lines

    def __call__(self, path: str, message: str) -> InputError:
        line = self.lines.get(path)
        at = f" (line {line})" if line else ""
        return InputError(f"{self.file}: {path}{at}: {message}")


def _check_value(value: Any, types: tuple, allowed, path: str, where: _Where) -> Any:
    if isinstance(value, bool) and bool not in types:
        raise where(path, f"expected {_type_name(types)}, got {value!r}")
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, types):
        raise where(path, f"expected {_type_name(types)}, got {type(value).__name__} {value!r}")
    if allowed is not None and value not in allowed:
        raise where(path, f"must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _validate_mapping(raw: Any, schema: dict, path: str, where: _Where) -> dict:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise where(path or "(top level)", f"expected a mapping, got {type(raw).__name__}")
    unknown = [k for k in raw if k not in schema and not (schema is SCHEMA and k == "tasks")]
    if unknown:
        key = f"{path}.{unknown[0]}" if path else str(unknown[0])
        raise where(key, f"unknown key (allowed: {', '.join(k for k in schema)})")
    out = {}
    for key, spec in schema.items():
        sub = f"{path}.{key}" if path else key
        if isinstance(spec, dict):
            out[key] = _validate_mapping(raw.get(key), spec, sub, where)
            continue
        types, default, allowed = spec
        if key not in raw:
            if default is REQUIRED:
                raise where(sub, "required key is missing")
            out[key] = copy.deepcopy(default)
            continue
        out[key] = _check_value(raw[key], types, allowed, sub, where)
    return out


def _check_ranges(seq: dict, where: _Where) -> None:
    positive = ["lora.rank", "backbone.max_length", "training.batch_size", "training.eval_batch_size",
                "lora.alpha", "training.learning_rate", "training.head_learning_rate"]
    for key in positive:
        section, name = key.split(".")
        if seq[section][name] <= 0:
            raise where(key, f"must be > 0, got {seq[section][name]!r}")
    for key in ["method.stability_weight", "method.orthogonality_weight", "method.alpha",
                "training.weight_decay", "training.checkpoint_every"]:
        section, name = key.split(".")
        if seq[section][name] < 0:
            raise where(key, f"must be >= 0, got {seq[section][name]!r}")
    if seq["backbone"]["image_size"] is not None and seq["backbone"]["image_size"] <= 0:
        raise where("backbone.image_size", f"must be > 0, got {seq['backbone']['image_size']!r}")
    if seq["backbone"]["weights"] is not None and seq["backbone"]["source"] != "timm":
        raise where("backbone.weights", "a local weights file is for backbone.source: timm")
    if not 0 <= seq["lora"]["dropout"] < 1:
        raise where("lora.dropout", "must be in [0, 1)")
    if not seq["lora"]["target_modules"] or not all(isinstance(m, str) and m for m in seq["lora"]["target_modules"]):
        raise where("lora.target_modules", "must be a non-empty list of module names")
    training = seq["training"]
    if (training["steps"] is None) == (training["epochs"] is None):
        raise where("training.steps", "set exactly one of training.steps and training.epochs")
    for key in ("steps", "epochs"):
        if training[key] is not None and training[key] <= 0:
            raise where(f"training.{key}", f"must be > 0, got {training[key]!r}")


def _check_modality(seq: dict, where: _Where) -> None:
    """Every task's data must be what the backbone takes (text or images)."""
    from .backbones import backbone_modality
    from .data import source_modality

    backbone = seq["backbone"]
    try:
        wants = backbone_modality(backbone)
    except InputError as exc:
        raise where("backbone.name", str(exc).split(": ", 1)[-1]) from None
    if wants == "text" and not backbone["pretrained"]:
        raise where("backbone.pretrained", "false (random weights) is for image backbones only")
    for i, task in enumerate(seq["tasks"]):
        has = source_modality(task["data"])
        if has != wants:
            kind = "an image" if wants == "image" else "a text"
            raise where(f"tasks[{i}].data", f"task {task['id']!r} has {has} data ({task['data']['type']}), but the "
                        f"backbone ({backbone['source']} {backbone['name']}) is {kind} model")


def _resolve_method(method: dict, raw: dict, where: _Where) -> None:
    """Apply the method preset: fixed settings, terms on/off, the adapter init ("init")."""
    name = method["name"]
    if name not in METHOD_PRESETS:
        raise where("method.name", f"must be one of {', '.join(METHOD_PRESETS)}; got {name!r}")
    ps, orth, merge, previous, init = METHOD_PRESETS[name]
    for key, fixed in (("merge", merge), ("previous", previous)):
        if fixed is not None:
            if key in raw and raw[key] != fixed:
                raise where(f"method.{key}", f"method {name} uses {key} {fixed!r}, not {raw[key]!r} "
                                             f"(set method.name: custom to choose it)")
            method[key] = fixed
    for key, on in (("stability_weight", ps), ("orthogonality_weight", orth)):
        if on is False:
            method[key] = 0.0
        elif on and method[key] <= 0:
            raise where(f"method.{key}", f"method {name} needs {key} > 0")
    if method["merge"] == "own" and method["previous"] == "merge":
        raise where("method.previous", "merge 'own' scores each task with its own adapter; "
                                       "use previous: none or sum")
    method["init"] = init


def _line_map(text: str) -> dict[str, int]:
    """key path -> 1-based line number, from YAML's node marks (tasks are indexed by position and id)."""
    lines: dict[str, int] = {}

    def walk(node, path: str) -> None:
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
        return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise InputError(f"{file}: {at}invalid YAML: {problem}") from None


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
        parts = [p for p in path.strip().split(".")]
        if not path.strip() or any(not p for p in parts):
            raise InputError(f"--set {item!r}: empty key in {path!r}")
        value = parse_yaml(value_text, f"--set {path}")
        node = raw
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            here = ".".join(parts[: i + 1])
            if isinstance(node, list):
                index = _list_index(node, part)
                if index is None:
                    raise InputError(f"--set {path}: no list item {part!r} at {here} in {file}")
                if last:
                    node[index] = value
                else:
                    node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            else:
                raise InputError(f"--set {path}: {'.'.join(parts[:i])} is not a mapping or list in {file}")
    return raw


def _list_index(items: list, key: str) -> int | None:
    if key.isdigit():
        return int(key) if int(key) < len(items) else None
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("id") == key:
            return i
    return None


def validate_sequence(raw: Any, file: str, base_dir: Path, lines: dict[str, int] | None = None) -> dict:
    """Validate a parsed sequence and return it resolved (all defaults filled in)."""
    from .data import validate_source

    where = _Where(file, lines or {})
    seq = _validate_mapping(raw, SCHEMA, "", where)
    raw_training = raw.get("training") or {}
    if raw_training.get("epochs") is not None and "steps" not in raw_training:
        seq["training"]["steps"] = None  # epochs given alone replace the default step count
    tasks = raw.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise where("tasks", "required: a non-empty list of tasks")
    seen: dict[str, int] = {}
    resolved_tasks = []
    for i, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise where(f"tasks[{i}]", f"expected a mapping with id and data, got {type(task).__name__}")
        t = _validate_mapping(task, TASK_SCHEMA, f"tasks[{i}]", where)
        if not _TASK_ID.match(t["id"]) or t["id"] in (".", ".."):
            raise where(f"tasks[{i}].id", f"invalid task id {t['id']!r} (letters, digits, _ . -; at most 64)")
        if t["id"] in seen:
            raise where(f"tasks[{i}].id", f"duplicate task id {t['id']!r} (also tasks[{seen[t['id']]}])")
        seen[t["id"]] = i
        try:
            t["data"] = validate_source(t["data"], where=f"tasks[{i}].data")
        except InputError as exc:
            # validate_source names the key path; add the file and line.
            message = str(exc)
            key = message.split(":", 1)[0]
            line = where.lines.get(key)
            at = f" (line {line})" if line else ""
            raise InputError(f"{file}: {key}{at}:{message.split(':', 1)[1] if ':' in message else message}") from None
        resolved_tasks.append(t)
    seq["tasks"] = resolved_tasks
    _check_ranges(seq, where)
    _resolve_method(seq["method"], raw.get("method") or {}, where)
    _check_modality(seq, where)
    seq["base_dir"] = str(base_dir.resolve())
    return seq


def load_sequence(path: str | Path, overrides: list[str] | None = None,
                  base_dir: Path | None = None) -> tuple[dict, str]:
    """Read, override and validate a sequence file. Returns (resolved sequence, raw YAML text)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: sequence file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read sequence file: {exc}") from None
    return sequence_from_text(text, str(path), base_dir or path.parent, overrides), text


def sequence_from_text(text: str, file: str, base_dir: Path, overrides: list[str] | None = None) -> dict:
    raw = parse_yaml(text, file)
    if not isinstance(raw, dict):
        raise InputError(f"{file}: expected a mapping at the top level (name, backbone, tasks, ...)")
    if overrides:
        raw = apply_overrides(raw, overrides, file)
    return validate_sequence(raw, file, base_dir, _line_map(text))


def canonical_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def identity_hash(seq: dict) -> str:
    """Hash of what defines a store's contents (backbone, LoRA, scenario, tasks and their data)."""
    return canonical_hash({k: seq[k] for k in IDENTITY_KEYS})


def task_index(seq: dict, task_id: str) -> int:
    for i, t in enumerate(seq["tasks"]):
        if t["id"] == task_id:
            return i
    known = ", ".join(t["id"] for t in seq["tasks"])
    raise InputError(f"unknown task {task_id!r} (the sequence {seq['name']!r} has: {known})")
