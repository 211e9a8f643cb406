"""The `pslora` command line: parse, call workflow, render. Heavy libraries are imported inside the
commands so that `pslora --help` stays fast.

Exit codes: 0 ok; 1 failure while working; 2 bad input (usage, sequence, data, store), with one line that
names the file, key or line; 130 interrupted (training state saved; the same command resumes).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import InputError, Interrupted, WorkError

METRICS_HELP = """Metrics, from the accuracy matrix R (R[t][i] = accuracy on task i after training task t; row 0 =
base model; stage t = W0 + merge of tasks 1..t): ACC = mean_i R[T][i]; avg_incremental_accuracy = mean_t
mean_{i<=t} R[t][i]; BWT = mean_{i<T} (R[T][i] - R[i][i]) (negative = forgetting); FWT = mean_{i>=2}
(R[i-1][i] - R[0][i]) (task-aware: task i's head on stage i-1); forgetting = mean_{j<T} (max_{1<=l<T} R[l][j]
- R[T][j]); forgetting_last = mean_{j<T} (R[j][j] - R[T][j]); learning_accuracy = mean_i R[i][i]. Undefined
values (e.g. T = 1) are null, not 0."""

app = typer.Typer(
    name="pslora",
    help="Continual learning with LoRA: PS-LoRA's Parameter Stability Loss and magnitude merge.\n\n"
         "Typical use: pslora run task_sequences/wordnet-nouns.yaml",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
store_app = typer.Typer(help="Inspect and check the adapter store.", no_args_is_help=True)
app.add_typer(store_app, name="store")

StoreOpt = Annotated[Path, typer.Option("--store", help="Store folder.", envvar="PSLORA_STORE")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Override the sequence's seed.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout; logs go to stderr.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or logs on stderr.")]
RestartOpt = Annotated[bool, typer.Option("--restart", help="Discard a saved training checkpoint and train from "
                                                             "the start (default: resume from it).")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override a sequence field: key.path=value (YAML value); repeatable, e.g. "
                  "--set method.stability_weight=0 --set tasks.t1.data.train_per_class=50.")]
DEFAULT_STORE = Path("pslora-store")
DISTRIBUTED = ("run", "train-task", "eval")  # the commands that run under torchrun (several processes)


def _options(store, device, seed, json_, quiet, set_):
    from .workflow import Options

    return Options(store=store, device=device, seed=seed, overrides=list(set_ or []), json=json_, quiet=quiet)


def _is_main_rank() -> bool:
    """False on the ranks other than 0 of a torchrun launch: they print nothing (rank 0 reports)."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def _reporter(opts):
    from .report import Reporter

    if not _is_main_rank():
        return Reporter(quiet=True, json_mode=True)
    return Reporter(quiet=opts.quiet, json_mode=opts.json)


def _emit_json(obj) -> None:
    if _is_main_rank():
        sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _show_matrix(reporter, doc) -> None:
    from .report import print_matrix

    if reporter.json_mode:
        return
    print_matrix(reporter, doc, doc["trained_prefix"])
    if doc.get("figures"):
        reporter.info("figures: " + ", ".join(doc["figures"]))


@app.command("run")
def run_cmd(
    sequence: Annotated[Path, typer.Argument(help="Task sequence YAML file.")],
    store: StoreOpt = DEFAULT_STORE, device: DeviceOpt = "auto", seed: SeedOpt = None, json_: JsonOpt = False,
    quiet: QuietOpt = False, set_: SetOpt = None, restart: RestartOpt = False,
):
    """Train every task of SEQUENCE not yet in the store, evaluating after each; merge; report.

    An interrupted run (Ctrl-C, SIGTERM, a crash) continues where it stopped when run again.
    """
    from .workflow import resolve_device, run_sequence

    opts = _options(store, device, seed, json_, quiet, set_)
    reporter = _reporter(opts)
    result = run_sequence(opts, str(sequence), resolve_device(opts.device), reporter, restart=restart)
    if opts.json:
        _emit_json(result)
    else:
        _show_matrix(reporter, result["matrix"])


