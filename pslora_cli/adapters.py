"""Stored adapters as dense updates: read PEFT adapter files tensor by tensor, form ΔW = s·B·A per module,
merge tasks (streaming over tasks and modules) and fold a dense update into a model's weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

import torch
from safetensors import safe_open

from .core.merge import merge_module
from .core.stability import lora_delta
from .errors import InputError

ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
PEFT_PREFIX = "base_model.model."


class AdapterFile:
    """One task's PEFT adapter on disk, read lazily one module at a time."""

    def __init__(self, task_dir: Path):
        self.dir = Path(task_dir)
        config_path = self.dir / CONFIG_FILE
        try:
            self.config = json.loads(config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"{config_path}: missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{config_path}: not valid JSON ({exc})") from None
        try:
            r, alpha = int(self.config["r"]), float(self.config["lora_alpha"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{config_path}: needs integer 'r' and number 'lora_alpha'") from None
        if self.config.get("rank_pattern") or self.config.get("alpha_pattern"):
            raise InputError(f"{config_path}: rank_pattern/alpha_pattern are not supported")
        self.scale = alpha / (r ** 0.5 if self.config.get("use_rslora") else r)
        self.path = self.dir / ADAPTER_FILE
        try:
            with safe_open(str(self.path), framework="pt") as f:
                keys = list(f.keys())
        except FileNotFoundError:
            raise InputError(f"{self.path}: missing") from None
        except Exception as exc:  # safetensors raises its own error types for a bad header
            raise InputError(f"{self.path}: not a readable safetensors file ({exc})") from None
        self.modules: dict[str, tuple[str, str]] = {}
        for key in keys:
            if key.endswith(".lora_A.weight"):
                module = key[: -len(".lora_A.weight")]
                b_key = module + ".lora_B.weight"
                if b_key not in keys:
                    raise InputError(f"{self.path}: {key} has no matching {b_key}")
                name = module[len(PEFT_PREFIX):] if module.startswith(PEFT_PREFIX) else module
                self.modules[f"{name}.weight"] = (key, b_key)
        if not self.modules:
            raise InputError(f"{self.path}: holds no LoRA A/B tensors")

    def factors(self, param: str, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        a_key, b_key = self.modules[param]
        with safe_open(str(self.path), framework="pt", device=str(device)) as f:
            return f.get_tensor(a_key), f.get_tensor(b_key)

    def weight_shape(self, param: str) -> tuple[int, ...]:
        """Shape of the adapted base weight: (d_out, d_in) for a Linear, (d_out, d_in, kh, kw) for a conv (from
        the factors' shapes, A (r, d_in, kh, kw) and B (d_out, r, 1, 1); read from the header only)."""
        a_key, b_key = self.modules[param]
        with safe_open(str(self.path), framework="pt") as f:
            a_shape, b_shape = f.get_slice(a_key).get_shape(), f.get_slice(b_key).get_shape()
        return (int(b_shape[0]), *(int(d) for d in a_shape[1:]))

    def delta(self, param: str, device: torch.device | str = "cpu", dtype=torch.float32) -> torch.Tensor:
        a, b = self.factors(param, device)
        return lora_delta(a.to(dtype), b.to(dtype), self.scale)


def open_adapters(task_dirs: Iterable[Path]) -> list[AdapterFile]:
    adapters = [AdapterFile(d) for d in task_dirs]
    if adapters:
        names = set(adapters[0].modules)
        for a in adapters[1:]:
            if set(a.modules) != names:
                raise InputError(f"{a.path}: adapts other modules than {adapters[0].path}")
    return adapters


def merged_deltas(adapters: list[AdapterFile], method: str, device: torch.device | str = "cpu", *,
                  density: float = 0.2, scale: float = 1.0) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (base parameter name, merged dense update) one module at a time.

    Streams over modules and over tasks: at any moment one running result and one task's delta are held
    (TIES reads the tasks twice rather than holding them).
    """
    if not adapters:
        return
    for param in adapters[0].modules:
        yield param, merge_module(lambda: (a.delta(param, device) for a in adapters), method,
                                  density=density, scale=scale)


def merge_options(method_cfg: dict) -> dict:
    """The merge keyword arguments of a sequence's method section."""
    return {"density": method_cfg.get("merge_density", 0.2), "scale": method_cfg.get("merge_scale", 1.0)}


def history_sum(adapters: list[AdapterFile], device) -> dict[str, torch.Tensor]:
    return dict(merged_deltas(adapters, "sum", device))


class WeightFolder:
    """Keeps the base weights W0 of the adapted modules and sets W = W0 + update in place."""

    def __init__(self, params: dict[str, torch.nn.Parameter]):
        self.params = params
        self.base = {name: p.detach().clone() for name, p in params.items()}

    def fold(self, updates: dict[str, torch.Tensor] | None) -> None:
        updates = updates or {}
        unknown = set(updates) - set(self.params)
        if unknown:
            raise InputError(f"adapter modules not in the backbone: {', '.join(sorted(unknown)[:3])}")
        with torch.no_grad():
            for name, p in self.params.items():
                w0 = self.base[name]
                if name in updates:
                    p.copy_(w0 + updates[name].to(w0.device, w0.dtype).reshape(w0.shape))
                else:
                    p.copy_(w0)
