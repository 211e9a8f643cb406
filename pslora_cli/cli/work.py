"""The commands that train, merge and evaluate: run, compare, train-task, merge, eval."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.merges import merges_help
from ..errors import InputError
from ..methods import methods_help
from .common import (DEFAULT_STORE, DeviceOpt, JsonOpt, QuietOpt, RestartOpt, SeedOpt, SetOpt, StoreOpt, ThreadsOpt,
                     comma_list, emit_json, session, show_matrix)

METRICS_HELP = """Metrics, from the accuracy matrix R (R[t][i] = accuracy on task i after training task t; row 0 =
base model; stage t = W0 + merge of tasks 1..t): ACC = mean_i R[T][i]; avg_incremental_accuracy = mean_t
mean_{i<=t} R[t][i]; BWT = mean_{i<T} (R[T][i] - R[i][i]) (negative = forgetting); FWT = mean_{i>=2}
(R[i-1][i] - R[0][i]) (language models only: with heads, task i's head was fitted to stage i-1, so FWT is null);
forgetting = mean_{j<T} (max_{j<=l<T} R[l][j] - R[T][j]); forgetting_last = mean_{j<T} (R[j][j] - R[T][j]);
learning_accuracy = mean_i R[i][i]. Undefined values (e.g. T = 1) are null, not 0."""


SplitOpt = Annotated[str, typer.Option(
    "--split", help="Score on test (the reported figures) or validation (drawn from the training side's unused "
                    "examples: choose settings here, report on test).")]


def check_split(split: str) -> str:
    if split not in ("test", "validation"):
        raise InputError(f"--split {split!r}: expected test or validation")
    return split


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)
    app.command("compare")(compare_cmd)
    app.command("train-task")(train_task_cmd)
    app.command("merge")(merge_cmd)
    app.command("eval", help="Build or complete the accuracy matrix and print it with the metrics.\n\n"
                             + METRICS_HELP)(eval_cmd)


def run_cmd(
    sequence: Annotated[Path, typer.Argument(help="Task sequence YAML file.")],
    data_dir: Annotated[Optional[Path], typer.Option(
        "--data-dir", help="Where the sequence's relative data paths resolve (default: the sequence file's "
                           "folder; compare's order files use the original sequence's).")] = None,
    store: StoreOpt = DEFAULT_STORE, device: DeviceOpt = "auto", seed: SeedOpt = None, json_: JsonOpt = False,
    quiet: QuietOpt = False, set_: SetOpt = None, threads: ThreadsOpt = None, restart: RestartOpt = False,
):
    """Train every task of SEQUENCE not yet in the store, evaluating after each; merge; report.

    An interrupted run (Ctrl-C, SIGTERM, a crash) continues where it stopped when run again.
    """
    from ..commands.run import run_sequence

    s = session(store, device, seed, json_, quiet, set_, threads)
    if data_dir is not None:
        if not data_dir.is_dir():
            raise InputError(f"--data-dir {data_dir}: not a folder")
        s.base_dir = data_dir
    result = run_sequence(s, str(sequence), restart=restart)
    if json_:
        emit_json(result)
    else:
        show_matrix(s.reporter, result["matrix"])


def compare_cmd(
    sequence: Annotated[Path, typer.Argument(help="Task sequence YAML file.")],
    methods: Annotated[str, typer.Option("--methods", help=f"Comma-separated methods ({methods_help()}).")]
    = "ps-lora,inc-lora,o-lora,seq-lora",
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds.")] = "0,1,2",
    orders: Annotated[int, typer.Option(
        "--orders", help="Task orders: 1 = as written, k > 1 adds seeded shuffles.")] = 1,
    out: Annotated[Path, typer.Option(
        "--out", help="Folder for the per-run stores and the summary.")] = Path("pslora-compare"),
    baseline: Annotated[Optional[str], typer.Option(
        "--baseline", help="The method the others are paired against (default: inc-lora if compared, else the "
                           "first).")] = None,
    split: SplitOpt = "test",
    jobs: Annotated[int, typer.Option("--jobs", help="Runs at a time, each in its own process (the CPU threads "
                                                     "split between them; one GPU each where several are "
                                                     "visible).")] = 1,
    plan: Annotated[bool, typer.Option("--plan", help="Print one self-contained `pslora run` command per run (for a "
                                                      "cluster's job array or GNU parallel) and run nothing.")] = False,
    collect: Annotated[bool, typer.Option("--collect", help="Summarise the runs whose stores are finished, train "
                                                            "nothing.")] = False,
    executor: Annotated[str, typer.Option("--executor", help="local: in this process (or --jobs processes); slurm: "
                                          "the unfinished runs as one Slurm job array through submitit (pip install "
                                          "'pslora[slurm]'), waited for, then summarised as --collect does; "
                                          "submitit-local: the same job array as local processes.")] = "local",
    partition: Annotated[Optional[str], typer.Option("--partition", help="slurm: the partition.")] = None,
    time_min: Annotated[int, typer.Option("--time", help="slurm / submitit-local: minutes each run may take.")]
    = 24 * 60,
    gpus_per_job: Annotated[int, typer.Option("--gpus-per-job", help="slurm / submitit-local: GPUs per run.")] = 0,
    cpus_per_job: Annotated[int, typer.Option("--cpus-per-job", help="slurm / submitit-local: CPUs (torch threads) "
                                                                     "per run.")] = 1,
    mem_gb: Annotated[Optional[int], typer.Option("--mem-gb", help="slurm: memory per run.")] = None,
    array_parallelism: Annotated[Optional[int], typer.Option(
        "--array-parallelism", help="slurm / submitit-local: runs at a time (default: the scheduler's).")] = None,
    log_folder: Annotated[Optional[Path], typer.Option("--log-folder", help="slurm / submitit-local: where the jobs' "
                                                       "logs go (default OUT/submitit).")] = None,
    device: DeviceOpt = "auto", json_: JsonOpt = False, quiet: QuietOpt = False, set_: SetOpt = None,
    threads: ThreadsOpt = None,
):
    """Run SEQUENCE with several methods x seeds x orders (one store each) and compare them.

    A task training identical in two runs (the first task of inc-lora, ps-lora and o-lora; a selection protocol's
    reference that is another method's task) is trained once and reused from OUT/task-cache. With
    `--set selection.protocol=stability-decay` every method's strength is chosen the same way (docs/methods.md)."""
    from ..commands.cluster import ClusterOptions
    from ..commands.compare import compare, print_summary

    s = session(out, device, None, json_, quiet, set_, threads)
    cluster = ClusterOptions(executor, partition, time_min, gpus_per_job, cpus_per_job, mem_gb, array_parallelism,
                             log_folder)
    try:
        seed_list = [int(v) for v in seeds.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--seeds {seeds!r}: expected comma-separated integers") from None
    if plan and collect:
        raise InputError("--plan and --collect: choose one")
    mode = "plan" if plan else "collect" if collect else "run"
    doc = compare(sequence, comma_list(methods) or [], seed_list, orders, out, s, baseline, check_split(split),
                  jobs=jobs, mode=mode, cluster=cluster)
    if json_:
        emit_json(doc)
    elif plan:
        s.reporter.out.print("\n".join(doc["commands"]), soft_wrap=True, highlight=False, markup=False)
    else:
        if doc["missing"]:
            s.reporter.info(f"{len(doc['missing'])} run(s) not finished, left out: {', '.join(doc['missing'])}")
        print_summary(s.reporter, doc)
        s.reporter.info(f"summary ({doc['split']} split): {', '.join(doc['files'])}; figure: {doc['figure']}")


def train_task_cmd(
    task: Annotated[str, typer.Option("--task", help="Task id from the sequence.")],
    sequence: Annotated[Optional[Path], typer.Option(
        "--sequence", help="Sequence YAML (needed for a new store).")] = None,
    eval_: Annotated[bool, typer.Option("--eval/--no-eval", help="Complete the accuracy matrix afterwards.")] = True,
    store: StoreOpt = DEFAULT_STORE, device: DeviceOpt = "auto", seed: SeedOpt = None, json_: JsonOpt = False,
    quiet: QuietOpt = False, set_: SetOpt = None, threads: ThreadsOpt = None, restart: RestartOpt = False,
):
    """Train one task against the earlier tasks' adapters already in the store (replaces it if present).

    Ctrl-C or SIGTERM saves a checkpoint; the same command then resumes from it (--restart starts over).
    """
    from ..commands.run import train_and_eval

    s = session(store, device, seed, json_, quiet, set_, threads)
    result = train_and_eval(s, task, str(sequence) if sequence else None, eval_, restart=restart)
    if json_:
        emit_json(result)
    elif result["matrix"]:
        show_matrix(s.reporter, result["matrix"])


def merge_cmd(
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Write the merged update here too (.safetensors).")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help=f"The merge (default: the sequence's method.merge): "
                                                                 f"{merges_help()}.")] = None,
    tasks: Annotated[Optional[str], typer.Option(
        "--tasks", help="Comma-separated task ids (default: all trained).")] = None,
    adapters: Annotated[Optional[list[Path]], typer.Option(
        "--adapters", help="PEFT LoRA adapter folders from anywhere (--adapters A B C), merged instead of a store's "
                           "tasks; --out FILE.safetensors writes the dense updates, --out DIR the base model with "
                           "the merge folded in.")] = None,
    base: Annotated[Optional[str], typer.Option(
        "--base", help="With --adapters and --out DIR: the base model (default: the adapters' "
                       "base_model_name_or_path).")] = None,
    density: Annotated[float, typer.Option("--density", help="With --adapters: TIES's density.")] = 0.2,
    scale: Annotated[Optional[float], typer.Option(
        "--scale", help="With --adapters: the scale of task-arithmetic (default 1) and magmax (default 0.5).")] = None,
    force: Annotated[bool, typer.Option("--force", help="With --adapters: replace a non-empty --out folder.")] = False,
    store: StoreOpt = DEFAULT_STORE, device: DeviceOpt = "auto", seed: SeedOpt = None, json_: JsonOpt = False,
    quiet: QuietOpt = False, set_: SetOpt = None, threads: ThreadsOpt = None,
):
    """Merge task adapters into one dense update keyed by the base model's parameter names, plus the heads.

    W0[key] + merged[key] is the merged weight of each adapted module. With --adapters, any PEFT LoRA adapters
    of one base model (ranks and alphas may differ) instead of the store's.
    """
    from ..commands.merge import merge_tasks

    if adapters:
        if tasks:
            raise InputError("--tasks: picks a store's tasks; with --adapters every adapter given is merged")
        merge_adapters_cmd(adapters, out, method, base, density, scale, force, device, json_, quiet, threads)
        return
    s = session(store, device, seed, json_, quiet, set_, threads, merges=(method,))
    seq, st, _ = s.open()
    if out is not None and out.suffix != ".safetensors":
        raise InputError(f"--out {out}: the merged update is written as .safetensors")
    with st.locked():
        info = merge_tasks(seq, st, method or seq.method.merge, comma_list(tasks), out, s.device)
    if json_:
        emit_json(info)
    else:
        s.reporter.out.print(f"merged {', '.join(info['tasks'])} ({info['method']}, {info['modules']} modules) -> "
                             + ", ".join(info["files"]))


def merge_adapters_cmd(adapters, out, method, base, density, scale, force, device, json_, quiet, threads) -> None:
    from ..adapter_sets import merge_adapter_set

    s = session(DEFAULT_STORE, device, None, json_, quiet, None, threads)
    if out is None:
        raise InputError("--out: with --adapters, give FILE.safetensors (the dense updates) or a folder (the model)")
    info = merge_adapter_set(list(adapters), method or "magnitude", out, s.device, base=base, density=density,
                             scale=scale, force=force)
    if json_:
        emit_json(info)
    else:
        s.reporter.out.print(f"merged {len(info['adapters'])} adapters ({info['method']}, {info['modules']} modules) "
                             f"-> {info['out']} ({info['kind']})")


def eval_cmd(
    split: SplitOpt = "test",
    store: StoreOpt = DEFAULT_STORE, device: DeviceOpt = "auto", seed: SeedOpt = None, json_: JsonOpt = False,
    quiet: QuietOpt = False, set_: SetOpt = None, threads: ThreadsOpt = None,
):
    from ..commands.run import evaluate_store

    s = session(store, device, seed, json_, quiet, set_, threads)
    doc = evaluate_store(s, check_split(split))
    if json_:
        emit_json(doc)
    else:
        show_matrix(s.reporter, doc)

