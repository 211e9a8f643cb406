"""The commands that use the continual model: export (a folder the stock libraries open) and predict."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.merges import merges_help
from .common import DEFAULT_STORE, DeviceOpt, JsonOpt, QuietOpt, StoreOpt, ThreadsOpt, emit_json, session

MergeOpt = Annotated[Optional[str], typer.Option("--merge", help=f"The merge of the task updates (default: the "
                                                                 f"sequence's method.merge): {merges_help()}.")]


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
    app.command("predict")(predict_cmd)


def export_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder to write (must not exist, or be empty; see --force).")],
    task: Annotated[Optional[str], typer.Option("--task", help="Export this task's own model (its update alone, "
                                                              "its head) instead of the merge of all tasks.")] = None,
    merge: MergeOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a folder that is not empty.")] = False,
    store: StoreOpt = DEFAULT_STORE, device: DeviceOpt = "auto", json_: JsonOpt = False, quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
):
    """Write the continual model (W0 + the merged updates, and the heads or prompts) as a folder that transformers
    or timm opens without pslora, with a README.md model card."""
    from ..commands.export import export_model

    s = session(store, device, None, json_, quiet, None, threads)
    seq, st, _ = s.open()
    command = "pslora " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["export"] else ""
    info = export_model(seq, st, s.device, out, task, merge, force, command)
    if json_:
        emit_json(info)
    else:
        s.reporter.out.print(f"exported {info['kind']} model of {', '.join(info['tasks'])} "
                             f"({info['merge'] or 'own update'}) -> {info['out']}: {', '.join(info['files'])}")


def predict_cmd(
    input_: Annotated[str, typer.Option("--input", help="Text lines or JSON Lines with a \"text\" field (text "
                                                       "models); an image or a folder of images (image models); "
                                                       "- reads stdin.")],
    task: Annotated[Optional[str], typer.Option("--task", help="The task the inputs belong to (default: unknown: "
                                                              "predict over every class seen).")] = None,
    merge: MergeOpt = None,
    store: StoreOpt = DEFAULT_STORE, device: DeviceOpt = "auto", json_: JsonOpt = False, quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
):
    """Predict with the continual model: one line per input (label, score, input), or one JSON document."""
    from ..commands.predict import predict

    s = session(store, device, None, json_, quiet, None, threads)
    seq, st, _ = s.open()
    with s.reporter.steps("predict") as progress:
        doc = predict(seq, st, s.device, input_, task, merge, progress)
    if json_:
        emit_json(doc)
        return
    for p in doc["predictions"]:  # tab-separated, for shell pipelines (rich would turn the tabs into spaces)
        print(f"{_field(p['label'])}\t{p['score']:.4f}\t{_field(p['input'])}")


def _field(text) -> str:
    """One TSV field: tabs, newlines and backslashes escaped, so that every prediction stays one line."""
    return str(text).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
