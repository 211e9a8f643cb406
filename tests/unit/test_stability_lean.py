"""The memory-lean stability loss equals the dense reference in value and gradients (float64), and keeps no
dense d_out x d_in tensor for backward."""

import math

import pytest
import torch

from pslora_cli.core.stability import (
    LITERAL_VARIANTS,
    REDUCTIONS,
    VARIANTS,
    adaptive_alpha,
    lora_delta,
    parameter_stability_loss,
)
from pslora_cli.core.stability_lean import (
    TORCH_STRATEGIES as STRATEGIES,
    HistoryFactors,
    PreparedHistory,
    default_block_rows,
    fallback_reason,
    lean_stability_loss,
    prepare_history,
    stack_history,
)

F64 = torch.float64
# (variant, reduction) pairs that exist: the scale-free variants are means by construction.
COMBINATIONS = [(v, r) for v in VARIANTS for r in REDUCTIONS if r == "mean" or v in LITERAL_VARIANTS]


def _inputs(seed, d_out=9, d_in=13, r=3, tasks=2, scale_h=0.7, zero_b=False, conv=None):
    """Fresh random factors, and a history H = Σ s·B_i A_i with its factors."""
    g = torch.Generator().manual_seed(seed)
    kh, kw = conv or (1, 1)
    a_shape = (r, d_in, kh, kw) if conv else (r, d_in)
    b_shape = (d_out, r, 1, 1) if conv else (d_out, r)
    a = torch.randn(*a_shape, generator=g, dtype=F64).requires_grad_(True)
    b = (torch.zeros(*b_shape, dtype=F64) if zero_b else torch.randn(*b_shape, generator=g, dtype=F64))
    b.requires_grad_(True)
    prev = [(torch.randn(*a_shape, generator=g, dtype=F64), torch.randn(*b_shape, generator=g, dtype=F64), scale_h)
            for _ in range(tasks)]
    h = sum(lora_delta(pa, pb, s) for pa, pb, s in prev)
    return a, b, h, prev


def _reference(a, b, scale, h, alpha, reduction, variant):
    d = lora_delta(a, b, scale)
    loss = parameter_stability_loss(d, h.reshape(d.shape), alpha=alpha, reduction=reduction, variant=variant,
                                    lora_A=a, lora_B=b)
    ga, gb = torch.autograd.grad(loss, (a, b))
    return loss.detach(), ga, gb


def _assert_same(a, b, loss, ref, rel=1e-11):
    ga, gb = torch.autograd.grad(loss, (a, b))
    r_loss, r_ga, r_gb = ref
    assert loss.dtype == r_loss.dtype
    assert loss.item() == pytest.approx(r_loss.item(), rel=rel, abs=1e-13)
    for got, want in ((ga, r_ga), (gb, r_gb)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=rel, atol=1e-13)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("variant,reduction", COMBINATIONS)
def test_equals_reference_dense_history(variant, reduction, strategy):
    for seed, block_rows in ((0, 1), (1, 4), (2, 7), (3, None)):  # odd blocks: 9 rows = 4+4+1, 7+2
        a, b, h, _ = _inputs(seed)
        alpha = 0.5 + seed  # tanh neither linear nor saturated
        ref = _reference(a, b, 0.8, h, alpha, reduction, variant)
        loss = lean_stability_loss(a, b, 0.8, h, alpha=alpha, reduction=reduction, variant=variant,
                                   block_rows=block_rows, strategy=strategy)
        _assert_same(a, b, loss, ref)


@pytest.mark.parametrize("variant,reduction", COMBINATIONS)
def test_equals_reference_factored_and_prepared_history(variant, reduction):
    a, b, h, prev = _inputs(10, d_out=11, d_in=6, r=2, tasks=3)
    alpha = adaptive_alpha(h, c=2.0)  # a 0-dim tensor, as train.py passes it
    ref = _reference(a, b, 2.0, h, alpha, reduction, variant)
    histories = [stack_history(prev),
                 prepare_history(h, prev, alpha=alpha, variant=variant, store="factors"),
                 prepare_history(h, prev, alpha=alpha, variant=variant, store="dense"),
                 prepare_history(h, alpha=alpha, variant=variant),
                 PreparedHistory(stack_history(prev), alpha=alpha, variant=variant, store="dense")]
    for hist in histories:
        for strategy in STRATEGIES:
            loss = lean_stability_loss(a, b, 2.0, hist, alpha=alpha, reduction=reduction, variant=variant,
                                       block_rows=5, strategy=strategy)
            _assert_same(a, b, loss, ref)
    prepared = histories[1]
    _assert_same(a, b, prepared.loss(a, b, 2.0, reduction=reduction, block_rows=3), ref)


