"""One task's training: W = W0 + F_prev + s·B_t·A_t, loss = CE + the method's weighted terms (λ·L_PS, ...).

F_prev is the merge (or the sum) of the earlier tasks' updates, folded into the frozen weights; H_m is the sum of
the earlier updates of module m (METHOD.md §1, §3). The recipe, in order: build the model (backbone, earlier
tasks folded in, LoRA, head), build the optimiser and schedule, resume a checkpoint, run the steps, save the
adapter in PEFT's format. The same loop serves text and vision, one process and DDP under torchrun.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file
from torch import nn

from .. import distributed
from ..config import Method, Sequence
from ..errors import InputError, Interrupted, WorkError
from ..models import enable_gradient_checkpointing, load_backbone, target_parameters
from ..models.adapters import CONFIG_FILE, PEFT_PREFIX, AdapterFile, SummedHistory, fold_into, fold_merge
from ..models.heads import TaskModel, make_head
from ..store import TaskFiles
from ..store.checkpoints import read_checkpoint
from .batches import training_batch
from .checkpoint import BatchOrder, restore_checkpoint, save_checkpoint
from .regularisers import Regulariser

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


@dataclass
class Checkpointing:
    """Where and when the training state is saved, and how a stop is asked for."""
    path: Path | None = None
    resume_key: str = ""
    stop_requested: Callable[[], bool] = lambda: False
    note: Callable[[str], None] = lambda message: None


@dataclass
class TaskTraining:
    """The live objects of one task's training (built by `build`)."""
    seq: Sequence
    index: int
    data: object
    device: torch.device
    backbone: object = None
    peft_model: nn.Module = None
    layers: dict = field(default_factory=dict)
    head: nn.Module = None
    runner: nn.Module = None
    regulariser: Regulariser = None
    optimizer: torch.optim.Optimizer = None
    scheduler: object = None
    batches: BatchOrder = None
    labels: torch.Tensor = None
    total: int = 0
    steps_per_epoch: int = 1
    recent: list = field(default_factory=list)
    seconds_before: float = 0.0
    model: nn.Module = None  # the model the runner wraps (unwrapped under DDP)
    previous: list = field(default_factory=list)  # the earlier tasks' AdapterFiles
    state: dict = field(default_factory=dict)  # what a method's hooks keep between before and after training

    @property
    def task_id(self) -> str:
        return self.seq.tasks[self.index].id

    @property
    def seed(self) -> int:
        return task_seed(self.seq.seed, self.index)

    @property
    def hooks(self):
        return self.seq.method.spec.hooks

    def batch(self, idx: list[int]):
        """(model inputs, targets) of training rows `idx` (for a method's hooks, e.g. InfLoRA's input matrices)."""
        return training_batch(self, idx)

    def task_loss(self, idx: list[int]) -> torch.Tensor:
        """The task loss (cross-entropy) of training rows `idx` through the model as it is, without the method's
        terms (for a method's hooks, e.g. EWC's Fisher)."""
        batch, targets = training_batch(self, idx)
        with autocast(self.seq.training.precision, self.device)[0]:
            logits = self.model(batch)
        return nn.functional.cross_entropy(logits.float(), targets)

    @property
    def slices(self):
        """Multitask: (task id, first row, end row) of each task in the joint head; None otherwise."""
        return getattr(self.data, "task_slices", None)

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        """Everything a resumed run must get back exactly: the trained tensors under stable names."""
        # A method's frozen factors (InfLoRA's A_t) are in the state too: a resumed run continues with them.
        frozen = self.hooks.frozen_parameters(self) if self.hooks else ()
        trained = {f"lora.{name}": p for name, p in self.peft_model.named_parameters()
                   if p.requires_grad or any(part in name for part in frozen)}
        return trained | {f"head.{name}": p for name, p in (self.head.named_parameters() if self.head else ())}


