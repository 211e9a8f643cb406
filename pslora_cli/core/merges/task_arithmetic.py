"""Task arithmetic (Ilharco et al. 2023): M = scale · Σ_i ΔW_i."""

from torch import Tensor

from .running import merge_deltas


def merge(make_deltas, *, scale: float = 1.0, **_options) -> Tensor:
    return merge_deltas(make_deltas(), "sum") * scale
