"""Memory-lean Parameter Stability Loss: the value and gradients of `stability.parameter_stability_loss` on the
dense product D = s·B·A, without keeping any d_out x d_in tensor for backward.

    loss = lean_stability_loss(lora_A, lora_B, scale, history, alpha=..., reduction="mean", variant="dir+fro")

equals `parameter_stability_loss(lora_delta(A, B, s), H, alpha=..., ..., lora_A=A, lora_B=B)` in value and in its
gradients with respect to A and B (tests check it in float64 for every variant x reduction).

How:
- The elementwise terms (direction term, the deviation term's Σ(|D| − |H|)²) go through one autograd.Function
  that walks D block by block over rows, D[rows] = s·B[rows] @ A, so that at most a few blocks of
  `block_rows` x d_in elements exist at a time. Since these terms are sums over elements, their gradients with
  respect to A and B are contractions of each block's dL/dD[rows] with A and B[rows]; two strategies:
    "fused" (default): the forward computes each block's dL/dD right away (it has tanh(αD) in hand) and
        contracts it into factor-sized accumulators (r x d_in and d_out x r); backward only scales them by the
        incoming gradient. One pass over the elements per step; saved for backward: factor-sized tensors.
        The gradient work is skipped when no gradient is wanted (no_grad, or A and B not requiring grad).
    "recompute": the forward computes only the value; backward recomputes every block and contracts it.
        Saved for backward: A and B. Two passes, for when the gradient is usually not wanted.
- ‖D‖_F ("dir+fro", "weighted-dir+fro") goes through the factors: ‖s·BA‖_F² = s²·Σ (BᵀB) ⊙ (AAᵀ), with a square
  root whose gradient is 0 at 0 (as torch.linalg.vector_norm's is, so B = 0 gives the reference's gradient).
  "dir+factor" uses the reference's ‖A‖ + ‖B‖ directly.
- The history H is a constant: dense (as in the reference), stacked factors H = B_H @ A_H (`HistoryFactors`,
  smaller than dense while the total rank R of the earlier tasks is below d_out·d_in / (d_out + d_in)), or a
  `PreparedHistory` that holds, for one task's training, either tanh(αH) cached densely (fastest: no tanh of H
  per step) or the stacked factors (leanest: H's block is recomputed per step), chosen by size.

On the CPU, tanh(x) is computed as 2·sigmoid(2x) − 1 (torch's CPU tanh kernel costs about 4x its sigmoid kernel;
see _finish_tanh_ for the accuracy). On CUDA the blocks run as ordinary torch ops by default; strategy "triton"
computes the direction term of dir+fro / dir+factor in one Triton kernel instead (core/stability_triton.py; tested
on the CPU under Triton's interpreter). It is not the default: benchmarks/gpu_check.sh times it against the torch
blocks on a GPU, and no GPU has run it yet.

Fallbacks (explicit): the reference implementation is used, through the dense product, when alpha or scale
needs a gradient, or for complex dtypes (`fallback_reason` says why). Higher-order gradients are not supported:
a backward pass with create_graph=True through this loss raises RuntimeError rather than give a wrong answer.
Everything runs on the inputs' device and dtype; nothing is moved to the host (no syncs; the one exception: a
PreparedHistory given a different alpha object than its own compares their values).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from .stability import (DEFAULT_VARIANT, MODULE_MEAN_VARIANTS, _norm, check_variant, factor_matrices, lora_delta,
                        stability_terms)
from .stability_history import (STORES, HistoryFactors, _check_alpha, _finish_tanh_, _Source, _tanh_prescale,
                                stack_history)

TORCH_STRATEGIES = ("fused", "recompute")
STRATEGIES = TORCH_STRATEGIES + ("triton",)  # tests/test_stability_triton.py checks "triton"

# Default block size, in elements of D: 2^20 (4 MiB in float32), a few of which are alive at a time. Smaller blocks
# are no faster on one CPU thread and much slower with several threads on a busy machine (one parallel region per
# op per block); on CUDA, benchmarks/gpu_check.sh sweeps the size. A block is always at least one row.
BLOCK_ELEMENTS = {"cpu": 1 << 20, "default": 1 << 20}


def default_block_rows(d_out: int, d_in: int, device: torch.device | str = "cpu") -> int:
    target = BLOCK_ELEMENTS["cpu" if torch.device(device).type == "cpu" else "default"]
    return max(1, min(d_out, target // max(1, d_in)))


# --- the loss ----------------------------------------------------------------------------------------------------


def _value(x) -> float:
    return float(x.detach()) if isinstance(x, Tensor) else float(x)


def fallback_reason(lora_A: Tensor, lora_B: Tensor, scale, alpha) -> str | None:
    """Why lean_stability_loss would use the dense reference for these inputs (None: it does not)."""
    if isinstance(alpha, Tensor) and alpha.requires_grad:
        return "alpha requires grad"
    if isinstance(scale, Tensor) and scale.requires_grad:
        return "scale requires grad"
    if lora_A.is_complex() or lora_B.is_complex():
        return "complex dtype"
    return None


class _SafeSqrt(torch.autograd.Function):
    """sqrt(max(x, 0)) with gradient 0 where the result is 0 (like vector_norm's gradient at 0)."""

    @staticmethod
    def forward(ctx, x):
        y = x.clamp_min(0).sqrt()
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return torch.where(y > 0, g / (2 * y).clamp_min(torch.finfo(y.dtype).tiny), torch.zeros_like(y))


def _fro_factored(a2: Tensor, b2: Tensor, scale) -> Tensor:
    """‖s·B·A‖_F from the r x r Gram matrices: s²·Σ (BᵀB) ⊙ (AAᵀ) = s²·trace((BᵀB)(AAᵀ))."""
    sq = ((b2.T @ b2) * (a2 @ a2.T)).sum() * (scale * scale)
    return _SafeSqrt.apply(sq)


def _block(kind: int, a2: Tensor, b: Tensor, scale, alpha, src: _Source, r0: int, r1: int, want_grad: bool):
    """One row block. Returns (values, grads): values are 0-dim tensors, one per output ("dir", and "dev" for the
    deviation kind); grads are [(G, c)] with dS_k/dD[rows] = c·G, or None when not wanted.

    kind 0: direction Σ(1 − tanh(αD)·tanh(αH)).  kind 1: weighted Σ(1 − tanh·tanh)·|D|.
    kind 2: kind 0 plus Σ(|D| − |H|)².  kind 3: the hinge Σ relu(−tanh(αH)·D).
    """
    n = (r1 - r0) * a2.shape[1]
    if kind == 3:
        th, _ = src.rows(r0, r1, alpha, True, False)
        d = torch.mm(b * scale, a2)
        th = th.to(d.dtype)
        hinge = d.mul_(th).neg_().clamp_(min=0)  # relu(−tanh(αH)·D), over the block
        values = [hinge.sum()]
        if not want_grad:
            return values, None
        # d relu(−t·D)/dD = −t where −t·D > 0 (the sign goes in c): sign(relu) is that 0/1 mask, as floats (no
        # bool tensor, whose conversion costs more than the arithmetic on the CPU), written over the block
        return values, [(hinge.sign_().mul_(th), -1.0)]
    if kind == 0:
        th, _ = src.rows(r0, r1, alpha, True, False)
        t = _finish_tanh_(torch.mm(b * (alpha * scale * _tanh_prescale(a2.device)), a2))  # tanh(α·D[rows])
        th = th.to(t.dtype)
        values = [n - torch.dot(t.reshape(-1), th.reshape(-1)).to(_acc_dtype(t.dtype, t.device))]
        if not want_grad:
            return values, None
        # dE/dD = −α·tanh(αH)·(1 − tanh²(αD)); written over t
        g = torch.ops.aten.tanh_backward.grad_input(th, t, grad_input=t)
        return values, [(g, -alpha)]
    th, abs_h = src.rows(r0, r1, alpha, True, kind == 2)
    d = torch.mm(b * scale, a2)
    t = _finish_tanh_(d * (alpha * _tanh_prescale(d.device)))
    th = th.to(d.dtype)
    if kind == 1:
        e = torch.mul(t, th).neg_().add_(1)
        abs_d = d.abs()
        values = [torch.dot(e.reshape(-1), abs_d.reshape(-1))]
        if not want_grad:
            return values, None
        # d(E·|D|)/dD = −α·tanh(αH)(1 − t²)·|D| + E·sign(D)
        g = torch.ops.aten.tanh_backward(th, t).mul_(abs_d).mul_(-alpha)
        g.addcmul_(e, d.sign())
        return values, [(g, 1.0)]
    dev = d.abs().sub_(abs_h.to(d.dtype))
    values = [n - torch.dot(t.reshape(-1), th.reshape(-1)).to(_acc_dtype(t.dtype, t.device)),
              torch.dot(dev.reshape(-1), dev.reshape(-1))]
    if not want_grad:
        return values, None
    g_dir = torch.ops.aten.tanh_backward.grad_input(th, t, grad_input=t)
    g_dev = dev.mul_(d.sign_())  # d(|D| − |H|)²/dD = 2·(|D| − |H|)·sign(D)
    return values, [(g_dir, -alpha), (g_dev, 2.0)]


def _acc_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """Accumulator of the per-block sums: float64 (no float64 on MPS: float32 there)."""
    if device.type == "mps":
        return torch.float32
    return torch.float64 if dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else dtype


class _BlockwiseTerms(torch.autograd.Function):
    """(S_dir, S_dev) summed over D's elements block by block; see the module docstring."""

    @staticmethod
    def forward(ctx, a2, b2, kind, scale, alpha, src, block_rows, strategy, want_a, want_b):
        d_out = b2.shape[0]
        n_out = 2 if kind == 2 else 1
        fused = strategy == "fused" and (want_a or want_b)
        acc = _acc_dtype(a2.dtype, a2.device)
        sums = [torch.zeros((), dtype=acc, device=a2.device) for _ in range(n_out)]
        ga = [torch.zeros_like(a2) for _ in range(n_out)] if fused and want_a else None
        gb = [torch.empty_like(b2) for _ in range(n_out)] if fused and want_b else None
        if strategy == "triton":  # direction term only (kind 0): one kernel instead of the row blocks
            from .stability_triton import direction_terms_triton

            fused = want_a or want_b
            total, ga_t, gb_t = direction_terms_triton(a2, b2, scale, alpha, src, fused)
            sums[0] += d_out * a2.shape[1] - total
            ga = [ga_t] if fused and want_a else None
            gb = [gb_t] if fused and want_b else None
            grads = [(None, -alpha)]
        else:
            for r0 in range(0, d_out, block_rows):
                r1 = min(d_out, r0 + block_rows)
                b = b2[r0:r1]
                values, grads = _block(kind, a2, b, scale, alpha, src, r0, r1, fused)
                for k, v in enumerate(values):
                    sums[k] += v.to(acc)
                if fused:
                    for k, (g, _) in enumerate(grads):
                        if gb is not None:
                            torch.mm(g, a2.T, out=gb[k][r0:r1])
                        if ga is not None:
                            ga[k].addmm_(b.T, g)
        outs = tuple(s.to(a2.dtype) for s in sums)
        if n_out == 1:
            outs = outs + (torch.zeros((), dtype=a2.dtype, device=a2.device),)
        ctx.kind, ctx.scale, ctx.alpha, ctx.src, ctx.block_rows = kind, scale, alpha, src, block_rows
        ctx.fused = fused
        ctx.set_materialize_grads(False)
        if fused:
            # The true per-output gradients: s·c_k·(accumulated contraction); c_k (the same for every block, so
            # taken from the last one) and s are applied once here.
            coef = [c for _, c in grads]
            ga = [x.mul_(scale * c) for x, c in zip(ga, coef)] if ga is not None else None
            gb = [x.mul_(scale * c) for x, c in zip(gb, coef)] if gb is not None else None
            ctx.n_ga, ctx.n_gb = (len(ga) if ga else 0), (len(gb) if gb else 0)
            ctx.save_for_backward(*(ga or []), *(gb or []))
        else:
            ctx.save_for_backward(a2, b2)
        return outs

    @staticmethod
    def backward(ctx, g_dir, g_dev):
        if torch.is_grad_enabled():  # create_graph=True: the contraction below is not itself differentiable
            raise RuntimeError("lean_stability_loss does not support double backward (create_graph=True); "
                               "use stability.parameter_stability_loss for higher-order gradients")
        ups = [g_dir, g_dev][: 2 if ctx.kind == 2 else 1]
        need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if all(g is None for g in ups):
            return (None,) * 10
        if ctx.fused:
            saved = ctx.saved_tensors
            ga, gb = saved[: ctx.n_ga], saved[ctx.n_ga:]

            def combine(parts):
                out = None
                for p, g in zip(parts, ups):
                    if g is not None:
                        out = p * g if out is None else out + p * g
                return out

            grad_a = combine(ga) if need_a and ga else None
            grad_b = combine(gb) if need_b and gb else None
            return (grad_a, grad_b) + (None,) * 8
        a2, b2 = ctx.saved_tensors
        grad_a = torch.zeros_like(a2) if need_a else None
        grad_b = torch.empty_like(b2) if need_b else None
        for r0 in range(0, b2.shape[0], ctx.block_rows):
            r1 = min(b2.shape[0], r0 + ctx.block_rows)
            b = b2[r0:r1]
            _, grads = _block(ctx.kind, a2, b, ctx.scale, ctx.alpha, ctx.src, r0, r1, True)
            g_total = None
            for (g, c), up in zip(grads, ups):
                if up is None:
                    continue
                g = g.mul_(up * c * ctx.scale)
                g_total = g if g_total is None else g_total.add_(g)
            if g_total is None:
                g_total = torch.zeros((r1 - r0, a2.shape[1]), dtype=a2.dtype, device=a2.device)
            if grad_b is not None:
                torch.mm(g_total, a2.T, out=grad_b[r0:r1])
            if grad_a is not None:
                grad_a.addmm_(b.T, g_total)
            del grads, g, g_total  # free this block before the next one is computed
        return (grad_a, grad_b) + (None,) * 8


# --- the history, prepared for one task's training ------------------------------------------------------------


class PreparedHistory:
    """One module's history H, prepared once for a task's training with a fixed α (METHOD.md §1: H is constant
    while task t trains).

    store "dense": tanh(αH) is cached (and |H| too for variant "deviation"), replacing H: one dense buffer, as
        large as H, and no tanh of H per step. Variant "magnitude-only" reads ‖H‖ alone: only that is kept.
    store "factors": the stacked factors are kept and H's block recomputed per step: memory (d_out + d_in)·R.
    store "auto": "factors" when factors are given and take fewer elements than dense H, else "dense".
    """

    def __init__(self, history: Tensor | HistoryFactors | None = None, *, alpha: float | Tensor,
                 variant: str = DEFAULT_VARIANT, store: str = "auto", factors: HistoryFactors | None = None):
        if store not in STORES:
            raise ValueError(f"unknown store {store!r}; expected one of {STORES}")
        check_variant(variant, "mean")
        _check_alpha(alpha)
        if isinstance(history, HistoryFactors):
            history, factors = None, history
        if history is None and factors is None:
            raise ValueError("PreparedHistory needs a dense history or its factors")
        dense = history.detach() if history is not None else None
        shape = tuple(dense.shape) if dense is not None else factors.shape
        if dense is not None and factors is not None and dense.numel() != factors.shape[0] * factors.shape[1]:
            raise ValueError(f"history shape {shape} does not match its factors {factors.shape}")
        if dense is not None and factors is not None and factors.B.dtype != dense.dtype:
            factors = HistoryFactors(factors.B.to(dense.dtype), factors.A.to(dense.dtype))
        if store == "auto":
            store = "factors" if factors is not None and factors.numel() < math.prod(shape) else "dense"
        if store == "factors" and factors is None:
            raise ValueError("store 'factors' needs the history's factors")
        self.alpha = alpha.detach() if isinstance(alpha, Tensor) else float(alpha)
        self.variant, self.store, self.shape = variant, store, shape
        if store == "factors":
            self.source = _Source(factors=HistoryFactors(factors.B.detach(), factors.A.detach()))
        else:
            h = dense if dense is not None else factors.dense().detach()
            h = h.reshape(h.shape[0], -1)
        if store == "dense" and variant == "magnitude-only":  # it reads ‖H‖ alone: nothing dense is kept
            self.source = _Source(norm=torch.linalg.vector_norm(h))
        elif store == "dense":
            self.source = _Source(tanh_cache=torch.tanh(h * self.alpha),
                                  abs_cache=h.abs() if variant == "deviation" else None,
                                  norm=torch.linalg.vector_norm(h) if variant in MODULE_MEAN_VARIANTS else None)

    @property
    def nbytes(self) -> int:
        s = self.source
        return sum(t.numel() * t.element_size() for t in (s.tanh_cache, s.abs_cache, *(s.factors or ()))
                   if t is not None)

    def loss(self, lora_A: Tensor, lora_B: Tensor, scale: float | Tensor, *, reduction: str = "mean",
             block_rows: int | None = None, strategy: str = "fused") -> Tensor:
        return lean_stability_loss(lora_A, lora_B, scale, self, alpha=self.alpha, reduction=reduction,
                                   variant=self.variant, block_rows=block_rows, strategy=strategy)


def prepare_history(dense: Tensor | None = None, factors: Iterable[tuple[Tensor, Tensor, float]] | None = None, *,
                    alpha: float | Tensor, variant: str = DEFAULT_VARIANT, store: str = "auto") -> PreparedHistory:
    """PreparedHistory from a dense H and/or the earlier tasks' [(lora_A, lora_B, scale), ...]."""
    stacked = stack_history(factors) if factors is not None else None
    return PreparedHistory(dense, alpha=alpha, variant=variant, store=store, factors=stacked)


_KIND = {"dir+fro": 0, "dir+factor": 0, "weighted-dir+fro": 1, "deviation": 2, "hinge+ratio": 3,
         "direction-only": 3, "magnitude-only": None}  # None: no elementwise term


def lean_stability_terms(
    lora_A: Tensor,
    lora_B: Tensor,
    scale: float | Tensor,
    history: Tensor | HistoryFactors | PreparedHistory,
    *,
    alpha: float | Tensor | None = None,
    reduction: str = "mean",
    variant: str = DEFAULT_VARIANT,
    block_rows: int | None = None,
    strategy: str = "fused",
) -> tuple[Tensor, Tensor]:
    """(direction term, magnitude term), equal to stability.stability_terms(lora_delta(A, B, s), H, ...)."""
    alpha = _checked_options(history, alpha, reduction, variant, strategy)
    a2, b2 = factor_matrices(lora_A, lora_B)
    shape = (b2.shape[0], a2.shape[1])
    numel = shape[0] * shape[1]
    if numel == 0:
        raise ValueError("delta is empty")
    src = _history_source(history, shape)
    reason = fallback_reason(lora_A, lora_B, scale, alpha)
    if reason is not None:
        delta = lora_delta(lora_A, lora_B, scale)
        return stability_terms(delta, _dense_history(history, reason).reshape(delta.shape), alpha=alpha,
                               reduction=reduction, variant=variant, lora_A=lora_A, lora_B=lora_B)
    if isinstance(scale, Tensor):
        scale = scale.detach()
    if isinstance(alpha, Tensor):
        alpha = alpha.detach()
    rows = int(block_rows) if block_rows is not None else default_block_rows(shape[0], shape[1], a2.device)
    if rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    if variant in MODULE_MEAN_VARIANTS:
        return _scaled_terms(a2, b2, scale, alpha, src, variant, rows, strategy, lora_A, lora_B)
    grad_on = torch.is_grad_enabled()
    s_dir, s_dev = _BlockwiseTerms.apply(a2.contiguous(), b2.contiguous(), _KIND[variant], scale, alpha, src, rows,
                                         strategy, grad_on and lora_A.requires_grad,
                                         grad_on and lora_B.requires_grad)
    mean = reduction == "mean"
    direction = s_dir / numel if mean else s_dir
    if variant == "dir+factor":
        magnitude = _norm(lora_A, reduction) + _norm(lora_B, reduction)
    elif variant == "deviation":
        magnitude = _SafeSqrt.apply(s_dev)
        magnitude = magnitude / math.sqrt(numel) if mean else magnitude
    else:
        magnitude = _fro_factored(a2, b2, scale)
        magnitude = magnitude / math.sqrt(numel) if mean else magnitude
    return direction, magnitude


def _scaled_terms(a2, b2, scale, alpha, src, variant, rows, strategy, lora_A, lora_B) -> tuple[Tensor, Tensor]:
    """The halves of "hinge+ratio" (and its one-half variants), as stability._scaled_terms defines them."""
    h_norm = src.norm().to(a2.dtype)
    inv = torch.where(h_norm > 0, 1 / h_norm, torch.zeros_like(h_norm))
    zero = (a2.sum() + b2.sum()) * 0
    direction = magnitude = zero
    if variant != "magnitude-only":
        grad_on = torch.is_grad_enabled()
        s_dir, _ = _BlockwiseTerms.apply(a2.contiguous(), b2.contiguous(), 3, scale, alpha, src, rows, strategy,
                                         grad_on and lora_A.requires_grad, grad_on and lora_B.requires_grad)
        direction = s_dir * (inv / math.sqrt(a2.shape[1] * b2.shape[0]))
    if variant != "direction-only":
        magnitude = _fro_factored(a2, b2, scale) * inv
    return direction, magnitude


def _checked_options(history, alpha, reduction: str, variant: str, strategy: str):
    """Check the options against each other and the history; returns alpha (a PreparedHistory's own if None)."""
    check_variant(variant, reduction)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    if strategy == "triton" and _KIND[variant] != 0:
        raise ValueError(f"strategy 'triton' covers the variants dir+fro and dir+factor, not {variant!r}")
    if isinstance(history, PreparedHistory):
        if alpha is None:
            alpha = history.alpha
        elif alpha is not history.alpha and _value(alpha) != _value(history.alpha):
            raise ValueError(f"alpha {_value(alpha)} differs from the PreparedHistory's {_value(history.alpha)}")
        if variant != history.variant:
            raise ValueError(f"history was prepared for variant {history.variant!r}, not {variant!r}")
    elif alpha is None:
        raise ValueError("alpha is required (it may only be left out with a PreparedHistory)")
    _check_alpha(alpha)
    return alpha


def _history_source(history, shape: tuple[int, int]) -> _Source:
    """The blocks' source of H, after checking that H has the update's shape."""
    numel = shape[0] * shape[1]
    if isinstance(history, PreparedHistory):
        if math.prod(history.shape) != numel:
            raise ValueError(f"delta shape {shape} != history shape {history.shape}")
        return history.source
    if isinstance(history, HistoryFactors):
        if history.shape != shape:
            raise ValueError(f"delta shape {shape} != history shape {history.shape}")
        return _Source(factors=HistoryFactors(history.B.detach(), history.A.detach()))
    if history.numel() != numel or history.shape[0] != shape[0]:
        raise ValueError(f"delta shape {shape} != history shape {tuple(history.shape)}")
    return _Source(dense=history.detach().reshape(shape))


def _dense_history(history, reason: str) -> Tensor:
    """H as a dense tensor, for the reference implementation (the fallback)."""
    if isinstance(history, HistoryFactors):
        return history.dense()
    if not isinstance(history, PreparedHistory):
        return history
    h = history.source.dense
    if h is None and history.source.factors is not None:
        h = history.source.factors.dense()
    if h is None:
        raise ValueError(f"cannot fall back to the reference ({reason}): the prepared history keeps only tanh(αH) "
                         "(or, for magnitude-only, ‖H‖); "
                         "pass the dense history or its factors instead")
    return h


def lean_stability_loss(lora_A: Tensor, lora_B: Tensor, scale: float | Tensor,
                        history: Tensor | HistoryFactors | PreparedHistory, **options) -> Tensor:
    """L_PS(s·B·A, H), equal in value and gradients to
    parameter_stability_loss(lora_delta(lora_A, lora_B, scale), H, alpha=alpha, reduction=reduction,
    variant=variant, lora_A=lora_A, lora_B=lora_B), with memory proportional to the factors (module docstring).

    lora_A (r, d_in) or (r, d_in, kh, kw); lora_B (d_out, r) or (d_out, r, 1, 1); scale: float or constant 0-dim
    tensor; history: dense H (numel d_out·d_in), HistoryFactors, or PreparedHistory (then alpha may be omitted).
    block_rows: rows of D per block (default: BLOCK_ELEMENTS // d_in, at least 1).
    strategy: "fused" (gradient contracted during the forward), "recompute" (in backward), or "triton" (the
    direction term of dir+fro / dir+factor as one Triton kernel: core/stability_triton.py; CUDA, or the CPU
    under TRITON_INTERPRET=1).
    """
    direction, magnitude = lean_stability_terms(lora_A, lora_B, scale, history, **options)
    return direction + magnitude


__all__ = [
    "HistoryFactors", "PreparedHistory", "STORES", "STRATEGIES", "TORCH_STRATEGIES", "default_block_rows",
    "fallback_reason", "lean_stability_loss", "lean_stability_terms", "prepare_history", "stack_history",
]