def train_task(seq: Sequence, index: int, data, previous_dirs: list[Path], out: TaskFiles | None,
               device: torch.device, progress: ProgressFn | None = None,
               checkpointing: Checkpointing | None = None) -> dict:
    """Train task `index` of `seq` on `data` against the adapters in `previous_dirs`; save into `out` (None on a
    rank other than 0). With a checkpoint path, the state is saved every training.checkpoint_every steps and when
    a stop is asked for (then Interrupted is raised), and a checkpoint with the same resume key is resumed from.
    Returns the training metrics recorded in the task's meta.json."""
    ckpt = checkpointing or Checkpointing()
    run = build(seq, index, data, [AdapterFile(d) for d in previous_dirs], device)
    done = resume(run, ckpt)
    started = time.perf_counter()
    run.peft_model.train()
    for step in range(done + 1, run.total + 1):
        # Every rank must stop at the same step, so a stop request (a signal may reach one rank) is shared.
        if ckpt.path is not None and distributed.any_rank(ckpt.stop_requested()):
            save_state(run, ckpt, step - 1, started)
            raise Interrupted(f"task {run.task_id}: interrupted after step {step - 1}/{run.total}; the state is saved "
                              f"in {ckpt.path} and the same command resumes from it (--restart starts over)")
        run.recent = (run.recent + [train_step(run, step)])[-20:]
        if progress:
            progress(step, run.total, run.recent[-1])
        every = seq.training.checkpoint_every
        if ckpt.path is not None and every and step % every == 0 and step < run.total:
            save_state(run, ckpt, step, started)
    metrics = task_metrics(run, run.seconds_before + time.perf_counter() - started)
    if run.hooks is not None:
        if out is not None:
            out.folder.mkdir(parents=True, exist_ok=True)
        metrics |= run.hooks.after_training(run, out.folder if out is not None else None)
    if out is not None:  # a rank other than 0 has no folder: rank 0 writes the adapter
        save_task(run, out)
    return metrics


# -- build ------------------------------------------------------------------------------------------------------

def build(seq: Sequence, index: int, data, previous: list[AdapterFile], device: torch.device) -> TaskTraining:
    """Backbone with the earlier tasks folded in, LoRA, head, regularisers, optimiser and schedule."""
    run = TaskTraining(seq=seq, index=index, data=data, device=device, previous=previous)
    torch.manual_seed(run.seed)
    run.backbone = load_backbone(seq.backbone, device)
    params = target_parameters(run.backbone.model, seq.lora.target_modules)
    history = fold_previous(seq, params, previous, device)
    run.peft_model, run.layers = attach_lora(run, params, previous, history)
    if seq.training.gradient_checkpointing:
        enable_gradient_checkpointing(run.backbone.model)
    run.regulariser = Regulariser(seq.method, run.layers, previous, history, device)
    if seq.generative:  # the answer is written as text: no head
        from ..models.lm import AnswerModel

        model = AnswerModel(run.backbone, run.peft_model)
    else:
        run.head = make_head(run.backbone.feature_dim, len(data.classes), run.seed).to(device)
        model = TaskModel(run.backbone, run.peft_model, run.head)
    run.model = model
    if run.hooks is not None:
        run.labels = torch.tensor(data.train_y, dtype=torch.long)  # an encoder's batches index the labels
        run.hooks.before_training(run)
    # Under torchrun every rank trains its own copy on its shard of each global batch; DDP averages gradients.
    run.runner = model if not distributed.world().active else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    build_optimiser(run)
    return run


def fold_previous(seq: Sequence, params: dict, previous: list[AdapterFile], device) -> dict[str, torch.Tensor]:
    """Fold F_prev (the earlier tasks' merge, their sum, or nothing) into the frozen weights; return H, always
    the sum of the earlier updates (what the stability loss compares against), as a SummedHistory: a mapping that
    forms a module's dense sum only when it is read."""
    return fold_history(seq.method, params, previous, device)


def fold_history(method: Method, params: dict, previous: list[AdapterFile], device) -> dict[str, torch.Tensor]:
    """fold_previous for a Method alone (the public API, pslora_cli/api.py, calls it too)."""
    if not previous:
        return {}
    # One module at a time, nothing d_out x d_in kept: H is a mapping that forms a module's dense sum only when
    # asked (the regulariser asks only for the loss forms that need it), and the running merge is added into the
    # weights module by module (the magnitude merge row block by row block, never formed in full).
    history = SummedHistory(previous, device)
    if method.previous == "merge" and method.merge != "sum":
        fold_merge(params, previous, method.merge, device, **method.merge_options)
    elif method.previous != "none":
        fold_into(params, history.items())
    return history


def attach_lora(run: TaskTraining, params: dict, previous: list[AdapterFile], history: dict):
    """PEFT LoRA on the target modules; a method that continues the previous adapter starts from its factors."""
    from peft import LoraConfig, get_peft_model

    lora = run.seq.lora
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), bias="none")
    peft_model = get_peft_model(run.backbone.model, config)
    peft_model.peft_config["default"].base_model_name_or_path = run.backbone.path
    layers = lora_layers(peft_model)
    missing = set(params) - set(layers)
    if missing:
        raise WorkError(f"PEFT did not adapt {sorted(missing)[0]}")
    if previous and set(history) != set(layers):
        raise InputError(f"{previous[0].path}: adapts other modules than this sequence's lora.target_modules")
    if run.seq.method.spec.continues_previous and previous:
        with torch.no_grad():
            for name, layer in layers.items():
                a, b = previous[-1].factors(name, run.device)
                layer.lora_A["default"].weight.copy_(a.reshape(layer.lora_A["default"].weight.shape))
                layer.lora_B["default"].weight.copy_(b.reshape(layer.lora_B["default"].weight.shape))
    return peft_model, layers


