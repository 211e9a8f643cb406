"""The continual model a store holds, ready to use: W0 + the merge of the trained tasks folded into the weights (or
one task's own update with `task`), with the heads of those tasks or, for a language model, each task's prompt.
`pslora export` writes it as a folder the stock libraries open; `pslora predict` answers new inputs with it. Both
build it through the Evaluator, so they see exactly the weights and heads `pslora eval` scores."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import Sequence
from .errors import InputError
from .store import Store


@dataclass
class TaskHead:
    task: str
    classes: list[str]
    weight: torch.Tensor  # (classes, features)
    bias: torch.Tensor


@dataclass
class TaskPrompt:
    task: str
    classes: list[str]
    prefix: str
    suffix: str
    answers: list[str]  # the answer text of each class


@dataclass
class ContinualModel:
    seq: Sequence
    backbone: object  # TextBackbone, VisionBackbone or LanguageModel, with the update folded into its weights
    tasks: list[str]  # the tasks whose updates are in the weights
    merge: str | None  # the merge of those updates (None: one task's own update)
    device: torch.device
    updates: dict[str, torch.Tensor] = field(default_factory=dict)
    heads: list[TaskHead] = field(default_factory=list)  # encoders and image models
    prompts: list[TaskPrompt] = field(default_factory=list)  # language models

    @property
    def labels(self) -> list[str]:
        """One name per output of the heads side by side: the class name, or task/class where names repeat."""
        names = [c for h in self.heads for c in h.classes]
        if len(set(names)) == len(names):
            return names
        return [f"{h.task}/{c}" for h in self.heads for c in h.classes]


def continual_model(seq: Sequence, store: Store, device: torch.device, task: str | None = None,
                    merge: str | None = None) -> ContinualModel:
    """The store's model after its trained tasks (merged with `merge`, default the sequence's), or task `task`'s
    own model (its update alone, its head)."""
    from .evaluation.scoring import Evaluator
    from .models.adapters import merged_deltas

    trained = store.trained_prefix(seq.task_ids)
    if not trained:
        raise InputError(f"{store.root}: holds no trained task yet (`pslora run` or `pslora train-task` first)")
    if merge is not None:
        from .merge_options import check_merge_name

        check_merge_name(merge, "--merge")
    if task is not None:
        index = seq.index(task)
        if task not in trained:
            raise InputError(f"--task {task!r}: not trained in {store.root} (trained: {', '.join(trained)})")
        if merge is not None:
            raise InputError("--merge: one task's own model has no merge; leave out --task or --merge")
    elif seq.method.spec.own_adapters:
        raise InputError(f"method {seq.method.name!r} keeps one model per task: pass --task ID "
                         f"(one of {', '.join(trained)})")
    for task_id in trained:
        store.verify_task(task_id)
    evaluator = Evaluator(seq, store, device, load_data=None)
    stage = len(trained)
    if task is not None:
        adapters, indices, merge_name = [evaluator.adapters(stage)[index]], [index], None
        updates = dict(merged_deltas(adapters, "sum", device))
    else:
        adapters, indices = evaluator.adapters(stage), list(range(stage))
        merge_name = merge or seq.method.merge
        options = seq.method.options_for(merge_name)
        if merge_name == seq.method.merge:  # the merge options a selection protocol chose for this stage, if any
            from .evaluation.scoring import stage_merge_options

            options = stage_merge_options(seq, store, stage)
        updates = dict(merged_deltas(adapters, merge_name, device, **options))
    evaluator.folder.fold(updates)
    model = ContinualModel(seq=seq, backbone=evaluator.backbone, tasks=[seq.tasks[i].id for i in indices],
                           merge=merge_name, device=device, updates=updates)
    for i in indices:
        task_id = seq.tasks[i].id
        classes = list(store.task_meta(task_id)["classes"])
        if seq.generative:
            model.prompts.append(_task_prompt(seq, i, classes))
        else:  # a task's own head; for a method that trains jointly, the last stage's rows of it (as eval scores)
            w, b = evaluator.head(i, i + 1 if task is not None else stage)
            model.heads.append(TaskHead(task_id, classes, w, b))
    return model


def _task_prompt(seq: Sequence, i: int, classes: list[str]) -> TaskPrompt:
    from pathlib import Path

    from .data import prompt_defaults
    from .data.prompts import check_prompt, prompt_parts

    task = seq.tasks[i]
    where = f"task {task.id}: prompt"
    defaults = prompt_defaults(task.data, base_dir=Path(seq.base_dir), where=f"task {task.id}: data")
    prefix, suffix, answers = prompt_parts(classes, check_prompt(task.prompt, where), task.data["type"], where,
                                           defaults)
    return TaskPrompt(task.id, classes, prefix, suffix, answers)
