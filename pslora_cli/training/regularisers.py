"""The terms a method adds to the task loss while training task t: the Parameter Stability Loss on ΔW_t against
the history H = Σ_{i<t} ΔW_i (METHOD.md §1), O-LoRA's orthogonality term Σ_{i<t} ‖A_i A_tᵀ‖₁ and N-LoRA's l1
sparsity term on the new factors (methods/n_lora.py)."""

from __future__ import annotations

import torch

from ..config import Method
from ..errors import InputError
from ..core.stability import MODULE_MEAN_VARIANTS, adaptive_alpha
from ..core.stability_lean import HistoryFactors, PreparedHistory, stack_history


class Regulariser:
    """Built once per task from the earlier adapters; `terms(layers)` gives (stability, orthogonality) per step."""

    def __init__(self, method: Method, layers: dict, previous: list, history: dict[str, torch.Tensor],
                 prev_factors_a: dict[str, list[torch.Tensor]], device: torch.device):
        self.method = method
        self.use_stability = bool(previous) and method.stability_weight > 0
        self.use_orthogonality = bool(prev_factors_a) and (method.orthogonality_weight or 0) > 0
        # The stability loss reads H block by block (core/stability_lean.py): the earlier tasks' stacked factors
        # when they are smaller than dense H, else tanh(αH) cached densely; nothing d_out x d_in is kept for
        # backward. Prepared one module at a time, each module's dense H (when the form needs it) freed before the
        # next is formed; α (the tanh's scale) only for the forms that use it.
        self.alphas, self.history = {}, {}
        if self.use_stability:
            for name in layers:
                self.history[name] = self._prepare(name, history, previous, device)
        self.prev_factors_a = prev_factors_a
        self.use_sparsity = (method.sparsity_weight or 0) > 0  # None: a Method made outside validation
        if self.use_sparsity:
            check_sparsity_form(method, {name: (layer.lora_B["default"].weight.shape[0],
                                                *layer.lora_A["default"].weight.shape[1:])
                                         for name, layer in layers.items()})

    def _prepare(self, name: str, history, previous: list, device: torch.device) -> PreparedHistory:
        """Module `name`'s PreparedHistory. The magnitude-only form reads ‖H‖ alone: from the stacked factors
        when they are smaller than H, so that no d_out x d_in tensor is formed; the other forms (an elementwise
        term in tanh(αH)) need H densely, and its median for an adaptive α."""
        factors = stack_history((*adp.factors(name, device), adp.scale) for adp in previous)
        factors = HistoryFactors(factors.B.float(), factors.A.float())  # as H's float32 sum (no-op for float32)
        if self.method.variant == "magnitude-only":
            if factors.numel() < factors.shape[0] * factors.shape[1]:
                # α is not used by this form (no tanh term): any valid value
                return PreparedHistory(factors=factors, alpha=1.0, variant="magnitude-only", store="factors")
            return PreparedHistory(history[name], alpha=1.0, variant="magnitude-only", store="dense")
        dense = history[name]
        self.alphas[name] = _alpha(self.method, dense, device)
        return PreparedHistory(dense, alpha=self.alphas[name], variant=self.method.variant, factors=factors)

    @property
    def active(self) -> bool:
        return self.use_stability or self.use_orthogonality or self.use_sparsity

    def terms(self, layers: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L_PS over modules: their mean for the scale-free variants, else their sum; Σ_m Σ_{i<t} ‖A_i A_tᵀ‖₁;
        N-LoRA's Σ_m ‖A_t B_t‖₁ or Σ_m ‖s B_t A_t‖₁), for the current factors."""
        ps_loss = torch.zeros((), device=device)
        orth_loss = torch.zeros((), device=device)
        sparse_loss = torch.zeros((), device=device)
        if not self.active:
            return ps_loss, orth_loss, sparse_loss
        for name, layer in layers.items():
            a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            if self.use_sparsity:
                sparse_loss = sparse_loss + sparsity_term(a, b, layer.scaling["default"], self.method.sparsity_form)
            if self.use_stability:
                ps_loss = ps_loss + self.history[name].loss(a, b, layer.scaling["default"],
                                                            reduction=self.method.reduction)
            if self.use_orthogonality:
                a_t = a.flatten(1)
                for a_i in self.prev_factors_a[name]:
                    orth_loss = orth_loss + (a_i @ a_t.T).abs().sum()
        if self.use_stability and self.method.variant in MODULE_MEAN_VARIANTS:
            ps_loss = ps_loss / len(layers)  # a mean over modules: λ means the same on every model (P5)
        return ps_loss, orth_loss, sparse_loss

    def weighted(self, ps_loss: torch.Tensor, orth_loss: torch.Tensor, sparse_loss: torch.Tensor) -> torch.Tensor:
        m = self.method
        return (m.stability_weight * ps_loss + (m.orthogonality_weight or 0) * orth_loss
                + (m.sparsity_weight or 0) * sparse_loss)


def check_sparsity_form(method: Method, shapes: dict[str, tuple]) -> None:
    """N-LoRA's official form multiplies A (r, d_in) by B (d_out, r): every adapted weight (d_out, d_in) must be
    square, else an InputError naming the module and the form that works."""
    if (method.sparsity_weight or 0) <= 0 or method.sparsity_form != "official":
        return
    for name, shape in shapes.items():
        if len(shape) != 2 or shape[0] != shape[1]:
            raise InputError(f"method.sparsity_form: 'official' (N-LoRA's ||A B||_1, A (r, d_in) times B "
                             f"(d_out, r)) needs d_in = d_out; {name} maps {shape[1]} to {shape[0]}: "
                             f"set method.sparsity_form: update (||dW||_1, the paper's form)")


def sparsity_term(a: torch.Tensor, b: torch.Tensor, scaling: float, form: str) -> torch.Tensor:
    """N-LoRA's l1 term of one module. "official": ‖A B‖₁ with A (r, d_in) and B (d_out, r), the r x r product
    `torch.mm(loranew_A.weight, loranew_B.weight)` of the official trainer (d_in = d_out; the LoRA scaling is not in
    it); "update": ‖s B A‖₁, the l1 norm of the update ΔW_t itself."""
    if form == "official":
        return (a @ b).abs().sum()
    return (scaling * (b.flatten(1) @ a.flatten(1))).abs().sum()


def _alpha(method: Method, history: torch.Tensor, device: torch.device) -> torch.Tensor:
    """α of tanh(α·x): adaptive (c / median|H|) or fixed."""
    if method.alpha_mode == "adaptive":
        return adaptive_alpha(history, c=method.alpha)
    return torch.tensor(float(method.alpha), device=device)
