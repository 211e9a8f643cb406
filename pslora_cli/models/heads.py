"""The task heads: one nn.Linear per task on the backbone's pooled features, and the module that DDP trains."""

from __future__ import annotations

import torch
from torch import nn


def make_head(feature_dim: int, num_classes: int, seed: int) -> nn.Linear:
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(feature_dim, num_classes)
    with torch.no_grad():
        bound = 1.0 / feature_dim ** 0.5
        head.weight.uniform_(-bound, bound, generator=gen)
        head.bias.zero_()
    return head


class TaskModel(nn.Module):
    """Backbone with LoRA, pooled features, this task's head: one module, as DistributedDataParallel wants."""

    def __init__(self, backbone, peft_model: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.peft_model, self.head = backbone, peft_model, head

    def forward(self, batch):
        # a backbone in bfloat16/float16 (backbone.dtype) gives features in its dtype; the head is float32
        return self.head(self.backbone.features(self.peft_model, batch).float())
