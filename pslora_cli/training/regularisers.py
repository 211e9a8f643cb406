"""The terms a method adds to the task loss while training task t: the Parameter Stability Loss on ΔW_t against
the history H = Σ_{i<t} ΔW_i (METHOD.md §1) and O-LoRA's orthogonality term Σ_{i<t} ‖A_i A_tᵀ‖₁."""

from __future__ import annotations

import torch

from ..config import Method
from ..core.stability import MODULE_MEAN_VARIANTS, adaptive_alpha
from ..core.stability_lean import prepare_history


class Regulariser:
    """Built once per task from the earlier adapters; `terms(layers)` gives (stability, orthogonality) per step."""

    def __init__(self, method: Method, layers: dict, previous: list, history: dict[str, torch.Tensor],
                 prev_factors_a: dict[str, list[torch.Tensor]], device: torch.device):
        self.method = method
        self.alphas = {name: _alpha(method, history[name], device) for name in layers if name in history}
        self.use_stability = bool(previous) and method.stability_weight > 0
        self.use_orthogonality = bool(prev_factors_a) and method.orthogonality_weight > 0
        # The stability loss reads H block by block (core/stability_lean.py): the earlier tasks' stacked factors
        # when they are smaller than dense H, else tanh(αH) cached densely; nothing d_out x d_in is kept for
        # backward.
        self.history = {name: prepare_history(history[name], [(*adp.factors(name, device), adp.scale)
                                                               for adp in previous],
                                              alpha=self.alphas[name], variant=method.variant)
                        for name in layers} if self.use_stability else {}
        self.prev_factors_a = prev_factors_a

    @property
    def active(self) -> bool:
        return self.use_stability or self.use_orthogonality

    def terms(self, layers: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_PS over modules: their mean for the scale-free variants, else their sum; Σ_m Σ_{i<t} ‖A_i A_tᵀ‖₁),
        for the current factors."""
        ps_loss = torch.zeros((), device=device)
        orth_loss = torch.zeros((), device=device)
        if not self.active:
            return ps_loss, orth_loss
        for name, layer in layers.items():
            a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            if self.use_stability:
                ps_loss = ps_loss + self.history[name].loss(a, b, layer.scaling["default"],
                                                            reduction=self.method.reduction)
            if self.use_orthogonality:
                a_t = a.flatten(1)
                for a_i in self.prev_factors_a[name]:
                    orth_loss = orth_loss + (a_i @ a_t.T).abs().sum()
        if self.use_stability and self.method.variant in MODULE_MEAN_VARIANTS:
            ps_loss = ps_loss / len(layers)  # a mean over modules: λ means the same on every model (P5)
        return ps_loss, orth_loss

    def weighted(self, ps_loss: torch.Tensor, orth_loss: torch.Tensor) -> torch.Tensor:
        return self.method.stability_weight * ps_loss + self.method.orthogonality_weight * orth_loss


def _alpha(method: Method, history: torch.Tensor, device: torch.device) -> torch.Tensor:
    """α of tanh(α·x): adaptive (c / median|H|) or fixed."""
    if method.alpha_mode == "adaptive":
        return adaptive_alpha(history, c=method.alpha)
    return torch.tensor(float(method.alpha), device=device)
