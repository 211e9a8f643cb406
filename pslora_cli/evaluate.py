"""Accuracy matrix: stage t = W0 + merge(ΔW_1..ΔW_t) folded into the weights (no LoRA branches at
inference), with the heads of tasks 1..t; row 0 = the base model W0.

Two matrices are kept:
- task_aware[t][i]: task i's test set scored with task i's own head (the task id is known). Defined for row 0
  and for the next task (i = t+1) too, with task i's head on stage t's backbone: that gives forward transfer.
- task_agnostic[t][i] (class-incremental only): argmax over all classes seen up to stage t (heads 1..t
  concatenated); undefined (null) for row 0 and for tasks not yet seen.
The primary matrix is task_agnostic for class-incremental sequences and task_aware for task-incremental.
Cells are recomputed only when the adapters or heads they depend on change.
"""

from __future__ import annotations

import csv
import io
from typing import Callable

import torch

from . import distributed
from .adapters import AdapterFile, WeightFolder, merge_options, merged_deltas
from .backbones import load_backbone, target_parameters
from .core.metrics import cl_metrics
from .errors import InputError
from .sequence import canonical_hash
from .store import Store, read_json, write_json_atomic, write_text_atomic

MATRIX_JSON = "matrix.json"


def trained_prefix(seq: dict, store: Store) -> int:
    """Number k such that tasks 1..k of the sequence are all in the store (stages exist only for prefixes)."""
    k = 0
    for task in seq["tasks"]:
        if not store.has_task(task["id"]):
            break
        k += 1
    return k


def _keys(seq: dict, store: Store, k: int) -> tuple[list[str], list[str]]:
    metas = [store.task_meta(t["id"]) for t in seq["tasks"][:k]]
    merge = [seq["method"].get(k) for k in ("merge", "merge_density", "merge_scale")]
    row_keys = ["base"] + [canonical_hash(merge + [m["sha256"]["adapter_model.safetensors"] for m in metas[:t]])
                           for t in range(1, k + 1)]
    col_keys = [canonical_hash([m["sha256"]["head.safetensors"], m["data_fingerprint"]]) for m in metas]
    return row_keys, col_keys


def needed_cells(k: int, class_incremental: bool) -> list[tuple[int, int, str]]:
    """(stage t, task i (0-based), kind) for every cell a prefix of k trained tasks defines."""
    cells = [(0, i, "aware") for i in range(k)]
    for t in range(1, k + 1):
        cells += [(t, i, "aware") for i in range(min(t + 1, k))]
        if class_incremental:
            cells += [(t, i, "agnostic") for i in range(t)]
    return cells


def empty_doc(seq: dict) -> dict:
    n = len(seq["tasks"])
    grid = lambda: [[None] * n for _ in range(n + 1)]  # noqa: E731
    ci = seq["scenario"] == "class-incremental"
    return {"tasks": [t["id"] for t in seq["tasks"]], "scenario": seq["scenario"],
            "merge": seq["method"]["merge"], "primary": "task_agnostic" if ci else "task_aware",
            "task_aware": grid(), "task_agnostic": grid() if ci else None,
            "sample_counts": [None] * n, "row_keys": [None] * (n + 1), "col_keys": [None] * n}


def load_doc(seq: dict, store: Store) -> dict:
    path = store.eval_dir / MATRIX_JSON
    doc = read_json(path) if path.is_file() else None
    fresh = empty_doc(seq)
    if not doc or doc.get("tasks") != fresh["tasks"] or doc.get("merge") != fresh["merge"] \
            or doc.get("scenario") != fresh["scenario"]:
        return fresh
    return doc


