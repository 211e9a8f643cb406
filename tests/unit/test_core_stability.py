import math

import pytest
import torch

from pslora_cli.core.stability import (
    LITERAL_VARIANTS,
    MAX_ALPHA,
    REDUCTIONS,
    VARIANTS,
    adaptive_alpha,
    conv_to_matrix,
    lora_delta,
    parameter_stability_loss,
    stability_terms,
)

t1, t2, th = math.tanh(1.0), math.tanh(2.0), math.tanh(0.5)

# Hand-computed 2x2 case, alpha = 1.
D = [[0.5, -1.0], [0.0, 2.0]]
H = [[1.0, 1.0], [-0.5, 0.0]]
# direction elements 1 - tanh(D)tanh(H): [1 - tanh(.5)tanh(1), 1 + tanh(1)^2, 1 - 0, 1 - 0]
E = [1 - th * t1, 1 + t1 * t1, 1.0, 1.0]
ABS_D = [0.5, 1.0, 0.0, 2.0]
SQ_D = 0.25 + 1.0 + 0.0 + 4.0  # ||D||_F^2 = 5.25
SQ_DEV = 0.25 + 0.0 + 0.25 + 4.0  # | |D| - |H| |^2 = [.5-1, 1-1, 0-.5, 2-0]^2 -> 4.5
A_F = [[1.0, 2.0]]  # ||A||^2 = 5, numel 2
B_F = [[3.0], [4.0]]  # ||B||^2 = 25, numel 2

EXPECTED = {
    ("dir+fro", "sum"): sum(E) + math.sqrt(SQ_D),
    ("dir+fro", "mean"): sum(E) / 4 + math.sqrt(SQ_D / 4),
    ("weighted-dir+fro", "sum"): sum(e * a for e, a in zip(E, ABS_D)) + math.sqrt(SQ_D),
    ("weighted-dir+fro", "mean"): sum(e * a for e, a in zip(E, ABS_D)) / 4 + math.sqrt(SQ_D / 4),
    ("dir+factor", "sum"): sum(E) + math.sqrt(5) + 5.0,
    ("dir+factor", "mean"): sum(E) / 4 + math.sqrt(5 / 2) + math.sqrt(25 / 2),
    ("deviation", "sum"): sum(E) + math.sqrt(SQ_DEV),
    ("deviation", "mean"): sum(E) / 4 + math.sqrt(SQ_DEV / 4),
    # hinge+ratio: relu(−tanh(H)·D) = [0, tanh(1)·1, 0, 0] (tanh(0) = 0 at D = 2); ‖H‖_F = 1.5, N = 4
    ("hinge+ratio", "mean"): t1 / (2 * 1.5) + math.sqrt(SQ_D) / 1.5,
    ("direction-only", "mean"): t1 / (2 * 1.5),
    ("magnitude-only", "mean"): math.sqrt(SQ_D) / 1.5,
}
# (variant, reduction) pairs that exist: the scale-free variants are means by construction.
COMBINATIONS = [(v, r) for v in VARIANTS for r in REDUCTIONS if r == "mean" or v in LITERAL_VARIANTS]


def _t(x, **kw):
    return torch.tensor(x, dtype=torch.float64, **kw)


@pytest.mark.parametrize("variant,reduction", list(EXPECTED))
def test_hand_computed_2x2(variant, reduction):
    loss = parameter_stability_loss(
        _t(D), _t(H), alpha=1.0, reduction=reduction, variant=variant, lora_A=_t(A_F), lora_B=_t(B_F)
    )
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(EXPECTED[(variant, reduction)], rel=1e-12)


def test_hand_computed_tensor_alpha():
    # alpha = 2 as a 0-dim tensor: elements 1 - tanh(1)tanh(2), 1 + tanh(2)^2, 1, 1
    d, h = _t([[0.5, -1.0], [0.0, 2.0]]), _t([[1.0, 1.0], [-0.5, 0.0]])
    direction, magnitude = stability_terms(d, h, alpha=_t(2.0), reduction="sum", variant="dir+fro")
    assert direction.item() == pytest.approx((1 - t1 * t2) + (1 + t2 * t2) + 1 + 1, rel=1e-12)
    assert magnitude.item() == pytest.approx(math.sqrt(5.25), rel=1e-12)


def _factors(seed, d_out=3, d_in=4, r=2):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(r, d_in, generator=g, dtype=torch.float64)
    b = torch.randn(d_out, r, generator=g, dtype=torch.float64)
    h = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    return a, b, h


