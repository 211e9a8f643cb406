"""`pslora store ls` and `pslora store verify`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .common import DEFAULT_STORE, JsonOpt, StoreOpt, emit_json

store_app = typer.Typer(help="Inspect and check the adapter store.", no_args_is_help=True)


@store_app.command("ls")
def store_ls(store: StoreOpt = DEFAULT_STORE, json_: JsonOpt = False):
    """What the store holds: the sequence, each task's state, merges, the matrix."""
    from rich.console import Console
    from rich.table import Table

    from ..store import Store
    from ..commands.store import store_listing

    listing = store_listing(Store(store))
    if json_:
        emit_json(listing)
        return
    table = Table(title=f"{listing['store']}: sequence {listing['sequence']!r} ({listing['scenario']}), "
                        f"base model {listing['base_model']['name']}", title_justify="left")
    for col in ("task", "trained", "classes", "train examples", "steps", "seconds", "final loss", "chosen"):
        table.add_column(col)
    for t in listing["tasks"]:
        trained = "yes" if t["trained"] else "no"
        if "checkpoint_step" in t:
            trained += f" (checkpoint at step {t['checkpoint_step']}: resumable)" if t["checkpoint_step"] is not None \
                else " (damaged checkpoint)"
        table.add_row(t["id"], trained, ", ".join(t.get("classes", [])),
                      str(t.get("num_train", "")), str(t.get("steps", "")), str(t.get("seconds", "")),
                      f"{t['final_loss']:.4f}" if "final_loss" in t else "",
                      ", ".join(f"{k}={v:g}" for k, v in ((t.get("selection") or {}).get("values") or {}).items()))
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
    from ..store import Store
    from ..commands.store import verify_store

    report = verify_store(Store(store), check_shapes=shapes)
    if json_:
        emit_json(report)
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
