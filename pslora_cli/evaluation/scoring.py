"""Scoring a model: stage t = W0 + the merge of tasks 1..t folded into the weights (no LoRA branches at inference),
with the heads of tasks 1..t. The only scoring path: the accuracy matrix, compare and analyze-shifts go through it.

- "aware": task i's test set scored with task i's own head (the task id is known); for a language model, its
  answers to task i's prompts (which name the task's options) by exact match or rank;
- "agnostic": argmax over the heads of tasks 1..t concatenated (the task id is not known).
"""

from __future__ import annotations

from typing import Callable

import torch

from .. import distributed
from ..config import Sequence
from ..errors import InputError
from ..models import load_backbone, target_parameters
from ..models.adapters import AdapterFile, WeightFolder, merged_deltas
from ..store import Store


def stage_merge_options(seq: Sequence, store: Store, t: int) -> dict:
    """The options of the sequence's merge at stage t: those a selection protocol chose on the validation split
    after task t (recorded in its meta.json under selection.merge), else the sequence's."""
    options = seq.method.merge_options
    if t < 1 or not store.has_task(seq.task_ids[t - 1]):
        return options
    chosen = ((store.task_meta(seq.task_ids[t - 1]).get("selection") or {}).get("merge") or {}).get("options")
    return {**options, **chosen} if chosen else options


