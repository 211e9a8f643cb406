"""InfLoRA (Liang & Li, CVPR 2024, "InfLoRA: Interference-Free Low-Rank Adaptation for Continual Learning"), after
its official code (liangyanshuo/InfLoRA; read: `methods/inflora.py` (`_train`: the input matrix collected over the
task's training data, A_t from its SVD after projecting out the earlier subspace, only the B's and the head
trained; `update_DualGPM`: the subspace grown after each task with the threshold (lame − lamb)·t/T + lamb),
`models/vit_inflora.py` and `models/sinet_inflora.py` (the input matrix: the mean of x xᵀ over the tokens of the
inputs to the adapted linear layer; B initialised to zero), `configs/cifar100_inflora.json` (lamb 0.95, lame 1.0);
its T5/LLaMA form is `liangyanshuo/gainlora`).

Per adapted module, before task t trains, A_t = (top-r left singular vectors of (I − M Mᵀ) C_t)ᵀ/√3, with C_t the
task's input matrix (computed through the model with the earlier tasks' updates summed in) and M the earlier
tasks' input subspace; A_t stays frozen and B_t trains from 0, so ΔW_t x = 0 for every x in span(M). After
training, M is extended from the task's input matrix through the trained model and saved in the task folder
(`input_bases.safetensors`), which the next task reads: a resumed or later `train-task` continues exactly. The
earlier adapters are summed into training and into the final model, as the official code sums every task's
B_i A_i. Linear layers only: a convolution's input is not a token vector (refused before the store is created).

Two official recipes, chosen by the backbone's kind (method.subspace_design, method.subspace_threshold): images
take the one above (InfLoRA, lamb 0.95); language models take gainlora's (liangyanshuo/gainlora, read:
`src/cl_trainer_inflora.py`, `get_reg_matrix` and `get_repsentation`; `gen_script_*_inflora.sh`: threshold 0.995):
A_t is the randomly initialised A with its part in the earlier subspace removed (A − A M Mᵀ), rows scaled to norm
1/√3, frozen (the first task keeps A as initialised), B_t trains from 0, and the subspace grows after each task by
the same rule with threshold (1 − θ)·t/T + θ. On SmolLM2 the image recipe's top singular vectors of the inputs
protect only 1–13 of 576 input directions per module at 0.95; the language-model recipe is the one its authors run
on T5 and LLaMA. Its threshold is a run-level knob (it shapes the subspace every later task reads): the first-tasks
protocol tunes it; stability decay, which tunes per task, leaves it as set.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError, WorkError
from ..fields import NUMBER, setting
from .registry import Hooks, Knob, MethodSpec, declare, register

BASES_FILE = "input_bases.safetensors"

# The two recipes by the backbone's kind (language model or not): (design, threshold). The language-model one of
# liangyanshuo/gainlora (threshold 0.995 in every T5 script), the image one of liangyanshuo/InfLoRA (lamb 0.95 in
# configs/cifar100_inflora.json).
RECIPES = {True: ("random", 0.995), False: ("inputs", 0.95)}

SETTINGS = declare(
    subspace_threshold=setting(None, NUMBER + (type(None),), positive=True, legacy=0.95,
            help="InfLoRA: the share of the first task's input energy its subspace keeps (null: the official value "
                 "of the recipe, 0.995 for language models (gainlora's threshold), 0.95 for images (InfLoRA's lamb))"),
    subspace_design=setting("auto", (str,), choices=("auto", "inputs", "random"), legacy="inputs",
            help="InfLoRA: how A_t is made: inputs (the image recipe: top singular vectors of the task's inputs "
                 "outside the earlier subspace) or random (the language-model recipe: a random A with the earlier "
                 "subspace projected out, rows scaled to 1/√3); auto: random for language models, inputs otherwise"),
    subspace_threshold_end=setting(1.0, NUMBER, positive=True, legacy=1.0,
            help="InfLoRA: the share for the last task (the official lame); the threshold runs linearly between them"),
)


def check_linear(shapes: dict[str, tuple]) -> None:
    """InfLoRA designs A from token vectors: every adapted weight must be a linear layer's (d_out, d_in)."""
    for name, shape in shapes.items():
        if len(shape) != 2:
            raise InputError(f"method inflora adapts linear layers only; {name} is a convolution (weight shape "
                             f"{tuple(shape)}): set lora.target_modules to linear layers (e.g. a ViT's qkv)")


