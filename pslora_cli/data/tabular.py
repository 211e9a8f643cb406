"""Labelled rows from a Hugging Face dataset (hub id, local dataset folder or saved dataset) or from local files
(CSV / TSV / JSON Lines / Parquet), turned into a task: the class list, train/test rows, a seeded split and caps.

A row's text is one column (`text_column`) or `text_template`: one template or a list of them with {column}
placeholders, which assembles the text from several columns (a title and a body, two sentences of a pair, ...).
"""

from __future__ import annotations

import bz2
import inspect
import json
import math
import pathlib
from dataclasses import dataclass

from pslora_cli.data._common import (
    TaskData,
    assemble_source,
    carve_per_class,
    conflicting_texts,
    choose_classes,
    class_sort_key,
    existing_paths,
    resolve_path,
    rngs,
)
from pslora_cli.data.templates import TextTemplates, cell_text, parse_text_templates
from pslora_cli.errors import InputError


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


@dataclass(frozen=True)
class _Text:
    """Where a source's text comes from: one column (key `text_column`), or templates over several (`text_template`)."""

    key: str
    columns: list
    templates: TextTemplates | None

    @classmethod
    def of(cls, source: dict, column_key: str = "text_column") -> _Text:
        if source.get("text_template") is not None:
            templates = parse_text_templates(source["text_template"], "text_template")  # checked by validate_source
            return cls("text_template", templates.columns, templates)
        return cls(column_key, [source[column_key]], None)

    def make(self, row: dict, at: str):
        """One row's text (`row` maps column names to values). One column: its value as it is (the caller checks
        it); templates: rendered, every value as text (a missing one as "")."""
        if self.templates is None:
            return row[self.columns[0]]
        values = {}
        for column in self.columns:
            value = row[column]
            values[column] = cell_text(value)
            if values[column] is None:
                raise InputError(f"{at}: column {column!r} holds {type(value).__name__}, expected text")
        return self.templates.render(values)


def _labelled_task(train_rows, test_rows, label_names, source: dict, *, seed, where, description,
                   train_name: str, test_name: str) -> TaskData:
    """Build a task from (text, raw label) rows.

    ``label_names`` maps a raw label value to its class name (e.g. ClassLabel index -> name); it is None for
    plain labels, whose names are ``str(value)``. ``test_rows`` None means: carve ``test_fraction`` of the
    train rows (stratified per class, seeded, every copy of a text on one side).
    """
    all_rows = list(train_rows) + list(test_rows or [])
    if label_names is None:
        raw_values = sorted({v for _, v in all_rows}, key=lambda v: (class_sort_key(v), repr(v)))
        known = list(dict.fromkeys(str(v) for v in raw_values))  # 1 and "1" are one class
        name_of = {v: str(v) for v in raw_values}
    else:
        known = list(label_names)
        name_of = None

    def name(v):
        return name_of[v] if name_of is not None else label_names[v]

    classes = choose_classes(known, source.get("classes"), where, label_names)
    if not classes:
        raise InputError(f"{where}: no labelled rows found")
    label_of = {c: i for i, c in enumerate(classes)}
    dropped: dict[str, int] = {}

    def pools(rows):
        out = [[] for _ in classes]
        for text, v in rows:
            i = label_of.get(name(v))
            if i is not None:
                out[i].append(text)
            else:
                dropped[name(v)] = dropped.get(name(v), 0) + 1
        return out

    train_pools = pools(train_rows)
    val_pools = None
    if test_rows is None:
        split_rng, _, _ = rngs(seed)
        conflicting = len(conflicting_texts(train_pools))
        if conflicting:
            description += f"; {conflicting} texts filed under two classes left out"
        train_pools, test_pools = carve_per_class(train_pools, source["test_fraction"], split_rng)
        what = lambda c, side: f" after carving test_fraction={source['test_fraction']} from train"  # noqa: E731
    else:
        test_pools = pools(test_rows)
        what = lambda c, side: f" in {train_name if side == 'training' else test_name}"  # noqa: E731
    if dropped and source.get("unknown_labels") == "error":
        seen = ", ".join(f"{label!r} ({n})" for label, n in sorted(dropped.items()))
        raise InputError(f"{where}.unknown_labels: {sum(dropped.values())} rows have labels outside the task's classes "
                         f"({seen}); list them in classes, or set unknown_labels: drop to leave them out")
    data = assemble_source(classes, train_pools, test_pools, source, seed=seed, where=where, description=description,
                           what=what)
    data.dropped = dropped
    return data