@app.command("compare")
def compare_cmd(
    sequence: Annotated[Path, typer.Argument(help="Task sequence YAML file.")],
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated methods: ps-lora, ps-lora+o-lora, "
                                         "ps-loss-only, ps-merge-only, inc-lora, o-lora, seq-lora, multitask, per-task, custom.")]
    = "ps-lora,inc-lora,o-lora,seq-lora",
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds.")] = "0,1,2",
    orders: Annotated[int, typer.Option("--orders", help="Task orders: 1 = as written, k > 1 adds seeded shuffles.")] = 1,
    out: Annotated[Path, typer.Option("--out", help="Folder for the per-run stores and the summary.")] = Path("pslora-compare"),
    device: DeviceOpt = "auto", json_: JsonOpt = False, quiet: QuietOpt = False, set_: SetOpt = None,
):
    """Run SEQUENCE with several methods x seeds x orders (one store each) and compare them."""
    from .compare import compare, print_summary
    from .workflow import resolve_device

    opts = _options(out, device, None, json_, quiet, set_)
    reporter = _reporter(opts)
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--seeds {seeds!r}: expected comma-separated integers") from None
    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    doc = compare(sequence, method_list, seed_list, orders, out, opts, resolve_device(device), reporter)
    if opts.json:
        _emit_json(doc)
    else:
        print_summary(reporter, doc)
        reporter.info(f"summary: {out / 'compare.json'}, {out / 'compare.csv'}; figure: {doc['figure']}")


@app.command("train-task")
def train_task_cmd(
    task: Annotated[str, typer.Option("--task", help="Task id from the sequence.")],
    sequence: Annotated[Optional[Path], typer.Option("--sequence", help="Sequence YAML (needed for a new store).")] = None,
    eval_: Annotated[bool, typer.Option("--eval/--no-eval", help="Complete the accuracy matrix afterwards.")] = True,
    store: StoreOpt = DEFAULT_STORE, device: DeviceOpt = "auto", seed: SeedOpt = None, json_: JsonOpt = False,
    quiet: QuietOpt = False, set_: SetOpt = None, restart: RestartOpt = False,
):
    """Train one task against the earlier tasks' adapters already in the store (replaces it if present).

    Ctrl-C or SIGTERM saves a checkpoint; the same command then resumes from it (--restart starts over).
    """
    from .workflow import (check_predecessors, complete_eval, data_loader, ensure_created, open_store,
                           resolve_device, train_one, writing)

    opts = _options(store, device, seed, json_, quiet, set_)
    reporter = _reporter(opts)
    dev = resolve_device(opts.device)
    seq, st, text = open_store(opts, str(sequence) if sequence else None, create=True)
    i = check_predecessors(seq, st, task)
    load = data_loader(seq)
    load(i)
    with writing(st):
        ensure_created(seq, st, text, reporter)
        meta = train_one(seq, st, task, dev, reporter, load, restart=restart)
        doc = complete_eval(seq, st, dev, reporter, load) if eval_ else None
    if opts.json:
        _emit_json({"store": str(st.root), "task": meta, "matrix": doc})
    elif doc:
        _show_matrix(reporter, doc)


@app.command("merge")
def merge_cmd(
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the merged update here too (.safetensors).")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help="magnitude (default), sum or mean.")] = None,
    tasks: Annotated[Optional[str], typer.Option("--tasks", help="Comma-separated task ids (default: all trained).")] = None,
    store: StoreOpt = DEFAULT_STORE, device: DeviceOpt = "auto", seed: SeedOpt = None, json_: JsonOpt = False,
    quiet: QuietOpt = False, set_: SetOpt = None,
):
    """Merge task adapters into one dense update keyed by the base model's parameter names, plus the heads.

    W0[key] + merged[key] is the merged weight of each adapted module.
    """
    from .workflow import merge_tasks, open_store, resolve_device

    opts = _options(store, device, seed, json_, quiet, set_)
    reporter = _reporter(opts)
    dev = resolve_device(opts.device)
    seq, st, _ = open_store(opts, None, create=False)
    if out is not None and out.suffix != ".safetensors":
        raise InputError(f"--out {out}: the merged update is written as .safetensors")
    ids = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    with st.locked():
        info = merge_tasks(seq, st, method or seq["method"]["merge"], ids, out, dev)
    if opts.json:
        _emit_json(info)
    else:
        reporter.out.print(f"merged {', '.join(info['tasks'])} ({info['method']}, {info['modules']} modules) -> "
                           + ", ".join(info["files"]))


