"""`pslora analyze-shifts`: the paper's parameter-shift analysis (METHOD.md §4) on a store's saved adapters.

For each stage t >= 2 (task t trained after tasks 1..t-1), per adapted module and pooled over all modules:
D = ΔW_t = s·B_t A_t, H = Σ_{i<t} ΔW_i (always the sum of the earlier updates, whatever the merge), C = H + D;
the statistics are those of core/shifts.py. Only the adapters are read (no model, no data), unless --intervene.

- correlation: when STORE/eval/matrix.json holds fresh rows (its row and column keys match the adapters and heads
  in the store), drop_t = mean_{i<t} (R[t-1][i] − R[t][i]) on the primary matrix (the old tasks' accuracy lost
  when task t is added; stages are W0 + merge(ΔW_1..ΔW_t) with the store's merge) is correlated across t with the
  pooled statistics (Pearson and Spearman; null for fewer than 3 stages).
- --intervene (the paper's Figure 2): for stage t, zero the entries of ΔW_t in the chosen subset (by default the
  opposite-sign entries among the top-10% of the pooled entries by |ΔW_t|), evaluate W0 + merge(ΔW_1..ΔW_{t-1},
  modified ΔW_t) on tasks 1..t; compare with zeroing as many entries of the other sign (those with the largest
  key, or the smallest for a bottom subset) and as many random entries (drawn with the seed + t).
- --compare OTHER: the same analysis of another store (read only), side by side.

Outputs (each written atomically) go to STORE/analysis/ (under the store's lock) and to --out DIR:
shifts.json (the document), shifts.csv (one row per stage and module, plus "pooled"), subsets.csv,
histograms.csv (pooled), intervention.csv, correlation.csv, comparison.csv and the figures shift-histograms.png,
sign-agreement.png, intervention.png, compare.png.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .core import shifts as S
from .errors import InputError
from .report import Reporter
from .sequence import canonical_hash
from .store import Store, atomic_path, read_json, write_json_atomic
from .workflow import Options, open_store, resolve_device

RANK_ALIASES = {"d": "delta", "delta": "delta", "h": "history", "history": "history", "c": "combined",
                "combined": "combined"}
# Pooled statistics shown in tables, correlated with the accuracy drop and compared across stores.
SUMMARY_LABELS = {
    "relative_norm": "‖D‖/‖H‖", "wasserstein1": "W1(H,C)", "ks": "KS(H,C)", "same_fraction": "same",
    "opposite_fraction": "opposite", "conflict_ratio": "conflict ratio", "flip_rate": "flip rate",
    "top_opposite_fraction": "top-k% opposite", "top_opposite_l1_share": "top-k% opp. share ‖D‖₁",
}


@dataclass
class AnalysisOptions:
    rank_by: str = "delta"
    ks: tuple[float, ...] = S.SUBSET_KS
    bins: int = S.DEFAULT_BINS
    max_samples: int = S.DEFAULT_MAX_SAMPLES
    tasks: list[str] | None = None
    intervene: bool = False
    subset: str = "opposite:top:10"
    compare: Path | None = None
    out: Path | None = None
    write_store: bool = True
    figures: bool = True
    parsed_subset: dict = field(default_factory=dict)


# -- option parsing --------------------------------------------------------------------------------------------

def parse_rank_by(value: str) -> str:
    key = RANK_ALIASES.get(value.strip().lower())
    if key is None:
        raise InputError(f"--rank-by {value!r}: expected delta (|ΔW_t|), history (|H|) or combined (|C|)")
    return key


def parse_ks(value: str) -> tuple[float, ...]:
    try:
        ks = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise InputError(f"--ks {value!r}: expected comma-separated percentages, e.g. 1,5,10,20,50") from None
    if not ks or any(not 0 < k <= 100 for k in ks):
        raise InputError(f"--ks {value!r}: each percentage must be in (0, 100]")
    return tuple(int(k) if k.is_integer() else k for k in ks)


def parse_subset(value: str) -> dict:
    """SIGN:PART:K, e.g. opposite:top:10 (the opposite-sign entries among the top-10% by the ranking key)."""
    parts = value.split(":")
    try:
        sign, part, k = parts
        k = float(k)
    except ValueError:
        raise InputError(f"--subset {value!r}: expected SIGN:PART:K, e.g. opposite:top:10") from None
    if sign not in S.SIGNS or part not in S.PARTS or not 0 < k <= 100:
        raise InputError(f"--subset {value!r}: SIGN is same or opposite, PART top or bottom, K in (0, 100]")
    return {"sign": sign, "part": part, "k": int(k) if k.is_integer() else k}


# -- reading the store -----------------------------------------------------------------------------------------

def trained_prefix_ids(seq: dict, store: Store) -> list[str]:
    ids = []
    for task in seq["tasks"]:
        if not store.has_task(task["id"]):
            break
        ids.append(task["id"])
    return ids


def _matrix_rows(seq: dict, store: Store, ids: list[str]) -> tuple[list[list] | None, str]:
    """The primary accuracy matrix restricted to rows/columns whose keys match the store now (others None)."""
    path = store.eval_dir / "matrix.json"
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


def _fresh_keys(seq: dict, store: Store, ids: list[str], merge: str) -> tuple[list[set], list[str]]:
    """The keys evaluate.py gives the matrix rows and columns for the adapters and heads in the store now.

    A row is also accepted under the earlier key form, hash([merge] + adapter sha256s), written before the merge
    options existed: it names the same adapters and, for the merges of that time, the same stage.
    """
    from .evaluate import _keys

    metas = [store.task_meta(t) for t in ids]
    legacy = ["base"] + [canonical_hash([merge] + [m["sha256"]["adapter_model.safetensors"] for m in metas[:t]])
                         for t in range(1, len(ids) + 1)]
    cols = [canonical_hash([m["sha256"]["head.safetensors"], m["data_fingerprint"]]) for m in metas]
    try:
        rows, cols = _keys(seq, store, len(ids))
    except KeyError:  # a sequence stored before the merge options existed
        rows = legacy
    if merge != seq["method"]["merge"]:
        return [{"base"}] + [set() for _ in ids], cols
    return [{r, lg} for r, lg in zip(rows, legacy)], cols


def _stage_merger(seq: dict):
    """make_deltas -> merged update, with the store's merge method and options (as the evaluator merges)."""
    method = seq["method"]["merge"]
    try:
        from .adapters import merge_options
        from .core.merge import merge_module
    except ImportError:  # pragma: no cover - a tree without the extra merge methods
        from .core.merge import merge_deltas

        return lambda make: merge_deltas(make(), method)
    try:
        kw = merge_options(seq["method"])
    except KeyError:  # pragma: no cover
        kw = {}
    return lambda make: merge_module(make, method, **kw)


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


