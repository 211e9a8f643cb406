"""PS-LoRA in a Hugging Face Trainer: `PSLoRATrainer`, a transformers.Trainer whose training loss gains the Parameter
Stability Loss against the earlier tasks' adapters, and `PSLoRAMixin`, the same for any Trainer subclass (TRL's
SFTTrainer: `class PSLoRASFTTrainer(PSLoRAMixin, SFTTrainer): pass`).

    trainer = PSLoRATrainer(model=peft_model, args=args, train_dataset=data, history=["runs/task1"])
    trainer.train()
    trainer.save_model("runs/task2")      # the adapter in PEFT's format, ready for `pslora merge --adapters`

Why a Trainer mixin and not a TrainerCallback: a callback sees the loss only after backward, and cannot change it;
`compute_loss` is the Trainer's extension point for the loss, and a mixin overriding it composes with subclasses
that override it too (SFTTrainer). What it does, in order:
- after the Trainer is built: folds the earlier tasks into the model's frozen base weights as `pslora run` does
  (`previous="merge"`: W0 + their magnitude merge; "sum"; "none"), unless `fold=False` (folded by you already);
- each training micro-batch: loss = the Trainer's own loss + λ·L_PS(current LoRA factors, H = Σ earlier updates),
  the term computed outside autocast in the factors' dtype (as the CLI computes it) and divided by the gradient
  accumulation steps when the Trainer leaves gradient accumulation to the loss, so that each optimiser step counts it
  once, as `pslora run` does;
- logs `stability_loss` (L_PS, unweighted, averaged over the logging interval) beside the Trainer's `loss`;
- `save_model` is the Trainer's: for a PEFT model it writes adapter_config.json + adapter_model.safetensors.
Evaluation losses are the Trainer's own (no regulariser).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from ..api import History, StabilityRegulariser, fold_history

__all__ = ["PSLoRAMixin", "PSLoRATrainer"]


class PSLoRAMixin:
    """Adds PS-LoRA's stability loss to a Trainer subclass's training loss. Keyword arguments (the rest go to the
    Trainer): `history` (the earlier tasks' adapter folders, oldest first, or a pslora store; None or [] for the first
    task), `stability_weight` (λ, 1.0), `variant`, `alpha_mode`, `alpha`, `reduction` (the loss's form, pslora's
    defaults), `previous` ("merge", "sum" or "none": how the earlier tasks enter the forward pass), `merge` (the merge
    folded in with previous="merge": "magnitude"), `fold` (False: the history is in the weights already)."""

    def __init__(self, *args: Any, history: History = None, stability_weight: float = 1.0,
                 variant: str = "magnitude-only", alpha_mode: str = "adaptive", alpha: float = 2.0,
                 reduction: str = "mean", previous: str = "merge", merge: str = "magnitude", fold: bool = True,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        model = self.model  # the PEFT model (SFTTrainer makes it from peft_config inside its __init__)
        if fold and previous != "none":
            fold_history(model, history, merge=merge, previous=previous)
        self.pslora_regulariser = StabilityRegulariser(model, history, stability_weight=stability_weight,
                                                       variant=variant, alpha_mode=alpha_mode, alpha=alpha,
                                                       reduction=reduction)
        self._pslora_sum = 0.0
        self._pslora_count = 0

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        regulariser = self.pslora_regulariser
        if not (self.model.training and regulariser.active):
            return result
        loss, outputs = result if return_outputs else (result, None)
        with torch.autocast(device_type=loss.device.type, enabled=False):  # float32 factors, as in `pslora run`
            ps_loss = regulariser.loss()
        term = regulariser.stability_weight * ps_loss
        if self._pslora_loss_scaled_for_ga(num_items_in_batch):
            term = term / max(1, getattr(self, "current_gradient_accumulation_steps", 1))
        loss = loss + term.to(loss.dtype)
        self._pslora_sum += float(ps_loss.detach())
        self._pslora_count += 1
        return (loss, outputs) if return_outputs else loss

    def _pslora_loss_scaled_for_ga(self, num_items_in_batch) -> bool:
        """Trainer.training_step's rule: True when the loss is normalised over the whole accumulated batch (the Trainer
        does not divide it by the accumulation steps), so the term must be divided here."""
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is not None:
            return bool(scaled)
        return bool((getattr(self, "model_accepts_loss_kwargs", False) and num_items_in_batch is not None)
                    or getattr(self, "compute_loss_func", None) is not None)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self._pslora_count:
            logs["stability_loss"] = self._pslora_sum / self._pslora_count
            self._pslora_sum, self._pslora_count = 0.0, 0
        super().log(logs, *args, **kwargs)


class PSLoRATrainer(PSLoRAMixin, Trainer):
    """transformers.Trainer with PS-LoRA's stability loss (PSLoRAMixin's keyword arguments)."""
