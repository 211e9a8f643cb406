"""Mean merge: M = (1/N) Σ_i ΔW_i."""

from torch import Tensor

from .running import merge_deltas


def merge(make_deltas, **_options) -> Tensor:
    return merge_deltas(make_deltas(), "mean")