class Evaluator:
    """Holds one backbone and the test data; evaluates stages by folding merged updates into W0."""

    def __init__(self, seq: Sequence, store: Store, device: torch.device, load_data: Callable, split: str = "test"):
        self.seq, self.store, self.device, self.split = seq, store, device, split
        self.backbone = load_backbone(seq.backbone, device)
        self.folder = WeightFolder(target_parameters(self.backbone.model, seq.lora.target_modules))
        self.load_data = load_data
        self._heads: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        # (stage, task index, kind) -> each test prompt right ("1") or wrong ("0"), in the split's order, from the
        # last scoring of that cell: what paired per-prompt differences between two stores are computed from
        # (not under torchrun, where each rank holds only its shard)
        self.hits: dict[tuple[int, int, str], str] = {}

    def head(self, i: int, t: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Task i's head at stage t: its own, or for a method that trains jointly (one joint head per stage) stage
        t's rows of it."""
        joint = self.seq.method.spec.trains_jointly and 1 <= t and i < t - 1
        key = (i, t if joint else 0)
        if key not in self._heads:
            self._heads[key] = self._read_head(i, t if joint else None)
        return self._heads[key]

    def _read_head(self, i: int, stage: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        from safetensors.torch import load_file

        task_id = self.seq.tasks[i].id
        if stage is None:
            path, prefix = self.store.task_files(task_id).head, ""
        else:
            path, prefix = self.store.task_files(self.seq.tasks[stage - 1].id).joint_heads, f"{task_id}."
        try:
            h = load_file(str(path), device=str(self.device))
            return h[prefix + "weight"].float(), h[prefix + "bias"].float()
        except Exception as exc:
            raise InputError(f"{path}: cannot read the head of task {task_id} ({exc})") from None

    @torch.inference_mode()
    def features(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features and labels of task i's test (or validation) set (under torchrun: this rank's shard)."""
        data = self.load_data(i)
        xs, ys = data.split(self.split)
        if distributed.world().active:
            xs, ys = distributed.shard(list(xs)), distributed.shard(list(ys))
        bs = self.seq.training.eval_batch_size
        feats = [torch.zeros(0, self.backbone.feature_dim, device=self.device)]
        for start in range(0, len(xs), bs):
            batch = self.backbone.collate(xs[start:start + bs], self.device)
            feats.append(self.backbone.features(self.backbone.model, batch).float())
        return torch.cat(feats), torch.tensor(ys, dtype=torch.long, device=self.device)

    @torch.inference_mode()
    def answer_hits(self, i: int) -> torch.Tensor:
        """A language model's answers to task i's test prompts, right or wrong, by the sequence's scorer (under
        torchrun: this rank's shard)."""
        from ..models.lm import exact_match_hits, rank_hits

        data = self.load_data(i)
        xs, ys = (list(v) for v in data.split(self.split))
        if distributed.world().active:
            xs, ys = distributed.shard(xs), distributed.shard(ys)
        if not xs:
            return torch.zeros(0, dtype=torch.bool, device=self.device)
        bs = self.seq.training.eval_batch_size
        if self.seq.scorer == "rank":
            return rank_hits(self.backbone, xs, ys, data.answers, self.device, bs)
        return exact_match_hits(self.backbone, xs, ys, data.answers, self.device, bs,
                                max_new_tokens=self.seq.evaluation.max_new_tokens)

    def adapters(self, t: int) -> list[AdapterFile]:
        return [AdapterFile(self.store.task_files(task.id).adapter_dir) for task in self.seq.tasks[:t]]

    def stage_update(self, adapters: list[AdapterFile], options: dict | None = None) -> dict[str, torch.Tensor] | None:
        """The merged update of `adapters` with the sequence's merge (None for no adapters: the base model)."""
        method = self.seq.method
        options = method.merge_options if options is None else options
        return dict(merged_deltas(adapters, method.merge, self.device, **options)) if adapters else None

    @torch.inference_mode()
    def stage(self, t: int, cells: list[tuple[int, str]], chosen: bool = True) -> dict[tuple[int, str], float]:
        """Accuracy of stage t (0 = base model) on the requested (task index, kind) cells (chosen: with the merge
        options a selection protocol chose for the stage, where it did)."""
        adapters = self.adapters(t)
        if not self.seq.method.spec.own_adapters:
            options = stage_merge_options(self.seq, self.store, t) if chosen else None
            return self.score_with(t, self.stage_update(adapters, options), cells)
        results = {}  # each task scored with its own adapter alone
        for i in sorted({i for i, _ in cells}):
            own = dict(merged_deltas([adapters[i]], "sum", self.device)) if t and i < t else None
            results.update(self.score_with(t, own, [c for c in cells if c[0] == i]))
        return results

    @torch.inference_mode()
    def score_with(self, t: int, updates: dict[str, torch.Tensor] | None,
                   cells: list[tuple[int, str]]) -> dict[tuple[int, str], float]:
        """Accuracy of W0 + `updates` with stage t's heads on the (task index, kind) cells."""
        self.folder.fold(updates)
        if self.seq.generative:
            return {(i, kind): self._record(t, i, kind, self.answer_hits(i)) for i, kind in cells}
        results = {}
        for i in sorted({i for i, _ in cells}):
            feats, labels = self.features(i)
            kinds = {kind for j, kind in cells if j == i}
            if "aware" in kinds:
                w, b = self.head(i, t)
                results[(i, "aware")] = self._record(t, i, "aware", (feats @ w.T + b).argmax(-1).eq(labels))
            if "agnostic" in kinds:
                heads = [self.head(j, t) for j in range(t)]
                logits = torch.cat([feats @ w.T + b for w, b in heads], dim=1)
                offset = sum(w.shape[0] for w, _ in heads[:i])
                results[(i, "agnostic")] = self._record(t, i, "agnostic", logits.argmax(-1).eq(labels + offset))
        return results

    def _record(self, t: int, i: int, kind: str, hits: torch.Tensor) -> float:
        """The cell's accuracy; its per-prompt hits are kept in self.hits."""
        if not distributed.world().active:
            self.hits[(t, i, kind)] = "".join("1" if h else "0" for h in hits.tolist())
        return _accuracy(hits)


def _accuracy(hits: torch.Tensor) -> float:
    """Mean of the hits; under torchrun, of every rank's hits (each rank scored its shard of the test set)."""
    if not distributed.world().active:
        return hits.float().mean().item()
    counts = torch.stack([hits.sum().double(), torch.tensor(float(hits.numel()), dtype=torch.float64,
                                                            device=hits.device)])
    distributed.all_reduce_sum(counts)
    return (counts[0] / counts[1]).item()
