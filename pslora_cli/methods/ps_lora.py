"""PS-LoRA (METHOD.md): the Parameter Stability Loss while training each task, the magnitude merge after; its
two ablations; and its plug-in use with O-LoRA. This module owns the loss's settings and its term: L_PS on
ΔW_t = s·B_t·A_t against the history H = Σ_{i<t} ΔW_i (METHOD.md §1), read block by block (core/stability_lean.py).
"""

from __future__ import annotations

from ..errors import InputError
from ..fields import NUMBER, setting
from .registry import Knob, MethodSpec, Term, declare, register, register_term

# The loss's forms (the same tuples as core/stability.py's, which this torch-free module cannot import).
SCALED_VARIANTS = ("hinge+ratio", "direction-only", "magnitude-only")
LITERAL_VARIANTS = ("dir+fro", "weighted-dir+fro", "dir+factor", "deviation")

SETTINGS = declare(
    stability_weight=setting(1.0, NUMBER, minimum=0,
            help="λ of the Parameter Stability Loss (for the scaled variants a mean over modules of terms in units of "
                 "the history's scale, comparable across models)"),
    alpha_mode=setting("adaptive", (str,), choices=("adaptive", "fixed"),
            help="α of tanh(α·x): adaptive (alpha / median|H| per module) or fixed"),
    alpha=setting(2.0, NUMBER, minimum=0,
            help="the α constant (adaptive: alpha / median|H|)"),
    reduction=setting("mean", (str,), choices=("mean", "sum"),
            help="reduction over a module's elements; sum applies to the literal variants only"),
    variant=setting("magnitude-only", (str,), choices=SCALED_VARIANTS + LITERAL_VARIANTS,
            help="the loss's form (METHOD.md): magnitude-only (the update's size in units of the history's scale; "
                 "chosen on validation), hinge+ratio (adds a cost on entries opposing the history's sign), "
                 "direction-only (that cost alone); the paper's literal dir+fro and its relatives weighted-dir+fro, "
                 "dir+factor, deviation"),
)


def _validate(method: dict) -> None:
    if method["reduction"] != "mean" and method["variant"] not in LITERAL_VARIANTS:
        raise InputError(f"method.reduction: variant {method['variant']!r} is a mean over elements by construction; "
                         f"reduction 'sum' is for the literal variants ({', '.join(LITERAL_VARIANTS)})")


def _make(inputs):
    """L_PS over the modules: their mean for the scale-free variants (λ means the same on every model), else their
    sum. Each module's history is prepared once, its dense H (when the form needs it) freed before the next."""
    method = inputs.method
    prepared, alphas = {}, {}
    for name in inputs.layers:
        prepared[name] = _prepare(method, name, inputs, alphas)
    inputs.record["alpha_per_module"] = {k: round(float(v), 6) for k, v in alphas.items()} or None
    return stability_loss(prepared, method)


def stability_loss(prepared: dict, method):
    """L_PS of the current factors against each module's PreparedHistory (kept as `.prepared`)."""
    from ..core.stability import MODULE_MEAN_VARIANTS

    mean = method.variant in MODULE_MEAN_VARIANTS

    def loss(layers):
        total = 0
        for name, layer in layers.items():
            total = total + prepared[name].loss(layer.lora_A["default"].weight, layer.lora_B["default"].weight,
                                                layer.scaling["default"], reduction=method.reduction)
        return total / len(layers) if mean else total

    loss.prepared = prepared
    return loss


def _prepare(method, name: str, inputs, alphas: dict):
    """Module `name`'s PreparedHistory. The magnitude-only form reads ‖H‖ alone: from the stacked factors when
    they are smaller than H, so that no d_out x d_in tensor is formed; the other forms (an elementwise term in
    tanh(αH)) need H densely, and its median for an adaptive α."""
    import torch

    from ..core.stability import adaptive_alpha
    from ..core.stability_lean import HistoryFactors, PreparedHistory, stack_history

    factors = stack_history((*adp.factors(name, inputs.device), adp.scale) for adp in inputs.previous)
    factors = HistoryFactors(factors.B.float(), factors.A.float())  # as H's float32 sum (no-op for float32)
    if method.variant == "magnitude-only":
        if factors.numel() < factors.shape[0] * factors.shape[1]:
            # α is not used by this form (no tanh term): any valid value
            return PreparedHistory(factors=factors, alpha=1.0, variant="magnitude-only", store="factors")
        return PreparedHistory(inputs.history[name], alpha=1.0, variant="magnitude-only", store="dense")
    dense = inputs.history[name]
    if method.alpha_mode == "adaptive":
        alphas[name] = adaptive_alpha(dense, c=method.alpha)
    else:
        alphas[name] = torch.tensor(float(method.alpha), device=inputs.device)
    return PreparedHistory(dense, alpha=alphas[name], variant=method.variant, factors=factors)


# settings in the order the task cache's key has always listed them (a reordering would miss every cached entry)
register_term(Term("stability", "ps", "stability_weight", _make,
                   settings=("variant", "alpha_mode", "alpha", "reduction"), validate=_validate))

STABILITY = Knob("stability_weight")

register(
    MethodSpec("ps-lora", "stability loss + magnitude merge", terms=(("stability", True),),
               merge="magnitude", knobs=(STABILITY,)),
    MethodSpec("ps-lora+o-lora", "ps-lora plus O-LoRA's orthogonality term",
               terms=(("stability", True), ("orthogonality", True)),
               merge="magnitude", knobs=(STABILITY, Knob("orthogonality_weight"))),
    MethodSpec("ps-loss-only", "ablation: the loss, earlier tasks summed as in inc-lora",
               terms=(("stability", True),), merge="sum", previous="sum", knobs=(STABILITY,)),
    MethodSpec("ps-merge-only", "ablation: the magnitude merge without the loss", merge="magnitude"),
)