@app.command("eval", help="Build or complete the accuracy matrix and print it with the metrics.\n\n" + METRICS_HELP)
def eval_cmd(
    store: StoreOpt = DEFAULT_STORE, device: DeviceOpt = "auto", seed: SeedOpt = None, json_: JsonOpt = False,
    quiet: QuietOpt = False, set_: SetOpt = None,
):
    from .workflow import complete_eval, data_loader, open_store, resolve_device, writing

    opts = _options(store, device, seed, json_, quiet, set_)
    reporter = _reporter(opts)
    dev = resolve_device(opts.device)
    seq, st, _ = open_store(opts, None, create=False)
    with writing(st):
        doc = complete_eval(seq, st, dev, reporter, data_loader(seq))
    if opts.json:
        _emit_json(doc)
    else:
        _show_matrix(reporter, doc)


@app.command("analyze-shifts")
def analyze_shifts_cmd(
    compare: Annotated[Optional[Path], typer.Option(
        "--compare", help="Another store to analyse side by side (read only), e.g. one trained without the "
                          "stability loss.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Also write the JSON, CSV and PNG files here.")] = None,
    rank_by: Annotated[str, typer.Option("--rank-by", help="Ranking key of the top/bottom-k% subsets: delta "
                                                           "(|ΔW_t|), history (|H|) or combined (|C|).")] = "delta",
    ks: Annotated[str, typer.Option("--ks", help="Subset sizes in % of the entries.")] = "1,5,10,20,50",
    tasks: Annotated[Optional[str], typer.Option("--tasks", help="Comma-separated stages to analyse (task ids "
                                                                 "from the second on; default: all).")] = None,
    intervene: Annotated[bool, typer.Option("--intervene", help="Figure 2: zero the --subset entries of ΔW_t and "
                                                                "re-evaluate the old tasks (loads the model and "
                                                                "data).")] = False,
    subset: Annotated[str, typer.Option("--subset", help="SIGN:PART:K for --intervene: same|opposite, top|bottom, "
                                                         "K in %.")] = "opposite:top:10",
    bins: Annotated[int, typer.Option("--bins", help="Histogram bins.")] = 61,
    max_samples: Annotated[int, typer.Option("--max-samples", help="Above this many entries, quantiles, W1 and KS "
                                                                   "use a seeded subsample of this size.")] = 1 << 21,
    figures: Annotated[bool, typer.Option("--figures/--no-figures", help="Write the PNG figures.")] = True,
    store: StoreOpt = DEFAULT_STORE, device: DeviceOpt = "auto", seed: SeedOpt = None, json_: JsonOpt = False,
    quiet: QuietOpt = False, set_: SetOpt = None,
):
    """The paper's parameter-shift analysis of the stored adapters (no model load unless --intervene).

    For each stage t >= 2, per module and pooled: D = ΔW_t, H = sum of the earlier ΔW, C = H + D; quantiles and
    shared-bin histograms, ‖D‖/‖H‖, Wasserstein-1 and KS between H and C, sign agreement (same/opposite
    fraction where both are nonzero, conflict ratio Σ_{DH<0}|DH| / Σ|DH|, flip rate sign C ≠ sign H), top and
    bottom-k% subsets split by sign with their share of ‖D‖₁; correlation with the old-task accuracy drop when
    the store has an accuracy matrix. Files go to STORE/analysis/ and --out.
    """
    from .analysis import AnalysisOptions, analyze_shifts, parse_ks, parse_rank_by, print_analysis

    opts = _options(store, device, seed, json_, quiet, set_)
    reporter = _reporter(opts)
    aopts = AnalysisOptions(rank_by=parse_rank_by(rank_by), ks=parse_ks(ks), bins=bins, max_samples=max_samples,
                            tasks=[t.strip() for t in tasks.split(",") if t.strip()] if tasks else None,
                            intervene=intervene, subset=subset, compare=compare, out=out, figures=figures)
    doc = analyze_shifts(opts, aopts, reporter)
    if opts.json:
        _emit_json(doc)
    else:
        print_analysis(reporter, doc)


