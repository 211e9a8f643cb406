"""The statistics read from a store's adapters: per stage and module, pooled, the accuracy drops of the stored
matrix, their correlations, and the side-by-side comparison of two stores."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch

from ..config import Sequence, canonical_hash
from ..core import shifts as S
from ..errors import InputError
from ..evaluation.matrix import matrix_keys
from ..models.adapters import open_adapters
from ..report import Reporter
from ..store import Store, read_json
from .options import AnalysisOptions

# Pooled statistics shown in tables, correlated with the accuracy drop and compared across stores.
SUMMARY_LABELS = {
    "relative_norm": "‖D‖/‖H‖", "wasserstein1": "W1(H,C)", "ks": "KS(H,C)", "same_fraction": "same",
    "opposite_fraction": "opposite", "conflict_ratio": "conflict ratio", "flip_rate": "flip rate",
    "top_opposite_fraction": "top-k% opposite", "top_opposite_l1_share": "top-k% opp. share ‖D‖₁",
}


def store_label(doc: dict) -> str:
    """A store's short name in figures and tables: its folder's name."""
    return Path(doc["store"]).name or doc["store"]


def matrix_rows(seq: Sequence, store: Store, ids: list[str]) -> tuple[list[list] | None, str]:
    """The primary accuracy matrix restricted to rows/columns whose keys match the store now (others None)."""
    path = store.matrix_path
    if not path.is_file():
        return None, f"{path} does not exist (pslora eval writes it)"
    doc = read_json(path)
    try:
        grid, merge = doc[doc["primary"]], doc["merge"]
        if doc["tasks"][:len(ids)] != ids:
            return None, f"{path}: its tasks do not match the store's"
        rows, cols = _fresh_keys(seq, store, ids, merge)
        fresh = [[grid[t][i] if doc["row_keys"][t] in rows[t] and doc["col_keys"][i] == cols[i] else None
                  for i in range(len(ids))] for t in range(len(ids) + 1)]
    except (KeyError, IndexError, TypeError) as exc:
        return None, f"{path}: unexpected layout ({type(exc).__name__}: {exc})"
    return fresh, f"{path} ({doc['primary']}, stages merged with {merge})"


def _fresh_keys(seq: Sequence, store: Store, ids: list[str], merge: str) -> tuple[list[set], list[str]]:
    """The keys the evaluator gives the matrix rows and columns for the adapters and heads in the store now.

    A row is also accepted under the earlier key form, hash([merge] + adapter sha256s), written before the merge
    options existed: it names the same adapters and, for the merges of that time, the same stage.
    """
    adapters = [store.adapter_sha256(t) for t in ids]
    legacy = ["base"] + [canonical_hash([merge] + adapters[:t]) for t in range(1, len(ids) + 1)]
    rows, cols = matrix_keys(seq, store, len(ids))
    if merge != seq.method.stage_rule:
        return [{"base"}] + [set() for _ in ids], cols
    return [{r, lg} for r, lg in zip(rows, legacy)], cols


def accuracy_drops(grid: list[list] | None, n: int) -> dict[int, dict]:
    """Stage t (1-based, t >= 2) -> old-task accuracy before/after task t and drop_t, where every cell is known."""
    out: dict[int, dict] = {}
    if grid is None:
        return out
    for t in range(2, n + 1):
        before = [grid[t - 1][i] for i in range(t - 1)]
        after = [grid[t][i] for i in range(t - 1)]
        if any(v is None for v in before + after):
            continue
        b, a = sum(before) / len(before), sum(after) / len(after)
        out[t] = {"old_accuracy_before": b, "old_accuracy_after": a, "drop": b - a}
    return out


def summary(stats: dict, k_ref: float) -> dict:
    top = stats["subsets"]["top"][S._k_name(k_ref)]
    return {"relative_norm": stats["norms"]["relative"], "wasserstein1": stats["shift"]["wasserstein1"],
            "ks": stats["shift"]["ks"], "same_fraction": stats["sign"]["same_fraction"],
            "opposite_fraction": stats["sign"]["opposite_fraction"],
            "conflict_ratio": stats["sign"]["conflict_ratio"], "flip_rate": stats["sign"]["flip_rate"],
            "top_opposite_fraction": top["opposite"]["fraction"],
            "top_opposite_l1_share": top["opposite"]["l1_share"]}


def _stage_list(ids: list[str], wanted: list[str] | None, where: str) -> list[int]:
    """1-based stages t >= 2 to analyse."""
    if not wanted:
        return list(range(2, len(ids) + 1))
    stages = []
    for task_id in wanted:
        if task_id not in ids:
            raise InputError(f"--tasks: {task_id!r} is not a trained task of {where} (trained: {', '.join(ids)})")
        t = ids.index(task_id) + 1
        if t == 1:
            raise InputError(f"--tasks: {task_id!r} is the first task: it has no earlier tasks to shift from")
        stages.append(t)
    return sorted(set(stages))


@contextlib.contextmanager
def _one_thread(device):
    """Run the statistics on one CPU thread. They are sorts and passes over a few million entries at most; on the
    2-core CPU this was measured on (shared with other work), torch's intra-op threads made them 2x (pooled) to
    5x (per module) slower than one thread."""
    if torch.device(device).type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def flat(tensors: dict[str, torch.Tensor], modules: list[str]) -> torch.Tensor:
    """The modules' entries as one vector, in module order (the pooled view)."""
    return torch.cat([tensors[m].reshape(-1) for m in modules])


