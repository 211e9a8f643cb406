"""O-LoRA (Wang et al. 2023): each new adapter's A kept orthogonal to the earlier ones' (λ1 Σ_i ‖A_i A_tᵀ‖₁),
earlier adapters frozen and summed. This module owns λ1 and the term."""

from __future__ import annotations

from ..fields import NUMBER, setting
from .registry import Knob, MethodSpec, Term, declare, register, register_term

DEFAULT = 0.5  # λ1 of the o-lora methods when the sequence gives none

declare(orthogonality_weight=setting(None, NUMBER + (type(None),), minimum=0,
        help="O-LoRA's λ1 for Σ_{i<t} ‖A_i A_tᵀ‖₁ (null: the method's own, 0.5 for the o-lora methods, 0 "
             "otherwise)"))


def _make(inputs):
    """Σ_m Σ_{i<t} ‖A_i A_tᵀ‖₁ over the adapted modules, the earlier A's read once per task."""
    earlier = {name: [adp.factors(name, inputs.device)[0].float().flatten(1) for adp in inputs.previous]
               for name in inputs.layers}

    def loss(layers):
        total = 0
        for name, layer in layers.items():
            a_t = layer.lora_A["default"].weight.flatten(1)
            for a_i in earlier[name]:
                total = total + (a_i @ a_t.T).abs().sum()
        return total

    return loss


register_term(Term("orthogonality", "orth", "orthogonality_weight", _make, default=lambda method: DEFAULT))

register(MethodSpec("o-lora", "orthogonality term, earlier adapters summed", terms=(("orthogonality", True),),
                    merge="sum", previous="sum", knobs=(Knob("orthogonality_weight"),)))
