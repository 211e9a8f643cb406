"""One task's training: W = W0 + F_prev + s·B_t·A_t, loss = CE + λ·Σ_m L_PS(s·B_t·A_t, H_m) [+ O-LoRA term].

F_prev is the merge (or the sum) of the earlier tasks' updates, folded into the frozen weights; H_m is the
sum of the earlier updates of module m (METHOD.md §1, §3). The adapter is saved in PEFT's format.
"""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file
from torch import nn

from .adapters import PEFT_PREFIX, AdapterFile, WeightFolder, merge_options, merged_deltas
from .backbones import load_backbone, make_head, target_parameters
from . import distributed
from .checkpoint import BatchOrder, read_checkpoint, restore_checkpoint, save_checkpoint
from .core.stability import adaptive_alpha
from .core.stability_lean import prepare_history
from .errors import InputError, Interrupted, WorkError

ProgressFn = Callable[[int, int, dict], None]


def task_seed(seed: int, index: int) -> int:
    """Seed of task `index` (0-based): distinct per task, fixed by the sequence seed."""
    return seed * 1000 + index


def lora_layers(peft_model: nn.Module) -> dict[str, nn.Module]:
    """PEFT LoRA layers keyed by the base model's weight name (e.g. encoder.layer.0...query.weight)."""
    from peft.tuners.lora import LoraLayer

    layers = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            base = name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name
            layers[f"{base}.weight"] = module
    return layers


