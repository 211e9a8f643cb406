"""The history H the lean stability loss compares against (stability_lean.py): stacked factors H = B_H @ A_H
(`HistoryFactors`), the source the loss's blocks read (`_Source`: tanh(αH) cached densely, or the factors), and the
CPU's fast tanh. stability_lean.PreparedHistory holds one of them for a task's training."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import Tensor

from .lora import conv_to_matrix

STORES = ("auto", "dense", "factors")


class HistoryFactors(NamedTuple):
    """H = B @ A with B (d_out, R) and A (R, d_in): the earlier tasks' factors stacked, their scales folded into B."""

    B: Tensor
    A: Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return (self.B.shape[0], self.A.shape[1])

    def numel(self) -> int:
        return self.B.numel() + self.A.numel()

    def dense(self) -> Tensor:
        return self.B @ self.A


def stack_history(factors: Iterable[tuple[Tensor, Tensor, float]]) -> HistoryFactors:
    """Stack [(lora_A_i, lora_B_i, scale_i), ...] (linear or 1x1-conv shapes) into HistoryFactors:
    B_H = [s_1·B_1, .., s_k·B_k], A_H = [A_1; ..; A_k], so B_H @ A_H = Σ_i s_i·B_i·A_i."""
    bs, as_ = [], []
    for a, b, s in factors:
        a2, b2 = conv_to_matrix(a), conv_to_matrix(b)
        if b2.shape[1] != a2.shape[0]:
            raise ValueError(f"rank mismatch: lora_B {tuple(b.shape)} vs lora_A {tuple(a.shape)}")
        bs.append(b2 * s)
        as_.append(a2)
    if not bs:
        raise ValueError("no factors to stack")
    return HistoryFactors(torch.cat(bs, dim=1).contiguous(), torch.cat(as_, dim=0).contiguous())


def _tanh_prescale(device: torch.device) -> float:
    """Factor k such that _finish_tanh_(k·x) = tanh(x): 2 on the CPU, 1 elsewhere."""
    return 2.0 if device.type == "cpu" else 1.0


def _finish_tanh_(y: Tensor) -> Tensor:
    """In place: tanh(x) from y = _tanh_prescale(device)·x.

    On the CPU, torch's tanh kernel costs about 4x its sigmoid kernel, so tanh(x) = 2·sigmoid(2x) − 1 is used
    there. Its absolute error is that of float rounding near ±1 (a few ulp of 1), like the reference's 1 − t·T,
    which is the only way the loss uses t besides 1 − t²; it saturates exactly to ±1 and is NaN-free.
    """
    if y.device.type == "cpu":
        return y.sigmoid_().mul_(2).sub_(1)
    return y.tanh_()


class _Source:
    """Row blocks of tanh(αH) and |H| for one module (internal)."""

    def __init__(self, *, dense: Tensor | None = None, factors: HistoryFactors | None = None,
                 tanh_cache: Tensor | None = None, abs_cache: Tensor | None = None, norm: Tensor | None = None):
        self.dense, self.factors, self.tanh_cache, self.abs_cache = dense, factors, tanh_cache, abs_cache
        self._norm = norm

    def norm(self) -> Tensor:
        """‖H‖_F as a 0-dim tensor (from the factors: sqrt(Σ (BᵀB) ⊙ (AAᵀ)), no dense H), computed once."""
        if self._norm is None:
            if self.dense is not None:
                self._norm = torch.linalg.vector_norm(self.dense)
            elif self.factors is not None:
                b, a = self.factors
                self._norm = ((b.T @ b) * (a @ a.T)).sum().clamp_min(0).sqrt()
            else:
                raise ValueError("this history source keeps only tanh(αH): its norm must be given")
        return self._norm

    def rows(self, r0: int, r1: int, alpha, need_tanh: bool, need_abs: bool) -> tuple[Tensor | None, Tensor | None]:
        """(tanh(α·H[r0:r1]), |H[r0:r1]|), each only if asked for. Cached blocks are views: never modify them."""
        if self.tanh_cache is not None and (not need_abs or self.abs_cache is not None):
            return (self.tanh_cache[r0:r1] if need_tanh else None,
                    self.abs_cache[r0:r1] if need_abs else None)
        k = _tanh_prescale(self.factors.A.device if self.factors is not None else self.dense.device)
        if self.factors is not None and not need_abs:  # scale the thin factor, not the block
            return _finish_tanh_(torch.mm(self.factors.B[r0:r1] * (alpha * k), self.factors.A)), None
        h = self.dense[r0:r1] if self.dense is not None else self.factors.B[r0:r1] @ self.factors.A
        abs_h = h.abs() if need_abs else None
        if not need_tanh:
            return None, abs_h
        return _finish_tanh_(h * (alpha * k)), abs_h


def _check_alpha(alpha) -> None:
    if isinstance(alpha, Tensor):
        if alpha.dim() != 0:
            raise ValueError(f"alpha must be a 0-dim tensor, got shape {tuple(alpha.shape)}")
    elif not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be finite and > 0, got {alpha}")
