"""What every command shares: the option types, the Session they build, JSON output, the matrix display."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

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
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", envvar="PSLORA_THREADS",
    help="CPU threads for torch (default: OMP_NUM_THREADS, else half the cores: a thread waiting for a core another "
         "process holds stalls every step, so using every core collapses on a busy machine). Results can differ in "
         "the last bits between thread counts; a run and its resumption should use the same.")]
DEFAULT_STORE = Path("pslora-store")


def is_main_rank() -> bool:
    """False on the ranks other than 0 of a torchrun launch: they print nothing (rank 0 reports)."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def session(store, device="auto", seed=None, json_=False, quiet=False, set_=None, threads=None, merges=()):
    """The Session of a command (ranks other than 0 report nothing)."""
    from ..report import Reporter
    from ..session import Session

    reporter = Reporter(quiet=quiet, json_mode=json_) if is_main_rank() else Reporter(quiet=True, json_mode=True)
    return Session(store_path=store, device_name=device, seed=seed, overrides=list(set_ or []), json=json_,
                   quiet=quiet, reporter=reporter, threads=threads, merges=tuple(m for m in merges if m))


def emit_json(obj) -> None:
    if is_main_rank():
        sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def show_matrix(reporter, doc) -> None:
    from ..report import print_matrix

    if reporter.json_mode:
        return
    print_matrix(reporter, doc, doc["trained_prefix"])
    if doc.get("figures"):
        reporter.info("figures: " + ", ".join(doc["figures"]))


def comma_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None
