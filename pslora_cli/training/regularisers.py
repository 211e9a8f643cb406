"""The terms a method adds to the task loss while training task t, built from the method registry's declarations
(methods/: PS-LoRA's stability loss, O-LoRA's orthogonality term, N-LoRA's l1 term, a plug-in's): a term is on
where the method switches it on (or leaves it to the sequence) and its weight is > 0, and, for a term that reads
the earlier tasks, once there are any."""

from __future__ import annotations

import torch

from ..methods import TERMS, TermInputs, active_terms


class Regulariser:
    """Built once per task from the earlier adapters; `terms(layers)` gives every registered term's value per
    step (0 for those off), `weighted` their weighted sum."""

    def __init__(self, method, layers: dict, previous: list, history, device: torch.device):
        self.method, self.device = method, device
        inputs = TermInputs(method=method, layers=layers, previous=previous, history=history, device=device)
        self.losses = {term.name: term.make(inputs) for term in active_terms(method, bool(previous))}
        self.record = inputs.record  # what the terms add to the task's training metrics

    @property
    def active(self) -> bool:
        return bool(self.losses)

    def terms(self, layers: dict) -> dict[str, torch.Tensor]:
        """Each registered term's value for the current factors (a zero for those off)."""
        zero = torch.zeros((), device=self.device)
        return {name: self.losses[name](layers) if name in self.losses else zero for name in TERMS}

    def weighted(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        total = torch.zeros((), device=self.device)
        for name in self.losses:
            total = total + getattr(self.method, TERMS[name].weight) * values[name]
        return total
