"""The accuracy matrix of a store: R[t][i] = accuracy on task i after training task t, row 0 = the base model.

Two matrices are kept:
- task_aware[t][i]: task i scored with its own head. Defined for row 0 and for the next task (i = t+1) too, with
  task i's head on stage t's backbone: that gives forward transfer.
- task_agnostic[t][i] (class-incremental only): argmax over all classes seen up to stage t; undefined (null) for
  row 0 and for tasks not yet seen.
The primary matrix is task_agnostic for class-incremental sequences and task_aware for task-incremental. Cells are
recomputed only when the adapters or heads they depend on change (each row and column carries a key).

Beside each cell, under "hits", the cell's per-prompt record: one character per example of the split, in its order,
"1" right and "0" wrong. Two stores of one sequence and seed score the same examples in the same order, so their
last rows give paired per-prompt differences (core.metrics.prompt_paired_interval). The last row of a matrix scored
before hits were recorded is scored again to get them; the other rows keep their cells.
"""

from __future__ import annotations

import csv
import io
from typing import Callable

from .. import distributed
from ..config import Sequence, canonical_hash
from ..core.metrics import cl_metrics, forgetting_split
from ..errors import InputError
from ..store import Store, read_json, write_json_atomic, write_text_atomic
from . import cells
from .scoring import Evaluator, stage_merge_options

GRIDS = {"aware": "task_aware", "agnostic": "task_agnostic"}
# "test": the reported figures; "validation": where settings (lambda, variant, steps) are chosen.
SPLITS = ("test", "validation")


def trained_prefix(seq: Sequence, store: Store) -> int:
    """Number k such that tasks 1..k of the sequence are all in the store."""
    return len(store.trained_prefix(seq.task_ids))


def matrix_keys(seq: Sequence, store: Store, k: int, split: str = "test",
                load_data: Callable | None = None) -> tuple[list[str], list[str]]:
    """Row keys (the stage rule, merge options and adapters of each stage) and column keys (each task's head and
    data: the fingerprint it was trained with, and for the validation split the validation examples' own) of the
    first k tasks as they are in the store now."""
    ids = seq.task_ids[:k]
    # the merge's resolved options, never listed by hand: an option a merge declares is in its stages' keys
    merge = [seq.method.stage_rule, sorted(seq.method.merge_options.items())]
    if seq.method.stage_rule == "ties":  # its sign election was corrected: stages merged the old way are stale
        merge.append("ties: sign of the trimmed sum")
    if seq.generative:  # the scorer decides the cells of a language model's matrix
        merge.append(scorer_detail(seq))
    adapters = [store.adapter_sha256(t) for t in ids]
    # the base row too depends on a language model's scorer (its zero-shot answers, behind FWT)
    base = canonical_hash(["base", scorer_detail(seq)]) if seq.generative else "base"
    chosen = [stage_merge_options(seq, store, t) for t in range(k + 1)]
    # a stage whose merge options a selection protocol chose carries them in its key (the others keep theirs)
    row_keys = [base] + [canonical_hash(merge + adapters[:t] + ([chosen[t]] if chosen[t] != seq.method.merge_options
                                                                 else [])) for t in range(1, k + 1)]
    col_keys = [canonical_hash([store.head_sha256(t), store.task_meta(t)["data_fingerprint"]]) for t in ids]
    if split != "test":
        col_keys = [canonical_hash([key, split, load_data(i).val_fingerprint]) for i, key in enumerate(col_keys)]
    return row_keys, col_keys


def scorer_detail(seq: Sequence) -> str:
    """What the scorer compares, as recorded in the matrix and its row keys: exact match reads the whole answer the
    model writes, up to its end token or the budget (a matrix scored by the earlier 2-token prefix match has
    other row keys, so its cells are scored again)."""
    if seq.scorer != "exact-match":
        return seq.scorer
    from ..models.lm import ANSWER_SLACK

    budget = seq.evaluation.max_new_tokens
    return f"exact-match: whole answer, up to the end token or {budget or f'longest answer + {ANSWER_SLACK}'} tokens"


