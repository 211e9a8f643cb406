"""MagMax (Marczak et al., ECCV 2024): per element, the update with the largest absolute value, with its sign; on
equal magnitudes the later task's (the official `merge_max_abs` in `src/merging/task_vectors.py` of
danielm1405/magmax keeps the current vector where `|current| >= |max so far|`); the result scaled (the official
`merge_splitted.py` applies it as θ0 + 0.5·τ). With sequentially trained adapters each update is the cumulative task
vector τ_t = θ_t − θ0; with independent ones it is the magnitude merge of PS-LoRA, later task on ties, scaled."""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_SCALE = 0.5  # merge_splitted.py: (merge_max_abs, [0.5])


def max_abs(make_deltas) -> Tensor:
    """Per element the update largest in |value|; ties to the later task."""
    out: Tensor | None = None
    for d in make_deltas():
        out = d.clone() if out is None else torch.where(d.abs() >= out.abs(), d, out)
    if out is None:
        raise ValueError("nothing to merge: no deltas were added")
    return out


def merge(make_deltas, *, scale: float = DEFAULT_SCALE, **_options) -> Tensor:
    return max_abs(make_deltas) * scale
