"""TIES merging (Yadav et al. 2023), a baseline: trim, elect a sign, disjoint mean. Two streaming passes."""

from __future__ import annotations

import torch
from torch import Tensor

from .running import merge_deltas


def trim_mask(delta: Tensor, density: float) -> Tensor:
    """Boolean mask of the top `density` fraction of |delta| (at least one entry): TIES's trim step."""
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    k = max(1, int(round(density * delta.numel())))
    if k >= delta.numel():
        return torch.ones_like(delta, dtype=torch.bool)
    threshold = delta.abs().flatten().kthvalue(delta.numel() - k + 1).values
    return delta.abs() >= threshold


def ties_merge(make_deltas, density: float = 0.2) -> Tensor:
    """TIES (Yadav et al. 2023): trim each ΔW_i to its top-`density` magnitudes, elect the sign of each element
    as the sign of the trimmed sum, then average the trimmed entries that agree with the elected sign
    ("disjoint mean"; 0 where none agrees). Two streaming passes over the tasks.
    """
    # The elected sign is that of the trimmed tasks' sum (TIES's "total" rule, PEFT's default), not the sign of the
    # largest entry: 0.5, 0.5, -0.9 elects +.
    elected = merge_deltas((d * trim_mask(d, density) for d in make_deltas()), "sum").sign()
    total: Tensor | None = None
    count: Tensor | None = None
    for d in make_deltas():
        trimmed = d * trim_mask(d, density)
        agree = (trimmed.sign() == elected) & (trimmed != 0)
        part, n = torch.where(agree, trimmed, torch.zeros_like(trimmed)), agree.to(d.dtype)
        total, count = (part, n) if total is None else (total + part, count + n)
    return total / count.clamp_min(1)


def merge(make_deltas, *, density: float = 0.2, **_options) -> Tensor:
    return ties_merge(make_deltas, density)
