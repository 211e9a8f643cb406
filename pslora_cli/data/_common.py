"""Shared pieces of the data layer: the TaskData record, the REQUIRED sentinel, seeded splitting and capping,
and the content fingerprint.

Randomness: every loader derives three independent ``random.Random`` streams from the task seed
(``split``, ``cap``, ``shuffle``), seeded with strings. String seeds are hashed with SHA-512 by
``random.Random`` (not with Python's salted ``hash``), so the streams - and therefore the splits - are the
same on every run and every machine. Keeping the streams separate means, for example, that changing
``train_per_class`` does not move examples between the train and test sides.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import pathlib
import random
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable, Sequence

from pslora_cli.errors import InputError


class _Marker:
    """A named marker value, compared by identity; copies and pickles stay the same object."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        return self.name


# A schema field with no default.
REQUIRED = _Marker("REQUIRED")
# The default of an optional field added after stores were written: `validate_source` leaves such a field out of the
# filled mapping unless it is given (a null counts as not given), so that the sources written before it keep their
# filled form, and with it the identity of their stores.
ABSENT = _Marker("ABSENT")


@dataclass
class TaskData:
    """The labelled data of one task.

    ``classes[i]`` is the name of label ``i``. ``fingerprint`` is a SHA-256 hex digest over the ordered
    class names and the ordered train and test examples: the same source, options and seed give the same
    fingerprint on every run and machine.
    """

    classes: list[str]
    train_x: list
    train_y: list[int]
    test_x: list
    test_y: list[int]
    fingerprint: str
    source: str
    modality: str = "text"
    # Rows left out because their label is not one of the task's classes: label -> count.
    dropped: dict = field(default_factory=dict)
    # The validation split (disjoint from train and test; `fingerprint` covers train and test only, so that adding a
    # validation split leaves a stored task's identity as it was): examples, labels, their own fingerprint.
    val_x: list = field(default_factory=list)
    val_y: list[int] = field(default_factory=list)
    val_fingerprint: str | None = None

    def split(self, name: str) -> tuple[list, list[int]]:
        """(examples, labels) of the "test" or the "validation" split."""
        return (self.val_x, self.val_y) if name == "validation" else (self.test_x, self.test_y)


def rngs(seed: int) -> tuple[random.Random, random.Random, random.Random]:
    """The (split, cap, shuffle) random streams for ``seed``."""
    return (
        random.Random(f"pslora-data-split:{seed}"),
        random.Random(f"pslora-data-cap:{seed}"),
        random.Random(f"pslora-data-shuffle:{seed}"),
    )


def validation_rng(seed: int) -> random.Random:
    """The validation split's own stream: drawing it consumes none of the three others, so train and test stay
    what they were without it."""
    return random.Random(f"pslora-data-validation:{seed}")


# The validation split (every source): `validation_per_class` examples per class drawn from the training side's
# examples that neither train nor test uses (default: the test cap, or DEFAULT_VALIDATION where test is uncapped),
# or, for sources whose training side is used whole, `validation_fraction` of it carved off (which changes train).
VALIDATION_PER_CLASS_FIELD = (int, ABSENT)
VALIDATION_FRACTION_FIELD = (float, ABSENT)
DEFAULT_VALIDATION = 100


def validation_count(source: dict) -> int:
    """Validation examples per class to draw from the unused training side."""
    given = source.get("validation_per_class")
    if given is not None:
        return given
    return source.get("test_per_class") or DEFAULT_VALIDATION


def cap_with_rest(pools: Sequence[Sequence], cap: int | None, rng: random.Random,
                  keep_order: bool = False) -> tuple[list[list], list[list]]:
    """(chosen, rest) per class: a seeded sample of at most ``cap`` items (the draws of ``rng.sample(pool, cap)``,
    whose picks depend on the pool's size only; in the pool's order with ``keep_order``), and the items left over,
    in order."""
    chosen, rest = [], []
    for pool in pools:
        pool = list(pool)
        if cap is None or len(pool) <= cap:
            chosen.append(pool)
            rest.append([])
            continue
        picked = rng.sample(range(len(pool)), cap)
        if keep_order:
            picked = sorted(picked)
        taken = set(picked)
        chosen.append([pool[k] for k in picked])
        rest.append([x for k, x in enumerate(pool) if k not in taken])
    return chosen, rest


