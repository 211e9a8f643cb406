"""Incremental LoRA: a new adapter per task, trained on top of the sum of the earlier ones."""

from .registry import MethodSpec, register

register(MethodSpec("inc-lora", "a new adapter per task, earlier ones summed", merge="sum", previous="sum"))
