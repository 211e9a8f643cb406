"""Parameter Stability Loss (METHOD.md §1, §1b), for one adapted module.

Notation: D = ΔW_t = s·B_t A_t is the current task's update (trainable through A_t, B_t), H = Σ_{i<t} ΔW_i is the
history (detached here: it never receives a gradient), α > 0 is the tanh sharpness, N the module's element count,
rms(X) = ‖X‖_F / sqrt(N).

"hinge+ratio" (METHOD.md §1b: designed from the properties P1-P5, which tests/unit check):
    direction half  mean(relu(−tanh(αH) ⊙ D)) / rms(H)
        only entries of D that oppose the history's (soft) sign cost anything, in proportion to their size: the
        gradient does not fade on large opposite entries, and agreeing entries are neither charged nor rewarded.
    magnitude half  ‖D‖_F / ‖H‖_F
        the update's size in units of the history's: a pull toward 0 of constant strength.
    Both halves are ratios to H's own scale, so they are alike in size (their gradients have norm ≈ 1/‖H‖_F) and
    the loss is unchanged by tiling D and H, or by scaling both (λ means the same on every module). Where H = 0
    there is no history to keep: both halves are 0. "direction-only" and "magnitude-only" are its two halves
    alone (the other half is 0). The default is "magnitude-only", chosen on the validation split (METHOD.md, "λ"):
    it has P2-P5 and, blind to signs, not P1. These variants take reduction "mean" only, and the training total
    averages them over modules (MODULE_MEAN_VARIANTS).

The literal reconstruction of the paper (METHOD.md §1; it rewards re-applying H, §1b) and its relatives:
    direction term  E = 1 − tanh(α·D) ⊙ tanh(α·H)      (elementwise, in [0, 2])
        ≈ 0 where D agrees in sign with H, ≈ 2 where it opposes H, ≈ 1 where D or H is ≈ 0.
        "weighted-dir+fro" uses E ⊙ |D| instead of E.
    magnitude term, by variant:
        "dir+fro", "weighted-dir+fro":  ‖D‖_F
        "dir+factor":                   ‖A‖_F + ‖B‖_F     (the LoRA factors, not the product)
        "deviation":                    ‖ |D| − |H| ‖_F
    loss = reduce(E) + magnitude term; the training total sums them over modules.

Reductions (of the literal variants):
    "mean": reduce(E) = mean of E over the module's elements, and every Frobenius norm is an RMS norm,
            ‖X‖_F / sqrt(numel(X)), each X divided by its own numel (so "dir+factor" uses
            ‖A‖_F/sqrt(numel A) + ‖B‖_F/sqrt(numel B)). The loss then does not depend on the layer size:
            tiling D and H as [[D, D], [D, D]] leaves it unchanged.
    "sum":  reduce(E) = sum of E over the elements; plain Frobenius norms.

Norms use torch.linalg.vector_norm, whose gradient at 0 is 0 (not NaN): the first step of a task has B = 0, so D = 0.
Everything runs on the device and dtype of the inputs; nothing is moved.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .lora import conv_to_matrix, factor_matrices, lora_delta  # noqa: F401  (the loss's inputs)

DEFAULT_VARIANT = "magnitude-only"
# Scale-free variants: a mean over a module's elements, in units of H's scale; averaged over modules in training.
MODULE_MEAN_VARIANTS = ("hinge+ratio", "direction-only", "magnitude-only")
LITERAL_VARIANTS = ("dir+fro", "weighted-dir+fro", "dir+factor", "deviation")
VARIANTS = MODULE_MEAN_VARIANTS + LITERAL_VARIANTS
REDUCTIONS = ("mean", "sum")

# Upper bound on adaptive_alpha (used when the history is all zeros, or nearly so).
MAX_ALPHA = 1e12


def _norm(x: Tensor, reduction: str) -> Tensor:
    """‖x‖_F ("sum") or the RMS ‖x‖_F / sqrt(numel x) ("mean"); gradient 0 at x = 0."""
    n = torch.linalg.vector_norm(x)
    return n / math.sqrt(x.numel()) if reduction == "mean" else n


def stability_terms(
    delta: Tensor,
    history: Tensor,
    *,
    alpha: float | Tensor,
    reduction: str = "mean",
    variant: str = DEFAULT_VARIANT,
    lora_A: Tensor | None = None,
    lora_B: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(direction term, magnitude term) as two scalars; see the module docstring for the definitions."""
    check_variant(variant, reduction)
    if delta.shape != history.shape:
        raise ValueError(f"delta shape {tuple(delta.shape)} != history shape {tuple(history.shape)}")
    if delta.numel() == 0:
        raise ValueError("delta is empty")
    if isinstance(alpha, Tensor):
        if alpha.dim() != 0:
            raise ValueError(f"alpha must be a 0-dim tensor, got shape {tuple(alpha.shape)}")
    elif not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be finite and > 0, got {alpha}")
    if variant == "dir+factor" and (lora_A is None or lora_B is None):
        raise ValueError("variant 'dir+factor' needs lora_A and lora_B")

    h = history.detach()
    if variant in MODULE_MEAN_VARIANTS:
        return _scaled_terms(delta, h, alpha, variant)
    e = 1 - torch.tanh(alpha * delta) * torch.tanh(alpha * h)
    if variant == "weighted-dir+fro":
        e = e * delta.abs()
    direction = e.mean() if reduction == "mean" else e.sum()

    if variant == "dir+factor":
        magnitude = _norm(lora_A, reduction) + _norm(lora_B, reduction)
    elif variant == "deviation":
        magnitude = _norm(delta.abs() - h.abs(), reduction)
    else:
        magnitude = _norm(delta, reduction)
    return direction, magnitude