def draw_validation(rest: Sequence[Sequence], n: int, rng: random.Random, usable=None) -> list[list]:
    """Per class, a seeded sample of at most ``n`` of the left-over items for which ``usable(class, item)`` holds
    (all of them without it), in their order."""
    out = []
    for c, pool in enumerate(rest):
        pool = [x for x in pool if usable is None or usable(c, x)]
        keep = sorted(rng.sample(range(len(pool)), n)) if len(pool) > n else range(len(pool))
        out.append([pool[k] for k in keep])
    return out


def validation_fingerprint(classes: Sequence[str], val_x: Sequence, val_y: Sequence[int]) -> str:
    return compute_fingerprint(["validation", *classes], [], [], val_x, val_y)


def _encode_item(x) -> bytes:
    if isinstance(x, str):
        return b"s" + x.encode("utf-8")
    if isinstance(x, (bytes, bytearray)):
        return b"b" + bytes(x)
    tobytes = getattr(x, "tobytes", None)
    if tobytes is not None:  # numpy arrays / tensors converted by the caller
        shape = getattr(x, "shape", ())
        dtype = str(getattr(x, "dtype", ""))
        return b"a" + json.dumps([list(shape), dtype]).encode() + b"|" + tobytes()
    return b"j" + json.dumps(x, sort_keys=True, ensure_ascii=False).encode("utf-8")


def compute_fingerprint(classes: Sequence[str], train_x: Sequence, train_y: Sequence[int],
                        test_x: Sequence, test_y: Sequence[int]) -> str:
    """SHA-256 hex digest over the ordered class names, then the ordered train and test examples.

    Every field is length-prefixed, so no two different datasets share a byte stream.
    """
    h = hashlib.sha256()

    def put(b: bytes) -> None:
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)

    put(b"pslora-taskdata-v1")
    put(json.dumps(list(classes), ensure_ascii=False).encode("utf-8"))
    for tag, xs, ys in ((b"train", train_x, train_y), (b"test", test_x, test_y)):
        put(tag)
        put(str(len(xs)).encode())
        for x, y in zip(xs, ys):
            put(str(int(y)).encode())
            put(_encode_item(x))
    return h.hexdigest()


def n_test_for(n: int, fraction: float) -> int:
    """How many of ``n`` items (n >= 2) go to test for a test ``fraction``: at least 1, at most n - 1."""
    k = int(math.floor(n * fraction + 0.5))
    return min(max(k, 1), n - 1)


def split_groups(groups: Sequence[Hashable], fraction: float, rng: random.Random) -> tuple[set, set]:
    """Split group keys (sorted for a canonical order, then shuffled) into (train, test) sets.

    ``fraction`` of the groups (rounded; at least one on each side) go to test. Fewer than two groups:
    everything goes to train (the caller reports the empty test side).
    """
    keys = sorted(set(groups), key=repr)
    rng.shuffle(keys)
    if len(keys) < 2:
        return set(keys), set()
    k = n_test_for(len(keys), fraction)
    return set(keys[k:]), set(keys[:k])


def dedupe_by_group(items: Iterable[tuple[Hashable, str, int]]) -> list[tuple[Hashable, str, int]]:
    """Drop texts that would leak or contradict: ``items`` are (group, text, label).

    A text that occurs in more than one group, or with more than one label, is dropped entirely (it would
    let the same text sit on both sides of a group split, or carry two labels). Repeats of a text inside one
    group with one label are kept once. Order of first occurrence is kept.
    """
    items = list(items)
    seen: dict[str, tuple[set, set]] = {}
    for g, t, y in items:
        gs, ys = seen.setdefault(t, (set(), set()))
        gs.add(g)
        ys.add(y)
    out, emitted = [], set()
    for g, t, y in items:
        gs, ys = seen[t]
        if len(gs) > 1 or len(ys) > 1 or t in emitted:
            continue
        emitted.add(t)
        out.append((g, t, y))
    return out


def conflicting_texts(pools: Sequence[Sequence[str]]) -> set[str]:
    """The texts that occur in more than one class's pool (under two labels)."""
    owners: dict[str, int] = {}
    conflicting = set()
    for label, pool in enumerate(pools):
        for t in pool:
            if owners.setdefault(t, label) != label:
                conflicting.add(t)
    return conflicting