# ---------------------------------------------------------------------------------------------------------
# Hugging Face datasets
# ---------------------------------------------------------------------------------------------------------


def _is_saved_to_disk(folder: pathlib.Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file())


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    if len(msg) > 300:
        msg = msg[:297] + "..."
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def open_hf_dataset(source: dict, base_dir: pathlib.Path, where: str, column_key: str, kind: str = ""):
    """Load a Hugging Face dataset source (``save_to_disk`` folder, other local folder or Hub id) and check its
    splits and columns. Returns (train split, test split or None, ClassLabel names or None, description).
    ``column_key`` names the source key of the input column (text_column, image_column)."""
    try:
        import datasets
    except ImportError:
        raise InputError(f"{where}: the datasets package is not installed: run `pip install datasets`") from None

    path = source["path"]
    # Hub ids look like "name" or "owner/name"; anything else that does not exist is a missing folder.
    looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1 or "\\" in path
    local = resolve_path(path, base_dir)
    if local.exists() or looks_local:
        if not local.exists():
            raise InputError(f"{where}.path: folder {local} not found")
        if not local.is_dir():
            raise InputError(f"{where}.path: {local} is a file, not a dataset folder "
                             f"(for a CSV/JSONL/Parquet file use `type: files`)")
        target, desc, is_local = str(local), f"huggingface {kind}dataset {local}", True
    else:
        target, desc, is_local = path, f"huggingface hub {kind}dataset {path}", False
    if source.get("name"):
        desc += f" ({source['name']})"

    try:
        if is_local and _is_saved_to_disk(local):  # (an absolute path is its own target: not a hub id)
            ds = datasets.load_from_disk(target)
        else:
            kwargs = {}
            if source.get("name") is not None:
                kwargs["name"] = source["name"]
            if "trust_remote_code" in inspect.signature(datasets.load_dataset).parameters:
                kwargs["trust_remote_code"] = source.get("trust_remote_code", False)
            ds = datasets.load_dataset(target, **kwargs)
    except InputError:
        raise
    except Exception as exc:  # hub unreachable, bad folder, missing config ...
        hint = "" if is_local else " (no network? use a local folder written by save_to_disk)"
        raise InputError(f"{where}.path: cannot load dataset {path!r}{hint}: {_one_line(exc)}") from None

    if isinstance(ds, datasets.Dataset):
        splits = {source["train_split"]: ds}
    elif isinstance(ds, (datasets.DatasetDict, dict)):
        splits = dict(ds)
    else:
        raise InputError(f"{where}.path: {path!r} loaded as {type(ds).__name__}, expected a Dataset or DatasetDict")

    train_split, test_split = source["train_split"], source.get("test_split")
    if train_split not in splits:
        raise InputError(f"{where}.train_split: no split {train_split!r} in {path!r} "
                         f"(available: {', '.join(sorted(splits))})")
    train_ds = splits[train_split]
    test_ds = splits.get(test_split) if test_split is not None and test_split != train_split else None
    text, label_col = _Text.of(source, column_key), source["label_column"]
    for key, col in [(text.key, c) for c in text.columns] + [("label_column", label_col)]:
        for split_name, d in ((train_split, train_ds), (test_split, test_ds)):
            if d is not None and col not in d.column_names:
                raise InputError(f"{where}.{key}: no column {col!r} in split {split_name!r} of {path!r} "
                                 f"(available: {', '.join(d.column_names)})")

    feature = train_ds.features[label_col]
    label_names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    return train_ds, test_ds, label_names, desc


