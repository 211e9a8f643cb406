"""The `cl-benchmark` source: O-LoRA's CL_Benchmark files, the layout every O-LoRA-family repository ships the
paper's benchmarks in, read as they are.

    <root>/CL_Benchmark/<type>/<dataset>/train.json     a JSON list of {"label": <label text>, "sentence": <text>}
    <root>/CL_Benchmark/<type>/<dataset>/test.json      the same (optional: without it, test is carved from train)
    <root>/CL_Benchmark/<type>/<dataset>/labels.json    the option list: the label texts, in the prompt's order
    <root>/configs/instruction_config.json              task type -> [{"instruction_type", "instruction"}, ...]

`root` is the source's `root:` key or, when absent, the environment variable PSLORA_CL_BENCHMARK. A task names the
dataset (`agnews`, or `TC/agnews` where a name is under two types) and gets O-LoRA's texts, its label texts as the
answers (the options in labels.json order) and its prompt, with no template to write.

What O-LoRA does, and this follows (github.com/cmnfriend/O-LoRA, snapshot 07117e1):
  src/uie_dataset_lora.py: `_generate_examples` reads `<data_dir>/<type>/<dataset>/<subset>.json` and `labels.json`;
    `_parse_instruction` keeps each type's "zero-shot" instructions and `_get_instruction` takes the first of them
    (every script passes `--instruction_strategy single`); each `load_<type>_dataset` builds
    instruction + "Option: " + ", ".join(labels) + " \\n" + sentence + "\\nAnswer:", except `load_COPA_dataset`:
    sentence + "\\nAnswer:" (no instruction, no options: COPA's sentence holds its question and choices, and
    instruction_config.json has no COPA entry); the answer is the row's label text.
  src/uie_collator.py: `get_instruction` puts "Task:<type>\\n" and "Dataset:<dataset>\\n" before it (the scripts'
    --add_task_name and --add_dataset_name), so a prompt is
    "Task:TC\\nDataset:agnews\\n" + instruction + "Option: World, Sports, ... \\n" + sentence + "\\nAnswer:".
  dev.json: the same rows as test.json in O-LoRA's copy (what its trainer evaluates on during training). It is not
    read here: the validation split is drawn from the training side, as for every other source, so that it shares
    no row with test.

Here: the instruction comes from `<root>/configs/instruction_config.json` when the folder has one (the first
zero-shot instruction of the task's type; a type it does not list is an error unless the task's prompt gives an
instruction, COPA aside), else from O-LoRA's own
(INSTRUCTIONS below, a copy of that file). Its trailing newline is the template's "\\n" before "Option:", so that a
`prompt.instruction` written without one renders the same way. Rows whose label is not in labels.json (MNLI's test
file has 131 labelled "-") are left out and counted, or refused with `unknown_labels: error`.
"""

from __future__ import annotations

import json
import os
import pathlib

from pslora_cli.data._common import (
    CAPS_OPTIONAL,
    REQUIRED,
    UNKNOWN_LABELS,
    UNKNOWN_LABELS_FIELD,
    VALIDATION_FRACTION_FIELD,
    VALIDATION_PER_CLASS_FIELD,
    TaskData,
    assemble_source,
    carve_per_class,
    conflicting_texts,
    resolve_path,
    rngs,
    short_list,
)
from pslora_cli.data.sources import Source, register_source
from pslora_cli.errors import InputError

ENV = "PSLORA_CL_BENCHMARK"
SOURCE_TYPE = "cl-benchmark"
LAYOUT = "CL_Benchmark/<type>/<dataset>/ with train.json, test.json and labels.json"

SCHEMA = {
    "dataset": (str, REQUIRED),
    "root": ((str, type(None)), None),
    "classes": ((list, type(None)), None),
    **CAPS_OPTIONAL,
    "test_fraction": (float, 0.2),
    "unknown_labels": UNKNOWN_LABELS_FIELD,
    "validation_per_class": VALIDATION_PER_CLASS_FIELD,
    "validation_fraction": VALIDATION_FRACTION_FIELD,
}

