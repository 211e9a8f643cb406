"""Choosing a method's strength with only what a continual learner has when a task arrives: the validation split of
that task (stability-decay) or of the first k tasks (first-tasks). The test split is never read here.

- stability-decay (De Lange et al., TPAMI 2021, the continual hyperparameter framework; `Mattdl/CLsurvey`): per
  task, the task trained with the method's knobs off gives the reference validation accuracy A_ref of the new task;
  then the strongest candidate is trained, accepted when the new task's validation accuracy is >= (1 − p)·A_ref,
  else weakened and retrained; after the last candidate the last is kept.
- first-tasks (A-GEM's protocol; Lee et al. 2024, "Hyperparameter Selection in Continual Learning"): every candidate
  trains the first k tasks; the one with the best mean validation accuracy over them at stage k is kept for every
  task.

The knobs and their candidates come from the method (methods/__init__.py, Knob). Each try trains in a side store
under STORE/selection/ that holds copies of the earlier tasks: a killed selection resumes where it stopped (a try's
training from its checkpoint, a scored try from selection/<...>/state.json). The chosen try's task folder moves into
the store with the record (values, tries, reference) in its meta.json under "selection".
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from .. import distributed
from ..config import Sequence, canonical_hash
from ..errors import InputError
from ..report import Reporter
from ..store import Store, read_json, write_json_atomic
from .task import check_predecessors, train_one

SELECTION_DIR = "selection"


def knobs(seq: Sequence) -> tuple:
    """The training knobs the sequence's protocol tunes: none under `fixed` or for a method that declares none;
    stability decay tunes per-task knobs only."""
    protocol = seq.selection.protocol
    if protocol == "fixed":
        return ()
    return tuple(k for k in seq.method.spec.knobs
                 if k.kind != "merge" and (k.per_task or protocol != "stability-decay"))


def merge_knobs(seq: Sequence) -> tuple:
    """The merge options the protocol chooses per stage after training (no training cost)."""
    return () if seq.selection.protocol == "fixed" else tuple(k for k in seq.method.spec.knobs if k.kind == "merge")


def tuned_fields(seq: Sequence) -> set[str]:
    return {k.field for k in knobs(seq) + merge_knobs(seq)}


def with_values(seq: Sequence, values: dict[str, float]) -> Sequence:
    """The sequence with the method's knobs set to `values`."""
    return seq.replace(method=dataclasses.replace(seq.method, **values))


def candidates(seq: Sequence) -> list[dict[str, float]]:
    """The tries, strongest first: every knob at its n-th candidate (the knobs of a method weaken together)."""
    sel = seq.selection
    columns = {k.field: k.candidates(getattr(seq.method, k.field), sel.decay, sel.candidates) for k in knobs(seq)}
    return [{name: values[n] for name, values in columns.items()} for n in range(sel.candidates)]


def train_selected(seq: Sequence, store: Store, task_id: str, device, reporter: Reporter, load,
               restart: bool = False) -> dict:
    """Train `task_id` as the sequence's selection protocol says; returns its meta.json."""
    if not knobs(seq) and not merge_knobs(seq):
        return train_one(seq, store, task_id, device, reporter, load, restart=restart)
    if distributed.world().active:
        raise InputError(f"selection.protocol {seq.selection.protocol}: runs in one process (it trains side stores); "
                         f"run it without torchrun, or with selection.protocol: fixed")
    i = check_predecessors(seq, store, task_id)
    if not knobs(seq):
        meta = train_one(seq, store, task_id, device, reporter, load, restart=restart)
    elif seq.selection.protocol == "stability-decay":
        meta = _stability_decay(seq, store, i, device, reporter, load, restart)
    else:
        meta = _first_tasks(seq, store, i, device, reporter, load, restart)
    if merge_knobs(seq):
        for j in range(i, len(seq.tasks)):  # first-tasks may have adopted several tasks at once
            if not store.has_task(seq.task_ids[j]):
                break
            meta = _choose_merge(seq, store, j, device, reporter, load)
    return meta


# -- a merge's options, per stage ----------------------------------------------------------------------------------

