"""Magnitude merge (METHOD.md §2): per element, the value, with its sign, of the task whose update is largest in
absolute value; ties go to the earlier task:

    M_jk = ΔW_{i*,jk}, i* = argmax_i |ΔW_{i,jk}|, computed as the fold M_[1:t] = pick_larger(M_[1:t-1], ΔW_t).

No sign election, trimming or rescaling. Streams over tasks (MagnitudeFold: one running tensor, never stacked)
or, from the LoRA factors, over row blocks of the products so that no task's dense product exists in full.
Inputs are never modified in place; device and dtype are the inputs'.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


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


class MagnitudeFold:
    """The magnitude merge one task at a time: f = MagnitudeFold(); f.add(d1); f.add(d2); f.result.

    Holds one running tensor; for float32/float64 also |running| and two scratch buffers on their bit patterns,
    updated in place, so a long fold allocates nothing per task. The result is bitwise the same as folding
    pick_larger; a result handed out is never changed by later adds.
    """

    def __init__(self) -> None:
        self.count = 0
        self._acc: Tensor | None = None
        self._abs_bits: Tensor | None = None  # bit patterns of |_acc| (bit-pattern fold only)
        self._scratch: tuple[Tensor, Tensor] | None = None
        self._handed_out = False  # `result` returned _acc itself: the next add must not write into it

    def add(self, delta: Tensor) -> MagnitudeFold:
        if self._acc is None:
            self._acc = delta.clone()
        else:
            _check_same_shape(self._acc, delta, f"delta #{self.count + 1}")
            if delta.dtype in _FLOAT_BITS and (delta.dtype, delta.device) == (self._acc.dtype, self._acc.device):
                self._fold_bits(delta)
            else:  # other dtypes, or mixed inputs (type promotion)
                self._acc = pick_larger(self._acc, delta)
                self._abs_bits = None
        self._handed_out = False
        self.count += 1
        return self

    def _fold_bits(self, delta: Tensor) -> None:
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
        self._handed_out = True
        return self._acc


def magnitude_merge(deltas: Iterable[Tensor]) -> Tensor:
    """M_jk = ΔW_{i*,jk} with i* = argmax_i |ΔW_{i,jk}| (ties to the earlier task); ValueError if empty."""
    fold = MagnitudeFold()
    for d in deltas:
        fold.add(d)
    return fold.result


def _check_factor(i: int, b: Tensor, a: Tensor, shape: tuple[int, int] | None) -> tuple[int, int]:
    """Product #i + 1's (d_out, d_in), refused unless B (d_out, r) @ A (r, d_in) and the shape of the first."""
    if b.dim() != 2 or a.dim() != 2 or b.shape[1] != a.shape[0]:
        raise ValueError("expected factors B (d_out, r) and A (r, d_in), "
                         f"got {tuple(b.shape)} and {tuple(a.shape)}")
    shape = shape or (b.shape[0], a.shape[1])
    if (b.shape[0], a.shape[1]) != shape:
        raise ValueError(f"shape mismatch: product #{i + 1} is {b.shape[0]}x{a.shape[1]}, expected "
                         f"{shape[0]}x{shape[1]}")
    return shape


def magnitude_merge_factors(factors: Iterable[tuple[Tensor, Tensor]], *, block_elements: int = 1 << 18,
                            chunk_tasks: int = 4) -> Tensor:
    """The magnitude merge of the products B_i @ A_i, from the LoRA factors (B_i: d_out x r_i, already scaled;
    A_i: r_i x d_in), without forming any task's dense product in full.

    Each block of rows of every task's product is computed into a small buffer and folded at once, so that the
    fold's passes run in cache instead of streaming d_out x d_in tensors through memory for every task. Tasks
    are read `chunk_tasks` at a time: memory is the result, a few blocks and one chunk of factors, whatever the
    number of tasks. The result is pick_larger folded over the row blocks B_i[rows] @ A_i (ties to the earlier
    task, the same NaN rules as MagnitudeFold); rows come in multiples of 16, for which the BLAS products tested
    equal the rows of the full product bit for bit (tests/test_core_merge.py).
    """
    chunk: list[tuple[Tensor, Tensor]] = []
    acc: Tensor | None = None
    shape = None
    for i, (b, a) in enumerate(factors):
        shape = _check_factor(i, b, a, shape)
        chunk.append((b, a))
        if len(chunk) == chunk_tasks:
            acc = _fold_factor_chunk(acc, chunk, block_elements)
            chunk = []
    if chunk:
        acc = _fold_factor_chunk(acc, chunk, block_elements)
    if acc is None:
        raise ValueError("nothing to merge: no deltas were added")
    return acc