# O-LoRA's configs/instruction_config.json (first zero-shot instruction of each type), used when the folder has no
# configs/instruction_config.json (and by `predict` / `export` on a machine without the folder).
INSTRUCTIONS = {
    "NLI": "What is the logical relationship between the \"sentence 1\" and the \"sentence 2\"? "
           "Choose one from the option.\n",
    "QQP": "Whether the \"first sentence\" and the \"second sentence\" have the same meaning? "
           "Choose one from the option.\n",
    "SC": "What is the sentiment of the following paragraph? Choose one from the option.\n",
    "TC": "What is the topic of the following paragraph? Choose one from the option.\n",
    "BoolQA": "According to the following passage, is the question true or false? Choose one from the option.\n",
    "MultiRC": "According to the following passage and question, is the candidate answer true or false? "
               "Choose one from the option.\n",
    "WiC": "Given a word and two sentences, whether the word is used with the same sense in both sentence? "
           "Choose one from the option.\n",
}
# The types O-LoRA prompts with the sentence alone (load_COPA_dataset).
NO_INSTRUCTION = ("COPA",)
# O-LoRA's datasets and their types (its CL_Benchmark tree), for finding a type without the folder.
DATASET_TYPES = {"dbpedia": "TC", "yahoo": "TC", "agnews": "TC", "amazon": "SC", "yelp": "SC", "IMDB": "SC",
                 "SST-2": "SC", "MNLI": "NLI", "CB": "NLI", "RTE": "NLI", "QQP": "QQP", "BoolQA": "BoolQA",
                 "COPA": "COPA", "MultiRC": "MultiRC", "WiC": "WiC"}


def _expected_root() -> str:
    return f"the folder that holds O-LoRA's {LAYOUT}"


def benchmark_root(source: dict, base_dir: pathlib.Path, where: str) -> pathlib.Path:
    """The folder holding CL_Benchmark/: `root` (relative to the sequence file's folder) or $PSLORA_CL_BENCHMARK."""
    if source.get("root") is not None:
        if not source["root"].strip():
            raise InputError(f"{where}.root: must not be empty")
        root, said = resolve_path(source["root"], base_dir), f"{where}.root"
    else:
        value = os.environ.get(ENV, "")
        if not value.strip():
            raise InputError(f"{where}.root: not set, and the environment variable {ENV} is not set either "
                             f"(expected {_expected_root()})")
        root, said = pathlib.Path(value).expanduser(), f"{where}: {ENV}"
    if not root.is_dir():
        raise InputError(f"{said}: folder {root} not found (expected {_expected_root()})")
    if not (root / "CL_Benchmark").is_dir():
        hint = " (it is CL_Benchmark itself: give the folder above it)" if root.name == "CL_Benchmark" else ""
        raise InputError(f"{said}: {root / 'CL_Benchmark'} not found{hint} (expected {_expected_root()})")
    return root


def _available(bench: pathlib.Path) -> list[str]:
    return sorted(f"{t.name}/{d.name}" for t in bench.iterdir() if t.is_dir() for d in t.iterdir() if d.is_dir())


def find_dataset(root: pathlib.Path, name: str, where: str) -> pathlib.Path:
    """The dataset's folder, CL_Benchmark/<type>/<name>: `name` is "<dataset>" or "<type>/<dataset>"; an exact match
    first, else the one folder whose name matches ignoring case."""
    bench = root / "CL_Benchmark"
    if not name.strip():
        raise InputError(f"{where}.dataset: must not be empty")
    available = _available(bench)
    wanted = name.strip().strip("/")
    for fold in (False, True):
        key = (lambda s: s.lower()) if fold else (lambda s: s)
        hits = [a for a in available
                if key(a) == key(wanted) or ("/" not in wanted and key(a.split("/", 1)[1]) == key(wanted))]
        if len(hits) == 1:
            return bench / hits[0]
        if len(hits) > 1:
            raise InputError(f"{where}.dataset: {name!r} is under several task types in {bench} "
                             f"({', '.join(hits)}): name it as <type>/<dataset>")
    raise InputError(f"{where}.dataset: no dataset {name!r} in {bench} (expected a folder <type>/{wanted}; "
                     f"available: {short_list(available) or 'none'})")


def _read_json(file: pathlib.Path, expected: str, where: str):
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{where}: {file} not found (expected {expected})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{where}: {file}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                         f"expected {expected}") from None
    except OSError as exc:
        raise InputError(f"{where}: {file}: cannot read it ({exc.strerror or exc}); expected {expected}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: {file}:{exc.lineno}: invalid JSON ({exc.msg}); expected {expected}") from None