@pytest.mark.parametrize("variant,reduction", COMBINATIONS)
def test_gradcheck_through_product(variant, reduction):
    a, b, h = _factors(0)
    a.requires_grad_(True)
    b.requires_grad_(True)

    def f(a_, b_):
        d = lora_delta(a_, b_, 0.5)
        return parameter_stability_loss(
            d, h, alpha=0.7, reduction=reduction, variant=variant, lora_A=a_, lora_B=b_
        )

    assert torch.autograd.gradcheck(f, (a, b))


def test_gradcheck_with_adaptive_alpha():
    a, b, h = _factors(1)
    a.requires_grad_(True)
    b.requires_grad_(True)
    alpha = adaptive_alpha(h, c=2.0)
    assert torch.autograd.gradcheck(lambda a_, b_: parameter_stability_loss(b_ @ a_, h, alpha=alpha), (a, b))


@pytest.mark.parametrize("variant,reduction", COMBINATIONS)
@pytest.mark.parametrize("zero_history", [False, True])
def test_gradient_finite_at_zero_delta(variant, reduction, zero_history):
    # first step of a task: B = 0, so D = 0 exactly (and the factor norm of B is at 0 too)
    a, _, h = _factors(2)
    if zero_history:
        h = torch.zeros_like(h)
    a = a.float().requires_grad_(True)
    b = torch.zeros(3, 2, requires_grad=True)
    d = lora_delta(a, b, 2.0)
    assert torch.count_nonzero(d) == 0
    loss = parameter_stability_loss(
        d, h.float(), alpha=3.0, reduction=reduction, variant=variant, lora_A=a, lora_B=b
    )
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_history_gets_no_gradient(variant):
    a, b, h = _factors(3)
    a.requires_grad_(True)
    b.requires_grad_(True)
    h.requires_grad_(True)
    loss = parameter_stability_loss(b @ a, h, alpha=1.0, variant=variant, lora_A=a, lora_B=b)
    loss.backward()
    assert h.grad is None
    assert a.grad is not None and b.grad is not None


def test_sign_semantics():
    d = _t([[1.0, -1.0], [2.0, -3.0]])
    same = d * 0.5
    direction = lambda h: stability_terms(d, h, alpha=1e3, variant="dir+fro")[0].item()  # noqa: E731
    assert direction(same) == pytest.approx(0.0, abs=1e-9)  # agreeing signs -> ~0
    assert direction(-same) == pytest.approx(2.0, abs=1e-9)  # opposing signs -> ~2
    assert direction(torch.zeros_like(d)) == pytest.approx(1.0, abs=1e-12)  # no history -> 1
    # the loss grows when D turns against H
    for variant in VARIANTS:
        if variant != "magnitude-only":
            opposed = parameter_stability_loss(d, -same, alpha=1.0, variant=variant, lora_A=d, lora_B=torch.eye(2))
            agreed = parameter_stability_loss(d, same, alpha=1.0, variant=variant, lora_A=d, lora_B=torch.eye(2))
            assert opposed > agreed, variant


@pytest.mark.parametrize("variant", VARIANTS)
def test_mean_reduction_invariant_to_tiling(variant):
    a, b, h = _factors(4)
    d = b @ a
    # [[D, D], [D, D]] = [B; B] @ [A, A], and the factor RMS norms are unchanged by tiling
    a2, b2 = a.repeat(1, 2), b.repeat(2, 1)
    assert torch.allclose(b2 @ a2, d.repeat(2, 2))
    small = parameter_stability_loss(d, h, alpha=1.3, variant=variant, lora_A=a, lora_B=b)
    big = parameter_stability_loss(d.repeat(2, 2), h.repeat(2, 2), alpha=1.3, variant=variant, lora_A=a2, lora_B=b2)
    assert big.item() == pytest.approx(small.item(), rel=1e-12)
    if variant not in LITERAL_VARIANTS:
        with pytest.raises(ValueError, match="reduction"):
            parameter_stability_loss(d, h, alpha=1.3, reduction="sum", variant=variant)
        return
    # and "sum" is not invariant
    s_small = parameter_stability_loss(d, h, alpha=1.3, reduction="sum", variant=variant, lora_A=a, lora_B=b)
    s_big = parameter_stability_loss(
        d.repeat(2, 2), h.repeat(2, 2), alpha=1.3, reduction="sum", variant=variant, lora_A=a2, lora_B=b2
    )
    assert s_big.item() > s_small.item() * 1.5