def _choose_merge(seq, store, i, device, reporter, load) -> dict:
    """Stage i+1's merge options: each candidate scores the merge of tasks 1..i+1 on the validation split of those
    tasks (their mean accuracy); the best is recorded in task i's meta.json under selection.merge."""
    from ..core.merges import MERGES
    from ..evaluation.scoring import Evaluator
    from ..merge_options import resolve_options

    task_id = seq.task_ids[i]
    record = dict(store.task_meta(task_id).get("selection") or {"protocol": seq.selection.protocol})
    columns = {k.field: k.candidates(getattr(seq.method, k.field), seq.selection.decay, seq.selection.candidates)
               for k in merge_knobs(seq)}
    tries = [{name: values[n] for name, values in columns.items()} for n in range(seq.selection.candidates)]
    tasks = list(range(i + 1))
    for j in tasks:
        _check_validation(seq, load, j)
    kind = "agnostic" if seq.agnostic_scoring else "aware"
    evaluator = Evaluator(seq, store, device, load, "validation")
    attempts = []
    for values in tries:
        evaluator.seq = with_values(seq, values)
        scores = evaluator.stage(i + 1, [(j, kind) for j in tasks], chosen=False)
        attempts.append({"values": values, "accuracy": sum(scores[(j, kind)] for j in tasks) / len(tasks)})
    best = max(attempts, key=lambda a: a["accuracy"])  # the first of equals: the largest candidate
    keyword = {p.setting: p.name for p in MERGES[seq.method.merge].parameters}  # merge_scale -> scale
    options = resolve_options(seq.method.merge, {keyword[name]: v for name, v in best["values"].items()})
    record["merge"] = {"split": "validation", "values": best["values"], "options": options,
                       "tasks": seq.task_ids[:i + 1], "attempts": attempts}
    reporter.info(f"stage {i + 1}: selection chose the merge's "
                  + ", ".join(f"{k}={v:g}" for k, v in best["values"].items())
                  + f" (validation accuracy over tasks 1..{i + 1} {100 * best['accuracy']:.1f})")
    return _record(store, task_id, record)


def _check_validation(seq, load, i) -> None:
    if not load(i).val_y:
        raise InputError(f"task {seq.task_ids[i]}: has no validation examples, which selection.protocol "
                         f"{seq.selection.protocol} chooses on; set data.validation_fraction or a train_per_class cap "
                         f"that leaves some")


# -- stability decay ---------------------------------------------------------------------------------------------

def _stability_decay(seq, store, i, device, reporter, load, restart) -> dict:
    task_id = seq.task_ids[i]
    sel = seq.selection
    if all(k.acts_from > i for k in knobs(seq)):
        meta = train_one(seq, store, task_id, device, reporter, load, restart=restart)
        return _record(store, seq.task_ids[i], {"protocol": sel.protocol, "values": None,
                                                "note": "no knob acts on this task (no earlier task): trained as set"})
    folder = store.root / SELECTION_DIR / task_id
    tries = [{"label": "reference", "values": {k.field: k.off for k in knobs(seq)}}]
    tries += [{"label": f"try-{n}", "values": v} for n, v in enumerate(candidates(seq))]
    state = _state(folder, seq, store, i, tries, restart)
    earlier = seq.task_ids[:i]
    reference = None
    chosen = None
    for entry in state["tries"]:
        if entry["accuracy"] is None:
            side = _side_store(store, folder / entry["label"], earlier)
            cseq = with_values(seq, entry["values"])
            reporter.info(f"task {task_id}: selection ({sel.protocol}) {entry['label']}: "
                          + ", ".join(f"{k}={v:g}" for k, v in entry["values"].items()))
            if not side.has_task(task_id):
                train_one(cseq, side, task_id, device, reporter, load)
            entry["seconds"] = side.task_meta(task_id)["train"]["seconds"]
            entry["accuracy"] = _validation_accuracy(cseq, side, device, load, [i], i + 1)
            write_json_atomic(folder / "state.json", state)
        if entry["label"] == "reference":
            reference = entry["accuracy"]
            state["threshold"] = (1 - sel.tolerance) * reference
            reporter.info(f"task {task_id}: reference (knobs off) validation accuracy {100 * reference:.1f}; "
                          f"accepting >= {100 * state['threshold']:.1f}")
            continue
        entry["accepted"] = entry["accuracy"] >= state["threshold"]
        reporter.info(f"task {task_id}: {entry['label']} validation accuracy {100 * entry['accuracy']:.1f} "
                      f"({'accepted' if entry['accepted'] else 'below the tolerance'})")
        chosen = entry
        if entry["accepted"]:
            break
    state["tries"] = [e for e in state["tries"] if e["accuracy"] is not None]
    record = {"protocol": sel.protocol, "split": "validation", "values": chosen["values"],
              "accepted": chosen["accepted"], "reference": reference, "threshold": state["threshold"],
              "tolerance": sel.tolerance, "decay": sel.decay,
              "reference_seconds": state["tries"][0].get("seconds"),
              "attempts": [{"values": e["values"], "accuracy": e["accuracy"], "accepted": e.get("accepted"),
                            "seconds": e.get("seconds")} for e in state["tries"] if e["label"] != "reference"]}
    return _adopt(store, folder / chosen["label"], [task_id], record, folder, reporter)


