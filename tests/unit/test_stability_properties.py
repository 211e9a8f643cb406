"""The properties P1-P5 of METHOD.md §1b, checked on "hinge+ratio" (the form designed from them) exactly as
training calls it: parameter_stability_loss(D, H, alpha=adaptive_alpha(H)) and stability_terms with every other
option at its default; the default "magnitude-only" (its magnitude half alone, chosen on validation: METHOD.md,
"λ") keeps P2-P5 and, being sign-blind, not P1; and, where the literal form is known to break one, that
it still does (it stays available unchanged as "dir+fro")."""

import types

import pytest
import torch

from pslora_cli.config import Method
from pslora_cli.core.stability import DEFAULT_VARIANT, adaptive_alpha, parameter_stability_loss, stability_terms
from pslora_cli.training.regularisers import Regulariser

F64 = torch.float64


def _history(seed=0, d=384, r=8, tasks=2, scale=1e-4):
    """H = two rank-8 updates of a 384x384 module (METHOD.md §1b's case), at a LoRA-like scale."""
    g = torch.Generator().manual_seed(seed)
    return sum(torch.randn(d, r, generator=g, dtype=F64) @ torch.randn(r, d, generator=g, dtype=F64)
               for _ in range(tasks)) * scale


DESIGNED = "hinge+ratio"


def _loss(d, h, **options):
    options.setdefault("variant", DESIGNED)
    return parameter_stability_loss(d, h, alpha=adaptive_alpha(h), **options)


def _terms(d, h, alpha, **options):
    options.setdefault("variant", DESIGNED)
    return stability_terms(d, h, alpha=alpha, **options)


def _grad(fn, d):
    d = d.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(d), d)
    return g


def _same_norm(x, like):
    return x * (torch.linalg.vector_norm(like) / torch.linalg.vector_norm(x))


def test_the_default_is_the_magnitude_half_chosen_on_validation():
    assert DEFAULT_VARIANT == "magnitude-only" and Method().variant == DEFAULT_VARIANT
    assert Method().reduction == "mean" and Method().alpha_mode == "adaptive"


@pytest.mark.parametrize("seed", [0, 1])
def test_the_default_is_sign_blind_and_keeps_p2_to_p5(seed):
    h = _history(seed)
    default = lambda d, hh=h: parameter_stability_loss(d, hh, alpha=adaptive_alpha(hh))  # noqa: E731
    assert default(-h).item() == pytest.approx(default(h).item(), rel=1e-12)  # no P1: the sign is not seen
    along = [default(c * h).item() for c in (0.0, 0.5, 1.0, 2.0, 8.0)]
    assert along == pytest.approx([0.0, 0.5, 1.0, 2.0, 8.0], rel=1e-12)  # P2: ‖D‖/‖H‖, never falls along H
    pull = -(_grad(default, -3 * h) * h).sum() / -(_grad(default, -0.1 * h) * h).sum()
    assert pull.item() == pytest.approx(1.0, rel=1e-9)  # P4: a pull of constant strength
    assert default(h.repeat(2, 3), h.repeat(2, 3)).item() == pytest.approx(1.0, rel=1e-12)  # P5: tiled
    assert default(40 * h, 40 * h).item() == pytest.approx(1.0, rel=1e-12)  # P5: scaled


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_p1_opposing_costs_more_than_agreeing(seed):
    h = _history(seed)
    assert _loss(-h, h) > _loss(h, h)
    # a random update with H's sign pattern vs the same magnitudes with the opposite signs
    g = torch.Generator().manual_seed(100 + seed)
    mags = _same_norm(torch.rand(h.shape, generator=g, dtype=F64), h)
    assert _loss(-mags * h.sign(), h) > _loss(mags * h.sign(), h)
    direction_opposed, _ = _terms(-h, h, adaptive_alpha(h))
    direction_agreed, _ = _terms(h, h, adaptive_alpha(h))
    assert direction_opposed > 0 and direction_agreed == 0


def test_p2_no_reward_for_amplifying_the_history():
    h = _history()
    along = [_loss(c * h, h).item() for c in (1.0, 1.25, 1.5, 2.0, 3.0, 5.5, 8.0)]
    assert all(b >= a for a, b in zip(along, along[1:])), along
    # the literal form keeps falling far past c = 1 (its minimum is near c = 5.5: METHOD.md §1b)
    literal = [_loss(c * h, h, variant="dir+fro").item() for c in (1.0, 3.0, 5.5)]
    assert literal[0] > literal[1] > literal[2]


