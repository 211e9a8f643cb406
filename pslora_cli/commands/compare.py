"""`pslora compare`: run one sequence with several methods, seeds and task orders, each into its own store,
and summarise ACC, BWT, FWT, forgetting and learning accuracy as mean ± std, and each method's paired difference
from a baseline (same seed, same order) with its 95 % interval.
"""

from __future__ import annotations

import csv
import contextlib
import dataclasses
import io
import math
import os
import random
import time
from pathlib import Path

import yaml

from ..config import parse_yaml
from ..core.metrics import paired_interval, prompt_paired_interval
from ..errors import InputError
from ..methods import METHODS
from .grid import GridRun, run_record
from .run import evaluate_store, run_sequence
from ..session import Session
from ..store import atomic_path, write_json_atomic, write_text_atomic

SUMMARY_METRICS = ("acc", "bwt", "fwt", "forgetting", "learning_accuracy", "avg_incremental_accuracy")
SPLIT_METRICS = ("bwt_backbone", "bwt_heads")  # core.metrics.forgetting_split


def order_files(sequence_file: Path, orders: int, out_dir: Path) -> list[Path]:
    """Order 1 is the sequence as written; order k > 1 is a permutation of its tasks seeded by k."""
    if orders == 1:
        return [sequence_file]
    raw = parse_yaml(sequence_file.read_text(encoding="utf-8"), str(sequence_file))
    if not isinstance(raw, dict) or not isinstance(raw.get("tasks"), list):
        raise InputError(f"{sequence_file}: tasks: required: a non-empty list of tasks")
    files = [sequence_file]
    for k in range(2, orders + 1):
        tasks = list(raw["tasks"])
        random.Random(k).shuffle(tasks)
        path = out_dir / "orders" / f"order{k}.yaml"
        write_text_atomic(path, f"# {sequence_file.name} with its tasks in order {k} (seeded shuffle)\n"
                                + yaml.safe_dump({**raw, "tasks": tasks}, sort_keys=False))
        files.append(path)
    return files


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


PAIRED_METRICS = ("acc", "bwt")


def default_baseline(methods: list[str]) -> str:
    """inc-lora when compared (the plain continual LoRA every method should beat), else the first method."""
    return "inc-lora" if "inc-lora" in methods else methods[0]


