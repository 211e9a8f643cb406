"""A grid never trains the same thing twice: a task training is keyed by what decides its result (starting weights,
data, seed and the settings that act on it) and kept in a cache folder; a second store that asks for the same
training gets a copy of the files, checked against their sha256.

What acts on task i's training, and so is in the key: the backbone, LoRA and training settings (not checkpointing,
not the scoring batch), the task, its data fingerprint, the seed and index, every file of the earlier tasks in the
store (their sha256), and of the method only what changes the training here: how earlier tasks are folded in (none,
their sum, or their merge with its options), the stability term's settings when it is on and has a history, the
orthogonality weight when it has earlier adapters, the sparsity term when it is on, InfLoRA's design and thresholds,
and how the adapter starts. So the first task of inc-lora, ps-lora, ps-merge-only, o-lora, per-task, seq-lora and
magmax is one training, per-task and magmax-ind train the same adapters, and the reference run of stability decay
(the knobs off) is the method without its term.

The cache is on where PSLORA_TASK_CACHE names a folder (`compare` sets OUT/task-cache for its runs).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..config import Sequence, canonical_hash
from ..methods import active_terms
from ..store import read_json
from ..store.files import sha256_file

ENV = "PSLORA_TASK_CACHE"
_NOT_TRAINING = ("checkpoint_every", "eval_batch_size")


def cache_dir() -> Path | None:
    value = os.environ.get(ENV)
    return Path(value) if value else None


def training_key(seq: Sequence, i: int, earlier_files: list[dict], data_fingerprint: str) -> str:
    """The content hash of task i's training: equal keys train bitwise the same adapter."""
    plain = seq.to_dict()
    m = seq.method
    spec = m.spec
    has_history = bool(earlier_files)
    # "input_subspace": whether the method has training hooks; "own_adapters" stays False: scoring each task with
    # its own adapter does not act on its training (both names kept so older entries still match)
    # "previous" (continue task t-1's factors) starts like "new" where there is no task t-1: seq-lora's and magmax's
    # first task is inc-lora's, bitwise
    init = "new" if spec.init == "previous" and not has_history else spec.init
    method: dict = {"init": init, "input_subspace": spec.hooks is not None, "own_adapters": False}
    if has_history and m.previous != "none":
        method["fold"] = ("sum",) if m.previous == "sum" or m.merge == "sum" else (m.merge, m.merge_options)
    for term in active_terms(m, has_history):
        weight = getattr(m, term.weight)
        method[term.name] = [weight, *(getattr(m, key) for key in term.settings)] if term.settings else weight
    if spec.hooks is not None:
        method[spec.hooks.key_name] = spec.hooks.cache_key(m, len(seq.tasks))
    return canonical_hash({
        "backbone": plain["backbone"], "lora": plain["lora"], "scenario": plain["scenario"],
        "training": {k: v for k, v in plain["training"].items() if k not in _NOT_TRAINING},
        "task": plain["tasks"][i], "index": i, "seed": seq.seed, "data": data_fingerprint,
        "earlier": earlier_files, "method": method, "generative": seq.generative,
    })


@contextlib.contextmanager
def claimed(root: Path, key: str) -> Iterator[Path]:
    """Hold the key's lock (a second identical training waits here for the first, then reuses it); yields the
    entry's folder, which exists when the training is cached."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield root / key
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def usable(entry: Path) -> dict | None:
    """The cached meta.json when every file matches its recorded sha256, else None (a damaged entry is dropped)."""
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return None
    meta = read_json(meta_path)
    for name, digest in (meta.get("sha256") or {}).items():
        if not (entry / name).is_file() or sha256_file(entry / name) != digest:
            shutil.rmtree(entry, ignore_errors=True)
            return None
    return meta


def put(entry: Path, folder: Path) -> None:
    """Copy a finished task folder into the cache (whole or not at all)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        for f in sorted(folder.iterdir()):
            shutil.copy2(f, tmp / f.name)
        os.replace(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def take(entry: Path, folder: Path) -> None:
    """Copy a cached task's files (not its meta.json: the store writes its own) into a task folder."""
    for f in sorted(entry.iterdir()):
        if f.name != "meta.json":
            shutil.copy2(f, folder / f.name)
