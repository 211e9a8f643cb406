"""Reading a training checkpoint (STORE/checkpoints/<id>.safetensors; written by training/checkpoint.py): its step
from the header alone, or its metadata and tensors. No pickle is involved, so reading one executes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import safe_open

if TYPE_CHECKING:
    import torch

FORMAT = "pslora-checkpoint/1"


def checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint was saved after (read from its header only), or None when absent or unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["pslora"])
        return int(meta["step"]) if meta.get("format") == FORMAT else None
    except Exception:  # noqa: BLE001 - absent or damaged: not resumable
        return None


def read_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """(metadata, tensors) of a checkpoint, or None when the file is absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["pslora"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # noqa: BLE001 - a damaged checkpoint is not resumed; training starts over
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None
    return meta, tensors
