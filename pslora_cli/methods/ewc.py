"""EWC on one LoRA adapter trained through the tasks (Kirkpatrick et al., PNAS 2017, "Overcoming catastrophic
forgetting in neural networks"), the regularisation baseline of the LLM continual-learning tables (O-LoRA's, N-LoRA's,
TRACE's). Chosen because it is the field's standard regularisation row, which pslora lacked, and because it tests
the plug-in contract at its hardest: a loss term that reads what earlier tasks left in their folders, and a hook
after training that writes it.

After the official behaviour of the LLM continual-learning code that ships it (read: BeyonderXX/TRACE
`model/Regular/EWC.py`, the penalty 0.5 · λ · Σ F (θ − θ*)² with λ = 400 and the Fisher summed over tasks; and
ContinualAI/avalanche `avalanche/training/plugins/ewc.py`, the importance as the per-minibatch squared gradient of
the task loss averaged over the minibatches of a pass over the task's training data, model in eval mode, online
mode F ← γ·F + F_new). The O-LoRA-family repositories report an EWC row but ship no EWC code.

Here: one adapter trained on through the tasks, as seq-lora (task t starts from task t−1's factors, the last
adapter is the model); θ are its factors A and B. After task t: F_t = γ·F_{t−1} + the empirical Fisher of task t
(one pass over its training split in batches of training.batch_size, dropout off), θ*_t = the factors; both kept in
the task folder (`ewc_fisher.safetensors`), which task t+1 reads. The task loss of task t+1 gets
λ/2 · Σ F_t (θ − θ*_t)². Differences from TRACE: its Fisher is accumulated during training from gradients that
include the penalty (a quirk of its code, not of EWC); here it is a pass after training with the task loss alone,
as Avalanche computes it. λ = 400 is TRACE's, for full fine-tuning of LLaMA; the Fisher of LoRA factors is on
another scale, so choose λ with a selection protocol (its knob is λ).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import WorkError
from ..fields import NUMBER, setting
from .registry import Hooks, Knob, MethodSpec, Term, declare, register, register_term

FISHER_FILE = "ewc_fisher.safetensors"
DEFAULT = 400.0  # λ of TRACE's EWC (model/Regular/EWC.py, lambda_ewc)

declare(
    ewc_weight=setting(None, NUMBER + (type(None),), minimum=0, legacy=0.0,
            help="EWC's λ in λ/2 · Σ F (θ − θ*)² (null: the method's own, 400 for ewc (TRACE's), 0 otherwise)"),
    ewc_decay=setting(1.0, NUMBER, minimum=0, legacy=1.0,
            help="EWC: γ in F ← γ·F + F_new, how much of the earlier tasks' Fisher is kept (1: summed, as TRACE)"),
)


def read_fisher(folder: Path, names, device) -> tuple[dict, dict]:
    """(Fisher, anchor) per factor "<weight name>.A" / ".B" after the task in `folder`."""
    from safetensors.torch import load_file

    path = Path(folder) / FISHER_FILE
    if not path.is_file():
        raise WorkError(f"{folder}: has no {FISHER_FILE}; it was not trained by method ewc (retrain it with this "
                        f"sequence's method)")
    tensors = load_file(str(path), device=str(device))
    keys = [f"{name}.{f}" for name in names for f in "AB"]
    missing = [k for k in keys if f"fisher.{k}" not in tensors]
    if missing:
        raise WorkError(f"{path}: holds no Fisher for {missing[0]}")
    return {k: tensors[f"fisher.{k}"] for k in keys}, {k: tensors[f"anchor.{k}"] for k in keys}


def factors(layer) -> dict:
    return {"A": layer.lora_A["default"].weight, "B": layer.lora_B["default"].weight}


def penalty(layers: dict, fisher: dict, anchor: dict):
    """1/2 · Σ F (θ − θ*)² over every factor of every module."""
    total = 0
    for name, layer in layers.items():
        for f, weight in factors(layer).items():
            key = f"{name}.{f}"
            total = total + (fisher[key] * (weight - anchor[key]) ** 2).sum()
    return 0.5 * total


def _make(inputs):
    fisher, anchor = read_fisher(inputs.previous[-1].dir, inputs.layers, inputs.device)
    return lambda layers: penalty(layers, fisher, anchor)


class EWCHooks(Hooks):
    """After training: the task's Fisher added to the decayed earlier one, and the anchor, into the task folder."""
    settings = ("ewc_decay",)

    def after_training(self, run, folder) -> dict:
        from safetensors.torch import save_file

        fisher = empirical_fisher(run)
        if run.previous:
            earlier, _ = read_fisher(run.previous[-1].dir, run.layers, "cpu")
            fisher = {k: run.seq.method.ewc_decay * earlier[k] + v for k, v in fisher.items()}
        anchor = {f"{name}.{f}": w.detach().float().cpu() for name, layer in run.layers.items()
                  for f, w in factors(layer).items()}
        if folder is not None:
            save_file({**{f"fisher.{k}": v.contiguous() for k, v in fisher.items()},
                       **{f"anchor.{k}": v.contiguous() for k, v in anchor.items()}}, str(Path(folder) / FISHER_FILE))
        total = sum(float(v.sum()) for v in fisher.values())
        count = sum(v.numel() for v in fisher.values())
        return {"ewc_fisher_mean": total / count if count else 0.0, "ewc_fisher_max": max(
            (float(v.max()) for v in fisher.values()), default=0.0)}

    def cache_key(self, method, n_tasks: int):
        return [method.ewc_decay]


def empirical_fisher(run) -> dict:
    """The mean over minibatches of the squared gradient of the task loss, per factor entry: one pass over the
    task's training split in batches of training.batch_size, dropout off (Avalanche's compute_importances)."""
    import torch

    params = {f"{name}.{f}": w for name, layer in run.layers.items() for f, w in factors(layer).items()}
    sums = {k: torch.zeros_like(w, dtype=torch.float32) for k, w in params.items()}
    was_training = run.model.training
    run.model.eval()
    n, size, batches = len(run.data.train_x), run.seq.training.batch_size, 0
    try:
        for start in range(0, n, size):
            for w in params.values():
                w.grad = None
            run.task_loss(list(range(start, min(start + size, n)))).backward()
            for k, w in params.items():
                if w.grad is not None:
                    sums[k] += w.grad.detach().float() ** 2
            batches += 1
    finally:
        for w in params.values():
            w.grad = None
        run.model.train(was_training)
    return {k: (v / max(batches, 1)).cpu() for k, v in sums.items()}


register_term(Term("ewc", "ewc", "ewc_weight", _make, default=lambda method: DEFAULT))

register(MethodSpec("ewc", "EWC: one adapter trained on through the tasks, Fisher-weighted pull to the earlier "
                           "factors", terms=(("ewc", True),), merge="last", previous="none", init="previous",
                    hooks=EWCHooks(), knobs=(Knob("ewc_weight"),)))