@store_app.command("ls")
def store_ls(store: StoreOpt = DEFAULT_STORE, json_: JsonOpt = False):
    """What the store holds: the sequence, each task's state, merges, the matrix."""
    from rich.console import Console
    from rich.table import Table

    from .store import Store
    from .workflow import store_listing

    listing = store_listing(Store(store))
    if json_:
        _emit_json(listing)
        return
    table = Table(title=f"{listing['store']}: sequence {listing['sequence']!r} ({listing['scenario']}), "
                        f"base model {listing['base_model']['name']}", title_justify="left")
    for col in ("task", "trained", "classes", "train examples", "steps", "seconds", "final loss"):
        table.add_column(col)
    for t in listing["tasks"]:
        trained = "yes" if t["trained"] else "no"
        if "checkpoint_step" in t:
            trained += f" (checkpoint at step {t['checkpoint_step']}: resumable)" if t["checkpoint_step"] is not None \
                else " (damaged checkpoint)"
        table.add_row(t["id"], trained, ", ".join(t.get("classes", [])),
                      str(t.get("num_train", "")), str(t.get("steps", "")), str(t.get("seconds", "")),
                      f"{t['final_loss']:.4f}" if "final_loss" in t else "")
    console = Console(highlight=False)
    console.print(table)
    console.print(f"merges: {', '.join(listing['merges']) or 'none'}")
    console.print(f"accuracy matrix: {listing['matrix'] or 'none yet (pslora eval)'}")


@store_app.command("verify")
def store_verify(
    store: StoreOpt = DEFAULT_STORE, json_: JsonOpt = False,
    shapes: Annotated[bool, typer.Option("--shapes/--no-shapes", help="Also check each adapter's shapes against "
                                                                      "the base model (loads it).")] = True,
):
    """Check the store: every file against its recorded sha256, the folders against the manifest's sequence,
    each adapter's modules and shapes against the base model, merges and checkpoints. Exit 2 on any problem."""
    from .store import Store
    from .workflow import verify_store

    report = verify_store(Store(store), check_shapes=shapes)
    if json_:
        _emit_json(report)
    else:
        for line in report["warnings"]:
            print(f"pslora: warning: {line}", file=sys.stderr)
        for line in report["problems"]:
            print(f"pslora: problem: {line}", file=sys.stderr)
        if report["ok"]:
            print(f"{report['store']}: ok ({len(report['tasks'])} task(s) verified)")
        else:
            print(f"{report['store']}: {len(report['problems'])} problem(s)", file=sys.stderr)
    return 0 if report["ok"] else 2


def _prog() -> str:
    """How messages start: "pslora", or "pslora[rank N/W]" under torchrun so a failing rank is named."""
    size = os.environ.get("WORLD_SIZE", "1").strip()
    return "pslora" if size in ("", "1") else f"pslora[rank {os.environ.get('RANK', '?')}/{size}]"


def main(argv: list[str] | None = None) -> int:
    try:  # typer >= 0.22 vendors its own click
        from typer._click import exceptions as click_exceptions
    except ImportError:  # pragma: no cover - older typer on real click
        from click import exceptions as click_exceptions

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # PEFT calls a transformers API that transformers 5 marks deprecated; the warning is not the user's.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "1") and argv and argv[0] not in DISTRIBUTED:
            raise InputError(f"`pslora {argv[0]}` runs in one process; under torchrun only "
                             f"{', '.join(DISTRIBUTED)} are supported")
        result = app(args=argv, standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click_exceptions.UsageError as exc:
        exc.show()
        return 2
    except typer.Abort:
        print("pslora: aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("pslora: interrupted", file=sys.stderr)
        return 130
    except InputError as exc:
        print(f"{_prog()}: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"{_prog()}: {exc}", file=sys.stderr)
        return 130
    except WorkError as exc:
        print(f"{_prog()}: failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - one line for users; the traceback with PSLORA_DEBUG=1
        if os.environ.get("PSLORA_DEBUG"):
            raise
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if _prog() != "pslora" and any(s in line for s in ("Connection closed", "Connection reset", "NCCL", "gloo")):
            # A collective failed: another rank crashed or was killed. Rank 0 writes only finished work.
            print(f"{_prog()}: failed: another rank stopped during a collective operation, so every rank stops; "
                  f"the task under way was not saved ({line[:160]})", file=sys.stderr)
            return 1
        print(f"{_prog()}: failed: {type(exc).__name__}: {line} (PSLORA_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    finally:
        if "torch" in sys.modules:
            from .distributed import shutdown

            shutdown()


def _entry(argv: list[str] | None = None) -> None:
    sys.exit(main(argv))


if __name__ == "__main__":
    _entry()
