"""A compare grid beyond one process: each run as a self-contained `pslora run` command (`compare --plan`, for a
cluster's job array or GNU parallel), several of them at once on this machine (`compare --jobs N`: the CPU threads
split between them, one GPU each where several are visible), and the summary of whatever stores are finished
(`compare --collect`)."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from ..config.validate import applies_to_merge
from ..errors import InputError, WorkError
from ..methods import METHODS
from ..runtime import default_threads
from ..session import Session


@dataclasses.dataclass(frozen=True)
class GridRun:
    method: str
    order: int
    seed: int
    file: Path
    store: Path
    data_dir: Path  # where the sequence's relative data paths resolve: the written sequence's folder


def run_record(run: GridRun, doc: dict, trained: list[str] | None, seconds: float | None) -> dict:
    """What the summary keeps of one run's matrix."""
    return {"method": run.method, "order": run.order, "seed": run.seed, "store": str(run.store),
            "wall_seconds": seconds, "trained": trained, "tasks": doc["tasks"],
            "matrix": doc[doc["primary"]], "metrics": doc["metrics"].get("primary", {}),
            "fwt_task_aware": doc["metrics"].get("task_aware", {}).get("fwt"),
            "forgetting_split": doc["metrics"].get("forgetting_split"),
            "selection": doc.get("selection"),  # what a selection protocol chose per task, if one ran
            # the last row's per-prompt records (None where a cell has none): per-prompt paired differences
            "last_hits": ((doc.get("hits") or {}).get(doc["primary"]) or [None])[-1]}


def run_argv(run, base: Session, threads: int | None = None) -> list[str]:
    """The `pslora run` arguments of one grid run: absolute paths, its seed, method and the grid's overrides (a
    merge option only for a run whose merge takes it: the grid's settings apply where they mean something)."""
    argv = ["run", str(Path(run.file).resolve()), "--store", str(Path(run.store).resolve()), "--seed", str(run.seed),
            "--set", f"method.name={run.method}", "--data-dir", str(Path(run.data_dir).resolve())]
    for override in base.overrides:
        if applies_to_merge(override, METHODS[run.method].merge):
            argv += ["--set", override]
    argv += ["--device", base.device_name]
    if threads is not None:
        argv += ["--threads", str(threads)]
    return argv


def plan_commands(grid: list, base: Session, split: str) -> list[str]:
    """One shell line per run; for the validation split each trains and then scores validation."""
    lines = []
    for run in grid:
        line = shlex.join(["pslora", *run_argv(run, base, base.threads), "--quiet"])
        if split != "test":
            line += " && " + shlex.join(["pslora", "eval", "--store", str(Path(run.store).resolve()), "--split",
                                         split, "--quiet"])
        lines.append(line)
    return lines


def _devices(base: Session) -> list[str | None]:
    """What each process sees as its GPU: one visible device each where several are visible, else no choice."""
    if base.device_name == "cpu":
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip()]
    else:
        try:
            import torch

            ids = [str(i) for i in range(torch.cuda.device_count())]
        except Exception:  # noqa: BLE001 - no torch CUDA: the CPU
            ids = []
    return ids if len(ids) > 1 else [None]


PROGRESS_EVERY = 30.0  # seconds between the progress lines of the running runs
_TASK_LINE = re.compile(r"training task (\S+) \((\d+)/(\d+)\)")
_STEP_LINE = re.compile(r"task (\S+): step (\d+)/(\d+) .*?([\d.]+) step/s")
# stability decay logs "task X: selection (...) try-N: ...", first-tasks "selection (first-tasks) try-N: ..."
_TRY_LINE = re.compile(r"(?:task (\S+): )?selection \([\w-]+\) (reference|try-\d+): (.*)")
_CHOSE_LINE = re.compile(r"selection \([\w-]+\) chose ")


def _last(pattern: re.Pattern, text: str) -> re.Match | None:
    match = None
    for match in pattern.finditer(text):
        pass
    return match