def _stage_stats(deltas: dict, history: dict, modules: list[str], device, kw: dict) -> tuple[dict, dict]:
    """(per-module statistics, pooled statistics) of one stage."""
    with _one_thread(device):
        per_module = {m: S.shift_stats(deltas[m], history[m], **kw) for m in modules}
        pooled = S.shift_stats(flat(deltas, modules), flat(history, modules), **kw)
    return per_module, pooled


def _open_stages(seq: Sequence, store: Store, aopts: AnalysisOptions) -> tuple[list[str], list[int], list]:
    """The trained task ids, the stages to analyse and the (verified) adapters up to the last of them."""
    ids = store.trained_prefix(seq.task_ids)
    if len(ids) < 2:
        raise InputError(f"{store.root}: analyze-shifts needs at least 2 trained tasks in sequence order "
                         f"(has {len(ids)})")
    stages = _stage_list(ids, aopts.tasks, str(store.root))
    for task_id in ids[:max(stages)]:
        store.verify_task(task_id)
    return ids, stages, open_adapters(store.task_files(t).adapter_dir for t in ids[:max(stages)])


def analyze_store(seq: Sequence, store: Store, aopts: AnalysisOptions, device, reporter: Reporter) -> dict:
    """The statistics of every requested stage of one store, its accuracy drops and correlations."""
    started = time.perf_counter()
    ids, stages, adapters = _open_stages(seq, store, aopts)
    modules = list(adapters[0].modules)
    k_ref = 10 if 10 in aopts.ks else aopts.ks[0]
    out_stages = stage_statistics(str(store.root), ids, stages, lambda t, m: adapters[t].delta(m, device), modules,
                                  aopts, device, reporter, seq.seed)
    grid, source = matrix_rows(seq, store, ids)
    drops = accuracy_drops(grid, len(ids))
    for st in out_stages:
        st["accuracy"] = drops.get(st["stage"])
    manifest = store.manifest()
    return {
        "store": str(store.root), "sequence": seq.name, "scenario": seq.scenario,
        "base_model": manifest["base_model"].get("name"), "method": seq.to_dict()["method"],
        "tasks": ids, "modules": modules, "rank_by": aopts.rank_by, "ks": list(aopts.ks), "k_ref": k_ref,
        "bins": aopts.bins, "max_samples": aopts.max_samples, "seed": seq.seed,
        "history": "H = sum of the earlier tasks' ΔW (whatever the merge); C = H + ΔW_t",
        "stages": out_stages,
        "correlation": correlations(out_stages, source if grid is not None else None, source),
        "seconds": round(time.perf_counter() - started, 3),
    }


def stage_statistics(label: str, ids: list[str], stages: list[int], delta, modules: list[str], aopts: AnalysisOptions,
                     device, reporter: Reporter, seed: int) -> list[dict]:
    """Per requested stage t: D = ΔW_t (`delta(t - 1, module)`) against H = the sum of ΔW_1..ΔW_{t-1}."""
    k_ref = 10 if 10 in aopts.ks else aopts.ks[0]
    kw = dict(ks=aopts.ks, rank_by=aopts.rank_by, bins=aopts.bins, max_samples=aopts.max_samples, seed=seed)
    history = {m: torch.zeros_like(delta(0, m)) for m in modules}
    out_stages = []
    for t in range(1, max(stages) + 1):
        deltas = {m: delta(t - 1, m) for m in modules}
        if t in stages:
            reporter.info(f"{label}: stage {ids[t - 1]} (ΔW_{t} against the sum of tasks 1..{t - 1}), "
                          f"{len(modules)} modules")
            per_module, pooled = _stage_stats(deltas, history, modules, device, kw)
            out_stages.append({"task": ids[t - 1], "stage": t, "pooled": pooled, "modules": per_module,
                               "summary": summary(pooled, k_ref)})
        for m in modules:
            history[m] = history[m] + deltas[m]
    return out_stages


