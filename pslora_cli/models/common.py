"""What every backbone loader shares and that needs none of them: quiet transformers, the backbone dtype, gradient
checkpointing, the LoRA targets, a folder's identity. The loaders (text, lm, vision) import this; models/__init__
dispatches to them, so nothing here imports a loader."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from ..config import Backbone
from ..errors import InputError


def quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def backbone_dtype(cfg: Backbone) -> torch.dtype:
    """The dtype of the frozen backbone weights (backbone.dtype); LoRA factors, heads and merges stay float32."""
    return DTYPES[getattr(cfg, "dtype", "float32")]


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """training.gradient_checkpointing: the backbone recomputes its activations in the backward pass. transformers
    models get non-reentrant checkpointing (the inputs of a frozen backbone need no gradient for the LoRA factors
    inside to get theirs), timm models their own (non-reentrant by default)."""
    if getattr(model, "supports_gradient_checkpointing", False):
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)
    else:
        raise InputError(f"training.gradient_checkpointing: {type(model).__name__} does not support gradient "
                         f"checkpointing; set it to false")


def target_parameters(model: nn.Module, target_modules: list[str]) -> dict[str, nn.Parameter]:
    """Base-model weight parameters of the modules LoRA adapts, keyed by the base model's own names.

    Matches PEFT's rule for a list of names: a module whose name equals a target or ends with `.target`.
    """
    found: dict[str, nn.Parameter] = {}
    for name, module in model.named_modules():
        if any(name == t or name.endswith("." + t) for t in target_modules):
            if not isinstance(module, (nn.Linear, nn.Conv2d)):
                continue
            found[f"{name}.weight"] = module.weight
    if not found:
        raise InputError(f"lora.target_modules: no Linear/Conv2d module named {', '.join(target_modules)} "
                         f"in the backbone")
    return found


_IDENTITY_CACHE: dict[tuple, dict] = {}


def folder_identity(cfg: Backbone, path: str) -> dict:
    """A transformers backbone's identity: its source, name and a hash of the config and weight files of the
    folder `path` (None for a hub id: identified by its name). Cached per process, keyed by the files' size and
    mtime so that a changed file is hashed again."""
    folder = Path(path)
    names = sorted(p.name for p in folder.iterdir() if p.name == "config.json" or p.name.endswith(".safetensors")) \
        if folder.is_dir() else []
    key = (path, tuple((n, (folder / n).stat().st_size, (folder / n).stat().st_mtime_ns) for n in names))
    if key in _IDENTITY_CACHE:
        return _IDENTITY_CACHE[key]
    digest = None
    if folder.is_dir():
        h = hashlib.sha256()
        for name in names:
            with open(folder / name, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        digest = h.hexdigest()
    identity = {"source": cfg.source, "name": cfg.name, "weights_sha256": digest}
    _IDENTITY_CACHE[key] = identity
    return identity