def train_task(seq: dict, index: int, data, previous_dirs: list[Path], out_dir: Path | None, device: torch.device,
               progress: ProgressFn | None = None, *, checkpoint: Path | None = None, resume_key: str = "",
               stop_requested: Callable[[], bool] = lambda: False, note: Callable[[str], None] = lambda m: None
               ) -> dict:
    """Train task `index` of `seq` on `data` against the adapters in `previous_dirs`; save into `out_dir`.

    With `checkpoint`, the state is saved there every training.checkpoint_every steps and when
    `stop_requested()` turns true (then Interrupted is raised), and a checkpoint with the same `resume_key`
    is resumed from. Returns the training metrics recorded in the task's meta.json.
    """
    from peft import LoraConfig, get_peft_model

    task = seq["tasks"][index]
    lora_cfg, method, training = seq["lora"], seq["method"], seq["training"]
    seed = task_seed(seq["seed"], index)
    torch.manual_seed(seed)

    backbone = load_backbone(seq["backbone"], device)
    params = target_parameters(backbone.model, lora_cfg["target_modules"])
    previous = [AdapterFile(d) for d in previous_dirs]

    # Earlier tasks enter the forward pass folded into the frozen weights (F_prev: their merge, their sum, or
    # nothing); H, the history the stability loss compares against, is always their sum.
    history: dict[str, torch.Tensor] = {}
    prev_factors_A: dict[str, list[torch.Tensor]] = {}
    if previous:
        history = dict(merged_deltas(previous, "sum", device))
        if method["previous"] == "merge" and method["merge"] != "sum":
            WeightFolder(params).fold(dict(merged_deltas(previous, method["merge"], device,
                                                         **merge_options(method))))
        elif method["previous"] != "none":
            WeightFolder(params).fold(history)
        if method["orthogonality_weight"] > 0:
            for name in params:
                prev_factors_A[name] = [a.factors(name, device)[0].float().flatten(1) for a in previous]

    config = LoraConfig(r=lora_cfg["rank"], lora_alpha=lora_cfg["alpha"], lora_dropout=lora_cfg["dropout"],
                        target_modules=list(lora_cfg["target_modules"]), bias="none")
    peft_model = get_peft_model(backbone.model, config)
    peft_model.peft_config["default"].base_model_name_or_path = backbone.path
    layers = lora_layers(peft_model)
    missing = set(params) - set(layers)
    if missing:
        raise WorkError(f"PEFT did not adapt {sorted(missing)[0]}")
    if previous and set(history) != set(layers):
        raise InputError(f"{previous[0].path}: adapts other modules than this sequence's lora.target_modules")
    if method["init"] == "previous" and previous:
        # Sequential LoRA: one adapter trained on through the tasks; start from the last task's factors.
        with torch.no_grad():
            for name, layer in layers.items():
                a, b = previous[-1].factors(name, device)
                layer.lora_A["default"].weight.copy_(a.reshape(layer.lora_A["default"].weight.shape))
                layer.lora_B["default"].weight.copy_(b.reshape(layer.lora_B["default"].weight.shape))

    alphas = {}
    for name in layers:
        if name in history:
            h = history[name]
            alphas[name] = (adaptive_alpha(h, c=method["alpha"]) if method["alpha_mode"] == "adaptive"
                            else torch.tensor(float(method["alpha"]), device=device))

    head = make_head(backbone.feature_dim, len(data.classes), seed).to(device)
    model = TaskModel(backbone, peft_model, head)
    world = distributed.world()
    # Under torchrun every rank trains its own copy on its shard of each global batch; DDP averages gradients.
    runner = model if not world.active else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast, bf16 = _autocast(training["precision"], device)
    lora_params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([
        {"params": lora_params, "lr": training["learning_rate"]},
        {"params": head.parameters(), "lr": training["head_learning_rate"]},
    ], weight_decay=training["weight_decay"])

    n = len(data.train_x)
    steps_per_epoch = math.ceil(n / training["batch_size"])
    total = training["steps"] or training["epochs"] * steps_per_epoch
    slices = getattr(data, "task_slices", None)
    if slices and training["steps"]:  # multitask: as many steps per task as the sequential methods take
        total = training["steps"] * len(slices)
    warmup = max(1, total // 10)
    def lr_factor(s: int) -> float:  # linear warm-up over the first 10% of steps, then linear decay
        return (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    labels_all = torch.tensor(data.train_y, dtype=torch.long)
    batches = BatchOrder(n, training["batch_size"], seed)
    use_ps = bool(previous) and method["stability_weight"] > 0
    # The stability loss reads H block by block (core/stability_lean.py): the earlier tasks' stacked factors when
    # they are smaller than dense H, else tanh(αH) cached densely; nothing d_out x d_in is kept for backward.
    ps_history = {name: prepare_history(history[name], [(*adp.factors(name, device), adp.scale) for adp in previous],
                                        alpha=alphas[name], variant=method["variant"])
                  for name in layers} if use_ps else {}
    del history  # the prepared form above is all the loss reads; don't keep dense H for the whole task
    use_orth = bool(prev_factors_A) and method["orthogonality_weight"] > 0

    # Everything a resumed run must get back exactly: the trained tensors under stable names.
    trained = {f"lora.{name}": p for name, p in peft_model.named_parameters() if p.requires_grad}
    trained |= {f"head.{name}": p for name, p in head.named_parameters()}
    done, recent, seconds_before = 0, [], 0.0
    saved = read_checkpoint(checkpoint) if checkpoint is not None else None
    if saved is not None:
        meta, tensors = saved
        if meta["key"] == resume_key and meta["step"] <= total:
            done = restore_checkpoint(meta, tensors, params=trained, optimizer=optimizer, scheduler=scheduler,
                                      batches=batches)
            recent, seconds_before = meta["extra"]["recent"], meta["extra"]["seconds"]
            note(f"task {task['id']}: resuming from the checkpoint at step {done}/{total}")
        else:
            note(f"task {task['id']}: ignoring {checkpoint.name}: it was written for other settings or data")
    elif checkpoint is not None and checkpoint.is_file():
        note(f"task {task['id']}: {checkpoint} is not a readable checkpoint; training from the start")

    def save_state(step: int) -> None:
        if world.is_main:  # one writer: rank 0 (every rank holds the same state)
            save_checkpoint(checkpoint, key=resume_key, step=step, params=trained, optimizer=optimizer,
                            scheduler=scheduler, batches=batches,
                            extra={"recent": recent, "seconds": seconds_before + time.perf_counter() - started})

    every = training["checkpoint_every"]
    peft_model.train()
    started = time.perf_counter()
    for step in range(done + 1, total + 1):
        # Every rank must stop at the same step, so a stop request (a signal may reach one rank) is shared.
        if checkpoint is not None and distributed.any_rank(stop_requested()):
            save_state(step - 1)
            raise Interrupted(f"task {task['id']}: interrupted after step {step - 1}/{total}; the state is saved in "
                              f"{checkpoint} and the same command resumes from it (--restart starts over)")
        idx = batches.next()
        weight = 1.0
        if world.active:
            # This rank's share of the global batch; its mean loss is weighted by its share so that DDP's average
            # of the ranks' gradients is the gradient of the global batch's mean loss. A rank left without an
            # example still runs one (weight 0) so that every rank joins the gradient all-reduce.
            mine = distributed.shard(idx)
            weight = world.size * len(mine) / len(idx)
            idx = mine or idx[:1]
        batch = backbone.collate([data.train_x[i] for i in idx], device)
        labels = labels_all[idx].to(device)
        with autocast:
            logits = runner(batch)
        logits = logits.float()
        task_loss = nn.functional.cross_entropy(logits, labels)
        ps_loss = torch.zeros((), device=device)
        orth_loss = torch.zeros((), device=device)
        if use_ps or use_orth:
            for name, layer in layers.items():
                a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
                if use_ps:
                    ps_loss = ps_loss + ps_history[name].loss(a, b, layer.scaling["default"],
                                                              reduction=method["reduction"])
                if use_orth:
                    a_t = a.flatten(1)
                    for a_i in prev_factors_A[name]:
                        orth_loss = orth_loss + (a_i @ a_t.T).abs().sum()
        regulariser = method["stability_weight"] * ps_loss + method["orthogonality_weight"] * orth_loss
        if not world.active:
            loss = task_loss + regulariser
            loss_value, task_value = loss.item(), task_loss.item()
            acc = (logits.argmax(-1) == labels).float().mean().item()
            bad = not torch.isfinite(loss)
        else:
            loss = weight * task_loss + regulariser
            with torch.no_grad():  # global batch statistics: loss sum, correct, count, any non-finite loss
                n_mine = len(mine)
                stats = torch.stack([task_loss.detach() * n_mine, (logits.argmax(-1) == labels)[:n_mine].sum().float(),
                                     torch.tensor(float(n_mine), device=device),
                                     (~torch.isfinite(loss.detach())).float()])
                distributed.all_reduce_sum(stats)
            task_value, acc = (stats[0] / stats[2]).item(), (stats[1] / stats[2]).item()
            loss_value = task_value + float(regulariser)
            bad = stats[3].item() > 0
        if bad:
            raise WorkError(f"task {task['id']}: loss became non-finite at step {step}; nothing was saved "
                            f"(try a lower training.learning_rate)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        recent.append({"loss": loss_value, "task_loss": task_value, "stability_loss": ps_loss.item(),
                       "orthogonality_loss": orth_loss.item(), "train_accuracy": acc})
        recent = recent[-20:]
        if progress:
            progress(step, total, recent[-1])
        if checkpoint is not None and every and step % every == 0 and step < total:
            save_state(step)

    seconds = seconds_before + time.perf_counter() - started
    final = {k: sum(r[k] for r in recent) / len(recent) for k in recent[0]}

    metrics = {
        "steps": total,
        "epochs": round(total / steps_per_epoch, 3),
        "seconds": round(seconds, 3),
        "steps_per_second": round(total / seconds, 3) if seconds > 0 else None,
        "final": {k: round(v, 6) for k, v in final.items()},
        "task_seed": seed,
        "device": str(device),
        "world_size": world.size,
        "backend": world.backend,  # nccl or gloo under torchrun, None in one plain process
        "precision": "bf16" if bf16 else "fp32",
        "alpha_per_module": {k: round(float(v), 6) for k, v in alphas.items()} or None,
    }
    if out_dir is None:  # a rank other than 0: rank 0 writes the adapter
        return metrics
    # No embedding layer is ever adapted; "auto" would look the base model up on the hub when its
    # base_model_name_or_path is not a local folder (timm backbones).
    peft_model.save_pretrained(str(out_dir), save_embedding_layers=False)
    (out_dir / "README.md").unlink(missing_ok=True)  # PEFT's model-card stub; the store keeps meta.json
    # PEFT writes target_modules from a set, in an order that changes from process to process; sorted, the
    # same training gives the same file.
    config_file = out_dir / "adapter_config.json"
    saved_config = json.loads(config_file.read_text(encoding="utf-8"))
    if isinstance(saved_config.get("target_modules"), list):
        saved_config["target_modules"] = sorted(saved_config["target_modules"])
    config_file.write_text(json.dumps(saved_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    weight, bias = head.weight.detach().cpu(), head.bias.detach().cpu()
    if slices:  # multitask: this task's rows as its head; every task's rows in joint_heads.safetensors
        task_id, start, end = slices[-1]
        save_file({"weight": weight[start:end].contiguous(), "bias": bias[start:end].contiguous()},
                  str(out_dir / "head.safetensors"), metadata={"classes": json.dumps(data.classes[start:end])})
        save_file({f"{t}.{k}": v[a:b].contiguous() for t, a, b in slices for k, v in (("weight", weight),
                                                                                        ("bias", bias))},
                  str(out_dir / "joint_heads.safetensors"), metadata={"slices": json.dumps(slices)})
        return metrics
    save_file({"weight": weight.contiguous(), "bias": bias.contiguous()},
              str(out_dir / "head.safetensors"), metadata={"classes": json.dumps(data.classes)})
    return metrics


class TaskModel(nn.Module):
    """Backbone with LoRA, pooled features, this task's head: one module, as DistributedDataParallel wants."""

    def __init__(self, backbone, peft_model: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.peft_model, self.head = backbone, peft_model, head

    def forward(self, batch):
        return self.head(self.backbone.features(self.peft_model, batch))


def _autocast(precision: str, device: torch.device):
    """bf16 autocast for the forward pass ("auto": on a GPU that supports bf16); the stability loss, the
    optimizer and the stored adapters stay float32."""
    use = precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use), use


def library_versions() -> dict:
    import peft
    import safetensors
    import transformers

    from . import __version__

    return {"pslora": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "safetensors": safetensors.__version__}