def compare(sequence_file: Path, methods: list[str], seeds: list[int], orders: int, out_dir: Path,
            base: Session, baseline: str | None = None, split: str = "test", jobs: int = 1,
            mode: str = "run", cluster=None) -> dict:
    """mode "run": train what is missing (in `jobs` processes when > 1, or as one job array when `cluster`, a
    commands.cluster.ClusterOptions, names slurm or submitit-local) and summarise; "plan": only the list of
    self-contained `pslora run` commands, one per run; "collect": summarise the stores that are finished."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"--methods: unknown method {unknown[0]!r} (known: {', '.join(METHODS)})")
    if not methods:
        raise InputError("--methods: give at least one method")
    baseline = baseline or default_baseline(methods)
    if baseline not in methods:
        raise InputError(f"--baseline {baseline!r}: not one of --methods ({', '.join(methods)})")
    if not seeds:
        raise InputError("--seeds: give at least one seed")
    if orders < 1:
        raise InputError("--orders: must be >= 1")
    if jobs < 1:
        raise InputError(f"--jobs {jobs}: must be at least 1")
    array = cluster is not None and cluster.executor != "local"
    if array:
        cluster.check()
        if mode != "run" or jobs > 1:
            raise InputError(f"--executor {cluster.executor}: runs the grid as a job array; it does not go with "
                             f"--plan, --collect or --jobs")
    if not sequence_file.is_file():
        raise InputError(f"{sequence_file}: sequence file not found")
    files = order_files(sequence_file, orders, out_dir)
    # a merge option given to the grid is for the methods whose merge takes it (MagMax's scale beside ps-lora)
    base = dataclasses.replace(base, merges=tuple(dict.fromkeys(METHODS[m].merge for m in methods if METHODS[m].merge)))
    grid = [GridRun(method, order, seed, file, out_dir / method / f"order{order}-seed{seed}", sequence_file.parent)
            for method in methods for order, file in enumerate(files, start=1) for seed in seeds]
    if mode == "plan":
        from .grid import plan_commands

        return {"sequence": str(sequence_file), "runs": len(grid), "commands": plan_commands(grid, base, split)}
    if mode == "collect":
        from .grid import collect_runs

        runs, missing = collect_runs(grid, base, split)
        if not runs:
            raise InputError(f"{out_dir}: no finished store of this grid yet ({len(missing)} runs to go)")
    else:
        with task_cache(out_dir):
            if array:
                from .cluster import submit_array
                from .grid import collect_runs

                submit_array(grid, base, out_dir, cluster)
                runs, missing = collect_runs(grid, base, split)
            elif jobs > 1:
                from .grid import collect_runs, run_parallel

                run_parallel(grid, base, jobs, out_dir)
                runs, missing = collect_runs(grid, base, split)
            else:
                runs, missing = [_run_here(run, base, sequence_file, split) for run in grid], []
    summary = {}
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        summary[method] = {"runs": len(mine)}
        for metric in SUMMARY_METRICS:
            values = [r["metrics"].get(metric) for r in mine]
            summary[method][metric] = dict(zip(("mean", "std"), _mean_std(values)))
        summary[method]["fwt_task_aware"] = dict(zip(("mean", "std"), _mean_std([r["fwt_task_aware"] for r in mine])))
        for part in SPLIT_METRICS:  # class-incremental only: where the forgetting sits
            values = [(r["forgetting_split"] or {}).get(part) for r in mine]
            summary[method][part] = dict(zip(("mean", "std"), _mean_std(values)))
    doc = {"sequence": str(sequence_file), "split": split, "methods": methods, "seeds": seeds, "orders": orders,
           "primary": "task_agnostic or task_aware per the sequence's scenario", "summary": summary,
           "paired": paired_differences(runs, methods, baseline), "runs": runs,
           "missing": [str(r.store) for r in missing]}
    name = "compare" if split == "test" else f"compare-{split}"  # the validation summary beside the test one
    write_json_atomic(out_dir / f"{name}.json", doc)
    write_text_atomic(out_dir / f"{name}.csv", summary_csv(summary))
    name = "curves.png" if split == "test" else f"curves-{split}.png"
    doc["figure"] = str(plot_curves(runs, methods, out_dir / name))
    doc["files"] = [str(out_dir / f"{name}.json"), str(out_dir / f"{name}.csv")]
    return doc


@contextlib.contextmanager
def task_cache(out_dir: Path):
    """The grid's runs share OUT/task-cache (training/cache.py) unless PSLORA_TASK_CACHE is set (empty: off)."""
    from ..training.cache import ENV

    if ENV in os.environ:
        yield
        return
    os.environ[ENV] = str(Path(out_dir).resolve() / "task-cache")
    try:
        yield
    finally:
        os.environ.pop(ENV, None)


def _run_here(run: GridRun, base: Session, sequence_file: Path, split: str) -> dict:
    """One run in this process: train what its store lacks, then its matrix on `split`."""
    session = dataclasses.replace(base, store_path=run.store, seed=run.seed, json=True,
                                  overrides=list(base.overrides) + [f"method.name={run.method}"],
                                  base_dir=sequence_file.parent)
    base.reporter.info(f"== {run.method}, order {run.order}, seed {run.seed} -> {run.store}")
    started = time.perf_counter()
    result = run_sequence(session, str(run.file))
    doc = result["matrix"] if split == "test" else evaluate_store(session, split)
    return run_record(run, doc, result["trained"], round(time.perf_counter() - started, 1))


def paired_differences(runs: list[dict], methods: list[str], baseline: str) -> dict:
    """Each other method minus the baseline on the same (order, seed): mean and 95 % t interval per metric."""
    def by_run(method):
        return {(r["order"], r["seed"]): r["metrics"] for r in runs if r["method"] == method}

    base = by_run(baseline)
    out = {"baseline": baseline, "methods": {}}
    for method in methods:
        if method == baseline:
            continue
        mine = by_run(method)
        keys = sorted(set(mine) & set(base))
        out["methods"][method] = {
            metric: paired_interval([mine[k][metric] - base[k][metric] for k in keys
                                     if mine[k].get(metric) is not None and base[k].get(metric) is not None])
            for metric in PAIRED_METRICS}
        # per (order, seed): the ACC difference over the same test prompts (the test set's sampling only)
        hits = {method: {(r["order"], r["seed"]): r.get("last_hits") for r in runs if r["method"] == method}
                for method in (method, baseline)}
        out["methods"][method]["acc_per_prompt"] = [
            {"order": k[0], "seed": k[1], **prompt_paired_interval(hits[method][k], hits[baseline][k])}
            for k in keys if _complete(hits[method].get(k)) and _complete(hits[baseline].get(k))]
    return out


