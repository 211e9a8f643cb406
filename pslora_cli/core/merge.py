"""Post-training merges of per-task updates ΔW_1..ΔW_N for one module (METHOD.md §2).

    "magnitude": M_jk = ΔW_{i*,jk}, i* = argmax_i |ΔW_{i,jk}|, keeping the sign; ties go to the earlier task.
                 Computed as the fold M_[1:t] = pick_larger(M_[1:t-1], ΔW_t). No sign election, trimming or rescaling.
    "sum":       M = Σ_i ΔW_i
    "mean":      M = (1/N) Σ_i ΔW_i

All merges stream: they take any iterable (e.g. a generator that loads one task at a time), keep one running
tensor, and never stack. Inputs are never modified in place. Any shape; device and dtype are the inputs'.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

METHODS = ("magnitude", "sum", "mean")


def _check_same_shape(current: Tensor, new: Tensor, what: str = "new") -> None:
    if current.shape != new.shape:
        raise ValueError(f"shape mismatch: {what} has shape {tuple(new.shape)}, expected {tuple(current.shape)}")


def pick_larger(current: Tensor, new: Tensor) -> Tensor:
    """Elementwise: new where |new| > |current| strictly, else current (ties keep current, the earlier task)."""
    _check_same_shape(current, new)
    return torch.where(new.abs() > current.abs(), new, current)


class RunningMerge:
    """Incremental merge: m = RunningMerge("magnitude"); m.add(d1); m.add(d2); m.result.

    Holds one running tensor (the running sum for "mean", plus a count). `result` raises ValueError before any add.
    """

    def __init__(self, method: str = "magnitude") -> None:
        if method not in METHODS:
            raise ValueError(f"unknown merge method {method!r}; expected one of {METHODS}")
        self.method = method
        self.count = 0
        self._acc: Tensor | None = None

    def add(self, delta: Tensor) -> RunningMerge:
        """Fold in the next task's update; returns self."""
        if not isinstance(delta, Tensor):
            raise TypeError(f"expected a tensor, got {type(delta).__name__}")
        if self._acc is None:
            self._acc = delta.clone()
        else:
            _check_same_shape(self._acc, delta, f"delta #{self.count + 1}")
            if self.method == "magnitude":
                self._acc = pick_larger(self._acc, delta)
            else:
                self._acc = self._acc + delta  # out of place: results handed out earlier stay unchanged
        self.count += 1
        return self

    @property
    def result(self) -> Tensor:
        if self._acc is None:
            raise ValueError("nothing to merge: no deltas were added")
        return self._acc / self.count if self.method == "mean" else self._acc


def merge_deltas(deltas: Iterable[Tensor], method: str = "magnitude") -> Tensor:
    """Merge an iterable of same-shape updates with `method` (one of METHODS); ValueError if empty."""
    m = RunningMerge(method)
    for d in deltas:
        m.add(d)
    return m.result


def magnitude_merge(deltas: Iterable[Tensor]) -> Tensor:
    """M_jk = ΔW_{i*,jk} with i* = argmax_i |ΔW_{i,jk}| (ties to the earlier task)."""
    return merge_deltas(deltas, "magnitude")


def sum_merge(deltas: Iterable[Tensor]) -> Tensor:
    """M = Σ_i ΔW_i."""
    return merge_deltas(deltas, "sum")


def mean_merge(deltas: Iterable[Tensor]) -> Tensor:
    """M = (1/N) Σ_i ΔW_i."""
    return merge_deltas(deltas, "mean")