def check_data_unchanged(seq: Sequence, store: Store, k: int, load_data: Callable) -> None:
    """Before any cell is scored: each trained task's data, as loaded now, is the data it was trained on (the
    fingerprint covers the train and test splits), else an InputError naming the task and both seeds."""
    from ..data import joint_task_data

    for i, task_id in enumerate(seq.task_ids[:k]):
        meta = store.task_meta(task_id)
        if meta.get("config", {}).get("method", {}).get("init") == "joint":  # trained on tasks 1..i together
            loaded = joint_task_data([load_data(j) for j in range(i + 1)], seq.task_ids[:i + 1]).fingerprint
        else:
            loaded = load_data(i).fingerprint
        if loaded != meta["data_fingerprint"]:
            why = (f"trained with seed {meta.get('seed')}, loaded with seed {seq.seed}" if meta.get("seed") != seq.seed
                   else f"seed {seq.seed} both times: the source's files, or how pslora splits them, changed")
            raise InputError(f"task {task_id}: its data as loaded now is not the data it was trained on ({why}; "
                             f"fingerprint {meta['data_fingerprint'][:12]}, now {loaded[:12]}): its test split may "
                             f"hold training rows; retrain it or restore the data")


def needed_cells(k: int, class_incremental: bool) -> list[tuple[int, int, str]]:
    """(stage t, task i (0-based), kind) for every cell a prefix of k trained tasks defines."""
    cells = [(0, i, "aware") for i in range(k)]
    for t in range(1, k + 1):
        cells += [(t, i, "aware") for i in range(min(t + 1, k))]
        if class_incremental:
            cells += [(t, i, "agnostic") for i in range(t)]
    return cells


def empty_doc(seq: Sequence, split: str = "test") -> dict:
    n = len(seq.tasks)
    grid = lambda: [[None] * n for _ in range(n + 1)]  # noqa: E731
    ci = seq.agnostic_scoring
    return {"tasks": seq.task_ids, "split": split, "scenario": seq.scenario, "merge": seq.method.stage_rule,
            "scorer": seq.scorer,
            "scorer_detail": scorer_detail(seq) if seq.generative else seq.scorer,
            "primary": "task_agnostic" if ci else "task_aware",
            "task_aware": grid(), "task_agnostic": grid() if ci else None,
            "hits": {"task_aware": grid(), "task_agnostic": grid() if ci else None},
            "sample_counts": [None] * n, "row_keys": [None] * (n + 1), "col_keys": [None] * n}


def load_doc(seq: Sequence, store: Store, split: str = "test") -> dict:
    """The stored matrix of the split when it belongs to this sequence and stage rule, else an empty one."""
    path = store.split_matrix_path(split)
    doc = read_json(path) if path.is_file() else None
    fresh = empty_doc(seq, split)
    if not doc or any(doc.get(key) != fresh[key] for key in ("tasks", "merge", "scenario")) \
            or doc.get("scorer", "heads") != fresh["scorer"]:
        return fresh
    doc["scorer"], doc["scorer_detail"], doc["split"] = fresh["scorer"], fresh["scorer_detail"], split
    if not isinstance(doc.get("hits"), dict):  # scored before per-prompt hits were kept
        doc["hits"] = fresh["hits"]
    return doc


def _drop_stale(doc: dict, row_keys: list[str], col_keys: list[str]) -> None:
    """Clear the rows and columns whose key changed (their adapters, heads or data are not those scored)."""
    grids = [g for name in GRIDS.values() for g in (doc[name], doc["hits"][name]) if g is not None]
    for t, key in enumerate(row_keys):
        if doc["row_keys"][t] != key:
            for grid in grids:
                grid[t] = [None] * len(doc["tasks"])
            doc["row_keys"][t] = key
    for i, key in enumerate(col_keys):
        if doc["col_keys"][i] != key:
            for grid in grids:
                for row in grid:
                    row[i] = None
            doc["col_keys"][i] = key


