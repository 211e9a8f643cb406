"""A sequence's tasks as data: task index -> TaskData (prompted for a language model), loaded once per process."""

from __future__ import annotations

import functools
from pathlib import Path

from . import load_task_data


def data_loader(seq):
    """Task index -> TaskData of `seq` (a config.Sequence), loaded once per process."""

    @functools.lru_cache(maxsize=None)
    def load(i: int):
        task = seq.tasks[i]
        data = load_task_data(task.data, seed=seq.seed, base_dir=Path(seq.base_dir), where=f"task {task.id}: data")
        if not seq.generative:
            return data
        from .prompts import check_prompt, prompted

        where = f"task {task.id}: prompt"
        return prompted(data, check_prompt(task.prompt, where), task.data["type"], where)

    return load