def analyze_adapter_set(folders: list[Path], aopts: AnalysisOptions, device, reporter: Reporter) -> dict:
    """The same statistics for PEFT adapters from anywhere, in the order given (stage t: adapter t against the sum
    of the ones before it); no accuracy matrix, so no correlations."""
    from ..adapter_sets import AdapterSet

    started = time.perf_counter()
    aset = AdapterSet(folders)
    ids = [f.name or str(f) for f in aset.folders]
    if len(set(ids)) != len(ids):
        ids = [str(f) for f in aset.folders]
    stages = _stage_list(ids, aopts.tasks, "--adapters")
    modules = list(aset.modules)
    out_stages = stage_statistics("adapters", ids, stages, lambda t, m: aset.delta(t, m, device), modules, aopts,
                                  device, reporter, 0)
    k_ref = 10 if 10 in aopts.ks else aopts.ks[0]
    for st in out_stages:
        st["accuracy"] = None
    return {
        "store": "adapters", "sequence": None, "scenario": None, "base_model": aset.base_model,
        "method": {"name": "adapters", "merge": "any"}, "adapters": aset.describe(),
        "tasks": ids, "modules": modules, "rank_by": aopts.rank_by, "ks": list(aopts.ks), "k_ref": k_ref,
        "bins": aopts.bins, "max_samples": aopts.max_samples, "seed": 0,
        "history": "H = sum of the earlier adapters' ΔW, in the order given; C = H + ΔW_t",
        "stages": out_stages,
        "correlation": correlations(out_stages, None, "adapters from elsewhere have no accuracy matrix"),
        "seconds": round(time.perf_counter() - started, 3),
    }


def correlations(stages: list[dict], matrix: str | None, note: str) -> dict:
    points = [st for st in stages if st["accuracy"] is not None]
    doc: dict = {"matrix": matrix, "target": "drop_t = mean_{i<t} (R[t-1][i] - R[t][i]), primary matrix",
                 "points": len(points), "tasks": [st["task"] for st in points],
                 "drop": [st["accuracy"]["drop"] for st in points], "statistics": {}}
    if matrix is None:
        doc["note"] = note
    elif not points and stages:
        doc["note"] = f"no stage of {note} matches the adapters in the store now (`pslora eval` refreshes it)"
    elif len(points) < 3:
        doc["note"] = f"{len(points)} stage(s) with a known drop: correlations need at least 3"
    for key in SUMMARY_LABELS:
        xs = [st["summary"][key] for st in points]
        usable = [(x, y) for x, y in zip(xs, doc["drop"]) if x is not None]
        x, y = [u[0] for u in usable], [u[1] for u in usable]
        doc["statistics"][key] = {"values": xs, "pearson": S.pearson(x, y), "spearman": S.spearman(x, y)}
    return doc


def comparison(a: dict, b: dict) -> dict:
    """Store a's stages against store b's, matched by task id, with the mean over the matched stages."""
    b_by_task = {st["task"]: st for st in b["stages"]}
    rows = []
    for st in a["stages"]:
        other = b_by_task.get(st["task"])
        if other is None:
            continue
        diff = {k: (st["summary"][k] - other["summary"][k]
                    if st["summary"][k] is not None and other["summary"][k] is not None else None)
                for k in SUMMARY_LABELS}
        rows.append({"task": st["task"], "a": st["summary"], "b": other["summary"], "a_minus_b": diff,
                     "a_drop": (st["accuracy"] or {}).get("drop"), "b_drop": (other["accuracy"] or {}).get("drop")})
    if not rows:
        raise InputError(f"--compare {b['store']}: no stage in common with {a['store']} "
                         f"(tasks {', '.join(b['tasks'])} vs {', '.join(a['tasks'])})")
    means = {}
    for side in ("a", "b"):
        means[side] = {k: _mean([r[side][k] for r in rows]) for k in SUMMARY_LABELS}
        means[side]["drop"] = _mean([r[f"{side}_drop"] for r in rows])
    return {"a": a["store"], "b": b["store"], "tasks": [r["task"] for r in rows], "stages": rows, "mean": means,
            "same_modules": a["modules"] == b["modules"],
            "merge": {"a": a["method"]["merge"], "b": b["method"]["merge"]},
            "note": "drop_t is measured on each store's own stages (W0 + its merge of tasks 1..t)"}


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None