@pytest.mark.parametrize("seed", [0, 1])
def test_p3_both_halves_act_at_the_histories_scale(seed):
    h = _history(seed)
    alpha = adaptive_alpha(h)
    g = torch.Generator().manual_seed(200 + seed)
    for d in (_same_norm(torch.randn(h.shape, generator=g, dtype=F64), h), -h,
              _same_norm(torch.randn(h.shape, generator=g, dtype=F64) - h, h)):
        g_dir = _grad(lambda x: _terms(x, h, alpha)[0], d)
        g_mag = _grad(lambda x: _terms(x, h, alpha)[1], d)
        ratio = (torch.linalg.vector_norm(g_dir) / torch.linalg.vector_norm(g_mag)).item()
        assert 0.1 <= ratio <= 10, ratio
    # the literal form with its mean reduction: the magnitude half is inert (~900x weaker)
    d = _same_norm(torch.randn(h.shape, generator=g, dtype=F64), h)
    g_dir = _grad(lambda x: _terms(x, h, alpha, variant="dir+fro")[0], d)
    g_mag = _grad(lambda x: _terms(x, h, alpha, variant="dir+fro")[1], d)
    assert torch.linalg.vector_norm(g_dir) > 100 * torch.linalg.vector_norm(g_mag)


def _pull_toward_history(d, h, **options):
    """The descent direction's component along H: how hard a step pulls D back toward H."""
    return -(_grad(lambda x: _loss(x, h, **options), d) * h).sum().item() / torch.linalg.vector_norm(h).item()


def test_p4_the_pull_does_not_fade_on_large_opposite_entries():
    h = _history()
    small, large = _pull_toward_history(-0.1 * h, h), _pull_toward_history(-3 * h, h)
    assert small > 0 and large >= 0.5 * small
    # the literal form's pull fades (5.1 -> 0.29 in gradient norm: METHOD.md §1b)
    small, large = _pull_toward_history(-0.1 * h, h, variant="dir+fro"), _pull_toward_history(-3 * h, h,
                                                                                                 variant="dir+fro")
    assert large < 0.2 * small


def test_p5_the_same_lambda_on_every_module_size_and_scale():
    h = _history(d=96)
    g = torch.Generator().manual_seed(7)
    d = torch.randn(h.shape, generator=g, dtype=F64) * 1e-4
    small = _loss(d, h).item()
    assert _loss(d.repeat(2, 3), h.repeat(2, 3)).item() == pytest.approx(small, rel=1e-12)  # tiled module
    assert _loss(d * 40, h * 40).item() == pytest.approx(small, rel=1e-12)  # another LoRA scale
    # and a history of zeros: nothing to keep, no penalty, no NaN
    zero = _loss(d, torch.zeros_like(h))
    assert zero.item() == 0.0


class _Layer:
    """What Regulariser reads of a PEFT LoRA layer: lora_A/B["default"].weight and scaling["default"]."""

    def __init__(self, a, b, scale):
        self.lora_A = {"default": types.SimpleNamespace(weight=a)}
        self.lora_B = {"default": types.SimpleNamespace(weight=b)}
        self.scaling = {"default": scale}


class _Adapter:
    def __init__(self, factors, scale):
        self._factors, self.scale = factors, scale

    def factors(self, name, device):
        return self._factors[name]


@pytest.mark.parametrize("variant,per_module", [("hinge+ratio", "mean"), ("dir+fro", "sum")])
def test_p5_the_total_is_a_mean_over_modules(variant, per_module):
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(4, 20, generator=g), torch.randn(12, 4, generator=g)
    prev = (torch.randn(4, 20, generator=g), torch.randn(12, 4, generator=g))
    history = prev[1] @ prev[0] * 2.0
    method = Method(variant=variant)

    def total(n_modules):
        names = [f"m{i}" for i in range(n_modules)]
        layers = {n: _Layer(a, b, 2.0) for n in names}
        reg = Regulariser(method, layers, [_Adapter({n: prev for n in names}, 2.0)], {n: history for n in names},
                          torch.device("cpu"))
        return reg.terms(layers)["stability"].item()

    one, four = total(1), total(4)
    assert four == pytest.approx(one if per_module == "mean" else 4 * one, rel=1e-6)