def test_prepared_history_store_choice():
    a, b, h, prev = _inputs(0, d_out=40, d_in=30, r=2, tasks=2)  # factors: 4·70 = 280 < 1200 elements
    assert prepare_history(h, prev, alpha=1.0).store == "factors"
    assert prepare_history(h, alpha=1.0).store == "dense"
    big = [(pa.repeat(10, 1), pb.repeat(1, 10), s) for pa, pb, s in prev]  # R = 40: 40·70 > 1200
    assert prepare_history(h, big, alpha=1.0).store == "dense"
    p = prepare_history(h, alpha=1.0, variant="dir+fro")
    assert p.nbytes == h.numel() * 8  # only tanh(αH), H itself is not kept
    assert prepare_history(h, alpha=1.0, variant="deviation").nbytes == 2 * h.numel() * 8


@pytest.mark.parametrize("variant,reduction", COMBINATIONS)
def test_first_step_b_zero(variant, reduction):
    # B = 0 at a task's first step: D = 0, ‖D‖ has gradient 0 there (not NaN), as in the reference.
    a, b, h, prev = _inputs(4, zero_b=True)
    ref = _reference(a, b, 2.0, h, 1.5, reduction, variant)
    for strategy in STRATEGIES:
        for hist in (h, stack_history(prev)):
            loss = lean_stability_loss(a, b, 2.0, hist, alpha=1.5, reduction=reduction, variant=variant,
                                       block_rows=2, strategy=strategy)
            _assert_same(a, b, loss, ref)
    # deviation with H = 0 as well: the norm of a zero tensor
    zero_h = torch.zeros_like(h)
    ref = _reference(a, b, 2.0, zero_h, 1.5, reduction, variant)
    _assert_same(a, b, lean_stability_loss(a, b, 2.0, zero_h, alpha=1.5, reduction=reduction, variant=variant), ref)


@pytest.mark.parametrize("variant", VARIANTS)
def test_conv_shaped_factors(variant):
    # 1x1 conv (conv_pw) and a kxk lora_A (lora_B is always 1x1): D is (d_out, d_in·kh·kw)
    for conv in ((1, 1), (3, 3)):
        a, b, h, prev = _inputs(5, d_out=6, d_in=4, r=2, conv=conv)
        for reduction in REDUCTIONS if variant in LITERAL_VARIANTS else ("mean",):
            ref = _reference(a, b, 0.5, h, 1.0, reduction, variant)
            for hist in (h, h.reshape(6, 4, *conv) if conv == (3, 3) else h, stack_history(prev)):
                loss = lean_stability_loss(a, b, 0.5, hist, alpha=1.0, reduction=reduction, variant=variant,
                                           block_rows=4)
                _assert_same(a, b, loss, ref)


def test_tensor_scale_and_upstream_gradient():
    a, b, h, _ = _inputs(6)
    scale = torch.tensor(0.3, dtype=F64)

    def total(fn):
        x = torch.randn(3, dtype=F64, generator=torch.Generator().manual_seed(0))
        return 2.5 * fn() + (x * x).sum()  # the loss enters a larger graph, scaled by λ

    ref_loss = total(lambda: parameter_stability_loss(lora_delta(a, b, scale), h, alpha=2.0, variant="deviation"))
    ref = (ref_loss.detach(), *torch.autograd.grad(ref_loss, (a, b)))
    for strategy in STRATEGIES:
        loss = total(lambda: lean_stability_loss(a, b, scale, h, alpha=2.0, variant="deviation", block_rows=3,
                                                 strategy=strategy))
        _assert_same(a, b, loss, ref)


def test_frozen_factor_and_no_grad():
    a, b, h, _ = _inputs(7)
    a_frozen = a.detach()
    ref = parameter_stability_loss(lora_delta(a_frozen, b, 1.0), h, alpha=1.0)
    (ref_gb,) = torch.autograd.grad(ref, (b,))
    for strategy in STRATEGIES:
        loss = lean_stability_loss(a_frozen, b, 1.0, h, alpha=1.0, block_rows=2, strategy=strategy)
        (gb,) = torch.autograd.grad(loss, (b,))
        torch.testing.assert_close(gb, ref_gb, rtol=1e-11, atol=1e-13)
        with torch.no_grad():
            value = lean_stability_loss(a, b, 1.0, h, alpha=1.0, strategy=strategy)
        assert not value.requires_grad
        assert value.item() == pytest.approx(ref.item(), rel=1e-12)