# -- first tasks ----------------------------------------------------------------------------------------------------

def _first_tasks(seq, store, i, device, reporter, load, restart) -> dict:
    task_ids = seq.task_ids
    k = min(seq.selection.first_tasks, len(task_ids))
    if i >= k:  # chosen: the value recorded with the first tasks
        record = store.task_meta(task_ids[0]).get("selection") or {}
        if record.get("protocol") != "first-tasks" or not record.get("values"):
            raise InputError(f"{store.root}: task {task_ids[0]} has no first-tasks selection record; retrain the "
                             f"first {k} task(s) under selection.protocol first-tasks")
        train_one(with_values(seq, record["values"]), store, task_ids[i], device, reporter, load, restart=restart)
        return _record(store, task_ids[i], {"protocol": "first-tasks", "values": record["values"],
                                            "note": f"chosen on the first {k} task(s) (see {task_ids[0]})"})
    if i > 0:
        raise InputError(f"task {task_ids[i]}: under selection.protocol first-tasks the first {k} tasks are chosen "
                         f"together: train {task_ids[0]} (pslora run trains them in order)")
    folder = store.root / SELECTION_DIR / "first-tasks"
    tries = [{"label": f"try-{n}", "values": v} for n, v in enumerate(candidates(seq))]
    state = _state(folder, seq, store, 0, tries, restart, k=k)
    shared = min(kn.acts_from for kn in knobs(seq))  # tasks before it are the same for every try: trained once
    for entry in state["tries"]:
        if entry["accuracy"] is not None:
            continue
        side = _side_store(store, folder / entry["label"], [])
        cseq = with_values(seq, entry["values"])
        reporter.info("selection (first-tasks) " + entry["label"] + ": "
                      + ", ".join(f"{name}={v:g}" for name, v in entry["values"].items()))
        trained = []
        for j in range(k):
            if side.has_task(task_ids[j]):
                continue
            first = folder / state["tries"][0]["label"]
            if j < shared and entry is not state["tries"][0] and Store(first).has_task(task_ids[j]):
                _copy_task(Store(first), side, task_ids[j])
            else:
                train_one(cseq, side, task_ids[j], device, reporter, load)
                trained.append(task_ids[j])
        entry["seconds"] = sum(side.task_meta(t)["train"]["seconds"] for t in trained)  # this run's trainings
        entry["accuracy"] = _validation_accuracy(cseq, side, device, load, list(range(k)), k)
        reporter.info(f"selection (first-tasks) {entry['label']}: mean validation accuracy over the first {k} "
                      f"task(s) {100 * entry['accuracy']:.1f}")
        write_json_atomic(folder / "state.json", state)
    best = max(state["tries"], key=lambda e: e["accuracy"])  # max keeps the first (strongest) of equals
    record = {"protocol": "first-tasks", "split": "validation", "values": best["values"], "first_tasks": k,
              "attempts": [{"values": e["values"], "accuracy": e["accuracy"], "seconds": e.get("seconds")}
                           for e in state["tries"]]}
    return _adopt(store, folder / best["label"], task_ids[:k], record, folder, reporter)


