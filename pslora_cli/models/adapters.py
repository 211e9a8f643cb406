"""Stored adapters as dense updates: read PEFT adapter files tensor by tensor, form ΔW = s·B·A per module,
merge tasks (streaming over tasks and modules) and fold a dense update into a model's weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from collections.abc import Mapping
from typing import Iterable, Iterator

import torch
from safetensors import safe_open

from ..core.merges import adds_from_factors, from_factors, merge_module
from ..core.lora import conv_to_matrix, lora_delta
from ..errors import InputError

ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
PEFT_PREFIX = "base_model.model."


BIN_FILE = "adapter_model.bin"
_DTYPE_NAMES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}


class AdapterFile:
    """One task's PEFT adapter on disk, read lazily one module at a time. `allow_bin`: an adapter folder from
    elsewhere may hold the older `adapter_model.bin` instead, read whole with `torch.load(weights_only=True)` (no
    code in it runs; anything but tensors is refused)."""

    def __init__(self, task_dir: Path, allow_bin: bool = False):
        self.dir = Path(task_dir)
        self._tensors: dict[str, torch.Tensor] | None = None
        config_path = self.dir / CONFIG_FILE
        try:
            self.config = json.loads(config_path.read_text(encoding="utf-8"))
            if not isinstance(self.config, dict):
                raise InputError(f"{config_path}: expected a JSON object")
        except FileNotFoundError:
            raise InputError(f"{config_path}: missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{config_path}: not valid JSON ({exc})") from None
        r, alpha = self.config.get("r"), self.config.get("lora_alpha")
        if not (isinstance(r, int) and not isinstance(r, bool) and r > 0):
            raise InputError(f"{config_path}: 'r' must be a positive integer, got {r!r}")
        if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha)):
            raise InputError(f"{config_path}: 'lora_alpha' must be a finite number, got {alpha!r}")
        if self.config.get("rank_pattern") or self.config.get("alpha_pattern"):
            raise InputError(f"{config_path}: rank_pattern/alpha_pattern are not supported")
        if not isinstance(self.config.get("use_rslora", False), bool):
            raise InputError(f"{config_path}: 'use_rslora' must be true or false")
        for key, what in (("use_dora", "DoRA's magnitude vectors"), ("fan_in_fan_out", "transposed (Conv1D) weights")):
            if self.config.get(key):
                raise InputError(f"{config_path}: '{key}' is set: {what} are not a plain s·B·A update; not supported")
        self.rank = r
        self.scale = alpha / (r ** 0.5 if self.config.get("use_rslora") else r)
        self.path = self.dir / ADAPTER_FILE
        if allow_bin and not self.path.is_file() and (self.dir / BIN_FILE).is_file():
            self.path = self.dir / BIN_FILE
            self._tensors = _read_bin(self.path)
            shapes = {key: tuple(t.shape) for key, t in self._tensors.items()}
            dtypes = {key: _DTYPE_NAMES.get(t.dtype, str(t.dtype)) for key, t in self._tensors.items()}
        else:
            shapes, dtypes = _read_header(self.path, also=BIN_FILE if allow_bin else None)
        self.modules: dict[str, tuple[str, str]] = {}
        # tensors beside the LoRA factors (a classification head PEFT saved as modules_to_save, ...)
        self.other_keys = [k for k in shapes if not k.endswith((".lora_A.weight", ".lora_B.weight"))]
        unknown = [k for k in shapes if "lora_" in k and not k.endswith((".lora_A.weight", ".lora_B.weight"))]
        if unknown:  # e.g. lora_embedding_A, lora_magnitude_vector: not a dense s·B·A of a weight
            raise InputError(f"{self.path}: {unknown[0]} is not a LoRA A/B weight; only Linear and conv LoRA "
                             f"adapters are supported")
        for key in shapes:
            if key.endswith(".lora_A.weight"):
                module = key[: -len(".lora_A.weight")]
                b_key = module + ".lora_B.weight"
                if b_key not in shapes:
                    raise InputError(f"{self.path}: {key} has no matching {b_key}")
                a_shape, b_shape = shapes[key], shapes[b_key]
                # A is (r, d_in) or a conv's (r, d_in, kh, kw); B is (d_out, r) or (d_out, r, 1, 1).
                if (len(a_shape) not in (2, 4) or len(b_shape) != len(a_shape) or a_shape[0] != r
                        or b_shape[1] != r or b_shape[2:] not in ((), (1, 1)) or 0 in a_shape + b_shape):
                    raise InputError(f"{self.path}: {module} has LoRA shapes A {list(a_shape)}, B {list(b_shape)}, "
                                     f"which do not fit rank r={r}")
                for k in (key, b_key):
                    if dtypes[k] not in ("F16", "BF16", "F32", "F64"):
                        raise InputError(f"{self.path}: {k} has dtype {dtypes[k]}, not a float type")
                name = module[len(PEFT_PREFIX):] if module.startswith(PEFT_PREFIX) else module
                self.modules[f"{name}.weight"] = (key, b_key)
        if not self.modules:
            raise InputError(f"{self.path}: holds no LoRA A/B tensors")

    def factors(self, param: str, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        a_key, b_key = self.modules[param]
        if self._tensors is not None:
            return self._tensors[a_key].to(device), self._tensors[b_key].to(device)
        with safe_open(str(self.path), framework="pt", device=str(device)) as f:
            return f.get_tensor(a_key), f.get_tensor(b_key)

    def finite_factors(self, param: str, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """factors(), refusing NaN or infinite values (InputError)."""
        a, b = self.factors(param, device)
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise InputError(f"{self.path}: {param} holds NaN or infinite values")
        return a, b

    def scaled_factors(self, param: str, device: torch.device | str = "cpu",
                       dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale · B, A) as 2-D matrices whose product is delta(param): the same factors lora_delta multiplies."""
        a, b = self.finite_factors(param, device)
        return self.scale * conv_to_matrix(b.to(dtype)), conv_to_matrix(a.to(dtype))

    def weight_shape(self, param: str) -> tuple[int, ...]:
        """Shape of the adapted base weight: (d_out, d_in) for a Linear, (d_out, d_in, kh, kw) for a conv (from
        the factors' shapes, A (r, d_in, kh, kw) and B (d_out, r, 1, 1); read from the header only)."""
        a_key, b_key = self.modules[param]
        if self._tensors is not None:
            a_shape, b_shape = self._tensors[a_key].shape, self._tensors[b_key].shape
        else:
            with safe_open(str(self.path), framework="pt") as f:
                a_shape, b_shape = f.get_slice(a_key).get_shape(), f.get_slice(b_key).get_shape()
        return (int(b_shape[0]), *(int(d) for d in a_shape[1:]))

    def delta(self, param: str, device: torch.device | str = "cpu", dtype=torch.float32, *,
              out: torch.Tensor | None = None) -> torch.Tensor:
        """The dense update scale · B @ A of `param`; written into `out` when it has the update's shape and dtype."""
        a, b = self.finite_factors(param, device)
        if out is not None and (tuple(out.shape) != (b.shape[0], a[0].numel()) or out.dtype != dtype):
            out = None
        return lora_delta(a.to(dtype), b.to(dtype), self.scale, out=out)


