"""PS-LoRA (METHOD.md): the Parameter Stability Loss while training each task, the magnitude merge after; its
two ablations; and its plug-in use with O-LoRA."""

from .registry import Knob, MethodSpec, register

STABILITY = Knob("stability_weight")

register(
    MethodSpec("ps-lora", "stability loss + magnitude merge", stability=True, orthogonality=False,
               merge="magnitude", knobs=(STABILITY,)),
    MethodSpec("ps-lora+o-lora", "ps-lora plus O-LoRA's orthogonality term", stability=True, orthogonality=True,
               merge="magnitude", knobs=(STABILITY, Knob("orthogonality_weight"))),
    MethodSpec("ps-loss-only", "ablation: the loss, earlier tasks summed as in inc-lora", stability=True,
               orthogonality=False, merge="sum", previous="sum", knobs=(STABILITY,)),
    MethodSpec("ps-merge-only", "ablation: the magnitude merge without the loss", stability=False,
               orthogonality=False, merge="magnitude"),
)
