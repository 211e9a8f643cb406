"""The LoRA update ΔW = s·B·A that the stability loss, the merges and export share: factors as 2-D matrices
(linear or conv), and their scaled product."""

from __future__ import annotations

import torch
from torch import Tensor


def conv_to_matrix(w: Tensor) -> Tensor:
    """Flatten a weight to 2-D: (d_out, d_in, kh, kw) -> (d_out, d_in·kh·kw); a 2-D tensor is returned as is."""
    if w.dim() < 2:
        raise ValueError(f"expected a weight with at least 2 dims, got shape {tuple(w.shape)}")
    return w if w.dim() == 2 else w.reshape(w.shape[0], -1)


def factor_matrices(lora_A: Tensor, lora_B: Tensor) -> tuple[Tensor, Tensor]:
    """(A, B) as 2-D matrices: a conv's A (r, d_in, kh, kw) flattened, B (d_out, r, 1, 1) squeezed; the ranks must
    agree."""
    a = conv_to_matrix(lora_A)
    if lora_B.dim() == 4 and lora_B.shape[2:] != (1, 1):
        raise ValueError(f"conv lora_B must have a 1x1 kernel, got shape {tuple(lora_B.shape)}")
    b = conv_to_matrix(lora_B)
    if b.shape[1] != a.shape[0]:
        raise ValueError(f"rank mismatch: lora_B {tuple(lora_B.shape)} vs lora_A {tuple(lora_A.shape)}")
    return a, b


def lora_delta(lora_A: Tensor, lora_B: Tensor, scale: float | Tensor, *, out: Tensor | None = None) -> Tensor:
    """ΔW = scale · B @ A, always 2-D (d_out x d_in), computed as (scale · B) @ A (one pass over the r x d_out
    factor instead of the d_out x d_in product); into `out` when given.

    Linear factors: A (r, d_in), B (d_out, r). Conv factors: A (r, d_in, kh, kw), B (d_out, r, 1, 1) are
    flattened first, giving (d_out, d_in·kh·kw), i.e. (d_out, d_in) for 1x1 convs.
    """
    a, b = factor_matrices(lora_A, lora_B)
    return torch.matmul(scale * b, a, out=out)