def test_float32_close_to_reference():
    g = torch.Generator().manual_seed(8)
    a = (torch.randn(8, 300, generator=g) * 0.05).requires_grad_(True)
    b = (torch.randn(200, 8, generator=g) * 0.01).requires_grad_(True)
    h = torch.randn(200, 300, generator=g) * 1e-3
    alpha = adaptive_alpha(h)
    for variant in VARIANTS:
        ref = parameter_stability_loss(lora_delta(a, b, 2.0), h, alpha=alpha, variant=variant, lora_A=a, lora_B=b)
        r_ga, r_gb = torch.autograd.grad(ref, (a, b))
        loss = lean_stability_loss(a, b, 2.0, h, alpha=alpha, variant=variant, block_rows=64)
        ga, gb = torch.autograd.grad(loss, (a, b))
        assert loss.dtype == torch.float32
        assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
        torch.testing.assert_close(ga, r_ga, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(gb, r_gb, rtol=1e-4, atol=1e-7)


def test_explicit_fallback_when_alpha_needs_grad():
    a, b, h, prev = _inputs(9)
    alpha = torch.tensor(1.2, dtype=F64, requires_grad=True)
    assert fallback_reason(a, b, 1.0, alpha) == "alpha requires grad"
    assert fallback_reason(a, b, 1.0, alpha.detach()) is None
    ref = parameter_stability_loss(lora_delta(a, b, 1.0), h, alpha=alpha, variant="weighted-dir+fro")
    want = torch.autograd.grad(ref, (a, b, alpha))
    for hist in (h, stack_history(prev)):
        loss = lean_stability_loss(a, b, 1.0, hist, alpha=alpha, variant="weighted-dir+fro")
        got = torch.autograd.grad(loss, (a, b, alpha))
        assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
        for x, y in zip(got, want):
            torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-13)
    # a PreparedHistory that keeps only tanh(αH) cannot fall back: it says so
    with pytest.raises(ValueError, match="fall back"):
        lean_stability_loss(a, b, 1.0, prepare_history(h, alpha=1.2), alpha=alpha)


def test_double_backward_is_refused():
    a, b, h, _ = _inputs(11)
    for strategy in STRATEGIES:  # rather than return a first gradient whose own gradient would be wrong
        loss = lean_stability_loss(a, b, 1.0, h, alpha=1.0, strategy=strategy, variant="hinge+ratio")
        with pytest.raises(RuntimeError, match="double backward"):
            torch.autograd.grad(loss, (a,), create_graph=True)


def test_bad_arguments():
    a, b, h, prev = _inputs(12)
    with pytest.raises(ValueError, match="variant"):
        lean_stability_loss(a, b, 1.0, h, alpha=1.0, variant="nope")
    with pytest.raises(ValueError, match="reduction"):
        lean_stability_loss(a, b, 1.0, h, alpha=1.0, reduction="max")
    with pytest.raises(ValueError, match="strategy"):
        lean_stability_loss(a, b, 1.0, h, alpha=1.0, strategy="x")
    with pytest.raises(ValueError, match="shape"):
        lean_stability_loss(a, b, 1.0, h[:, :-1], alpha=1.0)
    with pytest.raises(ValueError, match="alpha"):
        lean_stability_loss(a, b, 1.0, h, alpha=0.0)
    with pytest.raises(ValueError, match="alpha is required"):
        lean_stability_loss(a, b, 1.0, h)
    with pytest.raises(ValueError, match="rank mismatch"):
        lean_stability_loss(a, b[:, :-1], 1.0, h, alpha=1.0)
    with pytest.raises(ValueError, match="block_rows"):
        lean_stability_loss(a, b, 1.0, h, alpha=1.0, block_rows=0)
    prepared = prepare_history(h, alpha=1.0, variant="dir+fro")
    with pytest.raises(ValueError, match="differs"):
        lean_stability_loss(a, b, 1.0, prepared, alpha=2.0)
    with pytest.raises(ValueError, match="prepared for variant"):
        lean_stability_loss(a, b, 1.0, prepared, variant="deviation")
    with pytest.raises(ValueError, match="store"):
        prepare_history(h, alpha=1.0, store="factors")
    assert isinstance(stack_history(prev), HistoryFactors)