def load_huggingface(source: dict, *, seed: int, base_dir: pathlib.Path, where: str) -> TaskData:
    """A Hugging Face dataset: a local ``save_to_disk`` folder, another local folder, or a Hub id.

    ClassLabel columns give the class names; plain int/str labels are named ``str(value)``, sorted
    (integers numerically). ``classes`` entries may be names or (for ClassLabel) label indices. If
    ``test_split`` is null or not in the dataset, ``test_fraction`` of the train split is carved out.
    ``trust_remote_code`` is passed on only to ``datasets`` versions that still take it (datasets 4+ runs
    no dataset scripts).
    """
    train_ds, test_ds, label_names, desc = open_hf_dataset(source, base_dir, where, "text_column")
    text, label_col = _Text.of(source), source["label_column"]
    text_col = text.columns[0]
    train_split, test_split = source["train_split"], source.get("test_split")

    def texts(d, split_name) -> list:
        if text.templates is None:
            return list(d[text_col])
        columns = {c: list(d[c]) for c in text.columns}
        return [text.make(dict(zip(columns, values)), f"{where}.text_template: split {split_name!r} row {i}")
                for i, values in enumerate(zip(*columns.values()))]

    def rows(d, split_name):
        out = []
        for i, (t, v) in enumerate(zip(texts(d, split_name), list(d[label_col]))):
            at = f"split {split_name!r} row {i}"
            if label_names is not None:
                if v == -1:
                    continue  # ClassLabel -1 = unlabelled row (e.g. a hidden test set)
                if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < len(label_names):
                    raise InputError(f"{where}.label_column: {at}: bad label {v!r} in column {label_col!r}")
            elif _is_missing(v) or isinstance(v, (list, dict)):
                raise InputError(f"{where}.label_column: {at}: column {label_col!r} holds {v!r}, "
                                 f"expected one label")
            if not isinstance(t, str):
                raise InputError(f"{where}.text_column: {at}: column {text_col!r} holds "
                                 f"{type(t).__name__}, expected text")
            out.append((t, v))
        return out

    train_rows = rows(train_ds, train_split)
    test_rows = rows(test_ds, test_split) if test_ds is not None else None
    if test_rows is None:
        desc += f", test carved from {train_split!r}"
    return _labelled_task(train_rows, test_rows, label_names, source, seed=seed, where=where,
                          description=desc, train_name=f"split {train_split!r}", test_name=f"split {test_split!r}")


# ---------------------------------------------------------------------------------------------------------
# Local files
# ---------------------------------------------------------------------------------------------------------

FILE_FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")
_SUFFIX_FORMAT = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def _file_format(file: pathlib.Path, fmt: str | None, where: str) -> str:
    if fmt is not None:
        return "jsonl" if fmt == "json" else fmt
    suffixes = [s.lower() for s in file.suffixes]
    for s in reversed(suffixes):
        if s in _SUFFIX_FORMAT:
            return _SUFFIX_FORMAT[s]
        if s not in (".gz", ".bz2", ".xz", ".zip", ".zst"):
            break
    raise InputError(f"{where}.format: cannot tell the format of {file} from its suffix "
                     f"(known: {', '.join(_SUFFIX_FORMAT)}); set format: to one of {', '.join(FILE_FORMATS)}")