def build_optimiser(run: TaskTraining) -> None:
    """AdamW (LoRA and head learning rates); linear warm-up over the first 10% of steps then linear decay, or a
    constant rate."""
    training = run.seq.training
    groups = [{"params": [p for p in run.peft_model.parameters() if p.requires_grad], "lr": training.learning_rate}]
    if run.head is not None:
        groups.append({"params": run.head.parameters(), "lr": training.head_learning_rate})
    run.optimizer = torch.optim.AdamW(groups, weight_decay=training.weight_decay)
    n = len(run.data.train_x)
    run.steps_per_epoch = math.ceil(n / (training.batch_size * training.grad_accumulation))
    total = training.steps or training.epochs * run.steps_per_epoch
    if run.slices and training.steps:  # trained jointly: as many steps per task as the sequential methods take
        total = training.steps * len(run.slices)
    warmup = max(1, total // 10)

    def lr_factor(s: int) -> float:
        if training.schedule == "constant":
            return 1.0
        return (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup))

    run.total = total
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lr_factor)
    run.batches = BatchOrder(n, training.batch_size, run.seed)
    run.labels = torch.tensor(run.data.train_y, dtype=torch.long)


# -- checkpoints ------------------------------------------------------------------------------------------------

def resume(run: TaskTraining, ckpt: Checkpointing) -> int:
    """Restore a checkpoint written for the same settings and data; returns the steps already done."""
    if ckpt.path is None:
        return 0
    saved = read_checkpoint(ckpt.path)
    if saved is None:
        if ckpt.path.is_file():
            ckpt.note(f"task {run.task_id}: {ckpt.path} is not a readable checkpoint; training from the start")
        return 0
    meta, tensors = saved
    if meta["key"] != ckpt.resume_key or meta["step"] > run.total:
        ckpt.note(f"task {run.task_id}: ignoring {ckpt.path.name}: it was written for other settings or data")
        return 0
    done = restore_checkpoint(meta, tensors, params=run.trained_tensors(), optimizer=run.optimizer,
                              scheduler=run.scheduler, batches=run.batches)
    run.recent, run.seconds_before = meta["extra"]["recent"], meta["extra"]["seconds"]
    ckpt.note(f"task {run.task_id}: resuming from the checkpoint at step {done}/{run.total}")
    return done


def save_state(run: TaskTraining, ckpt: Checkpointing, step: int, started: float) -> None:
    if distributed.world().is_main:  # one writer: rank 0 (every rank holds the same state)
        save_checkpoint(ckpt.path, key=ckpt.resume_key, step=step, params=run.trained_tensors(),
                        optimizer=run.optimizer, scheduler=run.scheduler, batches=run.batches,
                        extra={"recent": run.recent, "seconds": run.seconds_before + time.perf_counter() - started})


# -- one step ---------------------------------------------------------------------------------------------------

def train_step(run: TaskTraining, step: int) -> dict:
    """One optimiser step on the next batch (training.grad_accumulation micro-batches); returns its record."""
    accumulation = run.seq.training.grad_accumulation
    run.optimizer.zero_grad(set_to_none=True)
    records = [micro_step(run, step, accumulation) for _ in range(accumulation)]
    run.optimizer.step()
    run.scheduler.step()
    return {k: sum(r[k] for r in records) / len(records) for k in records[0]}


def micro_step(run: TaskTraining, step: int, accumulation: int) -> dict:
    """Forward and backward of one micro-batch (gradients accumulate); returns its loss and accuracy."""
    world, device = distributed.world(), run.device
    idx = run.batches.next()
    mine, weight = idx, 1.0
    if world.active:
        # This rank's share of the global batch; its mean loss is weighted by its share so that DDP's average of
        # the ranks' gradients is the gradient of the global batch's mean loss. A rank left without an example
        # still runs one (weight 0) so that every rank joins the gradient all-reduce.
        mine = distributed.shard(idx)
        weight = world.size * len(mine) / len(idx)
        idx = mine or idx[:1]
    batch, targets = training_batch(run, idx)
    with autocast(run.seq.training.precision, device)[0]:
        logits = run.runner(batch)
    logits = logits.float()
    task_loss = nn.functional.cross_entropy(logits, targets)
    terms = run.regulariser.terms(run.layers)
    regulariser = run.regulariser.weighted(terms)
    if not world.active:
        loss = task_loss + regulariser
        loss_value, task_value = loss.item(), task_loss.item()
        acc = (logits.argmax(-1) == targets).float().mean().item()
        bad = not torch.isfinite(loss)
    else:
        loss = weight * task_loss + regulariser
        task_value, acc, bad = _global_batch_stats(task_loss, logits, targets, len(targets) if mine else 0, loss,
                                                   device)
        loss_value = task_value + float(regulariser)
    if bad:
        raise WorkError(f"task {run.task_id}: loss became non-finite at step {step}; nothing was saved "
                        f"(try a lower training.learning_rate)")
    (loss / accumulation if accumulation > 1 else loss).backward()
    return {"loss": loss_value, "task_loss": task_value,
            **{f"{name}_loss": value.item() for name, value in terms.items()}, "train_accuracy": acc}