def carve_per_class(pools: Sequence[Sequence[str]], fraction: float, rng: random.Random,
                    ) -> tuple[list[list[str]], list[list[str]]]:
    """Carve a test side out of per-class pools of texts, stratified and seeded.

    Grouping is by text: every copy of a text goes to the same side. A text filed under two classes is left out
    (split per class, its copies could sit on both sides, and it carries two labels). A class with a single
    distinct text keeps it on the train side (its test side stays empty and the caller reports it).
    """
    drop = conflicting_texts(pools)
    if drop:
        pools = [[t for t in pool if t not in drop] for pool in pools]
    train, test = [], []
    for pool in pools:
        _, test_keys = split_groups(pool, fraction, rng)
        train.append([t for t in pool if t not in test_keys])
        test.append([t for t in pool if t in test_keys])
    return train, test


def assemble_source(classes: list[str], train_pools: Sequence[Sequence], test_pools: Sequence[Sequence],
                    source: dict, *, seed: int, where: str, description: str,
                    what: Callable[[str, str], str] | None = None) -> TaskData:
    """`assemble` for a source whose training side may give up `validation_fraction` of itself to the validation
    split (carved per class, seeded, and kept apart from the test texts), with the source's caps."""
    val_pools = None
    if source.get("validation_fraction") is not None:  # carved off the training side (changes train)
        train_pools, val_pools = carve_per_class(train_pools, source["validation_fraction"], validation_rng(seed))
        test_texts = {t for pool in test_pools for t in pool}
        val_pools = [[t for t in pool if t not in test_texts] for pool in val_pools]
    return assemble(classes, train_pools, test_pools, source["train_per_class"], source["test_per_class"],
                    seed=seed, where=where, source=description, what=what, val_pools=val_pools,
                    validation=validation_count(source))


def assemble(classes: list[str], train_pools: Sequence[Sequence], test_pools: Sequence[Sequence],
             train_cap: int | None, test_cap: int | None, *, seed: int, where: str, source: str,
             what: Callable[[str, str], str] | None = None, modality: str = "text",
             validation: int | None = None, groups: Callable[[str], Hashable] | None = None,
             val_pools: Sequence[Sequence] | None = None) -> TaskData:
    """Cap each class (seeded sample) on each side, shuffle each side (seeded) and fingerprint.

    ``train_pools[i]`` / ``test_pools[i]`` hold the examples of class ``i`` in a canonical order.
    A class left with no example on either side is an InputError naming the class; ``what(class, side)``
    (side: "training" or "test") adds detail to that message.

    The validation split: ``val_pools`` when the caller carved one, else (texts) up to ``validation`` per class of
    the training side's examples that the cap left out, skipping any text on the train or test side and any whose
    group (``groups(text)``: a movie, a speech; default the text itself) a training example belongs to, drawn
    from a stream of its own: train and test are the same with or without it.
    """
    _, cap_rng, shuffle_rng = rngs(seed)
    for side, pools in (("training", train_pools), ("test", test_pools)):
        for name, pool in zip(classes, pools):
            if not pool:
                detail = what(name, side) if what else ""
                raise InputError(f"{where}.classes: class '{name}' has no {side} examples{detail}")

    def shuffled(pools):
        out = [(x, label) for label, pool in enumerate(pools) for x in pool]
        shuffle_rng.shuffle(out)
        return [x for x, _ in out], [y for _, y in out]

    chosen_train, rest = cap_with_rest(train_pools, train_cap, cap_rng)
    chosen_test, _ = cap_with_rest(test_pools, test_cap, cap_rng)
    train_x, train_y = shuffled(chosen_train)
    test_x, test_y = shuffled(chosen_test)
    if not train_x or not test_x:  # unreachable with at least one class, kept as a guard
        raise InputError(f"{where}: the task has no {'training' if not train_x else 'test'} examples")
    fp = compute_fingerprint(classes, train_x, train_y, test_x, test_y)
    if val_pools is None and validation and modality == "text":
        group = groups or (lambda t: t)
        seen_texts = set(train_x) | set(test_x)
        train_groups = {group(t) for t in train_x}
        val_pools = draw_validation(rest, validation, validation_rng(seed),
                                    lambda c, t: t not in seen_texts and group(t) not in train_groups)
    val_x, val_y = [], []
    if val_pools is not None:
        val_rows = [(x, label) for label, pool in enumerate(val_pools) for x in pool]
        random.Random(f"pslora-data-validation-order:{seed}").shuffle(val_rows)
        val_x, val_y = [x for x, _ in val_rows], [y for _, y in val_rows]
    return TaskData(classes=list(classes), train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                    fingerprint=fp, source=source, modality=modality, val_x=val_x, val_y=val_y,
                    val_fingerprint=validation_fingerprint(classes, val_x, val_y))


