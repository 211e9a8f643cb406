"""Models: backbones (text encoders through transformers, image models through timm), PEFT adapters as dense
updates (adapters.py), the task heads (heads.py).

The classifier heads are the project's own (one nn.Linear per task) so that a class-incremental classifier can grow
by each task's classes; the backbone is whatever transformers or timm loads.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from ..config import Backbone, Sequence
from ..config.backbones import BUILTIN_LM, BUILTIN_TEXT, backbone_kind, backbone_modality
from ..errors import InputError
from .common import (DTYPES, backbone_dtype, enable_gradient_checkpointing, folder_identity,  # noqa: F401 (re-exported)
                     quiet_transformers, target_parameters)


def resolve_model_path(cfg: Backbone) -> str:
    """The folder (or hub id) transformers should load for a backbone config (for an image backbone: a
    description of the timm model and its weights)."""
    if backbone_modality(cfg) == "image":
        from .vision import describe

        return describe(cfg)
    if cfg.source == "builtin":
        from .lm import builtin_lm_folder

        if cfg.name in BUILTIN_LM:
            return builtin_lm_folder(cfg.name)
        if cfg.name not in BUILTIN_TEXT:
            raise InputError(f"backbone.name: unknown built-in backbone {cfg.name!r} "
                             f"(built-in: {', '.join(BUILTIN_TEXT)}; or set backbone.source: huggingface)")
        module, sub, install = BUILTIN_TEXT[cfg.name]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise InputError(f"backbone {cfg.name!r} needs the package {module}: {install}")
        path = Path(list(spec.submodule_search_locations)[0]) / sub
        if not (path / "config.json").is_file():
            raise InputError(f"backbone {cfg.name!r}: {path} has no config.json; reinstall: {install}")
        return str(path)
    return cfg.name


def weights_stamp(cfg: Backbone) -> list:
    """Name, size and mtime of the files the base model's identity hashes: when they match what a store
    recorded, the (possibly many-GB) files need not be hashed again to know the model is unchanged."""
    if backbone_modality(cfg) == "image":
        from .vision import _weights_file

        file = _weights_file(cfg)
        files = [file] if file is not None and file.is_file() else []
    else:
        folder = Path(resolve_model_path(cfg))
        files = sorted((p for p in folder.iterdir() if p.name == "config.json" or p.name.endswith(".safetensors")),
                       key=lambda p: p.name) if folder.is_dir() else []
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def backbone_identity(cfg: Backbone) -> dict:
    """What identifies the base model: its source, name and a hash of its config and weight files."""
    if backbone_modality(cfg) == "image":
        from .vision import vision_identity

        return vision_identity(cfg)
    return folder_identity(cfg, resolve_model_path(cfg))


def load_backbone(cfg: Backbone, device: torch.device):
    """A TextBackbone (transformers encoder), a LanguageModel (causal or seq2seq LM) or, for timm and built-in image
    backbones, a VisionBackbone."""
    if backbone_modality(cfg) == "image":
        from .vision import load_vision_backbone

        return load_vision_backbone(cfg, device)
    kind = backbone_kind(cfg)
    if kind != "encoder":
        from .lm import load_language_model

        quiet_transformers()
        return load_language_model(cfg, resolve_model_path(cfg), kind, device)
    from .text import load_text_backbone

    quiet_transformers()
    return load_text_backbone(cfg, resolve_model_path(cfg), device)


def check_base_model(cfg: Backbone, recorded: dict, where: Path) -> None:
    """Refuse a store whose base model weights are not the ones the backbone loads now (`recorded`: the store's
    base_model record)."""
    if recorded.get("files") and recorded["files"] == weights_stamp(cfg):
        return  # the same files, untouched since the store recorded them: no need to hash them again
    current = backbone_identity(cfg)
    old, new = recorded.get("weights_sha256"), current.get("weights_sha256")
    if old and new and old != new:
        raise InputError(f"{where}: was written for base model {recorded.get('name')!r} with weights sha256 "
                         f"{old[:12]}…, but {cfg.name!r} now has {new[:12]}… (the base model changed; use another "
                         f"--store)")


def base_weight_shapes(seq: Sequence) -> dict[str, tuple[int, ...]]:
    """Shape of each base-model weight the sequence's LoRA adapts (loads the backbone on the CPU)."""
    backbone = load_backbone(seq.backbone, torch.device("cpu"))
    return {name: tuple(p.shape) for name, p in target_parameters(backbone.model, seq.lora.target_modules).items()}