def _read_header(path: Path, also: str | None = None) -> tuple[dict, dict]:
    """(shapes, dtypes) of a safetensors file's tensors, from its header."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return ({key: tuple(f.get_slice(key).get_shape()) for key in f.keys()},
                    {key: f.get_slice(key).get_dtype() for key in f.keys()})
    except FileNotFoundError:
        raise InputError(f"{path}: missing" + (f" (nor is there {also})" if also else "")) from None
    except Exception as exc:  # safetensors raises its own error types for a bad header
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not a readable safetensors file ({first})") from None


def _read_bin(path: Path) -> dict[str, torch.Tensor]:
    """A pickled PEFT weights file, read with weights_only=True: only tensors (and plain containers) load."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an unpickling refusal or a damaged file: either way not usable
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: refused: not a plain file of tensors ({first[:160]})") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise InputError(f"{path}: refused: expected a mapping of names to tensors")
    return obj


def open_adapters(task_dirs: Iterable[Path]) -> list[AdapterFile]:
    adapters = [AdapterFile(d) for d in task_dirs]
    if adapters:
        names = set(adapters[0].modules)
        for a in adapters[1:]:
            if set(a.modules) != names:
                raise InputError(f"{a.path}: adapts other modules than {adapters[0].path}")
    return adapters