def _global_batch_stats(task_loss, logits, labels, n_mine: int, loss, device) -> tuple[float, float, bool]:
    """Under torchrun: the global batch's mean task loss and accuracy, and whether any rank's loss is non-finite."""
    with torch.no_grad():
        stats = torch.stack([task_loss.detach() * n_mine, (logits.argmax(-1) == labels)[:n_mine].sum().float(),
                             torch.tensor(float(n_mine), device=device), (~torch.isfinite(loss.detach())).float()])
        distributed.all_reduce_sum(stats)
    return (stats[0] / stats[2]).item(), (stats[1] / stats[2]).item(), stats[3].item() > 0


def autocast(precision: str, device: torch.device):
    """bf16 autocast for the forward pass ("auto": on a GPU that supports bf16); the stability loss, the optimiser
    and the stored adapters stay float32. Returns (context, whether bf16 is on)."""
    use = precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use), use


# -- results ----------------------------------------------------------------------------------------------------

def task_metrics(run: TaskTraining, seconds: float) -> dict:
    world = distributed.world()
    final = {k: sum(r[k] for r in run.recent) / len(run.recent) for k in run.recent[0]}
    return {
        "steps": run.total,
        "epochs": round(run.total / run.steps_per_epoch, 3),
        "seconds": round(seconds, 3),
        "steps_per_second": round(run.total / seconds, 3) if seconds > 0 else None,
        "final": {k: round(v, 6) for k, v in final.items()},
        "task_seed": run.seed,
        "device": str(run.device),
        "world_size": world.size,
        "backend": world.backend,  # nccl or gloo under torchrun, None in one plain process
        "precision": "bf16" if autocast(run.seq.training.precision, run.device)[1] else "fp32",
        "threads": torch.get_num_threads(),
    } | run.regulariser.record  # what the loss terms record (the stability loss's tanh scales)


def save_task(run: TaskTraining, out: TaskFiles) -> None:
    """The adapter in PEFT's format, the head (for joint training: this task's rows, and every task's rows)."""
    # No embedding layer is ever adapted; "auto" would look the base model up on the hub when its
    # base_model_name_or_path is not a local folder (timm backbones).
    run.peft_model.save_pretrained(str(out.adapter_dir), save_embedding_layers=False)
    (out.adapter_dir / "README.md").unlink(missing_ok=True)  # PEFT's model-card stub; the store keeps meta.json
    # PEFT writes target_modules from a set, in an order that changes from process to process; sorted, the same
    # training gives the same file.
    config_file = out.adapter_dir / CONFIG_FILE
    saved_config = json.loads(config_file.read_text(encoding="utf-8"))
    if isinstance(saved_config.get("target_modules"), list):
        saved_config["target_modules"] = sorted(saved_config["target_modules"])
    config_file.write_text(json.dumps(saved_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if run.head is None:
        return
    weight, bias = run.head.weight.detach().cpu(), run.head.bias.detach().cpu()
    classes = run.data.classes
    if run.slices:
        task_id, start, end = run.slices[-1]
        weight, bias, classes = weight[start:end], bias[start:end], classes[start:end]
        save_file({f"{t}.{k}": v[a:b].contiguous() for t, a, b in run.slices
                   for k, v in (("weight", run.head.weight.detach().cpu()), ("bias", run.head.bias.detach().cpu()))},
                  str(out.joint_heads), metadata={"slices": json.dumps(run.slices)})
    save_file({"weight": weight.contiguous(), "bias": bias.contiguous()}, str(out.head),
              metadata={"classes": json.dumps(classes)})


def library_versions() -> dict:
    import peft
    import safetensors
    import transformers

    from .. import __version__

    return {"pslora": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "safetensors": safetensors.__version__}
