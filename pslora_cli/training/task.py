"""Training one task of a store: check its predecessors, load its data, train under the signal handlers, write the
task folder (adapter, head, meta.json) atomically."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

from .. import distributed
from ..config import Sequence, canonical_hash
from ..errors import InputError
from ..report import Reporter
from ..store import Store
from . import cache


def check_predecessors(seq: Sequence, store: Store, task_id: str) -> int:
    """Index of `task_id`; an InputError naming the earlier tasks that are not trained yet."""
    i = seq.index(task_id)
    missing = [t for t in seq.task_ids[:i] if not store.has_task(t)]
    if missing:
        raise InputError(f"task {task_id!r} needs the earlier task(s) {', '.join(missing)} in the store first "
                         f"(pslora train-task --task {missing[0]})")
    return i


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Callable[[], bool]]:
    """While the block runs, SIGINT and SIGTERM ask training to stop at the end of its current step (it saves a
    checkpoint and raises); a second SIGINT stops at once. Yields the "was a stop asked for" function."""
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum, frame):
        if requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        requested.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: bool(requested)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def resume_key(seq: Sequence, i: int, previous_sha: dict, data) -> str:
    """What a checkpoint must have been written for to be resumed (checkpoint_every aside)."""
    plain = seq.to_dict()
    training = {k: v for k, v in plain["training"].items() if k != "checkpoint_every"}
    return canonical_hash({"config": {k: plain[k] for k in ("backbone", "lora", "method", "scenario")},
                           "training": training, "task": plain["tasks"][i], "seed": seq.seed, "index": i,
                           "previous": previous_sha, "data": data.fingerprint})


def task_data(seq: Sequence, i: int, load):
    """Task i's training data; for a method that trains jointly, tasks 1..i together with one joint head."""
    if not seq.method.spec.trains_jointly:
        return load(i)
    from ..data import joint_task_data

    return joint_task_data([load(j) for j in range(i + 1)], seq.task_ids[:i + 1])


def train_one(seq: Sequence, store: Store, task_id: str, device, reporter: Reporter, load,
              restart: bool = False) -> dict:
    """Train `task_id` against the earlier tasks in the store and save it; returns its meta.json."""
    from .recipe import Checkpointing, library_versions, train_task

    i = check_predecessors(seq, store, task_id)
    data = task_data(seq, i, load)
    earlier = seq.task_ids[:i]
    for t in earlier:
        store.verify_task(t)
    previous_sha = {t: store.adapter_sha256(t) for t in earlier}
    checkpoint = store.checkpoint_path(task_id)
    if restart:
        checkpoint.unlink(missing_ok=True)
    reporter.info(f"training task {task_id} ({i + 1}/{len(seq.tasks)}): {len(data.classes)} classes, "
                  f"{len(data.train_x)} train / {len(data.test_x)} test examples, {data.source}")
    dropped = load(i).dropped
    if dropped:
        reporter.info(f"task {task_id}: left out {sum(dropped.values())} rows whose label is not one of its classes ("
                      + ", ".join(f"{label} {n}" for label, n in sorted(dropped.items())[:10])
                      + "; data.unknown_labels: error refuses them)")
    main = distributed.world().is_main
    root = cache.cache_dir() if not distributed.world().active else None
    key = cache.training_key(seq, i, [store.task_meta(t)["sha256"] for t in earlier], data.fingerprint) \
        if root is not None else None
    with (cache.claimed(root, key) if key else contextlib.nullcontext()) as entry, \
            (store.new_task(task_id) if main else contextlib.nullcontext()) as out:
        cached = cache.usable(entry) if entry is not None else None
        if cached is not None:
            cache.take(entry, out.folder)
            metrics = dict(cached["train"], reused={"cache": str(root), "key": key})
            reporter.info(f"task {task_id}: the same training is in the task cache ({key[:12]}): reused")
        else:
            with reporter.steps(f"task {task_id}") as progress, stop_on_signals() as stop_requested:
                ckpt = Checkpointing(checkpoint, resume_key(seq, i, previous_sha, data), stop_requested,
                                     reporter.info)
                metrics = train_task(seq, i, data, [store.task_files(t).adapter_dir for t in earlier], out,
                                     device, progress, ckpt)
        meta = {
            "task": task_id, "index": i, "classes": load(i).classes,
            "num_train": len(data.train_x), "num_test": len(data.test_x),
            "data_fingerprint": data.fingerprint, "data_source": data.source,
            "seed": seq.seed, "previous_tasks": previous_sha, "dropped_rows": dropped,
            "config": seq.section("backbone", "lora", "method", "training", "scenario")
            | {"task": seq.to_dict()["tasks"][i]},
            "train": metrics, "versions": library_versions(),
        }
        if seq.generative:
            meta |= {"generative": True, "answers": load(i).answers, "scorer": seq.scorer}
        if out is not None:
            meta = out.seal(meta)
            if entry is not None and cached is None:
                cache.put(entry, out.folder)
    if main:
        checkpoint.unlink(missing_ok=True)  # the task is saved; a leftover checkpoint would only be resumed to the end
    distributed.barrier()
    reporter.info(f"task {task_id}: trained {metrics['steps']} steps in {metrics['seconds']:.1f} s, "
                  f"final loss {metrics['final']['loss']:.4f}")
    stale = [t for t in seq.task_ids[i + 1:] if store.has_task(t)]
    if stale:
        reporter.info(f"note: {', '.join(stale)} were trained against the previous {task_id}; "
                      f"retrain them (pslora train-task --task {stale[0]}) to keep the sequence consistent")
    return meta