def run_progress(log: Path, elapsed: float) -> str:
    """One line on a running grid run from its log: the task (i/T), the selection protocol's try when one is
    training, the step, and a rough ETA for the run (the steps left at the current task's rate; evaluation is not
    counted, and under a selection protocol the tries still to come are not either: the ETA is then a least)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 8192))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return "no log yet"
    task, step, attempt = _last(_TASK_LINE, tail), _last(_STEP_LINE, tail), _last(_TRY_LINE, tail)
    if not task:
        return f"starting ({elapsed:.0f} s)"
    task_id, i, total_tasks = task[1], int(task[2]), int(task[3])
    chose = _last(_CHOSE_LINE, tail)
    selecting = (attempt is not None and attempt[1] in (None, task_id)
                 and (chose is None or chose.start() < attempt.start()))
    text = f"task {i}/{total_tasks} ({task_id}"
    if selecting:
        text += f", {'the reference' if attempt[2] == 'reference' else attempt[2]}: {attempt[3]}"
    text += ")"
    # a step line of this training only: not one of the previous try's (a try taken from the cache logs none)
    if step and step[1] == task_id and step.start() > max(task.start(), attempt.start() if selecting else 0):
        done, total_steps, rate = int(step[2]), int(step[3]), float(step[4])
        text += f", step {done}/{total_steps}"
        if rate > 0:
            left = (total_steps - done + (total_tasks - i) * total_steps) / rate
            text += f", ETA {'≥ ' if selecting else ''}~{left / 60:.0f} min of training"
    return text + f" ({elapsed / 60:.0f} min so far)"


def run_parallel(grid: list, base: Session, jobs: int, out_dir: Path) -> None:
    """Run the grid's runs `jobs` at a time as `pslora run` processes (each resumes its store); logs in
    OUT/logs/. A failed run is reported and the others go on; any failure ends with a WorkError naming them. The
    matrices (and the validation split's) are read and completed afterwards by `collect_runs`."""
    threads = max(1, (base.threads or default_threads()) // jobs)
    devices = _devices(base)
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pending, running, failed = list(enumerate(grid)), {}, []
    free_devices = list(range(len(devices))) * max(1, -(-jobs // len(devices)))
    last_report = time.perf_counter()
    while pending or running:
        if time.perf_counter() - last_report >= PROGRESS_EVERY and running:
            last_report = time.perf_counter()
            for run, name, log, slot, started in running.values():
                base.reporter.info(f"   {name}: {run_progress(logs / (name + '.log'), time.perf_counter() - started)}")
        while pending and len(running) < jobs:
            i, run = pending.pop(0)
            slot = free_devices.pop(0)
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            if devices[slot] is not None:
                env["CUDA_VISIBLE_DEVICES"] = devices[slot]
            name = f"{run.method}-order{run.order}-seed{run.seed}"
            log = open(logs / f"{name}.log", "w", encoding="utf-8")
            # not --quiet: the run's progress lines fill its log as it goes, and the watcher reads them from there
            argv = [sys.executable, "-m", "pslora_cli", *run_argv(run, base, threads)]
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, env=env)
            running[proc] = (run, name, log, slot, time.perf_counter())
            base.reporter.info(f"== started {name} ({i + 1}/{len(grid)}, {threads} thread(s)"
                               + (f", GPU {devices[slot]}" if devices[slot] is not None else "") + ")")
        time.sleep(0.2)
        for proc in [p for p in running if p.poll() is not None]:
            run, name, log, slot, started = running.pop(proc)
            log.close()
            free_devices.insert(0, slot)
            seconds = time.perf_counter() - started
            if proc.returncode != 0:
                failed.append(name)
                base.reporter.info(f"== {name} failed (exit {proc.returncode}; {logs / (name + '.log')})")
            else:
                base.reporter.info(f"== finished {name} in {seconds:.0f} s")
    if failed:
        raise WorkError(f"{len(failed)} of {len(grid)} runs failed: {', '.join(failed)} (logs in {logs}); "
                        f"rerun to resume them")


def collect_runs(grid: list, base: Session, split: str) -> tuple[list[dict], list]:
    """(the record of every finished run, the runs not finished): a finished store has every task trained; its
    matrix on `split` is completed where cells are missing (scoring only, nothing is trained)."""
    from ..config import load_sequence
    from .run import evaluate_store
    from ..session import check_same_training
    from ..store import Store

    runs, missing = [], []
    for run in grid:
        store = Store(run.store)
        if not store.exists():
            missing.append(run)
            continue
        seq, _ = load_sequence(run.file, list(base.overrides) + [f"method.name={run.method}", f"seed={run.seed}"],
                               base_dir=run.data_dir, also_merges=base.merges)
        if len(store.trained_prefix(seq.task_ids)) < len(seq.tasks):
            missing.append(run)
            continue
        check_same_training(seq, store)
        session = dataclasses.replace(base, store_path=run.store, seed=run.seed, json=True,
                                      overrides=list(base.overrides) + [f"method.name={run.method}"])
        try:
            doc = evaluate_store(session, split)
        except InputError as exc:
            raise InputError(f"{run.store}: {exc}") from None
        runs.append(run_record(run, doc, None, None))
    return runs, missing
