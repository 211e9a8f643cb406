"""Sum merge: M = Σ_i ΔW_i (what incremental LoRA's stages are)."""

from torch import Tensor

from .running import merge_deltas


def merge(make_deltas, **_options) -> Tensor:
    return merge_deltas(make_deltas(), "sum")