def _fold_factor_chunk(acc: Tensor | None, chunk: list[tuple[Tensor, Tensor]], block_elements: int) -> Tensor:
    """Fold the products of `chunk` into acc (None: the chunk's first product starts it), one row block at a time."""
    device = chunk[0][0].device
    d_out, d_in = chunk[0][0].shape[0], chunk[0][1].shape[1]
    dtypes = {torch.promote_types(b.dtype, a.dtype) for b, a in chunk} | ({acc.dtype} if acc is not None else set())
    dtype = dtypes.pop()
    if dtypes or dtype not in _FLOAT_BITS:  # mixed or half precision: each product in its own dtype, pick_larger
        for other in dtypes:
            dtype = torch.promote_types(dtype, other)
        out = torch.empty(d_out, d_in, dtype=dtype, device=device)
        for r0, r1 in _row_blocks(d_out, d_in, block_elements, device):
            products = (b[r0:r1] @ a for b, a in chunk)
            rows = acc[r0:r1] if acc is not None else next(products)
            for x in products:
                rows = pick_larger(rows, x)
            out[r0:r1] = rows
        return out
    if acc is None:
        acc = torch.empty(d_out, d_in, dtype=dtype, device=device)
        start, chunk_rest = chunk[0], chunk[1:]
    else:
        start, chunk_rest = None, chunk
    fmt = _FLOAT_BITS[dtype]
    int_dtype, abs_mask = fmt[:2]
    # A product of finite factors is NaN only where terms overflow to ±inf: bound |B_i @ A_i| first and look
    # for NaN (a reduction per block) only when the bound allows it.
    # (written as "not <" so that NaN or inf in a factor, which make the bound NaN or inf, count as "may")
    finfo_max = torch.finfo(dtype).max
    may_nan = any(not float(b.abs().max()) * float(a.abs().max()) * a.shape[0] < finfo_max / 2
                  for b, a in chunk_rest)
    block_rows = _row_blocks(d_out, d_in, block_elements, device)
    n = block_rows[0][1] - block_rows[0][0]
    product = torch.empty(n, d_in, dtype=dtype, device=device)
    abs_bits, new_abs, larger = (torch.empty(n, d_in, dtype=int_dtype, device=device) for _ in range(3))
    for r0, r1 in block_rows:
        k = r1 - r0
        rows = acc[r0:r1]
        if start is not None:
            torch.matmul(start[0][r0:r1], start[1], out=rows)
        rows_bits, x, x_abs, x_larger, acc_abs = (rows.view(int_dtype), product[:k], new_abs[:k], larger[:k],
                                                  abs_bits[:k])
        x_bits = x.view(int_dtype)
        torch.bitwise_and(rows_bits, abs_mask, out=acc_abs)
        for b, a in chunk_rest:
            torch.matmul(b[r0:r1], a, out=x)
            _fold_bits_(rows_bits, acc_abs, x_bits, x_abs, x_larger, fmt, check_nan=may_nan)
    return acc


def add_magnitude_merge_factors_(weight: Tensor, factors: Iterable[tuple[Tensor, Tensor]], *,
                                 block_elements: int = 1 << 18) -> Tensor:
    """In place: weight += the magnitude merge of the products B_i @ A_i (B_i already scaled), row block by row
    block, so that the merge never exists in full: memory is a few blocks and the factors of the tasks.

    The same row blocks, products and fold as magnitude_merge_factors, so the result is bitwise weight +
    magnitude_merge_factors(factors) for a float32 weight; a bfloat16 or float16 weight gets the float32 sum
    rounded once. `weight` may be a conv's (d_out, d_in, kh, kw); returns it."""
    factors = list(factors)
    if not factors:
        raise ValueError("nothing to merge: no deltas were added")
    shape = None
    for i, (b, a) in enumerate(factors):
        shape = _check_factor(i, b, a, shape)
    d_out, d_in = shape
    if weight.numel() != d_out * d_in or weight.shape[0] != d_out:
        raise ValueError(f"weight of shape {tuple(weight.shape)} does not take a {d_out}x{d_in} update")
    target = weight.view(d_out, d_in)
    dtypes = {torch.promote_types(b.dtype, a.dtype) for b, a in factors}
    dtype = dtypes.pop()
    if dtypes or dtype not in _FLOAT_BITS:  # mixed or half precision factors: the dense merge, then added
        _add_rows_(target, magnitude_merge_factors(factors, block_elements=block_elements))
        return weight
    device = factors[0][0].device
    fmt = _FLOAT_BITS[dtype]
    int_dtype, abs_mask = fmt[:2]
    finfo_max = torch.finfo(dtype).max
    may_nan = any(not float(b.abs().max()) * float(a.abs().max()) * a.shape[0] < finfo_max / 2
                  for b, a in factors[1:])
    blocks = _row_blocks(d_out, d_in, block_elements, device)
    n = blocks[0][1] - blocks[0][0]
    acc, product = (torch.empty(n, d_in, dtype=dtype, device=device) for _ in range(2))
    abs_bits, new_abs, larger = (torch.empty(n, d_in, dtype=int_dtype, device=device) for _ in range(3))
    for r0, r1 in blocks:
        k = r1 - r0
        rows = acc[:k]
        torch.matmul(factors[0][0][r0:r1], factors[0][1], out=rows)
        rows_bits, x, acc_abs = rows.view(int_dtype), product[:k], abs_bits[:k]
        torch.bitwise_and(rows_bits, abs_mask, out=acc_abs)
        for b, a in factors[1:]:
            torch.matmul(b[r0:r1], a, out=x)
            _fold_bits_(rows_bits, acc_abs, x.view(int_dtype), new_abs[:k], larger[:k], fmt, check_nan=may_nan)
        _add_rows_(target[r0:r1], rows)
    return weight


def _add_rows_(target: Tensor, rows: Tensor) -> None:
    """target += rows: in its own dtype when it is the rows', else in float32 rounded once to target's dtype."""
    if target.dtype == rows.dtype:
        target.add_(rows.to(target.device))
    else:
        target.copy_(target.float() + rows.to(target.device).float())


def _row_blocks(d_out: int, d_in: int, block_elements: int, device) -> list[tuple[int, int]]:
    """Row ranges of about `block_elements` elements, in multiples of 16 rows (one block on a GPU, whose
    elementwise kernels gain nothing from cache-sized blocks)."""
    if torch.device(device).type != "cpu":
        return [(0, d_out)]
    rows = max(16, block_elements // max(d_in, 1) // 16 * 16)
    return [(r0, min(r0 + rows, d_out)) for r0 in range(0, d_out, rows)]


def merge(make_deltas, **_options) -> Tensor:
    return magnitude_merge(make_deltas())


from_factors = magnitude_merge_factors
add_from_factors_ = add_magnitude_merge_factors_
