"""One running tensor, any number of tasks: the streaming fold behind the magnitude, sum and mean merges.

    "magnitude": the magnitude merge (magnitude.py: MagnitudeFold)
    "sum":       M = Σ_i ΔW_i
    "mean":      M = (1/N) Σ_i ΔW_i

The fold takes any iterable (e.g. a generator that loads one task at a time), keeps one running tensor and never
stacks. Inputs are never modified in place. Any shape; device and dtype are the inputs'.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor

from .magnitude import MagnitudeFold, _check_same_shape

FOLDS = ("magnitude", "sum", "mean")


class RunningMerge:
    """Incremental merge: m = RunningMerge("magnitude"); m.add(d1); m.add(d2); m.result.

    Holds one running tensor (the running sum for "mean", plus a count). `result` raises ValueError before any
    add; a result handed out is never changed by later adds.
    """

    def __init__(self, method: str = "magnitude") -> None:
        if method not in FOLDS:
            raise ValueError(f"unknown merge method {method!r}; expected one of {FOLDS}")
        self.method = method
        self.count = 0
        self._magnitude = MagnitudeFold() if method == "magnitude" else None
        self._acc: Tensor | None = None

    def add(self, delta: Tensor) -> RunningMerge:
        """Fold in the next task's update; returns self."""
        if not isinstance(delta, Tensor):
            raise TypeError(f"expected a tensor, got {type(delta).__name__}")
        if self._magnitude is not None:
            self._magnitude.add(delta)
        elif self._acc is None:
            self._acc = delta.clone()
        else:
            _check_same_shape(self._acc, delta, f"delta #{self.count + 1}")
            self._acc = self._acc + delta  # out of place: results handed out earlier stay unchanged
        self.count += 1
        return self

    @property
    def result(self) -> Tensor:
        if self._magnitude is not None:
            return self._magnitude.result
        if self._acc is None:
            raise ValueError("nothing to merge: no deltas were added")
        return self._acc / self.count if self.method == "mean" else self._acc


def merge_deltas(deltas: Iterable[Tensor], method: str = "magnitude") -> Tensor:
    """Merge an iterable of same-shape updates with `method` (one of FOLDS); ValueError if empty."""
    m = RunningMerge(method)
    for d in deltas:
        m.add(d)
    return m.result
