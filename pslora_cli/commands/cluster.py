"""`pslora compare --executor slurm`: a grid's runs as one job array through submitit (no daemon; the same
`pslora run` command per run that `--plan` prints), waited for and then summarised as `--collect` does.
`--executor submitit-local` runs the same path with submitit's local executor (the runs as local processes), which
is how the tests run it. submitit is an optional extra: `pip install 'pslora[slurm]'`."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from ..errors import InputError, WorkError
from ..session import Session

EXECUTORS = ("local", "slurm", "submitit-local")
INSTALL = "pip install 'pslora[slurm]' (or pip install submitit)"


@dataclasses.dataclass(frozen=True)
class ClusterOptions:
    """How the job array is asked for (compare's --partition, --time, --gpus-per-job, ...)."""
    executor: str = "local"
    partition: str | None = None
    time_min: int = 24 * 60
    gpus_per_job: int = 0
    cpus_per_job: int = 1
    mem_gb: int | None = None
    array_parallelism: int | None = None
    log_folder: Path | None = None

    def check(self) -> None:
        if self.executor not in EXECUTORS:
            raise InputError(f"--executor {self.executor!r}: expected one of {', '.join(EXECUTORS)}")
        for flag, value in (("--time", self.time_min), ("--cpus-per-job", self.cpus_per_job)):
            if value < 1:
                raise InputError(f"{flag} {value}: must be at least 1")
        if self.gpus_per_job < 0:
            raise InputError(f"--gpus-per-job {self.gpus_per_job}: must be 0 or more")
        if self.array_parallelism is not None and self.array_parallelism < 1:
            raise InputError(f"--array-parallelism {self.array_parallelism}: must be at least 1")


def load_submitit(executor: str):
    try:
        import submitit
    except ImportError:
        raise InputError(f"--executor {executor} needs the package submitit: {INSTALL}") from None
    return submitit


def grid_job(argv: list[str], env: dict[str, str]) -> str:
    """One grid run as a job: `pslora run ...` in a child process (its output goes to the job's log); a run that
    fails fails the job, naming its exit status."""
    proc = subprocess.run([sys.executable, "-m", "pslora_cli", *argv], env={**os.environ, **env}, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"pslora {' '.join(argv[:2])} --store {argv[3]} exited with status {proc.returncode}")
    return argv[3]


def finished(run, base: Session) -> bool:
    """Whether a grid run's store has every task of its sequence trained (nothing to submit for it)."""
    from ..config import load_sequence
    from ..store import Store

    store = Store(run.store)
    if not store.exists():
        return False
    seq, _ = load_sequence(run.file, list(base.overrides) + [f"method.name={run.method}", f"seed={run.seed}"],
                           base_dir=run.data_dir, also_merges=base.merges)
    return len(store.trained_prefix(seq.task_ids)) >= len(seq.tasks)


def submit_array(grid: list, base: Session, out_dir: Path, options: ClusterOptions) -> dict:
    """Submit the unfinished runs of `grid` as one job array (submitit-local: in waves of --array-parallelism) and
    wait for them. Returns what was submitted; a WorkError names the runs that failed (their logs)."""
    from .grid import run_argv

    submitit = load_submitit(options.executor)
    todo = [run for run in grid if not finished(run, base)]
    folder = Path(options.log_folder or out_dir / "submitit").resolve()
    record = {"executor": options.executor, "log_folder": str(folder), "runs": len(todo), "jobs": []}
    if not todo:
        base.reporter.info("== every run of the grid is finished: nothing to submit")
        return record
    cluster = "slurm" if options.executor == "slurm" else "local"
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster)
    params = {"timeout_min": options.time_min, "cpus_per_task": options.cpus_per_job,
              "gpus_per_node": options.gpus_per_job, "name": f"pslora-{Path(out_dir).name}", "tasks_per_node": 1,
              "nodes": 1}
    if options.mem_gb:
        params["mem_gb"] = options.mem_gb
    if cluster == "slurm":
        params["slurm_partition"] = options.partition
        params["slurm_array_parallelism"] = options.array_parallelism
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    env = {"OMP_NUM_THREADS": str(options.cpus_per_job)}
    from ..training.cache import ENV

    if os.environ.get(ENV):
        env[ENV] = os.environ[ENV]  # the grid's shared task cache
    argvs = [run_argv(run, base, options.cpus_per_job) + ["--quiet"] for run in todo]
    wave = len(todo) if cluster == "slurm" else (options.array_parallelism or len(todo))
    failed = []
    for start in range(0, len(todo), wave):
        part = argvs[start:start + wave]
        jobs = executor.map_array(grid_job, part, [env] * len(part))
        ids = [job.job_id for job in jobs]
        record["jobs"] += ids
        base.reporter.info(f"== submitted {len(part)} run(s) as job array {ids[0].split('_')[0]} ({cluster}); logs "
                           f"in {folder}; waiting (an interrupt leaves the jobs running: compare --collect "
                           f"summarises them when they are done)")
        for job, run in zip(jobs, todo[start:start + wave]):
            name = f"{run.method}-order{run.order}-seed{run.seed}"
            try:
                job.result()
                base.reporter.info(f"== finished {name} (job {job.job_id})")
            except Exception as exc:  # noqa: BLE001 - submitit's failed/timeout/cancelled job states alike
                first = str(exc).strip().splitlines()
                failed.append(f"{name} (job {job.job_id}: {first[-1] if first else type(exc).__name__})")
    if failed:
        raise WorkError(f"{len(failed)} of {len(todo)} runs failed: {'; '.join(failed)} (logs in {folder}); "
                        f"submit again to resume them")
    return record