def class_sort_key(value) -> tuple:
    """Sort key for raw label values: integers (and integer-looking strings) numerically, then strings."""
    if isinstance(value, bool):
        return (1, 0, str(value))
    if isinstance(value, int):
        return (0, value, str(value))
    s = str(value)
    try:
        return (0, int(s), s)
    except ValueError:
        return (1, 0, s)


def short_list(names: Iterable, limit: int = 40) -> str:
    """Comma-separated names, shortened with a count past ``limit``."""
    names = [str(n) for n in names]
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", ... ({len(names) - limit} more)"


def choose_classes(known: list[str], wanted, where: str, label_names: list[str] | None) -> list[str]:
    """The classes a source asked for, by name (or by label index when the source has label names), in order."""
    if wanted is None:
        return list(known)
    out = []
    for c in wanted:
        if label_names is not None and isinstance(c, int) and not isinstance(c, bool):
            if not 0 <= c < len(label_names):
                raise InputError(f"{where}.classes: label index {c} out of range 0..{len(label_names) - 1} "
                                 f"(known: {short_list(known)})")
            name = label_names[c]
        else:
            name = str(c)
            if name not in known:
                raise InputError(f"{where}.classes: unknown class {c!r} (known: {short_list(known)})")
        if name in out:
            raise InputError(f"{where}.classes: class {name!r} is listed twice")
        out.append(name)
    return out


def resolve_path(path_str: str, base_dir: pathlib.Path) -> pathlib.Path:
    """A data path from a sequence: ~ expanded, relative paths against the sequence file's folder."""
    p = pathlib.Path(path_str).expanduser()
    return p if p.is_absolute() else (pathlib.Path(base_dir) / p)


def existing_paths(source: dict, keys: tuple[str, ...], base_dir: pathlib.Path, where: str,
                   kind: str) -> dict[str, pathlib.Path]:
    """The paths a source names under `keys` (those set), each checked to be an existing `kind` ("file"/"folder")."""
    found = {}
    for key in keys:
        if source.get(key) is None:
            continue
        path = resolve_path(source[key], base_dir)
        if not (path.is_file() if kind == "file" else path.is_dir()):
            raise InputError(f"{where}.{key}: {kind} {path} not found")
        found[key] = path
    return found


CAPS_OPTIONAL = {"train_per_class": ((int, type(None)), None), "test_per_class": ((int, type(None)), None)}


def hf_schema(column_key: str, column_default: str) -> dict[str, tuple]:
    """The fields of a Hugging Face dataset source whose input column is `column_key` (text or image); a text source
    may give `text_template` (several columns into one text) instead of its text column."""
    return {
        "path": (str, REQUIRED),
        "name": ((str, type(None)), None),
        "train_split": (str, "train"),
        "test_split": ((str, type(None)), "test"),
        "test_fraction": (float, 0.2),
        column_key: (str, column_default),
        **({"text_template": TEXT_TEMPLATE_FIELD} if column_key == "text_column" else {}),
        "unknown_labels": UNKNOWN_LABELS_FIELD,
        "label_column": (str, "label"),
        "classes": ((list, type(None)), None),
        **CAPS_OPTIONAL,
        "trust_remote_code": (bool, False),
        "validation_per_class": VALIDATION_PER_CLASS_FIELD,
        "validation_fraction": VALIDATION_FRACTION_FIELD,
    }


def package_file(module: str, relative: str, install: str, where: str) -> pathlib.Path:
    """A data file shipped inside a Python package (module/relative), found without importing the package."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise InputError(f"{where}: the {module} package is not installed: run `{install}`")
    for loc in locations:
        file = pathlib.Path(loc) / relative
        if file.is_file():
            return file
    raise InputError(f"{where}: {relative} is missing from {locations[0]}: reinstall with `{install}`")


# `text_template`: one template, or a list of them, with {column} placeholders (literal braces as {{ and }};
# data/templates.py parses them).
TEXT_TEMPLATE_FIELD = ((str, list), ABSENT)
# `unknown_labels`: rows whose label is not one of the task's classes are left out and counted (drop, the default),
# or are an error.
UNKNOWN_LABELS_FIELD = (str, ABSENT)
UNKNOWN_LABELS = ("drop", "error")
