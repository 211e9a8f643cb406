"""Continual-learning methods, one module per family, registered by name.

A method is a small declaration (MethodSpec): which terms it adds to the task loss, how earlier tasks enter
training, how a new task's adapter starts, how the stored adapters are merged and how a stage is scored. The
validator, `compare`, `train-task`, training, evaluation and the help texts all read this registry; adding a
method is one module here plus its test.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodSpec:
    name: str
    summary: str
    # True: the term is on (its weight must be > 0); False: forced off; None: the sequence's weight decides.
    stability: bool | None = None
    orthogonality: bool | None = None
    sparsity: bool | None = False  # N-LoRA's l1 term: off unless a method (or custom, None) asks for it
    # Fixed settings (None: left to the sequence): the merge, and how earlier tasks enter training (merge/sum/none).
    merge: str | None = None
    previous: str | None = None
    # How task t's adapter starts: "new" (random A, B = 0), "previous" (task t-1's factors, trained on), or
    # "joint" (tasks 1..t trained together from scratch, one joint head per stage).
    init: str = "new"
    # InfLoRA: A_t fixed before training from the task's inputs, away from the earlier tasks' input subspace
    # (core/subspace.py); only B_t trains, and each task folder keeps the subspace after it.
    input_subspace: bool = False
    # Each task scored with its own adapter alone (an oracle that is told the task): no merged stage.
    own_adapters: bool = False

    @property
    def trains_jointly(self) -> bool:
        return self.init == "joint"

    @property
    def continues_previous(self) -> bool:
        return self.init == "previous"


METHODS: dict[str, MethodSpec] = {}


def register(*specs: MethodSpec) -> None:
    for spec in specs:
        if spec.name in METHODS:
            raise ValueError(f"method {spec.name!r} is registered twice")
        METHODS[spec.name] = spec


def get_method(name: str) -> MethodSpec:
    return METHODS[name]


def methods_help() -> str:
    """One line per method, for the CLI's help."""
    return "; ".join(f"{spec.name}: {spec.summary}" for spec in METHODS.values())


# Registered in this order: the order of the help texts and of the choices in error messages.
from . import ps_lora, inc_lora, o_lora, n_lora, inflora, seq_lora, magmax, per_task, multitask, custom  # noqa: E402,F401,I001
