"""Magnitude merge (METHOD.md §2): per element, the value, with its sign, of the task whose update is largest in
absolute value; ties go to the earlier task. Streams over tasks (running.py) or, from the LoRA factors, over row
blocks of the products so that no task's dense product exists in full."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from .running import _FLOAT_BITS, _fold_bits_, merge_deltas, pick_larger


def magnitude_merge(deltas: Iterable[Tensor]) -> Tensor:
    """M_jk = ΔW_{i*,jk} with i* = argmax_i |ΔW_{i,jk}| (ties to the earlier task)."""
    return merge_deltas(deltas, "magnitude")


def magnitude_merge_factors(factors: Iterable[tuple[Tensor, Tensor]], *, block_elements: int = 1 << 18,
                            chunk_tasks: int = 4) -> Tensor:
    """The magnitude merge of the products B_i @ A_i, from the LoRA factors (B_i: d_out x r_i, already scaled;
    A_i: r_i x d_in), without forming any task's dense product in full.

    Each block of rows of every task's product is computed into a small buffer and folded at once, so that the
    fold's passes run in cache instead of streaming d_out x d_in tensors through memory for every task. Tasks
    are read `chunk_tasks` at a time: memory is the result, a few blocks and one chunk of factors, whatever the
    number of tasks. The result is pick_larger folded over the row blocks B_i[rows] @ A_i (ties to the earlier
    task, the same NaN rules as RunningMerge); rows come in multiples of 16, for which the BLAS products tested
    equal the rows of the full product bit for bit (tests/test_core_merge.py).
    """
    chunk: list[tuple[Tensor, Tensor]] = []
    acc: Tensor | None = None
    shape = None
    for i, (b, a) in enumerate(factors):
        if b.dim() != 2 or a.dim() != 2 or b.shape[1] != a.shape[0]:
            raise ValueError(f"expected factors B (d_out, r) and A (r, d_in), got {tuple(b.shape)} and {tuple(a.shape)}")
        shape = shape or (b.shape[0], a.shape[1])
        if (b.shape[0], a.shape[1]) != shape:
            raise ValueError(f"shape mismatch: product #{i + 1} is {b.shape[0]}x{a.shape[1]}, expected "
                             f"{shape[0]}x{shape[1]}")
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


def _row_blocks(d_out: int, d_in: int, block_elements: int, device) -> list[tuple[int, int]]:
    """Row ranges of about `block_elements` elements, in multiples of 16 rows (one block on a GPU, whose
    elementwise kernels gain nothing from cache-sized blocks)."""
    if torch.device(device).type != "cpu":
        return [(0, d_out)]
    rows = max(16, block_elements // max(d_in, 1) // 16 * 16)
    return [(r0, min(r0 + rows, d_out)) for r0 in range(0, d_out, rows)]


def merge(make_deltas, **_options) -> Tensor:
    return merge_deltas(make_deltas(), "magnitude")


from_factors = magnitude_merge_factors