def _kind(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def read_labels(folder: pathlib.Path, where: str) -> list[str]:
    """labels.json: a non-empty JSON list of distinct, non-empty label texts."""
    file = folder / "labels.json"
    expected = "a JSON list of label texts, O-LoRA's option list"
    labels = _read_json(file, expected, where)
    if not isinstance(labels, list) or not labels:
        raise InputError(f"{where}: {file}: got {_kind(labels) if labels != [] else 'an empty list'}, "
                         f"expected {expected}")
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label.strip():
            raise InputError(f"{where}: {file}: item {i + 1} is {_kind(label)} {label!r}, expected {expected}")
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise InputError(f"{where}: {file}: {repeated[0]!r} is listed twice (expected {expected}, each once)")
    return list(labels)


def read_rows(file: pathlib.Path, where: str) -> list[tuple[str, str]]:
    """train.json / test.json: a JSON list of {"label": <label text>, "sentence": <text>} -> (sentence, label)."""
    expected = 'a JSON list of {"label": ..., "sentence": ...} objects'
    items = _read_json(file, expected, where)
    if not isinstance(items, list):
        raise InputError(f"{where}: {file}: got {_kind(items)}, expected {expected}")
    if not items:
        raise InputError(f"{where}: {file}: holds no rows (expected {expected})")
    rows = []
    for n, item in enumerate(items, 1):
        if not isinstance(item, dict) or "label" not in item or "sentence" not in item:
            got = (f"an object with keys {', '.join(map(repr, item)) or 'none'}" if isinstance(item, dict)
                   else _kind(item))
            raise InputError(f"{where}: {file}: item {n} is {got}, expected an object with \"label\" and \"sentence\"")
        sentence, label = item["sentence"], item["label"]
        if not isinstance(sentence, str):
            raise InputError(f"{where}: {file}: item {n}: \"sentence\" is {_kind(sentence)}, expected text")
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise InputError(f"{where}: {file}: item {n}: \"label\" is {_kind(label)}, expected a label text "
                             f"of labels.json")
        rows.append((sentence, str(label)))
    return rows


def _classes(labels: list[str], wanted, labels_file: pathlib.Path, where: str) -> list[str]:
    if wanted is None:
        return list(labels)
    out = []
    for c in wanted:
        if not isinstance(c, str) or c not in labels:
            raise InputError(f"{where}.classes: {c!r} is not a label of {labels_file} "
                             f"(labels: {short_list(labels)})")
        out.append(c)
    return out


def load_cl_benchmark(source: dict, *, seed: int, base_dir: pathlib.Path, where: str) -> TaskData:
    """One dataset of O-LoRA's CL_Benchmark: its train.json and test.json (or, with no test.json, `test_fraction` of
    each class carved from train.json: seeded, every copy of a text on one side), the classes and their order from
    labels.json (or `classes`, a subset of it), per-class caps and the validation split as for the other sources,
    and the task's O-LoRA prompt, which `prompts.prompted` uses unless the task's `prompt:` says otherwise."""
    root = benchmark_root(source, base_dir, where)
    folder = find_dataset(root, source["dataset"], where)
    labels_file = folder / "labels.json"
    labels = read_labels(folder, where)
    classes = _classes(labels, source.get("classes"), labels_file, where)
    train_file, test_file = folder / "train.json", folder / "test.json"
    if not train_file.is_file():
        raise InputError(f"{where}: {train_file} not found (expected a JSON list of "
                         f"{{\"label\": ..., \"sentence\": ...}} objects; O-LoRA's layout is {LAYOUT})")
    train_rows = read_rows(train_file, where)
    test_rows = read_rows(test_file, where) if test_file.is_file() else None
    task_type, name = folder.parent.name, folder.name
    defaults = _prompt_defaults(root, task_type, name, where)

    label_of = {c: i for i, c in enumerate(classes)}
    dropped: dict[str, int] = {}
    outside: dict[str, int] = {}  # of the dropped: labels labels.json does not list

    def pools(rows):
        out = [[] for _ in classes]
        for text, label in rows:
            i = label_of.get(label)
            if i is not None:
                out[i].append(text)
            else:
                dropped[label] = dropped.get(label, 0) + 1
                if label not in labels:
                    outside[label] = outside.get(label, 0) + 1
        return out

    desc = f"O-LoRA CL_Benchmark {task_type}/{name} ({folder})"
    train_pools = pools(train_rows)
    if test_rows is None:
        conflicting = len(conflicting_texts(train_pools))
        train_pools, test_pools = carve_per_class(train_pools, source["test_fraction"], rngs(seed)[0])
        desc += (f": no test.json, so test is {source['test_fraction']:g} of each class of train.json, carved with "
                 f"seed {seed} (disjoint from train: every copy of a text on one side")
        desc += f"; {conflicting} texts filed under two labels left out)" if conflicting else ")"
        carved = f" after carving test_fraction={source['test_fraction']:g} from {train_file}"
        what = lambda c, side: carved  # noqa: E731
    else:
        test_pools = pools(test_rows)
        desc += ": train.json, test.json"
        what = lambda c, side: f" in {train_file if side == 'training' else test_file}"  # noqa: E731
    if dropped and source.get("unknown_labels") == "error":
        seen = ", ".join(f"{label!r} ({n})" for label, n in sorted(dropped.items()))
        why = (f"labels.json ({labels_file}) does not list {short_list(map(repr, sorted(outside)))}" if outside
               else f"classes leaves them out")
        raise InputError(f"{where}.unknown_labels: {sum(dropped.values())} rows have labels outside the task's classes "
                         f"({seen}): {why}; set unknown_labels: drop to leave them out")
    data = assemble_source(classes, train_pools, test_pools, source, seed=seed, where=where, description=desc,
                           what=what)
    data.dropped = dropped
    data.prompt_defaults = defaults
    return data


def _instruction_config(root: pathlib.Path, where: str) -> tuple[dict | None, pathlib.Path]:
    """(type -> first zero-shot instruction, the file) from <root>/configs/instruction_config.json; None if absent."""
    file = root / "configs" / "instruction_config.json"
    if not file.is_file():
        return None, file
    expected = 'a JSON object: task type -> [{"instruction_type": "zero-shot", "instruction": ...}, ...]'
    raw = _read_json(file, expected, where)
    if not isinstance(raw, dict):
        raise InputError(f"{where}: {file}: got {_kind(raw)}, expected {expected}")
    out = {}
    for task_type, entries in raw.items():
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise InputError(f"{where}: {file}: {task_type!r} holds {_kind(entries)}, expected a list of "
                             f'{{"instruction_type", "instruction"}} objects')
        for e in entries:
            if e.get("instruction_type", "zero-shot") == "zero-shot":
                if not isinstance(e.get("instruction"), str) or not e["instruction"].strip():
                    raise InputError(f"{where}: {file}: {task_type!r}: an entry's \"instruction\" is "
                                     f"{_kind(e.get('instruction'))}, expected text")
                out.setdefault(task_type, e["instruction"])
    return out, file


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def template_for(task_type: str, name: str, has_instruction: bool) -> str:
    """O-LoRA's prompt as a pslora template: its {instruction}, {options} and {text} placeholders."""
    head = f"Task:{_escape(task_type)}\nDataset:{_escape(name)}\n"
    if not has_instruction:
        return head + "{text}\nAnswer:"
    return head + "{instruction}\nOption: {options} \n{text}\nAnswer:"


def _prompt_defaults(root: pathlib.Path | None, task_type: str, name: str, where: str) -> dict:
    """{"instruction", "template"} of a dataset of type `task_type`: the folder's instruction config when it has one,
    else O-LoRA's (INSTRUCTIONS). A type with no instruction there adds "missing": the error to raise if the task's
    prompt gives none."""
    config, file = _instruction_config(root, where) if root is not None else (None, None)
    if task_type in NO_INSTRUCTION and (config is None or task_type not in config):
        return {"instruction": None, "template": template_for(task_type, name, False)}
    table, said = (config, str(file)) if config is not None else (INSTRUCTIONS, "O-LoRA's instruction_config.json")
    if task_type not in table:  # an error only where the prompt needs it (prompts.prompt_parts)
        return {"instruction": None, "template": template_for(task_type, name, True),
                "missing": f"{where}: {said} has no instruction for task type {task_type!r} (types: "
                           f"{', '.join(table) or 'none'}): add one there, or give the task a prompt.instruction"}
    instruction = table[task_type]
    instruction = instruction[:-1] if instruction.endswith("\n") else instruction
    return {"instruction": instruction, "template": template_for(task_type, name, True)}


def prompt_defaults(source: dict, base_dir: pathlib.Path, where: str) -> dict:
    """The task's O-LoRA prompt without reading its data (`predict`, `export`): from the folder when it is there,
    else from O-LoRA's own instructions and dataset types."""
    try:
        root = benchmark_root(source, base_dir, where)
    except InputError:
        root = None
    if root is not None:
        folder = find_dataset(root, source["dataset"], where)
        return _prompt_defaults(root, folder.parent.name, folder.name, where)
    wanted = source["dataset"].strip().strip("/")
    if "/" in wanted:
        task_type, name = wanted.split("/", 1)
    else:
        lookup = {k.lower(): k for k in DATASET_TYPES}
        name = lookup.get(wanted.lower())
        if name is None:
            raise InputError(f"{where}.dataset: {wanted!r} is not one of O-LoRA's datasets, and the benchmark folder "
                             f"is not here to say its type: set {ENV} (or root) to the folder that holds CL_Benchmark/")
        task_type = DATASET_TYPES[name]
    return _prompt_defaults(None, task_type, name, where)


register_source(Source(SOURCE_TYPE, "O-LoRA's CL_Benchmark folder (`root:` or `$PSLORA_CL_BENCHMARK`): a dataset's "
                       "texts, label texts and O-LoRA's prompt; no test file: a seeded disjoint split", SCHEMA,
                       load_cl_benchmark, choices={"unknown_labels": UNKNOWN_LABELS}, prompt=prompt_defaults))
