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


# Float formats the magnitude fold handles on their bit patterns: (same-size int, |x| mask, bits of +inf, sign shift).
# For non-negative IEEE floats the integer order of the bit patterns is the numeric order, and integer ops are
# vectorised where torch.where on a bool mask is not (3-10x slower per element on the CPU).
_FLOAT_BITS = {
    torch.float32: (torch.int32, 0x7FFFFFFF, 0x7F800000, 31),
    torch.float64: (torch.int64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000, 63),
}


class RunningMerge:
    """Incremental merge: m = RunningMerge("magnitude"); m.add(d1); m.add(d2); m.result.

    Holds one running tensor (the running sum for "mean", plus a count). For float32/float64 "magnitude" also
    keeps |running| and two scratch buffers, updated in place, so a long fold allocates nothing per task; the
    result is bitwise the same as folding pick_larger. `result` raises ValueError before any add; a result
    handed out is never changed by later adds.
    """

    def __init__(self, method: str = "magnitude") -> None:
        if method not in METHODS:
            raise ValueError(f"unknown merge method {method!r}; expected one of {METHODS}")
        self.method = method
        self.count = 0
        self._acc: Tensor | None = None
        self._abs_bits: Tensor | None = None  # bit patterns of |_acc| (bit-pattern magnitude fold only)
        self._scratch: tuple[Tensor, Tensor] | None = None
        self._handed_out = False  # `result` returned _acc itself: the next add must not write into it

    def add(self, delta: Tensor) -> RunningMerge:
        """Fold in the next task's update; returns self."""
        if not isinstance(delta, Tensor):
            raise TypeError(f"expected a tensor, got {type(delta).__name__}")
        if self._acc is None:
            self._acc = delta.clone()
        else:
            _check_same_shape(self._acc, delta, f"delta #{self.count + 1}")
            if self.method != "magnitude":
                self._acc = self._acc + delta  # out of place: results handed out earlier stay unchanged
            elif delta.dtype in _FLOAT_BITS and (delta.dtype, delta.device) == (self._acc.dtype, self._acc.device):
                self._fold_larger_bits(delta)
            else:  # other dtypes, or mixed inputs (type promotion)
                self._acc = pick_larger(self._acc, delta)
                self._abs_bits = None
        self._handed_out = False
        self.count += 1
        return self

    def _fold_larger_bits(self, delta: Tensor) -> None:
        """acc <- delta where |delta| > |acc| strictly, else acc: pick_larger on the bit patterns.

        NaN in acc: its |.| pattern is above +inf's, so it is never replaced (NaN > x is false in pick_larger);
        NaN in delta: its |.| is taken as 0, so it never replaces anything.
        """
        int_dtype, abs_mask, inf_bits, sign_shift = _FLOAT_BITS[delta.dtype]
        if self._handed_out:
            self._acc = self._acc.clone()
        acc_bits, delta_bits = self._acc.view(int_dtype), delta.view(int_dtype)
        if self._abs_bits is None:
            self._abs_bits = acc_bits & abs_mask
        if self._scratch is None:
            self._scratch = (torch.empty_like(self._abs_bits), torch.empty_like(self._abs_bits))
        new_abs, larger = self._scratch
        torch.bitwise_and(delta_bits, abs_mask, out=new_abs)
        if new_abs.max() > inf_bits:  # NaN in delta (rare): never larger
            new_abs.masked_fill_(new_abs > inf_bits, 0)
        # -1 (all bits set) where |delta| > |acc|, else 0: the sign of |acc| - |delta| (no overflow: both >= 0)
        torch.sub(self._abs_bits, new_abs, out=larger).bitwise_right_shift_(sign_shift)
        torch.maximum(self._abs_bits, new_abs, out=self._abs_bits)
        # acc ^= (acc ^ delta) & larger: delta's bits where larger, acc's elsewhere
        picked = torch.bitwise_xor(acc_bits, delta_bits, out=new_abs).bitwise_and_(larger)
        acc_bits.bitwise_xor_(picked)

    @property
    def result(self) -> Tensor:
        if self._acc is None:
            raise ValueError("nothing to merge: no deltas were added")
        if self.method == "mean":
            return self._acc / self.count
        self._handed_out = True
        return self._acc


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


# --- Baseline merges that are not a single running fold --------------------------------------------------
# They take a zero-argument callable returning a fresh iterable of the deltas, so that they can make two
# streaming passes (TIES) without ever holding all tasks at once.
ALL_METHODS = METHODS + ("ties", "task-arithmetic", "last")


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
    elected = merge_deltas(d * trim_mask(d, density) for d in make_deltas()).sign()
    total: Tensor | None = None
    count: Tensor | None = None
    for d in make_deltas():
        trimmed = d * trim_mask(d, density)
        agree = (trimmed.sign() == elected) & (trimmed != 0)
        part, n = torch.where(agree, trimmed, torch.zeros_like(trimmed)), agree.to(d.dtype)
        total, count = (part, n) if total is None else (total + part, count + n)
    return total / count.clamp_min(1)


def merge_module(make_deltas, method: str = "magnitude", *, density: float = 0.2, scale: float = 1.0) -> Tensor:
    """Merge one module's updates with any method in ALL_METHODS.

    "task-arithmetic": scale · Σ_i ΔW_i. "last": the last task's update alone (sequential LoRA, whose adapter
    carries everything learned so far).
    """
    if method in METHODS:
        return merge_deltas(make_deltas(), method)
    if method == "ties":
        return ties_merge(make_deltas, density)
    if method == "task-arithmetic":
        return merge_deltas(make_deltas(), "sum") * scale
    if method == "last":
        last = None
        for d in make_deltas():
            last = d
        if last is None:
            raise ValueError("nothing to merge: no deltas were added")
        return last
    raise ValueError(f"unknown merge method {method!r}; expected one of {ALL_METHODS}")
