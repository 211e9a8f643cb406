"""Text encoders through transformers: a pretrained model (built-in offline, Hugging Face id or local folder) whose
pooled hidden states feed the task heads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import Backbone
from ..errors import InputError
from .common import backbone_dtype, folder_identity


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


def load_text_backbone(cfg: Backbone, path: str, device: torch.device) -> TextBackbone:
    """A transformers encoder with its tokenizer (from the folder or hub id `path`), frozen, in eval mode."""
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
        model = AutoModel.from_pretrained(path, trust_remote_code=cfg.trust_remote_code, dtype=backbone_dtype(cfg))
    except (OSError, ValueError) as exc:
        text = str(exc)
        if "trust_remote_code" in text and not cfg.trust_remote_code:
            raise InputError(f"backbone.name: {cfg.name!r} needs its own Python code to load; pslora does not "
                             f"run a model's code unless the sequence sets backbone.trust_remote_code: true") from None
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise InputError(f"backbone.name: cannot load {cfg.name!r} ({first})") from None
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    dim = getattr(model.config, "hidden_size", None) or getattr(model.config, "d_model", None)
    if dim is None:
        raise InputError(f"backbone.name: {cfg.name!r} has no hidden_size in its config")
    return TextBackbone(model=model, tokenizer=tokenizer, feature_dim=int(dim), pooling=cfg.pooling,
                        max_length=cfg.max_length, path=path, identity=folder_identity(cfg, path))


