"""A compare grid beyond one process: each run as a self-contained `pslora run` command (`compare --plan`, for a
cluster's job array or GNU parallel), several of them at once on this machine (`compare --jobs N`: the CPU threads
split between them, one GPU each where several are visible), and the summary of whatever stores are finished
(`compare --collect`)."""

from __future__ import annotations

import dataclasses
import os
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
    while pending or running:
        while pending and len(running) < jobs:
            i, run = pending.pop(0)
            slot = free_devices.pop(0)
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            if devices[slot] is not None:
                env["CUDA_VISIBLE_DEVICES"] = devices[slot]
            name = f"{run.method}-order{run.order}-seed{run.seed}"
            log = open(logs / f"{name}.log", "w", encoding="utf-8")
            argv = [sys.executable, "-m", "pslora_cli", *run_argv(run, base, threads), "--quiet"]
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
    from .compare import run_record
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
