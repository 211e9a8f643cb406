"""O-LoRA (Wang et al. 2023): each new adapter's A kept orthogonal to the earlier ones' (λ1 Σ_i ‖A_i A_tᵀ‖₁)."""

from .registry import Knob, MethodSpec, register

register(MethodSpec("o-lora", "orthogonality term, earlier adapters summed", stability=False, orthogonality=True,
                    merge="sum", previous="sum", knobs=(Knob("orthogonality_weight"),)))
