"""Running under torchrun: PyTorch's own process group (NCCL on GPUs, Gloo on CPUs), detected from the
environment torchrun sets (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

Every rank trains its own copy of the adapter on its shard of each global batch under DistributedDataParallel;
rank 0 alone writes the store and the others wait for it at a barrier. Without torchrun (or with
WORLD_SIZE=1) nothing here is active and every helper is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from .errors import InputError

ENV_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1
    backend: str | None = None

    @property
    def active(self) -> bool:
        """In a process group (torchrun, even with one process: then NCCL/Gloo and DDP run all the same)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_WORLD = World()


def world() -> World:
    return _WORLD


def requested() -> bool:
    """True when the environment asks for a process group: WORLD_SIZE > 1, or any size when torchrun started
    this process (it sets TORCHELASTIC_RUN_ID)."""
    size = os.environ.get("WORLD_SIZE", "1").strip()
    return size not in ("", "1") or (size == "1" and "TORCHELASTIC_RUN_ID" in os.environ)


def init_from_env(device_name: str, timeout_minutes: float = 30.0) -> World:
    """Join the process group torchrun set up; returns the World (size 1 when not under torchrun).

    A misconfigured environment is an InputError naming the variable. The backend is NCCL when this rank
    trains on CUDA, Gloo otherwise.
    """
    global _WORLD
    if not requested():
        return _WORLD
    values = {}
    for key in ENV_KEYS:
        if key not in os.environ:
            raise InputError(f"${key} is not set, but WORLD_SIZE={os.environ['WORLD_SIZE']} asks for a distributed "
                             f"run; start pslora with torchrun (torchrun --nproc_per_node N -m pslora_cli ...)")
        values[key] = os.environ[key]
    try:
        rank, local_rank, size = int(values["RANK"]), int(values["LOCAL_RANK"]), int(values["WORLD_SIZE"])
        int(values["MASTER_PORT"])
    except ValueError:
        raise InputError("RANK, LOCAL_RANK, WORLD_SIZE and MASTER_PORT must be integers "
                         f"(got {', '.join(f'{k}={values[k]!r}' for k in ENV_KEYS if k != 'MASTER_ADDR')})") from None
    if size < 1 or not 0 <= rank < size or local_rank < 0:
        raise InputError(f"RANK={rank}, LOCAL_RANK={local_rank}, WORLD_SIZE={size}: need 0 <= RANK < WORLD_SIZE")
    import torch
    import torch.distributed as dist

    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if device_name == "cuda" and not use_cuda:
        raise InputError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise InputError(f"LOCAL_RANK={local_rank}, but this machine has {torch.cuda.device_count()} GPU(s); "
                             f"use --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
    _WORLD = World(rank=rank, local_rank=local_rank, size=size, backend=backend)
    return _WORLD


def shutdown() -> None:
    global _WORLD
    if _WORLD.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _WORLD = World()


def barrier() -> None:
    if _WORLD.active:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(tensor):
    """Sum `tensor` over the ranks in place (on this rank's device) and return it."""
    if _WORLD.active:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def _device():
    import torch

    return torch.device("cuda", _WORLD.local_rank) if _WORLD.backend == "nccl" else torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on at least one (e.g. a stop request or a non-finite loss)."""
    if not _WORLD.active:
        return flag
    import torch

    t = torch.tensor([1.0 if flag else 0.0], device=_device())
    return bool(all_reduce_sum(t).item() > 0)


def shard(items: list, rank: int | None = None, size: int | None = None) -> list:
    """This rank's share of a list (every size-th item from position rank): shards differ by at most one."""
    rank = _WORLD.rank if rank is None else rank
    size = _WORLD.size if size is None else size
    return items[rank::size]
