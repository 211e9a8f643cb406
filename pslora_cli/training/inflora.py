"""InfLoRA in training (methods/inflora.py, core/subspace.py): the input matrices of the adapted modules over a
task's training data, A_t designed from them before training and frozen, the input subspace extended after it and
kept in the task folder."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..core.subspace import InputMatrix, design_down_projection, extend_basis, random_down_projection, threshold
from ..errors import InputError, WorkError
from .batches import training_batch

BASES_FILE = "input_bases.safetensors"


def check_linear(shapes: dict[str, tuple]) -> None:
    """InfLoRA designs A from token vectors: every adapted weight must be a linear layer's (d_out, d_in)."""
    for name, shape in shapes.items():
        if len(shape) != 2:
            raise InputError(f"method inflora adapts linear layers only; {name} is a convolution (weight shape "
                             f"{tuple(shape)}): set lora.target_modules to linear layers (e.g. a ViT's qkv)")


def previous_bases(previous_dir: Path | None, names) -> dict[str, torch.Tensor | None]:
    """The input subspace after the previous task (None per module before the first task)."""
    if previous_dir is None:
        return {name: None for name in names}
    path = Path(previous_dir) / BASES_FILE
    if not path.is_file():
        raise WorkError(f"{previous_dir}: has no {BASES_FILE}; it was not trained by method inflora (retrain it "
                        f"with this sequence's method)")
    bases = load_file(str(path))
    missing = [n for n in names if n not in bases]
    if missing:
        raise WorkError(f"{path}: holds no input subspace for {missing[0]}")
    return {name: bases[name].to(torch.float64) for name in names}


@torch.no_grad()
def input_matrices(run) -> dict[str, torch.Tensor]:
    """Mean x xᵀ over the (non-padding) tokens of the task's training examples at the input of every adapted
    module, through the model as it is now (eval mode: no dropout)."""
    layers = run.layers
    sums = {name: InputMatrix(layer.lora_A["default"].weight.shape[1]) for name, layer in layers.items()}
    mask: list = [None]

    def hook(name):
        def record(module, args):
            x = args[0]
            m = mask[0]
            if m is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(m.shape):
                x = x[m.bool()]
            sums[name].add(x)
        return record

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in layers.items()]
    was_training = run.model.training
    run.model.eval()
    try:
        n, size = len(run.data.train_x), run.seq.training.eval_batch_size
        for start in range(0, n, size):
            batch, _ = training_batch(run, list(range(start, min(start + size, n))))
            mask[0] = batch.get("attention_mask") if isinstance(batch, dict) else None
            run.model(batch)
    finally:
        for h in handles:
            h.remove()
        run.model.train(was_training)
    return {name: s.value.cpu() for name, s in sums.items()}


def design(run, previous_dir: Path | None) -> dict[str, torch.Tensor]:
    """Fix every adapted module's A_t (method.subspace_design: from the task's inputs, or random) away from the
    earlier subspace; freeze it. Returns the earlier subspace per module (what `extend` grows after training)."""
    bases = previous_bases(previous_dir, run.layers)
    if run.seq.method.subspace_design == "random":
        with torch.no_grad():
            for name, layer in run.layers.items():
                weight = layer.lora_A["default"].weight
                weight.copy_(random_down_projection(weight.detach(), bases[name]).to(weight.dtype))
                weight.requires_grad_(False)
        return bases
    if run.labels is None:  # an encoder's batches index the labels
        run.labels = torch.tensor(run.data.train_y, dtype=torch.long)
    matrices = input_matrices(run)
    with torch.no_grad():
        for name, layer in run.layers.items():
            weight = layer.lora_A["default"].weight
            a = design_down_projection(matrices[name], bases[name], weight.shape[0])
            weight.copy_(a.to(weight.dtype))
            weight.requires_grad_(False)
    return bases


def extend(run, bases: dict[str, torch.Tensor | None], out_folder: Path | None) -> dict[str, int]:
    """Grow the subspace with the trained task's inputs; save it in the task folder. Returns its size per module."""
    keep = threshold(run.index, len(run.seq.tasks), run.seq.method.subspace_threshold,
                     run.seq.method.subspace_threshold_end)
    matrices = input_matrices(run)
    grown = {name: extend_basis(matrices[name], bases[name], keep) for name in run.layers}
    if out_folder is not None:
        save_file({name: b.to(torch.float32).contiguous() for name, b in grown.items()},
                  str(Path(out_folder) / BASES_FILE))
    return {name: int(b.shape[1]) for name, b in grown.items()}
