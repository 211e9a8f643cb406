"""Sequential LoRA: one adapter trained on through all tasks (the lower bound: nothing protects earlier tasks)."""

from .registry import MethodSpec, register

register(MethodSpec("seq-lora", "one adapter trained on through all tasks", merge="last", previous="none",
                    init="previous"))