def check_variant(variant: str, reduction: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    if reduction != "mean" and variant in MODULE_MEAN_VARIANTS:
        raise ValueError(f"variant {variant!r} is a mean over elements by construction: reduction must be 'mean'")


def _scaled_terms(delta: Tensor, h: Tensor, alpha, variant: str) -> tuple[Tensor, Tensor]:
    """The (direction, magnitude) halves of "hinge+ratio" and its one-half variants; both 0 where H = 0."""
    h_norm = torch.linalg.vector_norm(h)
    inv = torch.where(h_norm > 0, 1 / h_norm, torch.zeros_like(h_norm))  # 1/‖H‖_F, or 0 for H = 0
    zero = delta.sum() * 0  # keeps the graph (and dtype, device) for a half that is switched off
    direction = magnitude = zero
    if variant != "magnitude-only":
        # mean(relu(·)) / rms(H) = sum(relu(·)) / (sqrt(N)·‖H‖_F)
        direction = torch.relu(-torch.tanh(alpha * h) * delta).sum() * (inv / math.sqrt(delta.numel()))
    if variant != "direction-only":
        magnitude = torch.linalg.vector_norm(delta) * inv
    return direction, magnitude


def parameter_stability_loss(delta: Tensor, history: Tensor, **options) -> Tensor:
    """L_PS(D, H) = direction half + magnitude half, a scalar (the module docstring defines each variant).

    delta: D, differentiable. history: H, same shape, detached inside. alpha: float or 0-dim tensor.
    options: those of stability_terms (alpha, reduction in REDUCTIONS, variant in VARIANTS, default
    DEFAULT_VARIANT; lora_A, lora_B for "dir+factor" only).
    """
    direction, magnitude = stability_terms(delta, history, **options)
    return direction + magnitude


def adaptive_alpha(history: Tensor, c: float = 2.0, eps: float = 1e-12) -> Tensor:
    """α = c / median|H|, a detached 0-dim tensor on H's device (dtype: H's, float32 if H is not floating).

    median is torch.median: for an even count, the lower of the two middle values. If median|H| <= eps, mean|H| is
    used instead; if that is <= eps too (e.g. H = 0), eps is used. The result is clipped to at most
    min(MAX_ALPHA, largest finite value of the dtype), so it is always finite. No host sync.
    """
    if history.numel() == 0:
        raise ValueError("history is empty")
    if not (math.isfinite(c) and c > 0):
        raise ValueError(f"c must be finite and > 0, got {c}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be finite and > 0, got {eps}")
    h = history.detach().abs()
    if not h.is_floating_point():
        h = h.float()
    med, mean = h.median(), h.mean()
    eps_t = torch.full_like(med, eps)
    denom = torch.where(med > eps, med, torch.where(mean > eps, mean, eps_t))
    cap = min(MAX_ALPHA, torch.finfo(h.dtype).max)
    return (c / denom).clamp(max=cap)
