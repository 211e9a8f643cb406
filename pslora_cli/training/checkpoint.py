"""Training checkpoints: everything an interrupted `train-task` needs to continue exactly where it stopped.

One safetensors file per task (STORE/checkpoints/<id>.safetensors), written atomically: the LoRA factors, the
head, AdamW's moments, the data-order generator, the current epoch's permutation and the global RNG state as
tensors; the step, the scheduler state and the recent metrics as JSON in the file's metadata. No pickle is
involved, so a checkpoint cannot execute anything when it is read.

A checkpoint records a resume key (hash of the resolved config, the task's data and the earlier adapters it
was trained against); one whose key differs from the current run's is not resumed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..store import atomic_path
from ..store.checkpoints import FORMAT


class BatchOrder:
    """Indices of each step's batch: one seeded shuffle per epoch, last partial batch kept; resumable.

    The state is the generator after the current epoch's shuffle, that permutation, and the position in it.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.order: torch.Tensor | None = None
        self.pos = 0

    def next(self) -> list[int]:
        if self.order is None or self.pos >= self.n:
            self.order = torch.randperm(self.n, generator=self.gen)
            self.pos = 0
        idx = self.order[self.pos:self.pos + self.batch_size].tolist()
        self.pos += self.batch_size
        return idx

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {"data.generator": self.gen.get_state()}
        if self.order is not None:
            tensors["data.order"] = self.order
        return tensors, {"pos": self.pos}

    def restore(self, tensors: dict[str, torch.Tensor], info: dict) -> None:
        self.gen.set_state(tensors["data.generator"])
        self.order = tensors.get("data.order")
        self.pos = int(info["pos"])


def save_checkpoint(path: Path, *, key: str, step: int, params: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer, scheduler, batches: BatchOrder, extra: dict) -> None:
    """Write the training state after `step` steps. `params` maps stable names to the trained tensors."""
    tensors = {f"param.{name}": p.detach().cpu().contiguous() for name, p in params.items()}
    opt = optimizer.state_dict()
    opt_meta = {"param_groups": opt["param_groups"], "state": {}}
    for pid, state in opt["state"].items():
        opt_meta["state"][str(pid)] = {}
        for k, v in state.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
                opt_meta["state"][str(pid)][k] = "tensor"
            else:
                opt_meta["state"][str(pid)][k] = v
    data_tensors, data_info = batches.state()
    tensors.update(data_tensors)
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {"format": FORMAT, "key": key, "step": step, "optimizer": opt_meta, "scheduler": scheduler.state_dict(),
            "data": data_info, "extra": extra}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"pslora": json.dumps(meta)})


def restore_checkpoint(meta: dict, tensors: dict[str, torch.Tensor], *, params: dict[str, torch.Tensor],
                       optimizer: torch.optim.Optimizer, scheduler, batches: BatchOrder) -> int:
    """Load a checkpoint's state into the live objects; return the number of steps already done."""
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[f"param.{name}"].to(p.device, p.dtype))
    opt_meta = meta["optimizer"]
    device = next(iter(params.values())).device
    state = {}
    for pid, entries in opt_meta["state"].items():
        state[int(pid)] = {k: (tensors[f"optim.{pid}.{k}"].to(device) if v == "tensor" else v)
                           for k, v in entries.items()}
        if "step" in state[int(pid)]:
            state[int(pid)]["step"] = state[int(pid)]["step"].cpu()  # AdamW keeps `step` on the CPU
    optimizer.load_state_dict({"state": state, "param_groups": opt_meta["param_groups"]})
    scheduler.load_state_dict(dict(meta["scheduler"]))
    batches.restore(tensors, meta["data"])
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return int(meta["step"])
