"""Continual-learning methods, one module per family, registered by name.

A method is a small declaration (MethodSpec): which terms it adds to the task loss, how earlier tasks enter
training, how a new task's adapter starts, how the stored adapters are merged and how a stage is scored. The
validator, `compare`, `train-task`, training, evaluation and the help texts all read this registry; adding a
method is one module here plus its test.
"""

from __future__ import annotations

from .registry import METHODS, Knob, MethodSpec, get_method, methods_help, register  # noqa: F401 (the package's API)

# Registered in this order: the order of the help texts and of the choices in error messages.
from . import ps_lora, inc_lora, o_lora, n_lora, inflora, seq_lora, magmax, per_task, multitask, custom  # noqa: E402,F401,I001
