"""The direction term of the stability loss as one Triton kernel (strategy "triton" of stability_lean).

For variants whose elementwise term is the direction term alone (dir+fro, dir+factor), one kernel launch walks
D = s·B·A tile by tile and, for each tile, computes tanh(α·D), takes tanh(α·H) from the cache, the factors or the
dense H, adds Σ tanh(αD)·tanh(αH) to the value and contracts dE/dD = tanh(αH)·(1 − tanh²(αD)) into the factor
gradients (Bᵀ·g and g·Aᵀ): what stability_lean's "fused" strategy does with a dozen torch ops per row block,
without writing any tile to memory.

Grid: (column tiles, row groups). A program keeps its column tile of A (and of A_H) in registers, loops over the
row blocks of its group, accumulates its share of Bᵀ·g in registers and stores it (no atomics), and adds g·Aᵀ
into the (d_out, r) gradient with atomic adds: so the gradient of B may differ in its last bits between runs,
as with most GPU backward kernels. The value is summed per program, then in float64 by torch.

The same code runs on the CPU under Triton's interpreter (TRITON_INTERPRET=1), which is how the tests check it
against the reference in float64. Whether it beats the torch path on a GPU is for
benchmarks/performance/gpu_check.py to say.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK_M, BLOCK_N, ROW_GROUPS = 64, 64, 8


@triton.jit
def _direction_kernel(a_ptr, b_ptr, b2_ptr, th_ptr, hb2_ptr, ha_ptr, h_ptr, alpha2_ptr,
                      ga_ptr, gb_ptr, val_ptr, d_out, d_in, r, R, rows_per_group,
                      MODE: tl.constexpr, RP: tl.constexpr, RHP: tl.constexpr, BM: tl.constexpr,
                      BN: tl.constexpr, WANT_GRAD: tl.constexpr):
    # MODE 0: th_ptr holds tanh(αH); 1: hb2_ptr, ha_ptr hold 2α·B_H and A_H; 2: h_ptr holds H, alpha2_ptr 2α.
    pn = tl.program_id(0)
    pg = tl.program_id(1)
    cols = pn * BN + tl.arange(0, BN)
    cmask = cols < d_in
    kr = tl.arange(0, RP)
    krmask = kr < r
    a = tl.load(a_ptr + kr[:, None] * d_in + cols[None, :], mask=krmask[:, None] & cmask[None, :], other=0.0)
    if MODE == 1:
        kh = tl.arange(0, RHP)
        ah = tl.load(ha_ptr + kh[:, None] * d_in + cols[None, :], mask=(kh < R)[:, None] & cmask[None, :],
                     other=0.0)
    if MODE == 2:
        alpha2 = tl.load(alpha2_ptr)
    ga = tl.zeros_like(a)
    vsum = tl.zeros((BM,), dtype=a.dtype)  # per-row partial sums, reduced at the end
    row_start = pg * rows_per_group
    row_end = tl.minimum(row_start + rows_per_group, d_out)
    for m0 in range(row_start, row_end, BM):
        rows = m0 + tl.arange(0, BM)
        rmask = rows < row_end
        mask2 = rmask[:, None] & cmask[None, :]
        b2 = tl.load(b2_ptr + rows[:, None] * r + kr[None, :], mask=rmask[:, None] & krmask[None, :], other=0.0)
        t = 2.0 * tl.sigmoid(tl.dot(b2, a, input_precision="ieee")) - 1.0  # tanh(α·D): b2 = 2α·s·B
        if MODE == 0:
            th = tl.load(th_ptr + rows[:, None] * d_in + cols[None, :], mask=mask2, other=0.0)
        elif MODE == 1:
            hb2 = tl.load(hb2_ptr + rows[:, None] * R + kh[None, :], mask=rmask[:, None] & (kh < R)[None, :],
                          other=0.0)
            th = 2.0 * tl.sigmoid(tl.dot(hb2, ah, input_precision="ieee")) - 1.0
        else:
            h = tl.load(h_ptr + rows[:, None] * d_in + cols[None, :], mask=mask2, other=0.0)
            th = 2.0 * tl.sigmoid(alpha2 * h) - 1.0
        th = tl.where(mask2, th, 0.0)  # padding contributes nothing (t is 0 there already)
        tth = t * th
        vsum += tl.sum(tth, axis=1)
        if WANT_GRAD:
            g = th - tth * t  # tanh(αH)·(1 − tanh²(αD))
            b = tl.load(b_ptr + rows[:, None] * r + kr[None, :], mask=rmask[:, None] & krmask[None, :], other=0.0)
            ga += tl.dot(tl.trans(b), g, input_precision="ieee")
            gb = tl.dot(g, tl.trans(a), input_precision="ieee")
            tl.atomic_add(gb_ptr + rows[:, None] * RP + kr[None, :], gb, mask=rmask[:, None] & krmask[None, :])
    tl.store(val_ptr + pg * tl.num_programs(0) + pn, tl.sum(vsum, axis=0))
    if WANT_GRAD:
        tl.store(ga_ptr + pg * (RP * d_in) + kr[:, None] * d_in + cols[None, :], ga,
                 mask=krmask[:, None] & cmask[None, :])


def _pad(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def direction_terms_triton(a2: Tensor, b2: Tensor, scale: float | Tensor, alpha: float | Tensor, src,
                           want_grad: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(Σ tanh(αD)·tanh(αH) over all elements, Bᵀ·g, g·Aᵀ) with g = tanh(αH)·(1 − tanh²(αD)), D = s·B·A.

    a2 (r, d_in) and b2 (d_out, r) contiguous; src: stability_lean's _Source. The sum comes in float64 (the
    reference's accumulator); the contractions in the inputs' dtype, without the −α·s factor (as "fused").
    """
    d_out, r = b2.shape
    d_in = a2.shape[1]
    dtype, device = a2.dtype, a2.device
    alpha_t = torch.as_tensor(alpha, dtype=dtype, device=device).reshape(1)
    scale_t = torch.as_tensor(scale, dtype=dtype, device=device)
    b_scaled2 = (b2 * (2 * alpha_t * scale_t)).contiguous()
    dummy = torch.empty(1, dtype=dtype, device=device)
    th, hb2, ha, h, R, mode = dummy, dummy, dummy, dummy, 1, 0
    if src.tanh_cache is not None:
        th = src.tanh_cache.reshape(d_out, d_in).contiguous()
    elif src.factors is not None:
        mode, R = 1, src.factors.A.shape[0]
        hb2 = (src.factors.B.to(dtype) * (2 * alpha_t)).contiguous()
        ha = src.factors.A.to(dtype).contiguous()
    else:
        mode, h = 2, src.dense.reshape(d_out, d_in).to(dtype).contiguous()
    rp, groups = _pad(r), min(ROW_GROUPS, triton.cdiv(d_out, BLOCK_M))
    rows_per_group = triton.cdiv(triton.cdiv(d_out, groups), BLOCK_M) * BLOCK_M
    groups = triton.cdiv(d_out, rows_per_group)
    col_tiles = triton.cdiv(d_in, BLOCK_N)
    ga = torch.zeros((groups, rp, d_in), dtype=dtype, device=device) if want_grad else dummy
    gb = torch.zeros((d_out, rp), dtype=dtype, device=device) if want_grad else dummy
    vals = torch.empty(groups * col_tiles, dtype=dtype, device=device)
    _direction_kernel[(col_tiles, groups)](
        a2, b2, b_scaled2, th, hb2, ha, h, 2 * alpha_t, ga, gb, vals, d_out, d_in, r, R, rows_per_group,
        MODE=mode, RP=rp, RHP=_pad(R), BM=BLOCK_M, BN=BLOCK_N, WANT_GRAD=want_grad)
    total = vals.to(torch.float64).sum()
    if not want_grad:
        return total, None, None
    return total, ga.sum(0)[:r].contiguous(), gb[:, :r].contiguous()