def test_adaptive_alpha_known_data():
    h = _t([[0.1, -0.2, 0.3], [-0.4, 0.5, -0.6], [0.7, 0.8, -0.9]], requires_grad=True)
    alpha = adaptive_alpha(h, c=2.0)
    assert alpha.dim() == 0 and not alpha.requires_grad
    assert alpha.item() == pytest.approx(2.0 / 0.5)
    # even count: torch.median takes the lower middle value (|H| = .1 .2 .3 .4 -> .2)
    assert adaptive_alpha(_t([0.4, -0.1, 0.3, -0.2]), c=1.0).item() == pytest.approx(1.0 / 0.2)
    # median |H| = 0 -> falls back to mean |H| = 0.1
    assert adaptive_alpha(_t([0.0, 0.0, 0.0, -0.4]), c=2.0).item() == pytest.approx(20.0)
    # all zeros -> c/eps, clipped to a finite value
    z = adaptive_alpha(torch.zeros(3, 3))
    assert math.isfinite(z.item()) and z.item() == pytest.approx(MAX_ALPHA)
    assert adaptive_alpha(torch.zeros(4), c=2.0, eps=1.0).item() == pytest.approx(2.0)
    assert math.isfinite(adaptive_alpha(torch.zeros(4, dtype=torch.float16)).item())
    assert adaptive_alpha(h).dtype == torch.float64


def test_lora_delta_and_conv():
    a = _t([[1.0, 2.0, 3.0]])  # r=1, d_in=3
    b = _t([[1.0], [-2.0]])  # d_out=2
    expected = _t([[1.0, 2.0, 3.0], [-2.0, -4.0, -6.0]]) * 0.5
    assert torch.equal(lora_delta(a, b, 0.5), expected)
    conv = lora_delta(a.reshape(1, 3, 1, 1), b.reshape(2, 1, 1, 1), 0.5)
    assert conv.shape == (2, 3) and torch.equal(conv, expected)
    assert conv_to_matrix(torch.zeros(5, 4, 1, 1)).shape == (5, 4)
    with pytest.raises(ValueError):
        lora_delta(a, _t([[1.0, 2.0]]), 1.0)  # rank mismatch
    with pytest.raises(ValueError):
        lora_delta(a, torch.zeros(2, 1, 3, 3, dtype=torch.float64), 1.0)


def test_validation_errors():
    d, h = torch.zeros(2, 2), torch.zeros(2, 2)
    with pytest.raises(ValueError, match="lora_A"):
        parameter_stability_loss(d, h, alpha=1.0, variant="dir+factor")
    with pytest.raises(ValueError, match="variant"):
        parameter_stability_loss(d, h, alpha=1.0, variant="nope")
    with pytest.raises(ValueError, match="reduction"):
        parameter_stability_loss(d, h, alpha=1.0, reduction="max")
    with pytest.raises(ValueError, match="shape"):
        parameter_stability_loss(d, torch.zeros(2, 3), alpha=1.0)
    with pytest.raises(ValueError, match="alpha"):
        parameter_stability_loss(d, h, alpha=0.0)
    with pytest.raises(ValueError, match="alpha"):
        parameter_stability_loss(d, h, alpha=torch.ones(2))
    with pytest.raises(ValueError):
        adaptive_alpha(torch.zeros(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_stays_on_device():
    a, b, h = _factors(5)
    for variant in VARIANTS:
        cpu = parameter_stability_loss(b @ a, h, alpha=adaptive_alpha(h), variant=variant, lora_A=a, lora_B=b)
        ac, bc = a.cuda().requires_grad_(True), b.cuda().requires_grad_(True)
        hc = h.cuda()
        alpha = adaptive_alpha(hc)
        assert alpha.device == hc.device
        gpu = parameter_stability_loss(bc @ ac, hc, alpha=alpha, variant=variant, lora_A=ac, lora_B=bc)
        assert gpu.device == hc.device
        gpu.backward()
        assert gpu.item() == pytest.approx(cpu.item(), rel=1e-9)
    b0 = torch.zeros(3, 2, device="cuda", requires_grad=True)
    ac = a.cuda().float().requires_grad_(True)
    parameter_stability_loss(lora_delta(ac, b0, 2.0), h.cuda().float(), alpha=1.0).backward()
    assert torch.isfinite(b0.grad).all()
