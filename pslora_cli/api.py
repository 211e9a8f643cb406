"""PS-LoRA inside your own training loop: pslora's public Python API.

    from pslora_cli.api import StabilityRegulariser, fold_history, merge_adapters, continual_metrics

    fold_history(peft_model, ["runs/task1"])                        # W0 + merge of the earlier tasks' updates
    regulariser = StabilityRegulariser(peft_model, ["runs/task1"])  # λ · L_PS against H = Σ earlier updates
    loss = task_loss + regulariser()                                 # each step, then loss.backward()
    merge_adapters(["runs/task1", "runs/task2"], "merged-model")     # base + magnitude merge, a stock model folder
    continual_metrics([[0.5, 0.5], [0.9, 0.5], [0.8, 0.9]])          # ACC, BWT, forgetting, ... of R[t][i]

The names in `__all__` are the stable API. They call the code `pslora run` / `train-task` train and merge with, not a
copy: the regulariser is training/regularisers.Regulariser over core/stability_lean.prepare_history, the fold is
training/recipe.fold_history, the merge is adapter_sets.merge_adapter_set, the metrics core/metrics.cl_metrics.
Importing this module imports neither torch nor transformers (each function imports what it needs when called).
For a transformers.Trainer (or TRL's SFTTrainer) see pslora_cli.integrations.transformers.

The history (`history=` below) is either a list of earlier tasks' PEFT LoRA adapter folders, oldest first (trained
anywhere: by pslora, by a Trainer, by your own loop), or a pslora store (its trained tasks, in the sequence's order).
Adapters whose factors are not their update of the base weights (PiSSA, OLoRA, CorDA, LoRA-GA, LoftQ) are refused,
as `pslora merge --adapters` refuses them. Bad adapters raise pslora_cli.errors.InputError with a one-line message
naming the file; bad options raise ValueError.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:  # the annotations only; nothing heavy is imported with this module
    import torch
    from torch import nn

__all__ = ["StabilityRegulariser", "builtin_model", "continual_metrics", "fold_history", "history_folders",
           "merge_adapters"]

PathLike = Union[str, "os.PathLike[str]"]
History = Union[PathLike, Sequence[PathLike], None]

VARIANTS = ("magnitude-only", "hinge+ratio", "direction-only", "dir+fro", "weighted-dir+fro", "dir+factor",
            "deviation")


def history_folders(history: History) -> list[Path]:
    """The earlier tasks' adapter folders, oldest first: `history` as given (a list of folders, or one folder), or
    the trained tasks of a pslora store (a folder with manifest.json), each checked against its recorded sha256."""
    if history is None:
        return []
    if isinstance(history, (str, os.PathLike)):
        root = Path(history)
        if (root / "manifest.json").is_file():
            return _store_task_folders(root)
        return [root]
    if not isinstance(history, Sequence):
        raise ValueError(f"history: expected adapter folders or a pslora store, got {type(history).__name__}")
    return [Path(h) for h in history]


def _store_task_folders(root: Path) -> list[Path]:
    from .store import Store

    store = Store(root)
    manifest = store.manifest()
    ids = [t["id"] for t in manifest["sequence"]["tasks"]]
    done = store.trained_prefix(ids)
    for task_id in done:
        store.verify_task(task_id)
    return [store.task_files(t).adapter_dir for t in done]


def _open_history(history: History) -> list:
    from .adapter_sets import open_adapter

    return [open_adapter(folder) for folder in history_folders(history)]


def _method(*, stability_weight: float = 1.0, variant: str = "magnitude-only", alpha_mode: str = "adaptive",
            alpha: float = 2.0, reduction: str = "mean", merge: str = "magnitude", previous: str = "merge",
            density: float = 0.2, scale: float | None = None):
    """The pslora Method these options describe (PS-LoRA's stability loss alone: every other term off)."""
    from .config import Method
    from .core.merges import MERGES

    def number(name: str, value: Any, low: float, low_open: bool) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
                value < low or (low_open and value == low):
            raise ValueError(f"{name}: {value!r} must be a finite number {'>' if low_open else '>='} {low}")
        return float(value)

    number("stability_weight", stability_weight, 0, False)
    number("alpha", alpha, 0, True)
    if variant not in VARIANTS:
        raise ValueError(f"variant: {variant!r} is not one of {', '.join(VARIANTS)}")
    if alpha_mode not in ("adaptive", "fixed"):
        raise ValueError(f"alpha_mode: {alpha_mode!r} is not adaptive or fixed")
    if reduction not in ("mean", "sum") or (reduction == "sum" and variant in VARIANTS[:3]):
        raise ValueError(f"reduction: {reduction!r}: mean, or sum for the literal variants "
                         f"({', '.join(VARIANTS[3:])})")
    if merge not in MERGES:
        raise ValueError(f"merge: {merge!r} is not one of {', '.join(MERGES)}")
    if previous not in ("merge", "sum", "none"):
        raise ValueError(f"previous: {previous!r} is not merge, sum or none")
    if not (isinstance(density, (int, float)) and 0 < density <= 1):
        raise ValueError(f"density: {density!r} must be in (0, 1]")
    from .methods import TERMS

    off = {term.weight: 0.0 for name, term in TERMS.items() if name != "stability"}  # every other method's term
    return Method(stability_weight=stability_weight, variant=variant, alpha_mode=alpha_mode, alpha=alpha,
                  reduction=reduction, merge=merge, merge_density=density, merge_scale=scale, previous=previous,
                  **off)


def _layers(model: nn.Module) -> dict:
    """The model's PEFT LoRA layers (adapter "default"), keyed by the base model's weight names."""
    from .training.recipe import lora_layers

    layers = lora_layers(model)
    if not layers:
        raise ValueError("model: no PEFT LoRA layer with an adapter named 'default' (pass the model returned by "
                         "peft.get_peft_model, or a module holding it)")
    return layers


def _check_modules(previous: list, layers: dict) -> None:
    """Every earlier adapter adapts exactly the model's LoRA modules (as the CLI requires of a store's tasks)."""
    for adapter in previous:
        if set(adapter.modules) != set(layers):
            odd = sorted(set(adapter.modules) ^ set(layers))[0]
            raise ValueError(f"{adapter.path}: adapts other modules than the model's LoRA layers ({odd} is in one "
                             f"and not the other): train each task on the same target_modules")


class StabilityRegulariser:
    """PS-LoRA's Parameter Stability Loss of a PEFT model's current LoRA factors against the earlier tasks' updates.

    `regulariser()` returns λ · L_PS, the term `pslora run` adds to each micro-batch's loss: L_PS over the LoRA
    modules of ΔW_t = s·B_t·A_t against H = Σ_{i<t} ΔW_i (a mean over modules for the scale-free variants, METHOD.md
    §1b), differentiable with respect to the LoRA factors; with no history (the first task) or λ = 0 it is a
    constant 0. `regulariser.loss()` is L_PS alone (what pslora records as stability_loss).

    Args:
        model: the PEFT model being trained (`peft.get_peft_model(...)`, adapter "default"), on its training device;
            moved later, the history follows it at the next call.
        history: the earlier tasks' adapter folders (oldest first) or a pslora store; see `history_folders`.
        stability_weight: λ (method.stability_weight).
        variant, alpha_mode, alpha, reduction: the loss's form, as the sequence's method.* keys (defaults: pslora's).

    Raises ValueError for options out of range or an adapter of other modules, InputError for a bad adapter.
    """

    def __init__(self, model: nn.Module, history: History, *, stability_weight: float = 1.0,
                 variant: str = "magnitude-only", alpha_mode: str = "adaptive", alpha: float = 2.0,
                 reduction: str = "mean"):
        self.method = _method(stability_weight=stability_weight, variant=variant, alpha_mode=alpha_mode,
                              alpha=alpha, reduction=reduction)
        self.layers = _layers(model)
        self.previous = _open_history(history)
        _check_modules(self.previous, self.layers)
        self.folders: list[Path] = [a.dir for a in self.previous]
        self._device = None
        self._regulariser = None
        self._build()

    def _build(self) -> None:
        from .models.adapters import SummedHistory
        from .training.regularisers import Regulariser

        device = self._layer_device()
        # H = Σ_{i<t} ΔW_i, as training/recipe.fold_history gives it to the CLI's training (formed per module when read)
        history = SummedHistory(self.previous, device)
        self._regulariser = Regulariser(self.method, self.layers, self.previous, history, device)
        self._device = device

    def _layer_device(self):
        return next(iter(self.layers.values())).lora_A["default"].weight.device

    @property
    def active(self) -> bool:
        """Whether the term can be non-zero: an earlier task to be stable against, and λ > 0."""
        return "stability" in self._regulariser.losses

    @property
    def stability_weight(self) -> float:
        return float(self.method.stability_weight)

    def loss(self) -> torch.Tensor:
        """L_PS of the current factors (unweighted), a 0-dim tensor on the model's device."""
        if self._layer_device() != self._device:
            self._build()
        return self._regulariser.terms(self.layers)["stability"]

    def __call__(self) -> torch.Tensor:
        """λ · L_PS: add it to the training loss (once per optimiser step's worth of loss; see the README)."""
        return self.method.stability_weight * self.loss()

    def __repr__(self) -> str:
        return (f"StabilityRegulariser({len(self.layers)} modules, {len(self.folders)} earlier tasks, "
                f"λ={self.method.stability_weight}, variant={self.method.variant!r})")


def fold_history(model: nn.Module, history: History, *, merge: str = "magnitude", previous: str = "merge",
                 density: float = 0.2, scale: float | None = None) -> list[Path]:
    """Fold the earlier tasks into the frozen base weights, as `pslora run` does before training task t: W0 + the
    merge of their updates (`previous="merge"`, PS-LoRA's magnitude merge by default), W0 + their sum ("sum"), or
    nothing ("none"). `model` is a PEFT model (its LoRA layers' base weights change) or the plain model before
    get_peft_model (its adapted weights change). Call it once per model, before training; returns the folders folded.
    `density` and `scale` are TIES's and task arithmetic's / MagMax's options."""
    method = _method(merge=merge, previous=previous, density=density, scale=scale)
    previous_adapters = _open_history(history)
    if not previous_adapters:
        return []
    if getattr(model, "_pslora_folded", None):
        raise ValueError(f"model: the history {model._pslora_folded} is folded into it already")
    params = _base_weights(model, previous_adapters[0])
    _check_modules(previous_adapters, params)
    from .training.recipe import fold_history as fold

    device = next(iter(params.values())).device
    fold(method, params, previous_adapters, device)
    folders = [a.dir for a in previous_adapters]
    model._pslora_folded = [str(f) for f in folders]
    return folders


def _base_weights(model: nn.Module, adapter) -> dict:
    """The frozen weights an adapter's modules update: the LoRA layers' base weights of a PEFT model, else the
    model's own parameters of those names."""
    from .training.recipe import lora_layers

    layers = lora_layers(model)
    if layers:
        return {name: layer.get_base_layer().weight for name, layer in layers.items()}
    own = dict(model.named_parameters())
    missing = [name for name in adapter.modules if name not in own]
    if missing:
        raise ValueError(f"{adapter.path}: adapts {missing[0]}, which the model does not have")
    return {name: own[name] for name in adapter.modules}


def merge_adapters(adapters: Sequence[PathLike], out: PathLike, *, method: str = "magnitude",
                   base: str | None = None, density: float = 0.2, scale: float | None = None, force: bool = False,
                   device: str = "cpu") -> dict:
    """`pslora merge --adapters`: merge PEFT LoRA adapters of one base model with a registered merge (PS-LoRA's
    magnitude merge by default) and write `out`: FILE.safetensors holds the dense merged update per weight (W0[key] +
    merged[key] is the merged weight); a folder gets the base model (`base`, else the adapters'
    base_model_name_or_path) with the merge folded in, as transformers writes it, with its tokenizer and a model
    card. Returns the merge's record (method, options, adapters with their sha256, modules, out)."""
    import torch

    from .adapter_sets import merge_adapter_set
    from .errors import InputError

    out = Path(out)
    if out.suffix != ".safetensors" and out.exists() and not out.is_dir():
        raise InputError(f"out: {out} exists and is not a folder")
    return merge_adapter_set([Path(a) for a in adapters], method, out, torch.device(device), base=base,
                             density=density, scale=scale, force=force)


def continual_metrics(matrix: Sequence[Sequence[float | None]],
                      sample_counts: Sequence[float] | None = None) -> dict[str, float | int | None]:
    """The continual-learning metrics of an accuracy matrix R (T+1 rows of T entries, row 0 the base model,
    R[t][i-1] = accuracy on task i after training task t, in [0, 1] or None): acc, acc_weighted (with the test-set
    sizes), avg_incremental_accuracy, bwt, fwt, forgetting, forgetting_last, learning_accuracy, num_tasks (METHOD.md
    §5). Undefined values are None, never 0; a malformed matrix raises ValueError."""
    from .core.metrics import cl_metrics

    return cl_metrics(matrix, sample_counts)


def builtin_model(name: str = "smollm2-135m-instruct") -> str:
    """The local folder of a built-in text model, which transformers opens offline: "smollm2-135m-instruct" (a causal
    LM, converted from the GGUF its package ships on first use, into ~/.cache/pslora or $PSLORA_CACHE) or
    "all-minilm-l6-v2" (an encoder). InputError when its package is not installed, naming the package."""
    from .config import Backbone
    from .config.backbones import BUILTIN_LM, BUILTIN_TEXT
    from .models import resolve_model_path

    if name not in BUILTIN_LM and name not in BUILTIN_TEXT:
        raise ValueError(f"name: {name!r} is not a built-in text model ({', '.join([*BUILTIN_LM, *BUILTIN_TEXT])})")
    return resolve_model_path(Backbone(source="builtin", name=name))