def _complete(last_hits: list | None) -> bool:
    return bool(last_hits) and None not in last_hits


def summary_csv(summary: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    metrics = SUMMARY_METRICS + ("fwt_task_aware",)
    w.writerow(["method", "runs"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")])
    for method, row in summary.items():
        w.writerow([method, row["runs"]] + [row[m][s] for m in SUMMARY_METRICS + ("fwt_task_aware",)
                                            for s in ("mean", "std")])
    return buf.getvalue()


def seen_accuracy_curve(matrix: list[list]) -> list[float | None]:
    """Mean accuracy over the tasks seen so far, after each stage (rows 1..T)."""
    curve = []
    for t in range(1, len(matrix)):
        values = [v for v in matrix[t][:t] if v is not None]
        curve.append(sum(values) / len(values) if values else None)
    return curve


def plot_curves(runs: list[dict], methods: list[str], path: Path) -> Path:
    """Left: mean accuracy on the tasks seen so far after each stage, per method (mean ± std band). Right: the
    final ACC per method with its std. The y-axes are zoomed to the data: the methods often differ by a few points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax, bars) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    names, finals, errors, colors = [], [], [], []
    for method in methods:
        curves = np.array([[np.nan if v is None else 100 * v for v in seen_accuracy_curve(r["matrix"])]
                           for r in runs if r["method"] == method], dtype=float)
        if curves.size == 0:
            continue
        mean = np.nanmean(curves, axis=0)
        std = np.nanstd(curves, axis=0, ddof=1) if curves.shape[0] > 1 else np.zeros_like(mean)  # as the table's
        stages = np.arange(1, curves.shape[1] + 1)
        (line,) = ax.plot(stages, mean, marker="o", label=method)
        ax.fill_between(stages, mean - std, mean + std, alpha=0.15, color=line.get_color())
        acc = [100 * r["metrics"]["acc"] for r in runs if r["method"] == method and r["metrics"].get("acc") is not None]
        if acc:
            names.append(method)
            finals.append(float(np.mean(acc)))
            errors.append(float(np.std(acc, ddof=1)) if len(acc) > 1 else 0.0)
            colors.append(line.get_color())
    ax.set_xlabel("after training task")
    ax.set_ylabel("mean accuracy on tasks seen so far (%)")
    ax.set_xticks(np.arange(1, max(len(r["matrix"]) for r in runs)))
    ax.legend(fontsize=8)
    ax.set_title("accuracy curves (mean ± std over seeds and orders)", fontsize=10)
    if finals:
        y = np.arange(len(names))
        bars.barh(y, finals, xerr=errors, color=colors, alpha=0.8, capsize=3)
        bars.set_yticks(y, names, fontsize=8)
        bars.invert_yaxis()
        low = max(0.0, min(f - e for f, e in zip(finals, errors)) - 5)
        bars.set_xlim(low, min(100.0, max(f + e for f, e in zip(finals, errors)) + 4))
        for yi, f, e in zip(y, finals, errors):
            bars.text(f + e, yi, f"  {f:.1f}", va="center", fontsize=8)
        bars.set_xlabel("final ACC (%), mean ± std")
        bars.set_title("final ACC (the x-axis does not start at 0)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def print_summary(reporter, doc: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{doc['sequence']}: {len(doc['seeds'])} seed(s) x {doc['orders']} order(s); accuracy "
                        f"points, mean ± std (BWT < 0 = forgetting)", title_justify="left")
    table.add_column("method", style="bold", no_wrap=True)
    columns = [("acc", "ACC"), ("bwt", "BWT"), ("fwt_task_aware", "FWT (task-aware)"), ("forgetting", "forgetting"),
               ("learning_accuracy", "learning acc.")]
    # class-incremental: the BWT split into the backbone's part (task-aware) and the heads' part
    split = any((row.get("bwt_heads") or {}).get("mean") is not None for row in doc["summary"].values())
    if split:
        columns += [("bwt_backbone", "BWT backbone"), ("bwt_heads", "BWT heads")]
    for _, header in columns:
        table.add_column(header, justify="right", no_wrap=True)
    for method, row in doc["summary"].items():
        cells = []
        for m, _ in columns:
            stat = row.get(m) or {}
            mean, std = stat.get("mean"), stat.get("std")
            cells.append("—" if mean is None else f"{100 * mean:.1f} ± {100 * std:.1f}")
        table.add_row(_display_name(method, split), *cells)
    reporter.out.print(table)
    paired = doc.get("paired") or {}
    if paired.get("methods"):
        reporter.out.print(_paired_table(paired, split))
    for line in selection_lines(doc.get("runs") or []):
        reporter.out.print(line, markup=False, highlight=False)


def selection_lines(runs: list[dict]) -> list[str]:
    """What a selection protocol chose in each run, with the validation accuracy of the reference and of each try:
    the numbers behind the ACC a user is reading."""
    lines = []
    for run in runs:
        chosen, protocol = [], None
        for task, record in (run.get("selection") or {}).items():
            protocol = protocol or (record or {}).get("protocol")
            # a note: a task no knob acts on, or a later task of first-tasks (it repeats the first tasks' choice)
            if record and record.get("values") and not record.get("note"):
                where = f"the first {record['first_tasks']} tasks" if record.get("first_tasks") else task
                text = _choice(where, record)
                if text not in chosen:  # first-tasks keeps one record on each of the first k tasks
                    chosen.append(text)
            if record and (record.get("merge") or {}).get("values"):
                chosen.append(_choice(f"the merge at {task}", record["merge"]))
        if chosen:
            lines.append(f"{run['method']} seed {run['seed']} order {run['order']}, chosen on validation by "
                         f"{protocol}: " + "; ".join(chosen))
    return lines


def _choice(where: str, record: dict) -> str:
    details = [] if record.get("reference") is None else [f"reference {100 * record['reference']:.1f}"]
    tries = [a for a in record.get("attempts") or [] if a.get("accuracy") is not None]
    if tries:
        details.append("tries " + ", ".join("/".join(f"{v:g}" for v in a["values"].values())
                                            + f": {100 * a['accuracy']:.1f}" for a in tries))
    if record.get("accepted") is False:
        details.append("none within the tolerance: the last kept")
    values = ", ".join(f"{k}={v:g}" for k, v in record["values"].items())
    return f"{where} {values}" + (f" ({'; '.join(details)})" if details else "")


def _paired_table(paired: dict, class_incremental: bool):
    from rich.table import Table

    table = Table(title=f"paired differences from {paired['baseline']} (same seed and order): mean [95 % t interval], "
                        "points", title_justify="left")
    table.add_column("method", style="bold", no_wrap=True)
    table.add_column("pairs", justify="right")
    for metric in PAIRED_METRICS:
        table.add_column(f"Δ {metric.upper()}", justify="right", no_wrap=True)
    # one seed and order: no t interval, but the difference over the same test prompts has one
    one_pair = all(row["acc"]["n"] == 1 and len(row.get("acc_per_prompt", [])) == 1
                   for row in paired["methods"].values())
    if one_pair:
        table.add_column("Δ ACC over the test prompts", justify="right", no_wrap=True)
    for method, row in paired["methods"].items():
        cells = [_interval_cell(row[metric]) for metric in PAIRED_METRICS]
        if one_pair:
            cells.append(_interval_cell(row["acc_per_prompt"][0]))
        table.add_row(f"{_display_name(method, class_incremental)} − {paired['baseline']}", str(row["acc"]["n"]),
                      *cells)
    return table


def _interval_cell(d: dict) -> str:
    return ("—" if d["mean"] is None else f"{100 * d['mean']:+.1f}" if d["low"] is None else
            f"{100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]")


def _display_name(method: str, class_incremental: bool) -> str:
    """per-task picks each test example's adapter by its task: on a class-incremental sequence that is an oracle
    told the task, not a competitor."""
    return f"{method} (oracle: told the task)" if class_incremental and method == "per-task" else method