def _read_jsonl(file: pathlib.Path, text: _Text, label_col: str, where: str) -> list[tuple[str, object]]:
    """JSON Lines: one object per line, blank lines skipped. A file that is one JSON array is accepted too."""
    opener = {".gz": "gzip", ".bz2": "bz2"}.get(file.suffix.lower())
    if opener == "gzip":
        import gzip
        fh = gzip.open(file, "rt", encoding="utf-8")
    elif opener == "bz2":
        fh = bz2.open(file, "rt", encoding="utf-8")
    else:
        fh = open(file, encoding="utf-8")
    with fh:
        try:
            content = fh.read()
        except UnicodeDecodeError as exc:
            raise InputError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    records: list[tuple[int, object]] = []
    if content.lstrip().startswith("["):
        try:
            arr = json.loads(content)
        except json.JSONDecodeError as exc:
            raise InputError(f"{file}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        records = [(i + 1, r) for i, r in enumerate(arr)]
        unit = "item"
    else:
        for lineno, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise InputError(f"{file}:{lineno}: invalid JSON ({exc.msg})") from None
        unit = "line"
    out = []
    for n, rec in records:
        loc = f"{file}:{n}" if unit == "line" else f"{file}: item {n}"
        if not isinstance(rec, dict):
            raise InputError(f"{loc}: expected a JSON object, got {type(rec).__name__}")
        for key, col in [(text.key, c) for c in text.columns] + [("label_column", label_col)]:
            if col not in rec:
                raise InputError(f"{loc}: {where}.{key}: no column {col!r} (available: {', '.join(map(str, rec))})")
        t, v = text.make(rec, loc), rec[label_col]
        if not isinstance(t, str):
            raise InputError(f"{loc}: column {text.columns[0]!r} holds {type(t).__name__}, expected text")
        if _is_missing(v) or isinstance(v, (list, dict)):
            raise InputError(f"{loc}: column {label_col!r} holds {v!r}, expected one label")
        out.append((t, v))
    return out


def _read_table(file: pathlib.Path, fmt: str, text: _Text, label_col: str, where: str):
    import pandas as pd  # installed with datasets

    try:
        if fmt == "parquet":
            df = pd.read_parquet(file)
        else:
            df = pd.read_csv(file, sep="\t" if fmt == "tsv" else ",", dtype=str, keep_default_na=False,
                             na_values=[])
    except Exception as exc:  # pandas / pyarrow parse errors
        raise InputError(f"{file}: cannot read as {fmt}: {_one_line(exc)}") from None
    for key, col in [(text.key, c) for c in text.columns] + [("label_column", label_col)]:
        if col not in df.columns:
            raise InputError(f"{where}.{key}: no column {col!r} in {file} "
                             f"(available: {', '.join(map(str, df.columns))})")
    columns = {c: df[c].tolist() for c in text.columns}
    text_col = text.columns[0]
    out = []
    for i, (v, *values) in enumerate(zip(df[label_col].tolist(), *columns.values())):
        row = f"{file}: data row {i + 1}"
        t = text.make(dict(zip(columns, values)), row)
        if not isinstance(t, str):
            if _is_missing(t):
                raise InputError(f"{row}: column {text_col!r} is empty")
            raise InputError(f"{row}: column {text_col!r} holds {type(t).__name__}, expected text")
        if _is_missing(v) or (isinstance(v, str) and not v.strip()):
            raise InputError(f"{row}: column {label_col!r} is empty")
        if hasattr(v, "item") and not isinstance(v, str):
            v = v.item()  # numpy scalar -> python
        out.append((t, v))
    return out


def _read_labelled_file(file: pathlib.Path, fmt: str, source: dict, where: str):
    text, label_col = _Text.of(source), source["label_column"]
    if fmt == "jsonl":
        rows = _read_jsonl(file, text, label_col, where)
    else:
        rows = _read_table(file, fmt, text, label_col, where)
    # Plain label values are named str(value): make CSV "1" and JSON 1 the same class.
    return [(t, str(v)) for t, v in rows]


def load_files(source: dict, *, seed: int, base_dir: pathlib.Path, where: str) -> TaskData:
    """Local labelled files: CSV, TSV, JSON Lines (``.jsonl``/``.json``) or Parquet.

    Class names are the label values as text, sorted (integers numerically) unless ``classes`` is given.
    CSV/TSV cells are read as text (so ``1`` in a CSV and ``1`` in a JSON file are the same class). Without
    ``test``, ``test_fraction`` of each class is carved from ``train`` (seeded; every copy of a text on one side).
    """
    files = existing_paths(source, ("train", "test"), base_dir, where, "file")
    rows = {k: _read_labelled_file(f, _file_format(f, source.get("format"), where), source, where)
            for k, f in files.items()}
    for k, r in rows.items():
        if not r:
            raise InputError(f"{where}.{k}: {files[k]} holds no rows")
    desc = f"files {files['train']}" + (f" + {files['test']}" if "test" in files else
                                        f" (test carved: {source['test_fraction']})")
    return _labelled_task(rows["train"], rows.get("test"), None, source, seed=seed, where=where,
                          description=desc, train_name=str(files["train"]), test_name=str(files.get("test")))