def test_default_block_rows():
    assert default_block_rows(4096, 4096, "cpu") == (1 << 20) // 4096
    assert default_block_rows(10, 1 << 30, "cpu") == 1
    assert default_block_rows(8, 16, "cpu") == 8


# --- memory: nothing dense is saved for backward --------------------------------------------------------------


def _saved_bytes(fn):
    """Bytes of every tensor autograd saves for backward while fn() builds its graph (and the largest one)."""
    sizes = []

    def pack(t):
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(sizes), max(sizes, default=0)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_no_dense_tensor_saved_for_backward(variant, strategy):
    d_out, d_in, r = 256, 384, 2
    a, b, h, prev = _inputs(13, d_out=d_out, d_in=d_in, r=r)
    dense_bytes = d_out * d_in * 8
    factor_bytes = (d_out + d_in) * r * 8
    for hist in (h, stack_history(prev), prepare_history(h, alpha=1.0, variant=variant)):
        loss, total, largest = _saved_bytes(
            lambda: lean_stability_loss(a, b, 1.0, hist, alpha=1.0, variant=variant, strategy=strategy))
        assert largest <= max(a.numel(), b.numel()) * 8
        # fused: one gradient accumulator per output (two for "deviation") plus the factored norm's inputs
        assert total <= 6 * factor_bytes + 1024
        assert total < dense_bytes / 10
        loss.backward()
    # the reference keeps several dense tensors
    _, ref_total, ref_largest = _saved_bytes(
        lambda: parameter_stability_loss(lora_delta(a, b, 1.0), h, alpha=1.0, variant=variant, lora_A=a, lora_B=b))
    assert ref_largest == dense_bytes and ref_total >= (1 if variant == "magnitude-only" else 2) * dense_bytes


def test_backward_transient_memory_is_blockwise():
    # Peak of torch's CPU allocations during backward, from the profiler's memory events (deterministic sizes):
    # the recompute strategy allocates a few blocks at a time, not d_out x d_in.
    from torch.profiler import ProfilerActivity, profile

    d_out, d_in, r, rows = 256, 512, 4, 16
    a, b, h, _ = _inputs(14, d_out=d_out, d_in=d_in, r=r)
    loss = lean_stability_loss(a, b, 1.0, h, alpha=1.0, block_rows=rows, strategy="recompute")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss.backward()
    peak = _peak_allocated(prof)
    block_bytes = rows * d_in * 8
    assert 0 < peak <= 4 * block_bytes + 4 * (d_out + d_in) * r * 8
    assert peak < d_out * d_in * 8 / 4


def _peak_allocated(prof) -> int:
    """Peak of the running sum of allocations (+) and frees (-) recorded while profiling."""
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        running += e.nbytes()
        peak = max(peak, running)
    return peak


def test_math_identity_factored_frobenius():
    # ‖s·BA‖_F² = s²·trace((BᵀB)(AAᵀ)), the identity the lean magnitude term uses
    a, b, _, _ = _inputs(15)
    with torch.no_grad():
        lhs = lora_delta(a, b, 0.7).pow(2).sum()
        rhs = 0.49 * torch.trace((b.T @ b) @ (a @ a.T))
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-12)
    assert math.isfinite(lhs.item())


@pytest.mark.parametrize("store", ["factors", "dense"])
def test_prepared_history_reused_over_steps_and_block_sizes(store):
    # a PreparedHistory lives for a whole task's training: whatever it caches must depend on H only, never on the
    # factors being trained or on an earlier call's block size
    _, _, h, prev = _inputs(20, d_out=10, d_in=7, r=2, tasks=2)
    prepared = prepare_history(h, prev, alpha=1.3, variant="dir+fro", store=store)
    for step, block_rows in enumerate((4, 4, 3, None, 4)):
        a, b, _, _ = _inputs(30 + step, d_out=10, d_in=7, r=2)
        ref = _reference(a, b, 1.5, h, 1.3, "mean", "dir+fro")
        _assert_same(a, b, prepared.loss(a, b, 1.5, block_rows=block_rows), ref)
