"""Where the work runs: the torch device (under torchrun, the rank's), and how many CPU threads a process takes
(its affinity, capped by the cgroup CPU quotas on its path)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError


def default_threads() -> int:
    """OMP_NUM_THREADS when set, else half the cores this process may use (at least 1). Half, because all of them
    collapse when other jobs hold some (measured on a busy 2-core VM: 2 threads 2.7x slower than 1, while on the
    idle VM 2 threads were 1.3x faster; benchmarks/RESULTS.md), and a fixed number rather than one read from the
    load, so that a run and its resumption use the same count (results can differ in the last bits between
    counts)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, usable_cores() // 2)


def usable_cores(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> int:
    """The cores this process may use: its CPU affinity, capped by the tightest CPU quota on its cgroup's path
    (a container limited to 2 CPUs on a 64-core host sees 64 in its affinity; a Slurm job or systemd slice sets
    its quota on a nested cgroup, not the root)."""
    import math

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quotas = [q for d in _own_cgroup_dirs(cgroup_root, proc_cgroup) if (q := _cpu_quota(d)) is not None]
    return max(1, min([cores] + [math.ceil(q) for q in quotas]))


def _own_cgroup_dirs(cgroup_root: str, proc_cgroup: str) -> list[Path]:
    """The cgroup directories from this process's own cgroup up to the root, for v2 and for v1's cpu controller."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        lines = []
    dirs = [Path(cgroup_root), Path(cgroup_root, "cpu")]
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) == 3 and (fields[1] == "" or "cpu" in fields[1].split(",")):
            base = Path(cgroup_root) if fields[1] == "" else Path(cgroup_root, "cpu")
            own = Path(fields[2].strip("/"))
            dirs += [base / own, *(base / parent for parent in own.parents)]
    return list(dict.fromkeys(dirs))


def _cpu_quota(directory: Path) -> float | None:
    """The CPU count a cgroup directory's quota allows (v2 cpu.max or v1 cfs quota/period), or None."""
    try:
        if (directory / "cpu.max").exists():
            quota, period = (directory / "cpu.max").read_text().split()[:2]  # "max" (v2) means no quota
        else:
            quota = (directory / "cpu.cfs_quota_us").read_text().strip()
            period = (directory / "cpu.cfs_period_us").read_text().strip()
        quota, period = int(quota), int(period)
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def resolve_device(name: str):
    import torch

    from . import distributed

    world = distributed.init_from_env(name)  # under torchrun: join the process group first
    if world.backend == "nccl":
        return torch.device("cuda", world.local_rank)
    if world.active:
        return torch.device("cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise InputError(f"--device {name!r}: expected auto, cpu or cuda")
    return torch.device(name)
