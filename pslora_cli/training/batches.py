"""A training batch of a task being trained, for the recipe's steps and InfLoRA's input matrices alike."""

from __future__ import annotations

import torch


def training_batch(run, idx: list[int]) -> tuple[dict, torch.Tensor]:
    """(model inputs, targets) of the rows `idx` of a task being trained (recipe.TaskTraining): the class labels
    for heads; the answer tokens for a language model."""
    xs = [run.data.train_x[i] for i in idx]
    if run.seq.generative:
        return run.backbone.training_batch(xs, [run.data.train_y[i] for i in idx], run.data.answers, run.device)
    return run.backbone.collate(xs, run.device), run.labels[idx].to(run.device)
