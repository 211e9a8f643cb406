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

from .registry import Knob, MethodSpec, register

# The l1 term acts from the first task on (it needs no history).
register(MethodSpec("n-lora", "N-LoRA: l1 sparsity on the new adapter, earlier adapters summed (O-LoRA's protocol)",
                    stability=False, orthogonality=False, sparsity=True, merge="sum", previous="sum",
                    knobs=(Knob("sparsity_weight", acts_from=0),)))