def previous_bases(previous_dir: Path | None, names) -> dict:
    """The input subspace after the previous task (None per module before the first task)."""
    import torch
    from safetensors.torch import load_file

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


def input_matrices(run) -> dict:
    """Mean x xᵀ over the (non-padding) tokens of the task's training examples at the input of every adapted
    module, through the model as it is now (eval mode: no dropout)."""
    import torch

    from ..core.subspace import InputMatrix

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
        with torch.no_grad():
            for start in range(0, n, size):
                batch, _ = run.batch(list(range(start, min(start + size, n))))
                mask[0] = batch.get("attention_mask") if isinstance(batch, dict) else None
                run.model(batch)
    finally:
        for h in handles:
            h.remove()
        run.model.train(was_training)
    return {name: s.value.cpu() for name, s in sums.items()}


class InfLoRAHooks(Hooks):
    """A_t designed before training and frozen; the input subspace extended after it, kept in the task folder."""
    settings = SETTINGS
    key_name = "subspace"

    def resolve(self, method: dict, backbone_kind: str) -> None:
        design, threshold = RECIPES[backbone_kind in ("causal-lm", "seq2seq-lm")]
        if method["subspace_design"] == "auto":
            method["subspace_design"] = design
        if method["subspace_threshold"] is None:
            method["subspace_threshold"] = threshold if method["subspace_design"] == design else \
                RECIPES[design == "inputs"][1]
        if not method["subspace_threshold"] <= method["subspace_threshold_end"] <= 1:
            raise InputError(f"method.subspace_threshold: needs subspace_threshold <= subspace_threshold_end <= 1; "
                             f"got {method['subspace_threshold']} and {method['subspace_threshold_end']}")

    def needs_shapes(self, method) -> bool:
        return True

    def check(self, method, shapes: dict[str, tuple]) -> None:
        check_linear(shapes)

    def before_training(self, run) -> None:
        """Fix every adapted module's A_t (method.subspace_design: from the task's inputs, or random) away from
        the earlier subspace; freeze it. Keeps the earlier subspace (what after_training grows)."""
        import torch

        from ..core.subspace import design_down_projection, random_down_projection

        bases = previous_bases(run.previous[-1].dir if run.previous else None, run.layers)
        run.state["bases"] = bases
        if run.seq.method.subspace_design == "random":
            with torch.no_grad():
                for name, layer in run.layers.items():
                    weight = layer.lora_A["default"].weight
                    weight.copy_(random_down_projection(weight.detach(), bases[name]).to(weight.dtype))
                    weight.requires_grad_(False)
            return
        matrices = input_matrices(run)
        with torch.no_grad():
            for name, layer in run.layers.items():
                weight = layer.lora_A["default"].weight
                a = design_down_projection(matrices[name], bases[name], weight.shape[0])
                weight.copy_(a.to(weight.dtype))
                weight.requires_grad_(False)

    def frozen_parameters(self, run) -> tuple[str, ...]:
        return (".lora_A.",)  # a resumed run continues with the A it started with

    def after_training(self, run, folder) -> dict:
        """Grow the subspace with the trained task's inputs; save it in the task folder; record its size."""
        import torch
        from safetensors.torch import save_file

        from ..core.subspace import extend_basis, threshold

        method = run.seq.method
        keep = threshold(run.index, len(run.seq.tasks), method.subspace_threshold, method.subspace_threshold_end)
        matrices = input_matrices(run)
        bases = run.state["bases"]
        grown = {name: extend_basis(matrices[name], bases[name], keep) for name in run.layers}
        if folder is not None:
            save_file({name: b.to(torch.float32).contiguous() for name, b in grown.items()},
                      str(Path(folder) / BASES_FILE))
        return {"input_subspace_dims": {name: int(b.shape[1]) for name, b in grown.items()}}

    def cache_key(self, method, n_tasks: int):
        return [method.subspace_design, method.subspace_threshold, method.subspace_threshold_end, n_tasks]


register(MethodSpec("inflora", "InfLoRA: A_t fixed away from earlier tasks' input subspace, only B_t trains, "
                               "earlier adapters summed", merge="sum", previous="sum", hooks=InfLoRAHooks(),
                    # acts_from 0: the threshold shapes the subspace saved after the first task too
                    knobs=(Knob("subspace_threshold", kind="share", acts_from=0, per_task=False),)))
