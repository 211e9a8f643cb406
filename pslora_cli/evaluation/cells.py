"""Scored cells shared between stores: a language model's answers to a task's prompts at one stage are the same in
every store that folds the same adapters by the same rule into the same base model, so a grid scores them once.
Every store of a sequence scores the base model on every task (its row 0), and stores whose first tasks are the same
training (through the task cache) score the same first stages.

A cell's key holds what decides it: the base model (its section and weights' sha256), the LoRA section (the adapters'
scaling), the task's definition and its data (the column key: data fingerprint, validation examples), the split, the
stage (the row key: merge rule and options, each adapter's sha256, the scorer) and the scoring batch. Only a language
model's task-aware cells are kept: a head-scored cell also depends on heads the keys do not all name, and costs
little. The folder is the task cache's (PSLORA_TASK_CACHE), under cells/.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import Sequence, canonical_hash
from ..store import Store, read_json, write_json_atomic
from ..training.cache import ENV


def cells_dir(seq: Sequence) -> Path | None:
    """The shared cells' folder, where a cache is on and the sequence is a language model's."""
    value = os.environ.get(ENV)
    return Path(value) / "cells" if value and seq.generative else None


def cell_key(seq: Sequence, store: Store, split: str, i: int, row_key: str, col_key: str) -> str:
    plain = seq.to_dict()
    return canonical_hash({
        "backbone": plain["backbone"], "base_weights": store.manifest()["base_model"].get("weights_sha256"),
        "lora": plain["lora"], "task": plain["tasks"][i], "split": split, "row": row_key, "col": col_key,
        "kind": "aware", "eval_batch_size": seq.training.eval_batch_size})


def lookup(root: Path, key: str) -> tuple[float, str] | None:
    """(accuracy, per-prompt hits) of a kept cell; None when absent or not self-consistent (then scored again)."""
    path = root / f"{key}.json"
    if not path.is_file():
        return None
    try:
        doc = read_json(path)
        value, hits = float(doc["value"]), doc["hits"]
    except Exception:  # a damaged entry is scored again and rewritten
        return None
    if not isinstance(hits, str) or not hits or set(hits) - {"0", "1"} \
            or abs(hits.count("1") / len(hits) - value) > 1e-6:
        return None
    return value, hits


def keep(root: Path, key: str, value: float, hits: str | None) -> None:
    if hits:
        root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(root / f"{key}.json", {"value": value, "hits": hits})