class Evaluator:
    """Holds one backbone and the test data; evaluates stages by folding merged updates into W0."""

    def __init__(self, seq: dict, store: Store, device: torch.device, load_data: Callable):
        self.seq, self.store, self.device = seq, store, device
        self.backbone = load_backbone(seq["backbone"], device)
        self.folder = WeightFolder(target_parameters(self.backbone.model, seq["lora"]["target_modules"]))
        self.load_data = load_data
        self._heads: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def head(self, i: int, t: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Task i's head at stage t: its own, or for multitask (a joint head per stage) stage t's rows of it."""
        joint = self.seq["method"].get("init") == "joint" and 1 <= t and i < t - 1
        key = (i, t if joint else 0)
        if key not in self._heads:
            from safetensors.torch import load_file

            folder = self.store.task_dir(self.seq["tasks"][t - 1 if joint else i]["id"])
            path = folder / ("joint_heads.safetensors" if joint else "head.safetensors")
            prefix = f"{self.seq['tasks'][i]['id']}." if joint else ""
            try:
                h = load_file(str(path), device=str(self.device))
                self._heads[key] = (h[prefix + "weight"].float(), h[prefix + "bias"].float())
            except Exception as exc:
                raise InputError(f"{path}: cannot read the head of task {self.seq['tasks'][i]['id']} ({exc})") from None
        return self._heads[key]

    @torch.inference_mode()
    def features(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features and labels of task i's test set (under torchrun: this rank's shard of it)."""
        data = self.load_data(i)
        xs, ys = data.test_x, data.test_y
        if distributed.world().active:
            xs, ys = distributed.shard(list(xs)), distributed.shard(list(ys))
        bs = self.seq["training"]["eval_batch_size"]
        feats = [torch.zeros(0, self.backbone.feature_dim, device=self.device)]
        for start in range(0, len(xs), bs):
            batch = self.backbone.collate(xs[start:start + bs], self.device)
            feats.append(self.backbone.features(self.backbone.model, batch).float())
        return torch.cat(feats), torch.tensor(ys, dtype=torch.long, device=self.device)

    @torch.inference_mode()
    def stage(self, t: int, cells: list[tuple[int, str]]) -> dict[tuple[int, str], float]:
        """Accuracy of stage t (0 = base model) on the requested (task index, kind) cells."""
        method = self.seq["method"]
        ids = [task["id"] for task in self.seq["tasks"][:t]]
        adapters = [AdapterFile(self.store.task_dir(i)) for i in ids]
        own = method["merge"] == "own"  # per-task: each task scored with its own adapter alone
        if not own:
            self.folder.fold(dict(merged_deltas(adapters, method["merge"], self.device, **merge_options(method)))
                             if t else None)
        results = {}
        for i in sorted({i for i, _ in cells}):
            if own:
                self.folder.fold(dict(merged_deltas([adapters[i]], "sum", self.device)) if t and i < t else None)
            feats, labels = self.features(i)
            kinds = {kind for j, kind in cells if j == i}
            if "aware" in kinds:
                w, b = self.head(i, t)
                results[(i, "aware")] = _accuracy((feats @ w.T + b).argmax(-1).eq(labels))
            if "agnostic" in kinds:
                heads = [self.head(j, t) for j in range(t)]
                logits = torch.cat([feats @ w.T + b for w, b in heads], dim=1)
                offset = sum(w.shape[0] for w, _ in heads[:i])
                results[(i, "agnostic")] = _accuracy(logits.argmax(-1).eq(labels + offset))
        return results


def _accuracy(hits: torch.Tensor) -> float:
    """Mean of the hits; under torchrun, of every rank's hits (each rank scored its shard of the test set)."""
    if not distributed.world().active:
        return hits.float().mean().item()
    counts = distributed.all_reduce_sum(torch.stack([hits.sum().double(), torch.tensor(float(hits.numel()),
                                                                                     dtype=torch.float64,
                                                                                     device=hits.device)]))
    return (counts[0] / counts[1]).item()


def complete_matrix(seq: dict, store: Store, device: torch.device, load_data: Callable,
                    progress: Callable[[str], None] | None = None, evaluator: Evaluator | None = None) -> dict:
    """Fill every missing or stale cell of the accuracy matrix for the trained prefix; write it atomically."""
    doc = load_doc(seq, store)
    k = trained_prefix(seq, store)
    for task in seq["tasks"][:k]:  # a damaged adapter or head is reported, never scored
        store.verify_task(task["id"])
    row_keys, col_keys = _keys(seq, store, k)
    for t in range(k + 1):
        if doc["row_keys"][t] != row_keys[t]:
            for name in ("task_aware", "task_agnostic"):
                if doc[name] is not None:
                    doc[name][t] = [None] * len(doc["tasks"])
            doc["row_keys"][t] = row_keys[t]
    for i in range(k):
        if doc["col_keys"][i] != col_keys[i]:
            for name in ("task_aware", "task_agnostic"):
                if doc[name] is not None:
                    for row in doc[name]:
                        row[i] = None
            doc["col_keys"][i] = col_keys[i]
    ci = doc["task_agnostic"] is not None
    todo: dict[int, list[tuple[int, str]]] = {}
    for t, i, kind in needed_cells(k, ci):
        grid = doc["task_aware" if kind == "aware" else "task_agnostic"]
        if grid[t][i] is None:
            todo.setdefault(t, []).append((i, kind))
    if todo:
        evaluator = evaluator or Evaluator(seq, store, device, load_data)
        for t in sorted(todo):
            if progress:
                progress(f"evaluating stage {t} ({'base model' if t == 0 else 'tasks 1..' + str(t) + ' merged'}) "
                         f"on {len({i for i, _ in todo[t]})} task(s)")
            for (i, kind), acc in evaluator.stage(t, todo[t]).items():
                doc["task_aware" if kind == "aware" else "task_agnostic"][t][i] = round(acc, 6)
        for i in range(k):
            doc["sample_counts"][i] = len(load_data(i).test_y)
    doc["metrics"] = matrix_metrics(doc, k)
    if distributed.world().is_main:
        write_matrix(store, doc)
    return doc


def _prefix(grid: list[list], k: int) -> list[list]:
    return [row[:k] for row in grid[:k + 1]]


def matrix_metrics(doc: dict, k: int) -> dict:
    """cl_metrics on the trained prefix of the primary matrix and of the task-aware one."""
    if k == 0:
        return {}
    counts = doc["sample_counts"][:k]
    counts = counts if all(c for c in counts) else None
    out = {"task_aware": cl_metrics(_prefix(doc["task_aware"], k), counts)}
    if doc["task_agnostic"] is not None:
        out["task_agnostic"] = cl_metrics(_prefix(doc["task_agnostic"], k), counts)
    out["primary"] = out[doc["primary"]]
    return out


def write_matrix(store: Store, doc: dict) -> None:
    write_json_atomic(store.eval_dir / MATRIX_JSON, doc)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["matrix", "stage"] + doc["tasks"])
    for name in ("task_agnostic", "task_aware"):
        if doc[name] is None:
            continue
        for t, row in enumerate(doc[name]):
            w.writerow([name, "base" if t == 0 else doc["tasks"][t - 1]] + ["" if v is None else v for v in row])
    write_text_atomic(store.eval_dir / "matrix.csv", buf.getvalue())