def complete_matrix(seq: Sequence, store: Store, device, load_data: Callable,
                    progress: Callable[[str], None] | None = None, evaluator: Evaluator | None = None,
                    split: str = "test") -> dict:
    """Fill every missing or stale cell of the accuracy matrix of `split` ("test", or "validation": the examples
    chosen on) for the trained prefix; write it atomically (the two splits' matrices are kept apart)."""
    if split not in SPLITS:
        raise InputError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
    doc = load_doc(seq, store, split)
    k = trained_prefix(seq, store)
    for task_id in seq.task_ids[:k]:  # a damaged adapter or head is reported, never scored
        store.verify_task(task_id)
    if split != "test":
        check_data_unchanged(seq, store, k, load_data)
        for i, task_id in enumerate(seq.task_ids[:k]):
            if not load_data(i).val_y:
                raise InputError(f"task {task_id}: has no validation examples (its training side is used whole: "
                                 f"no train_per_class cap leaves any over); a new store whose task sets "
                                 f"data.validation_fraction, or a train_per_class cap, has them")
    keys = matrix_keys(seq, store, k, split, load_data)
    _drop_stale(doc, *keys)
    todo: dict[int, list[tuple[int, str]]] = {}
    recorded = not distributed.world().active  # under torchrun each rank scores a shard: no per-prompt record
    for t, i, kind in needed_cells(k, doc["task_agnostic"] is not None):
        if doc[GRIDS[kind]][t][i] is None or (recorded and t == k and doc["hits"][GRIDS[kind]][t][i] is None):
            todo.setdefault(t, []).append((i, kind))
    if todo:
        if split == "test":  # the validation split's data was checked above, before its keys read it
            check_data_unchanged(seq, store, k, load_data)
        shared = cells.cells_dir(seq) if recorded else None
        if shared:
            todo = _from_shared_cells(seq, store, split, doc, todo, keys, shared, progress)
        for t in sorted(todo):
            evaluator = evaluator or Evaluator(seq, store, device, load_data, split)
            if progress:
                progress(f"evaluating stage {t} ({'base model' if t == 0 else 'tasks 1..' + str(t) + ' merged'}) "
                         f"on {len({i for i, _ in todo[t]})} task(s)")
            for (i, kind), acc in evaluator.stage(t, todo[t]).items():
                doc[GRIDS[kind]][t][i] = round(acc, 6)
                doc["hits"][GRIDS[kind]][t][i] = evaluator.hits.get((t, i, kind)) if recorded else None
                if shared and kind == "aware":
                    cells.keep(shared, cells.cell_key(seq, store, split, i, keys[0][t], keys[1][i]),
                               doc[GRIDS[kind]][t][i], doc["hits"][GRIDS[kind]][t][i])
        for i in range(k):
            doc["sample_counts"][i] = len(load_data(i).split(split)[1])
    doc["metrics"] = matrix_metrics(doc, k)
    if distributed.world().is_main:
        write_matrix(store, doc, split)
    return doc


def _from_shared_cells(seq: Sequence, store: Store, split: str, doc: dict, todo: dict, keys: tuple, shared,
                       progress: Callable[[str], None] | None) -> dict[int, list[tuple[int, str]]]:
    """Fill the cells another store of the grid already scored (evaluation/cells.py); the rest, still to score."""
    left: dict[int, list[tuple[int, str]]] = {}
    taken = 0
    for t, wanted in todo.items():
        for i, kind in wanted:
            found = cells.lookup(shared, cells.cell_key(seq, store, split, i, keys[0][t], keys[1][i])) \
                if kind == "aware" else None
            if found is None:
                left.setdefault(t, []).append((i, kind))
            else:
                doc["task_aware"][t][i], doc["hits"]["task_aware"][t][i] = found
                taken += 1
    if taken and progress:
        progress(f"{taken} cell(s) taken from the grid's scored cells ({shared})")
    return left


def _prefix(grid: list[list], k: int) -> list[list]:
    return [row[:k] for row in grid[:k + 1]]


FWT_WITH_HEADS = ("null where tasks are scored with heads: task i's head was trained against stage i-1's backbone, so "
                  "it fits those features better than W0's whatever the transfer (R[i-1][i] > R[0][i] by construction)")


def matrix_metrics(doc: dict, k: int) -> dict:
    """cl_metrics on the trained prefix of the primary matrix and of the task-aware one. FWT only where the zero-shot
    cell R[0][i] means something: a language model's own answers (null with the reason for head scoring)."""
    if k == 0:
        return {}
    counts = doc["sample_counts"][:k]
    counts = counts if all(c for c in counts) else None
    out = {"task_aware": cl_metrics(_prefix(doc["task_aware"], k), counts)}
    if doc["task_agnostic"] is not None:
        out["task_agnostic"] = cl_metrics(_prefix(doc["task_agnostic"], k), counts)
        out["forgetting_split"] = forgetting_split(out["task_agnostic"], out["task_aware"])
    if doc.get("scorer", "heads") == "heads":
        for name in ("task_aware", "task_agnostic"):
            if name in out:
                out[name]["fwt"] = None
        out["notes"] = {"fwt": FWT_WITH_HEADS}
    out["primary"] = out[doc["primary"]]
    return out


def write_matrix(store: Store, doc: dict, split: str = "test") -> None:
    path = store.split_matrix_path(split)
    write_json_atomic(path, doc)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["matrix", "stage"] + doc["tasks"])
    for name in ("task_agnostic", "task_aware"):
        if doc[name] is None:
            continue
        for t, row in enumerate(doc[name]):
            w.writerow([name, "base" if t == 0 else doc["tasks"][t - 1]] + ["" if v is None else v for v in row])
    write_text_atomic(path.with_suffix(".csv"), buf.getvalue())