# -- the analysis ----------------------------------------------------------------------------------------------

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


def analyze_store(seq: dict, store: Store, aopts: AnalysisOptions, device, reporter: Reporter) -> dict:
    """The statistics of every requested stage of one store, its accuracy drops and correlations."""
    from .adapters import open_adapters

    started = time.perf_counter()
    ids = trained_prefix_ids(seq, store)
    if len(ids) < 2:
        raise InputError(f"{store.root}: analyze-shifts needs at least 2 trained tasks in sequence order "
                         f"(has {len(ids)})")
    stages = _stage_list(ids, aopts.tasks, str(store.root))
    for task_id in ids[:max(stages)]:
        store.verify_task(task_id)
    adapters = open_adapters(store.task_dir(t) for t in ids[:max(stages)])
    modules = list(adapters[0].modules)
    k_ref = 10 if 10 in aopts.ks else aopts.ks[0]
    kw = dict(ks=aopts.ks, rank_by=aopts.rank_by, bins=aopts.bins, max_samples=aopts.max_samples,
              seed=seq["seed"])
    history = {m: torch.zeros_like(adapters[0].delta(m, device)) for m in modules}
    out_stages = []
    for t in range(1, max(stages) + 1):
        deltas = {m: adapters[t - 1].delta(m, device) for m in modules}
        if t in stages:
            reporter.info(f"{store.root}: stage {ids[t - 1]} (ΔW_{t} against the sum of tasks 1..{t - 1}), "
                          f"{len(modules)} modules")
            with _one_thread(device):
                per_module = {m: S.shift_stats(deltas[m], history[m], **kw) for m in modules}
                d = torch.cat([deltas[m].reshape(-1) for m in modules])
                h = torch.cat([history[m].reshape(-1) for m in modules])
                pooled = S.shift_stats(d, h, **kw)
                del d, h
            out_stages.append({"task": ids[t - 1], "stage": t, "pooled": pooled, "modules": per_module,
                               "summary": summary(pooled, k_ref)})
        for m in modules:
            history[m] = history[m] + deltas[m]
    grid, source = _matrix_rows(seq, store, ids)
    drops = accuracy_drops(grid, len(ids))
    for st in out_stages:
        st["accuracy"] = drops.get(st["stage"])
    manifest = store.manifest()
    return {
        "store": str(store.root), "sequence": seq["name"], "scenario": seq["scenario"],
        "base_model": manifest["base_model"].get("name"), "method": seq["method"],
        "tasks": ids, "modules": modules, "rank_by": aopts.rank_by, "ks": list(aopts.ks), "k_ref": k_ref,
        "bins": aopts.bins, "max_samples": aopts.max_samples, "seed": seq["seed"],
        "history": "H = sum of the earlier tasks' ΔW (whatever the merge); C = H + ΔW_t",
        "stages": out_stages,
        "correlation": correlations(out_stages, source if grid is not None else None, source),
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


# -- intervention (Figure 2) -----------------------------------------------------------------------------------

def intervene(seq: dict, store: Store, doc: dict, aopts: AnalysisOptions, device, reporter: Reporter) -> dict:
    from .adapters import AdapterFile
    from .evaluate import Evaluator
    from .workflow import data_loader

    if seq["method"]["merge"] == "own":
        raise InputError(f"--intervene: {store.root} scores each task with its own adapter (method.merge = own); "
                         f"there is no merged stage to modify")
    sub = aopts.parsed_subset
    other = "same" if sub["sign"] == "opposite" else "opposite"
    ci = seq["scenario"] == "class-incremental"
    kind = "task_agnostic" if ci else "task_aware"
    ids, modules = doc["tasks"], doc["modules"]
    adapters = [AdapterFile(store.task_dir(t)) for t in ids]
    reporter.info(f"{store.root}: loading the backbone and test data for the intervention")
    evaluator = Evaluator(seq, store, device, data_loader(seq))
    grid, _ = _matrix_rows(seq, store, ids)
    merge = _stage_merger(seq)
    result = {"subset": dict(sub, rank_by=aopts.rank_by), "control_sign": other, "merge": seq["method"]["merge"],
              "kind": kind, "seed": seq["seed"], "stages": []}
    for st in doc["stages"]:
        t = st["stage"]
        deltas = {m: adapters[t - 1].delta(m, device) for m in modules}
        history = {m: sum(a.delta(m, device) for a in adapters[:t - 1]) for m in modules}
        d = torch.cat([deltas[m].reshape(-1) for m in modules])
        h = torch.cat([history[m].reshape(-1) for m in modules])
        selected = S.select_subset(d, h, sign=sub["sign"], part=sub["part"], k=sub["k"], rank_by=aopts.rank_by)
        count = int(selected.sum())
        masks = {"none": torch.zeros_like(selected), "selected": selected,
                 "other_sign": S.extreme_of_sign(d, h, sign=other, count=count, part=sub["part"],
                                                 rank_by=aopts.rank_by),
                 "random": S.random_entries(d.numel(), count, seq["seed"] + t, d.device)}
        l1 = float(d.double().abs().sum())
        entry = {"task": st["task"], "stage": t, "numel": d.numel(), "count": count, "variants": {}}
        for name, mask in masks.items():
            if name != "none" and not bool(mask.any()):  # nothing to zero: the unmodified stage
                entry["variants"][name] = dict(entry["variants"]["none"])
                continue
            reporter.info(f"{store.root}: stage {st['task']}: zeroing {int(mask.sum())} entries ({name}), "
                          f"evaluating tasks 1..{t}")
            modified = torch.where(mask, torch.zeros_like(d), d)
            offset, updates = 0, {}
            for m in modules:
                n = deltas[m].numel()
                mod_delta = modified[offset:offset + n].reshape(deltas[m].shape)
                updates[m] = merge(lambda m=m, mod_delta=mod_delta: (
                    [a.delta(m, device) for a in adapters[:t - 1]] + [mod_delta]))
                offset += n
            acc = _score(evaluator, t, updates, ci)
            entry["variants"][name] = {
                "removed": int(mask.sum()),
                "removed_l1_share": float(d[mask].double().abs().sum()) / l1 if l1 else None,
                "removed_sign_mix": _sign_mix(d[mask], h[mask]),
                "old_accuracy": sum(acc[:t - 1]) / (t - 1), "old_per_task": acc[:t - 1], "new_accuracy": acc[t - 1],
            }
        if grid is not None and all(grid[t][i] is not None for i in range(t - 1)):
            matrix_old = sum(grid[t][i] for i in range(t - 1)) / (t - 1)
            entry["matrix_old_accuracy"] = matrix_old
            entry["baseline_matches_matrix"] = all(
                abs(grid[t][i] - entry["variants"]["none"]["old_per_task"][i]) < 1e-5 for i in range(t - 1))
        result["stages"].append(entry)
    return result


def _sign_mix(d: torch.Tensor, h: torch.Tensor) -> dict:
    rel = S.sign_relation(d, h)
    return {"same": int((rel == S.SAME).sum()), "opposite": int((rel == S.OPPOSITE).sum()),
            "zero": int((rel == S.ZERO).sum())}


@torch.inference_mode()
def _score(evaluator, t: int, updates: dict, class_incremental: bool) -> list[float]:
    """Accuracy on tasks 1..t of W0 + `updates` with heads 1..t (the scoring of Evaluator.stage)."""
    evaluator.folder.fold(updates)
    accs = []
    for i in range(t):
        feats, labels = evaluator.features(i)
        if class_incremental:
            heads = [evaluator.head(j) for j in range(t)]
            logits = torch.cat([feats @ w.T + b for w, b in heads], dim=1)
            offset = sum(w.shape[0] for w, _ in heads[:i])
            accs.append(logits.argmax(-1).eq(labels + offset).float().mean().item())
        else:
            w, b = evaluator.head(i)
            accs.append((feats @ w.T + b).argmax(-1).eq(labels).float().mean().item())
    return accs


# -- comparison --------------------------------------------------------------------------------------------------

def comparison(a: dict, b: dict) -> dict:
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


# -- the command -----------------------------------------------------------------------------------------------

def analyze_shifts(opts: Options, aopts: AnalysisOptions, reporter: Reporter) -> dict:
    started = time.perf_counter()
    aopts.parsed_subset = parse_subset(aopts.subset)
    if aopts.bins < 1:
        raise InputError(f"--bins {aopts.bins}: must be at least 1")
    if aopts.max_samples < 2:
        raise InputError(f"--max-samples {aopts.max_samples}: must be at least 2")
    if aopts.out is not None and aopts.out.exists() and not aopts.out.is_dir():
        raise InputError(f"--out {aopts.out}: exists and is not a folder")
    device = resolve_device(opts.device)
    seq, store, _ = open_store(opts, None, create=False)
    other_seq = other_store = None
    if aopts.compare is not None:
        other_opts = Options(store=aopts.compare, device=opts.device, seed=opts.seed, overrides=list(opts.overrides),
                             json=opts.json, quiet=opts.quiet)
        other_seq, other_store, _ = open_store(other_opts, None, create=False)
        if other_store.root.resolve() == store.root.resolve():
            raise InputError(f"--compare {aopts.compare}: is the same store as --store")
    doc = analyze_store(seq, store, aopts, device, reporter)
    if other_store is not None:
        doc["compare"] = analyze_store(other_seq, other_store, aopts, device, reporter)
        doc["comparison"] = comparison(doc, doc["compare"])
    doc["intervention"] = intervene(seq, store, doc, aopts, device, reporter) if aopts.intervene else None
    files = render_files(doc, aopts.figures)
    written: list[str] = []
    targets = []
    if aopts.write_store:
        targets.append(("store", store.analysis_dir))
    if aopts.out is not None:
        targets.append(("out", Path(aopts.out)))
    doc["files"] = [str(folder / name) for _, folder in targets for name in ["shifts.json"] + sorted(files)]
    doc["seconds"] = round(time.perf_counter() - started, 3)
    for where, folder in targets:
        if where == "store":
            with store.locked():
                _write_all(folder, files, doc)
        else:
            _write_all(folder, files, doc)
        written.append(str(folder))
    if written:
        reporter.info("wrote " + ", ".join(sorted(files)) + " and shifts.json to " + " and ".join(written))
    return doc


OUTPUT_FILES = ("shifts.csv", "subsets.csv", "histograms.csv", "correlation.csv", "intervention.csv",
                "comparison.csv", "shift-histograms.png", "sign-agreement.png", "intervention.png", "compare.png")


def _write_all(folder: Path, files: dict[str, bytes], doc: dict) -> None:
    """Write this run's files; remove the files an earlier run left there that this one does not produce (e.g.
    compare.png after a run without --compare), so that the folder always describes one run."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        with atomic_path(folder / name) as tmp:
            tmp.write_bytes(data)
    write_json_atomic(folder / "shifts.json", doc)
    for name in OUTPUT_FILES:
        if name not in files:
            (folder / name).unlink(missing_ok=True)


# -- CSV and figures (rendered in memory, then written atomically) ----------------------------------------------

def _csv(rows: list[list]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for row in rows:
        w.writerow(["" if v is None else v for v in row])
    return buf.getvalue().encode()


def shifts_csv(doc: dict) -> bytes:
    levels = doc["stages"][0]["pooled"]["quantiles"]["levels"] if doc["stages"] else []
    qcols = [f"abs_{which}_q{q:g}" for which in ("delta", "history", "combined") for q in levels]
    rows = [["task", "module", "numel", "delta_fro", "history_fro", "combined_fro", "relative_norm", "delta_l1",
             "wasserstein1", "ks", "samples", "subsampled", "both_nonzero", "same_fraction", "opposite_fraction",
             "conflict_ratio", "flip_rate"] + qcols]
    for st in doc["stages"]:
        for module, s in [("pooled", st["pooled"])] + list(st["modules"].items()):
            n, sh, sg, q = s["norms"], s["shift"], s["sign"], s["quantiles"]
            rows.append([st["task"], module, s["numel"], n["delta_fro"], n["history_fro"], n["combined_fro"],
                         n["relative"], n["delta_l1"], sh["wasserstein1"], sh["ks"], sh["samples"],
                         int(sh["subsampled"]), sg["both_nonzero"], sg["same_fraction"], sg["opposite_fraction"],
                         sg["conflict_ratio"], sg["flip_rate"]] + q["delta"] + q["history"] + q["combined"])
    return _csv(rows)


def subsets_csv(doc: dict) -> bytes:
    rows = [["task", "module", "rank_by", "part", "k", "count"]
            + [f"{g}_{c}" for g in ("same", "opposite", "zero") for c in ("count", "fraction", "l1_share")]
            + ["l1_share"]]
    for st in doc["stages"]:
        for module, s in [("pooled", st["pooled"])] + list(st["modules"].items()):
            sub = s["subsets"]
            for part in S.PARTS:
                for k, e in sub[part].items():
                    rows.append([st["task"], module, sub["rank_by"], part, k, e["count"]]
                                + [e[g][c] for g in ("same", "opposite", "zero")
                                   for c in ("count", "fraction", "l1_share")]
                                + [e["l1_share"]])
    return _csv(rows)


def histograms_csv(doc: dict) -> bytes:
    rows = [["task", "bin_left", "bin_right", "delta", "history", "combined"]]
    for st in doc["stages"]:
        hst = st["pooled"]["histogram"]
        for j in range(len(hst["delta"])):
            rows.append([st["task"], hst["edges"][j], hst["edges"][j + 1], hst["delta"][j], hst["history"][j],
                         hst["combined"][j]])
    return _csv(rows)


def render_files(doc: dict, figures: bool = True) -> dict[str, bytes]:
    files = {"shifts.csv": shifts_csv(doc), "subsets.csv": subsets_csv(doc), "histograms.csv": histograms_csv(doc)}
    corr = doc["correlation"]
    files["correlation.csv"] = _csv([["statistic", "points", "pearson", "spearman"]]
                                    + [[k, corr["points"], v["pearson"], v["spearman"]]
                                       for k, v in corr["statistics"].items()])
    if doc.get("intervention"):
        rows = [["task", "variant", "removed", "removed_l1_share", "old_accuracy", "new_accuracy"]]
        for e in doc["intervention"]["stages"]:
            for name, v in e["variants"].items():
                rows.append([e["task"], name, v["removed"], v["removed_l1_share"], v["old_accuracy"],
                             v["new_accuracy"]])
        files["intervention.csv"] = _csv(rows)
    if doc.get("comparison"):
        rows = [["task", "statistic", "a", "b", "a_minus_b"]]
        for r in doc["comparison"]["stages"]:
            for k in SUMMARY_LABELS:
                rows.append([r["task"], k, r["a"][k], r["b"][k], r["a_minus_b"][k]])
            rows.append([r["task"], "drop", r["a_drop"], r["b_drop"],
                         None if r["a_drop"] is None or r["b_drop"] is None else r["a_drop"] - r["b_drop"]])
        files["comparison.csv"] = _csv(rows)
    if figures and doc["stages"]:
        files.update(render_figures(doc))
    return files


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _label(doc: dict) -> str:
    return Path(doc["store"]).name or doc["store"]


def render_figures(doc: dict) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    out = {}
    docs = [doc] + ([doc["compare"]] if doc.get("compare") else [])
    # Figure 1b: per stage, the pooled value distributions of H (before task t) and C (after) on shared bins.
    ncols = max(len(d["stages"]) for d in docs)
    fig, axes = plt.subplots(len(docs), ncols, figsize=(3.3 * ncols, 2.9 * len(docs)), squeeze=False)
    for r, d in enumerate(docs):
        for c in range(ncols):
            ax = axes[r][c]
            if c >= len(d["stages"]):
                ax.axis("off")
                continue
            st = d["stages"][c]
            hst = st["pooled"]["histogram"]
            edges = np.array(hst["edges"])
            for key, color, ls, label in (("history", "tab:blue", "-", "H (before)"),
                                          ("combined", "tab:orange", "-", "C = H + ΔW (after)"),
                                          ("delta", "tab:green", "--", "ΔW_t")):
                counts = np.array(hst[key], dtype=float)
                ax.stairs(np.where(counts > 0, counts, np.nan), edges, color=color, linestyle=ls, label=label)
            ax.set_yscale("log")
            sh = st["pooled"]["shift"]
            ax.set_title(f"{_label(d)}: {st['task']}  W1={sh['wasserstein1']:.2e} KS={sh['ks']:.3f}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(5, symmetric=True))
            ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
            ax.xaxis.get_offset_text().set_fontsize(7)
            if c == 0:
                ax.set_ylabel("entries (log)", fontsize=8)
            if r == len(docs) - 1:
                ax.set_xlabel("parameter update value", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=8, ncol=3, frameon=False)
    fig.suptitle("Parameter shift per stage, pooled over modules (shared bins)", fontsize=10, x=0.3)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    out["shift-histograms.png"] = _png(fig)

    # Sign agreement: per stage, same/opposite fractions with the conflict ratio and flip rate; and the opposite
    # fraction inside the top-k% subsets by the ranking key.
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4), gridspec_kw={"width_ratios": [1.15, 1], "wspace": 0.5})
    ax = axes[0]
    width = 0.8 / len(docs)
    tasks = [st["task"] for st in doc["stages"]]
    x = np.arange(len(tasks))
    for j, d in enumerate(docs):
        by_task = {st["task"]: st["summary"] for st in d["stages"]}
        pos = x - 0.4 + width * (j + 0.5)
        same = [_nan(by_task.get(t, {}).get("same_fraction")) for t in tasks]
        opp = [_nan(by_task.get(t, {}).get("opposite_fraction")) for t in tasks]
        ax.bar(pos, same, width * 0.9, color="tab:green", alpha=0.75 if j == 0 else 0.4,
               label=f"same sign ({_label(d)})")
        ax.bar(pos, opp, width * 0.9, bottom=same, color="tab:red", alpha=0.75 if j == 0 else 0.4,
               label=f"opposite sign ({_label(d)})")
        ax.plot(pos, [_nan(by_task.get(t, {}).get("conflict_ratio")) for t in tasks], "o" if j == 0 else "D",
                color="black", markeredgecolor="white", markersize=8, label=f"conflict ratio ({_label(d)})")
        ax.plot(pos, [_nan(by_task.get(t, {}).get("flip_rate")) for t in tasks], "v" if j == 0 else "^",
                color="navy", markeredgecolor="white", markersize=8, label=f"flip rate ({_label(d)})")
    ax.set_xticks(x, tasks)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction of entries (ΔW_t ≠ 0, H ≠ 0)")
    ax.set_title("sign of ΔW_t against the history H", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax = axes[1]
    all_tasks = list(dict.fromkeys(st["task"] for d in docs for st in d["stages"]))
    for j, d in enumerate(docs):
        for st in d["stages"]:
            ks = list(st["pooled"]["subsets"]["top"])
            ax.plot([float(k) for k in ks], [st["pooled"]["subsets"]["top"][k]["opposite"]["fraction"] for k in ks],
                    marker="o" if j == 0 else "s", linestyle="-" if j == 0 else "--",
                    color=f"C{all_tasks.index(st['task']) % 10}", label=f"{_label(d)} {st['task']}")
    ax.set_xscale("log")
    ax.set_xticks([float(k) for k in doc["ks"]], [str(k) for k in doc["ks"]])
    ax.minorticks_off()
    ax.set_xlabel(f"top-k% of entries by |{ {'delta': 'ΔW_t', 'history': 'H', 'combined': 'C'}[doc['rank_by']] }|")
    ax.set_ylabel("fraction with sign opposite to H")
    ax.set_ylim(bottom=0)
    ax.set_title("opposite-sign share among the largest entries", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.12, top=0.92)
    out["sign-agreement.png"] = _png(fig)

    if doc.get("intervention"):
        iv = doc["intervention"]
        names = [("none", "no change"), ("selected", f"{iv['subset']['sign']} sign, {iv['subset']['part']}-"
                                                     f"{iv['subset']['k']}%"),
                 ("other_sign", f"as many {iv['control_sign']}-sign"), ("random", "as many random")]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        itasks = [e["task"] for e in iv["stages"]]
        x = np.arange(len(itasks))
        width = 0.8 / len(names)
        for panel, key, title in ((0, "old_accuracy", "old tasks 1..t-1 (mean accuracy)"),
                                  (1, "new_accuracy", "new task t (accuracy)")):
            ax = axes[panel]
            for j, (name, label) in enumerate(names):
                vals = [100 * e["variants"][name][key] for e in iv["stages"]]
                ax.bar(x - 0.4 + width * (j + 0.5), vals, width * 0.9, label=label)
            ax.set_xticks(x, [f"{e['task']}\n({e['count']} zeroed)" for e in iv["stages"]])
            ax.set_ylabel(f"accuracy (%), {iv['kind'].replace('_', '-')}")
            ax.set_title(title, fontsize=10)
            ax.set_ylim(0, 100)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", fontsize=8, ncol=4, frameon=False)
        fig.suptitle(f"zeroing entries of ΔW_t before merging ({iv['merge']}); {_label(doc)}", fontsize=10)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        out["intervention.png"] = _png(fig)

    if doc.get("comparison"):
        cmp = doc["comparison"]
        titles = {"conflict_ratio": "conflict ratio Σ_{DH<0}|DH| / Σ|DH|",
                  "opposite_fraction": "opposite-sign fraction (D, H ≠ 0)",
                  "top_opposite_l1_share": f"opposite sign in top-{doc['k_ref']}%: share of ‖D‖₁",
                  "flip_rate": "flip rate: sign C ≠ sign H", "relative_norm": "relative norm ‖D‖/‖H‖",
                  "wasserstein1": "Wasserstein-1 (H, C)", "ks": "Kolmogorov–Smirnov (H, C)",
                  "drop": "old-task accuracy drop (points)"}
        fig, axes = plt.subplots(2, 4, figsize=(15, 6.5))
        x = np.arange(len(cmp["tasks"]))
        for ax, key in zip(axes.flat, titles):
            for j, side in enumerate(("a", "b")):
                if key == "drop":
                    vals = [100 * _nan(r[f"{side}_drop"]) for r in cmp["stages"]]
                else:
                    vals = [_nan(r[side][key]) for r in cmp["stages"]]
                other = doc if side == "a" else doc["compare"]
                ax.bar(x - 0.2 + 0.4 * j, vals, 0.38, label=f"{_label(other)} ({other['method']['merge']} merge)")
            ax.set_xticks(x, cmp["tasks"])
            ax.set_title(titles[key], fontsize=9)
            ax.tick_params(labelsize=8)
            ax.axhline(0, color="black", linewidth=0.6)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper right", fontsize=8, ncol=2, frameon=False)
        fig.suptitle("pooled shift statistics per stage: " + " vs ".join(
            _label(d) for d in (doc, doc["compare"])), fontsize=10, x=0.3)
        fig.tight_layout(rect=(0, 0, 1, 0.95))
        out["compare.png"] = _png(fig)
    return out


def _nan(v):
    return float("nan") if v is None else v


# -- terminal rendering ------------------------------------------------------------------------------------------

def _f(v, fmt: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return format(v, fmt)


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def print_analysis(reporter: Reporter, doc: dict) -> None:
    from rich import box
    from rich.table import Table

    def table(title: str, columns: list[str]) -> Table:
        t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
        for i, col in enumerate(columns):
            t.add_column(col, justify="left" if i == 0 else "right")
        return t

    for d in [doc] + ([doc["compare"]] if doc.get("compare") else []):
        k = d["k_ref"]
        t = table(f"{d['store']} ({d['method']['merge']} merge): shifts per stage, pooled over "
                  f"{len(d['modules'])} modules. D = ΔW_t, H = Σ earlier ΔW, C = H + D; D/H = ‖D‖/‖H‖; W1, KS "
                  f"between H and C; same% of entries with D, H ≠ 0; conflict = Σ_(DH<0)|DH| / Σ|DH|; flip% = sign C "
                  f"≠ sign H; top{k} opp% = opposite-sign % in the top-{k}% by |{d['rank_by']}|; drop% = old-task "
                  f"accuracy lost at this stage",
                  ["task", "D/H", "W1", "KS", "same%", "conflict", "flip%", f"top{k} opp%", "drop%"])
        for st in d["stages"]:
            s = st["summary"]
            t.add_row(st["task"], _f(s["relative_norm"]), _f(s["wasserstein1"], ".2e"), _f(s["ks"]),
                      _pct(s["same_fraction"]), _f(s["conflict_ratio"], ".4f"), _pct(s["flip_rate"]),
                      _pct(s["top_opposite_fraction"]), _pct((st["accuracy"] or {}).get("drop")))
        reporter.out.print(t)
        t = table(f"top-k% of entries by |{d['rank_by']}| (pooled): % with sign opposite to H / their % of ‖D‖₁",
                  ["task"] + [f"top {kk}%" for kk in d["ks"]])
        for st in d["stages"]:
            t.add_row(st["task"], *[f"{_pct(e['opposite']['fraction'])} / {_pct(e['opposite']['l1_share'])}"
                                    for e in st["pooled"]["subsets"]["top"].values()])
        reporter.out.print(t)
        corr = d["correlation"]
        if corr["points"] >= 3:
            t = table(f"correlation across {corr['points']} stages with the old-task accuracy drop",
                      ["statistic", "Pearson", "Spearman"])
            for key, v in corr["statistics"].items():
                t.add_row(SUMMARY_LABELS[key].replace("top-k%", f"top-{k}%"), _f(v["pearson"]), _f(v["spearman"]))
            reporter.out.print(t)
        else:
            reporter.out.print(f"correlation with the accuracy drop: {corr.get('note', 'not enough stages')}")
    if doc.get("intervention"):
        iv = doc["intervention"]
        sub = iv["subset"]
        t = table(f"intervention: zero entries of ΔW_t, then W0 + {iv['merge']} merge; accuracy % on old / new "
                  f"task ({iv['kind'].replace('_', '-')})",
                  ["task", "zeroed", "none", f"{sub['sign']} {sub['part']}{sub['k']}%", f"{iv['control_sign']} sign",
                   "random"])
        for e in iv["stages"]:
            v = e["variants"]
            t.add_row(e["task"], str(e["count"]),
                          *[f"{_pct(v[n]['old_accuracy'])} / {_pct(v[n]['new_accuracy'])}"
                        for n in ("none", "selected", "other_sign", "random")])
        reporter.out.print(t)
    if doc.get("comparison"):
        cmp = doc["comparison"]
        t = table(f"comparison, mean over stages {', '.join(cmp['tasks'])} (merges: {cmp['merge']['a']} vs "
                  f"{cmp['merge']['b']})",
                  ["statistic", _label(doc), _label(doc["compare"])])
        for key in list(SUMMARY_LABELS) + ["drop"]:
            label = "old-acc drop" if key == "drop" else SUMMARY_LABELS[key].replace("top-k%", f"top-{doc['k_ref']}%")
            t.add_row(label, _f(cmp["mean"]["a"][key], ".4f"), _f(cmp["mean"]["b"][key], ".4f"))
        reporter.out.print(t)
    if doc.get("files"):
        reporter.info("files: " + ", ".join(doc["files"]))