# -- shared ---------------------------------------------------------------------------------------------------------

def _state(folder: Path, seq: Sequence, store: Store, i: int, tries: list[dict], restart: bool, k: int = 1) -> dict:
    """The selection's progress, resumed when it was written for the same tries, earlier tasks and settings."""
    earlier = {t: store.adapter_sha256(t) for t in seq.task_ids[:i]}
    plain = seq.to_dict()
    key = canonical_hash({"tries": tries, "earlier": earlier, "k": k, "seed": seq.seed,
                          "settings": {s: plain[s] for s in ("method", "training", "backbone", "lora")},
                          "tasks": plain["tasks"][:max(i + 1, k)]})
    path = folder / "state.json"
    if not restart and path.is_file():
        state = read_json(path)
        if state.get("key") == key:
            return state
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    state = {"key": key, "tries": [dict(t, accuracy=None) for t in tries]}
    write_json_atomic(path, state)
    return state


def _side_store(store: Store, root: Path, earlier: list[str]) -> Store:
    """A store beside the real one (same manifest) holding copies of its earlier tasks."""
    side = Store(root)
    if not side.exists():
        manifest = store.manifest()
        side.create(manifest["sequence"], store.sequence_copy.read_text(encoding="utf-8"),
                    manifest["identity_hash"], manifest["base_model"])
    for t in earlier:
        if not side.has_task(t) or side.adapter_sha256(t) != store.adapter_sha256(t):
            _copy_task(store, side, t)
    return side


def _copy_task(source: Store, target: Store, task_id: str) -> None:
    with target.new_task(task_id) as out:
        for f in sorted(source.task_dir(task_id).iterdir()):
            shutil.copy2(f, out.folder / f.name)


def _validation_accuracy(seq: Sequence, side: Store, device, load, tasks: list[int], stage: int) -> float:
    """Mean accuracy of stage `stage` of the side store on the validation split of `tasks` (the primary scoring:
    without the task id for class-incremental encoders)."""
    from ..evaluation.scoring import Evaluator

    for i in tasks:
        _check_validation(seq, load, i)
    kind = "agnostic" if seq.agnostic_scoring else "aware"
    scores = Evaluator(seq, side, device, load, "validation").stage(stage, [(i, kind) for i in tasks])
    return sum(scores[(i, kind)] for i in tasks) / len(tasks)


def _adopt(store: Store, side_root: Path, task_ids: list[str], record: dict, folder: Path,
           reporter: Reporter) -> dict:
    """Move the chosen try's task folders into the store with the selection record; drop the side stores."""
    side = Store(side_root)
    meta = None
    for task_id in task_ids:
        with store.new_task(task_id) as out:
            for f in sorted(side.task_dir(task_id).iterdir()):
                if f.name != "meta.json":
                    shutil.copy2(f, out.folder / f.name)
            meta = side.task_meta(task_id)
            # a task no knob acts on was trained once for every try: it records the chosen values
            meta["config"]["method"].update(record["values"])
            meta = out.seal(dict(meta, selection=record))
    shutil.rmtree(folder, ignore_errors=True)
    reporter.info(f"task {task_ids[-1]}: selection ({record['protocol']}) chose "
                  + ", ".join(f"{k}={v:g}" for k, v in record["values"].items()))
    return meta


def _record(store: Store, task_id: str, record: dict) -> dict:
    """Add (or replace) the selection record of a task in the store."""
    files = store.task_files(task_id)
    meta = store.task_meta(task_id)
    meta.pop("sha256", None)
    with store.new_task(task_id) as out:
        for f in sorted(files.folder.iterdir()):
            if f.name != "meta.json":
                shutil.copy2(f, out.folder / f.name)
        return out.seal(dict(meta, selection=record))
