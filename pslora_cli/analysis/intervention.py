"""`--intervene`, the paper's Figure 2: for stage t, zero a subset of ΔW_t's entries, merge it with ΔW_1..ΔW_{t-1}
as the store merges, fold the result into W0 and score tasks 1..t; beside it, as many entries of the other sign
and as many random entries, and the unmodified stage (which must reproduce the stored accuracy matrix)."""

from __future__ import annotations

import torch

from ..config import Sequence
from ..core import shifts as S
from ..core.merges import merge_module
from ..errors import InputError
from ..evaluation.scoring import Evaluator
from ..models.adapters import AdapterFile
from ..report import Reporter
from ..data.loader import data_loader
from ..store import Store
from .options import AnalysisOptions
from .stats import flat, matrix_rows


def intervene(seq: Sequence, store: Store, doc: dict, aopts: AnalysisOptions, device, reporter: Reporter) -> dict:
    if seq.method.spec.own_adapters:
        raise InputError(f"--intervene: {store.root} scores each task with its own adapter (method {seq.method.name}); "
                         f"there is no merged stage to modify")
    run = _Intervention(seq, store, doc, aopts, device, reporter)
    result = {"subset": dict(run.sub, rank_by=run.rank_by), "control_sign": run.other,
              "merge": seq.method.merge, "kind": f"task_{run.kind}", "seed": run.seed, "stages": []}
    for st in doc["stages"]:
        result["stages"].append(run.stage(st))
    return result


def _stage_merger(seq: Sequence):
    """make_deltas -> merged update, with the store's merge method and options (as the evaluator merges)."""
    method, options = seq.method.merge, seq.method.merge_options
    return lambda make: merge_module(make, method, **options)


class _Intervention:
    """What the stages of one intervention share: the adapters, the evaluator, the merge and the subset."""

    def __init__(self, seq: Sequence, store: Store, doc: dict, aopts: AnalysisOptions, device, reporter: Reporter):
        self.store, self.device, self.reporter = store, device, reporter
        self.sub, self.rank_by, self.seed = aopts.parsed_subset, aopts.rank_by, seq.seed
        self.other = "same" if self.sub["sign"] == "opposite" else "opposite"
        # The evaluator's cell kind of the primary matrix, which the unmodified stage must reproduce.
        self.kind = "agnostic" if seq.agnostic_scoring else "aware"
        self.modules = doc["modules"]
        self.adapters = [AdapterFile(store.task_files(t).adapter_dir) for t in doc["tasks"]]
        reporter.info(f"{store.root}: loading the backbone and test data for the intervention")
        self.evaluator = Evaluator(seq, store, device, data_loader(seq))
        self.grid, _ = matrix_rows(seq, store, doc["tasks"])
        self.merge = _stage_merger(seq)

    def stage(self, st: dict) -> dict:
        """Every variant of stage st: what it zeroes and the accuracy it leaves."""
        t = st["stage"]
        deltas = {m: self.adapters[t - 1].delta(m, self.device) for m in self.modules}
        history = {m: sum(a.delta(m, self.device) for a in self.adapters[:t - 1]) for m in self.modules}
        d, h = flat(deltas, self.modules), flat(history, self.modules)
        masks = self.masks(d, h, t)
        l1 = float(d.double().abs().sum())
        entry = {"task": st["task"], "stage": t, "numel": d.numel(), "count": int(masks["selected"].sum()),
                 "variants": {}}
        for name, mask in masks.items():
            if name != "none" and not bool(mask.any()):  # nothing to zero: the unmodified stage
                entry["variants"][name] = dict(entry["variants"]["none"])
                continue
            self.reporter.info(f"{self.store.root}: stage {st['task']}: zeroing {int(mask.sum())} entries ({name}), "
                               f"evaluating tasks 1..{t}")
            acc = self.score(t, deltas, torch.where(mask, torch.zeros_like(d), d))
            entry["variants"][name] = {
                "removed": int(mask.sum()),
                "removed_l1_share": float(d[mask].double().abs().sum()) / l1 if l1 else None,
                "removed_sign_mix": _sign_mix(d[mask], h[mask]),
                "old_accuracy": sum(acc[:t - 1]) / (t - 1), "old_per_task": acc[:t - 1], "new_accuracy": acc[t - 1],
            }
        self.check_baseline(entry)
        return entry

    def masks(self, d: torch.Tensor, h: torch.Tensor, t: int) -> dict[str, torch.Tensor]:
        """Entries of the pooled ΔW_t to zero, per variant; the controls zero as many as the selected subset."""
        sub = self.sub
        selected = S.select_subset(d, h, sign=sub["sign"], part=sub["part"], k=sub["k"], rank_by=self.rank_by)
        count = int(selected.sum())
        return {"none": torch.zeros_like(selected), "selected": selected,
                "other_sign": S.extreme_of_sign(d, h, sign=self.other, count=count, part=sub["part"],
                                                rank_by=self.rank_by),
                "random": S.random_entries(d.numel(), count, self.seed + t, d.device)}

    def score(self, t: int, deltas: dict, modified: torch.Tensor) -> list[float]:
        """Accuracy on tasks 1..t of W0 + merge(ΔW_1..ΔW_{t-1}, the modified ΔW_t), with stage t's heads."""
        offset, updates = 0, {}
        for m in self.modules:
            n = deltas[m].numel()
            mod_delta = modified[offset:offset + n].reshape(deltas[m].shape)
            updates[m] = self.merge(lambda m=m, mod_delta=mod_delta: (
                [a.delta(m, self.device) for a in self.adapters[:t - 1]] + [mod_delta]))
            offset += n
        acc = self.evaluator.score_with(t, updates, [(i, self.kind) for i in range(t)])
        return [acc[(i, self.kind)] for i in range(t)]

    def check_baseline(self, entry: dict) -> None:
        """Record whether the unmodified stage scores the old tasks as the stored matrix does."""
        t, grid = entry["stage"], self.grid
        if grid is None or any(grid[t][i] is None for i in range(t - 1)):
            return
        entry["matrix_old_accuracy"] = sum(grid[t][i] for i in range(t - 1)) / (t - 1)
        entry["baseline_matches_matrix"] = all(
            abs(grid[t][i] - entry["variants"]["none"]["old_per_task"][i]) < 1e-5 for i in range(t - 1))


def _sign_mix(d: torch.Tensor, h: torch.Tensor) -> dict:
    rel = S.sign_relation(d, h)
    return {"same": int((rel == S.SAME).sum()), "opposite": int((rel == S.OPPOSITE).sum()),
            "zero": int((rel == S.ZERO).sum())}
