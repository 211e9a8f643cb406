"""The streaming fold behind the magnitude, sum and mean merges: one running tensor, any number of tasks.

    "magnitude": M_jk = ΔW_{i*,jk}, i* = argmax_i |ΔW_{i,jk}|, keeping the sign; ties go to the earlier task.
                 Computed as the fold M_[1:t] = pick_larger(M_[1:t-1], ΔW_t). No sign election, trimming or rescaling.
    "sum":       M = Σ_i ΔW_i
    "mean":      M = (1/N) Σ_i ΔW_i

The fold takes any iterable (e.g. a generator that loads one task at a time), keeps one running tensor and never
stacks. Inputs are never modified in place. Any shape; device and dtype are the inputs'.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

FOLDS = ("magnitude", "sum", "mean")


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


def _fold_bits_(acc_bits: Tensor, acc_abs: Tensor, x_bits: Tensor, x_abs: Tensor, larger: Tensor, fmt,
                check_nan: bool = True) -> None:
    """In place, on the bit patterns of one float format (fmt, from _FLOAT_BITS): acc <- x where |x| > |acc|
    strictly, and acc_abs (the bits of |acc|) <- the new |acc|. x_abs and larger are scratch of x's shape.
    check_nan=False when x is known to hold no NaN (skips one reduction)."""
    _, abs_mask, inf_bits, sign_shift = fmt
    torch.bitwise_and(x_bits, abs_mask, out=x_abs)
    if check_nan and x_abs.max() > inf_bits:  # NaN in x (rare): its |.| is taken as 0, never larger
        x_abs.masked_fill_(x_abs > inf_bits, 0)
    # -1 (all bits set) where |x| > |acc|, else 0: the sign of |acc| - |x| (no overflow: both >= 0)
    torch.sub(acc_abs, x_abs, out=larger).bitwise_right_shift_(sign_shift)
    torch.maximum(acc_abs, x_abs, out=acc_abs)
    # acc ^= (acc ^ x) & larger: x's bits where larger, acc's elsewhere
    acc_bits.bitwise_xor_(torch.bitwise_xor(acc_bits, x_bits, out=x_abs).bitwise_and_(larger))


class RunningMerge:
    """Incremental merge: m = RunningMerge("magnitude"); m.add(d1); m.add(d2); m.result.

    Holds one running tensor (the running sum for "mean", plus a count). For float32/float64 "magnitude" also
    keeps |running| and two scratch buffers, updated in place, so a long fold allocates nothing per task; the
    result is bitwise the same as folding pick_larger. `result` raises ValueError before any add; a result
    handed out is never changed by later adds.
    """

    def __init__(self, method: str = "magnitude") -> None:
        if method not in FOLDS:
            raise ValueError(f"unknown merge method {method!r}; expected one of {FOLDS}")
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
        int_dtype, abs_mask = _FLOAT_BITS[delta.dtype][:2]
        if self._handed_out:
            self._acc = self._acc.clone()
        acc_bits, delta_bits = self._acc.view(int_dtype), delta.view(int_dtype)
        if self._abs_bits is None:
            self._abs_bits = acc_bits & abs_mask
        if self._scratch is None:
            self._scratch = (torch.empty_like(self._abs_bits), torch.empty_like(self._abs_bits))
        _fold_bits_(acc_bits, self._abs_bits, delta_bits, *self._scratch, _FLOAT_BITS[delta.dtype])

    @property
    def result(self) -> Tensor:
        if self._acc is None:
            raise ValueError("nothing to merge: no deltas were added")
        if self.method == "mean":
            return self._acc / self.count
        self._handed_out = True
        return self._acc


def merge_deltas(deltas: Iterable[Tensor], method: str = "magnitude") -> Tensor:
    """Merge an iterable of same-shape updates with `method` (one of FOLDS); ValueError if empty."""
    m = RunningMerge(method)
    for d in deltas:
        m.add(d)
    return m.result