def merged_deltas(adapters: list[AdapterFile], method: str, device: torch.device | str = "cpu",
                  **options) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (base parameter name, merged dense update) one module at a time; `options`: those the merge declares
    (core/merges: TIES's density, task arithmetic's and MagMax's scale).

    Streams over modules and over tasks: at any moment one running result and one task's delta are held
    (TIES reads the tasks twice rather than holding them). A merge with `from_factors` (magnitude) holds even
    less: the result, a few row blocks and the factors of up to 4 tasks.
    """
    if not adapters:
        return
    factor_merge = from_factors(method)
    for param in adapters[0].modules:
        if factor_merge is not None:  # e.g. magnitude: block by block, the dense products never exist in full
            yield param, factor_merge(a.scaled_factors(param, device) for a in adapters)
            continue
        yield param, merge_module(lambda: _deltas_in_one_buffer(adapters, param, device), method, **options)


def _deltas_in_one_buffer(adapters: list[AdapterFile], param: str, device) -> Iterator[torch.Tensor]:
    """Each adapter's update of `param`, all written into one buffer: a yielded tensor is valid until the next
    is drawn. The merges consume each delta before drawing the next (RunningMerge copies the first), and reusing
    the buffer saves allocating (and, on the CPU, page-faulting) a dense d_out x d_in tensor per task."""
    buffer = None
    for adapter in adapters:
        buffer = adapter.delta(param, device, out=buffer)
        yield buffer


class SummedHistory(Mapping):
    """H_m = Σ_i ΔW_i of each adapted module m, formed when asked for and never kept: `history[m]` computes module
    m's dense sum (as merged_deltas(adapters, "sum") does) and the caller frees it before asking for the next, so
    that at most one module's H exists at a time; `factors(m)` gives the earlier tasks' factors instead (what a loss
    form without an elementwise term needs)."""

    def __init__(self, adapters: list[AdapterFile], device: torch.device | str = "cpu"):
        self.adapters, self.device = list(adapters), device

    def __getitem__(self, param: str) -> torch.Tensor:
        if not self.adapters or param not in self.adapters[0].modules:
            raise KeyError(param)
        return merge_module(lambda: _deltas_in_one_buffer(self.adapters, param, self.device), "sum")

    def __iter__(self) -> Iterator[str]:
        return iter(self.adapters[0].modules if self.adapters else ())

    def __len__(self) -> int:
        return len(self.adapters[0].modules) if self.adapters else 0

    def factors(self, param: str) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
        """[(lora_A_i, lora_B_i, scale_i), ...] of `param`, oldest first: H = Σ_i scale_i·B_i·A_i."""
        return [(*a.factors(param, self.device), a.scale) for a in self.adapters]


def fold_into(params: dict[str, torch.nn.Parameter], updates: Iterable[tuple[str, torch.Tensor]]) -> None:
    """W += update for each (name, update), one module at a time, in place (no copy of W0 is kept: a training folds
    once); a bfloat16/float16 weight gets the float32 sum rounded once. For float32 weights the result is bitwise
    WeightFolder(params).fold(dict(updates))."""
    with torch.no_grad():
        for name, update in updates:
            if name not in params:
                raise InputError(f"adapter modules not in the backbone: {name}")
            p = params[name]
            update = update.to(p.device).reshape(p.shape)
            if p.dtype == update.dtype:
                p.add_(update)
            else:
                p.copy_(p.float() + update.float())
            del update


def fold_merge(params: dict[str, torch.nn.Parameter], adapters: list[AdapterFile], method: str,
               device: torch.device | str = "cpu", **options) -> None:
    """Fold the merge of the adapters' updates into the weights, one module at a time. A merge that can add itself
    from the factors row block by row block (magnitude) never forms a module's merge in full; the others form one
    module's merge, fold it and free it before the next."""
    add_ = adds_from_factors(method)
    if add_ is None:
        fold_into(params, merged_deltas(adapters, method, device, **options))
        return
    with torch.no_grad():
        for param in adapters[0].modules:
            if param not in params:
                raise InputError(f"adapter modules not in the backbone: {param}")
            add_(params[param].data, [a.scaled_factors(param, device) for a in adapters])


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
                if name in updates and w0.dtype in (torch.bfloat16, torch.float16):  # backbone.dtype: rounded once
                    p.copy_(w0.float() + updates[name].to(w0.device, torch.float32).reshape(w0.shape))
                elif name in updates:
                    p.copy_(w0 + updates[name].to(w0.device, w0.dtype).reshape(w0.shape))
                else:
                    p.copy_(w0)
