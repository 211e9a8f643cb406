"""Shared helpers of the performance benchmarks (benchmarks/performance/run.py): timing, memory, forked cases, tables."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MB = 1 << 20


def machine() -> dict:
    model = "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"nproc": os.cpu_count(), "cpu": model, "mem_gb": mem_gb, "python": platform.python_version(),
            "load_1min": round(load, 2) if load is not None else None}


def mem_available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def run_forked(fn, *args, **kwargs) -> dict:
    """Run fn(*args, **kwargs) -> dict in a forked child; add its wall time, its start RSS and its peak RSS
    (ru_maxrss: a forked child's high-water mark starts at its own RSS). Fork before the parent has done any
    torch computation (no thread pool yet), so that the child may use torch's threads safely.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            start_rss = rss_bytes()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs) or {}
            out["wall_s"] = time.perf_counter() - t0
            out["start_rss"] = start_rss
            out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        except BaseException as exc:  # report, never raise into the parent's code path
            out = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
        with os.fdopen(w, "w") as f:
            f.write(json.dumps(out))
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        return {"error": f"child died (status {status})"}
    return json.loads(data)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def profile_peak_bytes(fn) -> int:
    """Peak, above the state at the call, of the bytes torch's CPU allocator holds while fn() runs, from the
    profiler's memory events (allocations and frees of tensors made during the call; deterministic sizes)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        running += e.nbytes()
        peak = max(peak, running)
    return peak


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def fmt_mb(b) -> str:
    return "-" if b is None else f"{b / MB:.1f}"


def fmt_ratio(x) -> str:
    return "-" if x is None or x != x else f"{x:.2f}x"


def table(headers: list[str], rows: list[list]) -> str:
    """A markdown table (also readable in a terminal)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in cells[1:]])


def synthetic_model(d: int, layers: int, *, untouched: bool = False, dtype=None):
    """A stack of `layers` blocks with d x d `q` and `v` linears (the modules LoRA adapts), frozen.

    untouched=True allocates the weights without writing them (torch.empty pages count in no RSS): for the
    merge benchmark, where PEFT only needs the model to exist. Otherwise weights are seeded (seed 0). dtype: the
    weights' (built in it directly: no float32 copy of a bfloat16 model exists).
    """
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(d, d, bias=False, dtype=dtype)
            self.v = nn.Linear(d, d, bias=False, dtype=dtype)

    class Synth(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(Layer() for _ in range(layers))

        def forward(self, x):
            for layer in self.layers:
                x = x + layer.v(torch.relu(layer.q(x)))
            return x

    if untouched:
        with torch.device("meta"):
            model = Synth()
        return model.to_empty(device="cpu")
    torch.manual_seed(0)
    model = Synth()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def random_factors(d: int, layers: int, generator, rank: int) -> dict:
    """Random rank-`rank` LoRA factors of the synthetic stack's q and v, under PEFT's key names."""
    import torch

    tensors = {}
    for i in range(layers):
        for m in ("q", "v"):
            key = f"base_model.model.layers.{i}.{m}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, d, generator=generator) / d ** 0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(d, rank, generator=generator) * 1e-2
    return tensors
