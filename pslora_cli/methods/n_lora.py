"""N-LoRA (Yang et al., COLING 2025, "Is Parameter Collision Hindering Continual Learning in LLMs?"), after its
official code (PKU-YuanGroup/N-LoRA, built on O-LoRA's; read: `src/uie_trainer_lora.py`, `src/peft/tuners/lora.py`,
`scripts/order_1.sh`, `scripts/order_4.sh`, `scripts_llama/order_1.sh`): O-LoRA's protocol (earlier adapters frozen,
summed into the forward pass and into the final model) without its orthogonality term, plus an l1 term on the new
task's LoRA factors, added to the task loss at every step of every task: `lamda_1 * sum over modules ||A B||_1`
with `torch.mm(loranew_A.weight, loranew_B.weight)`, A.weight (r, d_in) and B.weight (d_out, r): an r x r product,
defined only where d_in = d_out (T5's and LLaMA-7B's q and v). The paper states the term on ΔW = AB (its notation),
the d_out x d_in update; `method.sparsity_form: update` is that, for any module. The weight: 0.4 in the T5 scripts
of the standard orders, 0.4 or 1.2 per task on the long ones, 0.46 for LLaMA; 0.4 here.

What the weight means: the term is a sum over the adapted modules (as the official one), so λ's pull grows with
their number, and with `update` also with each module's size (d_out x d_in entries): it is not comparable across
models, unlike the stability loss's λ (a mean over modules of scale-free terms). Choose it per model on validation.
"""

from __future__ import annotations

from ..errors import InputError
from ..fields import NUMBER, setting
from .registry import Knob, MethodSpec, Term, declare, register, register_term

# lamda_1 per form: 0.4 in the official T5 scripts (scripts/order_1.sh .. order_3.sh) for ||A B||_1; for
# ||s B A||_1 the same pull in loss units, 0.4 x 3.9e-4, the ratio of the two forms' values summed over the square
# modules of a SmolLM2-135M adapter trained on gen-mixed-order1's first task (METHOD.md, "Baselines").
DEFAULTS = {"official": 0.4, "update": 1.6e-4}

declare(
    sparsity_weight=setting(None, NUMBER + (type(None),), minimum=0, legacy=0.0,
            help="N-LoRA's l1 weight (null: the method's own for n-lora, 0.4 with sparsity_form official and 1.6e-4 "
                 "with update; 0 otherwise)"),
    sparsity_form=setting("official", (str,), choices=("official", "update"), legacy="official",
            help="N-LoRA's term: official (Σ_m ‖A_t B_t‖₁, the r x r product its code computes, square modules only) "
                 "or update (Σ_m ‖s B_t A_t‖₁ = ‖ΔW_t‖₁, the paper's statement, any module)"),
)


def check_sparsity_form(method, shapes: dict[str, tuple]) -> None:
    """N-LoRA's official form multiplies A (r, d_in) by B (d_out, r): every adapted weight (d_out, d_in) must be
    square, else an InputError naming the module and the form that works."""
    if (method.sparsity_weight or 0) <= 0 or method.sparsity_form != "official":
        return
    for name, shape in shapes.items():
        if len(shape) != 2 or shape[0] != shape[1]:
            raise InputError(f"method.sparsity_form: 'official' (N-LoRA's ||A B||_1, A (r, d_in) times B "
                             f"(d_out, r)) needs d_in = d_out; {name} maps {shape[1]} to {shape[0]}: "
                             f"set method.sparsity_form: update (||dW||_1, the paper's form)")


def sparsity_term(a, b, scaling: float, form: str):
    """N-LoRA's l1 term of one module. "official": ‖A B‖₁ with A (r, d_in) and B (d_out, r), the r x r product
    `torch.mm(loranew_A.weight, loranew_B.weight)` of the official trainer (d_in = d_out; the LoRA scaling is not in
    it); "update": ‖s B A‖₁, the l1 norm of the update ΔW_t itself."""
    if form == "official":
        return (a @ b).abs().sum()
    return (scaling * (b.flatten(1) @ a.flatten(1))).abs().sum()


def _make(inputs):
    method = inputs.method
    check_sparsity_form(method, {name: (layer.lora_B["default"].weight.shape[0],
                                        *layer.lora_A["default"].weight.shape[1:])
                                 for name, layer in inputs.layers.items()})

    def loss(layers):
        total = 0
        for layer in layers.values():
            total = total + sparsity_term(layer.lora_A["default"].weight, layer.lora_B["default"].weight,
                                          layer.scaling["default"], method.sparsity_form)
        return total

    return loss


# The l1 term acts from the first task on (it needs no history).
register_term(Term("sparsity", "l1", "sparsity_weight", _make, settings=("sparsity_form",), reads_history=False,
                   default=lambda method: DEFAULTS[method["sparsity_form"]], check=check_sparsity_form,
                   needs_shapes=lambda method: (method.sparsity_weight or 0) > 0
                   and method.sparsity_form == "official"))

register(MethodSpec("n-lora", "N-LoRA: l1 sparsity on the new adapter, earlier adapters summed (O-LoRA's protocol)",
                    terms=(("sparsity", True),), merge="sum", previous="sum",
                    knobs=(Knob("sparsity_weight", acts_from=0),)))
