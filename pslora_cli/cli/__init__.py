"""The `pslora` command line: each command parses its options, calls one library function and renders the result.
Heavy libraries are imported inside the commands so that `pslora --help` stays fast.

Exit codes: 0 ok; 1 failure while working; 2 bad input (usage, sequence, data, store), with one line that
names the file, key or line; 130 interrupted (training state saved; the same command resumes).
"""

from __future__ import annotations

import os
import sys
import warnings

import typer

from ..errors import InputError, Interrupted, WorkError
from . import analyze, store, use, work

app = typer.Typer(
    name="pslora",
    help="Continual learning with LoRA: PS-LoRA's Parameter Stability Loss and magnitude merge.\n\n"
         "Typical use: pslora run task_sequences/wordnet-nouns.yaml",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
work.register(app)
use.register(app)
app.command("analyze-shifts")(analyze.analyze_shifts_cmd)
app.add_typer(store.store_app, name="store")
DISTRIBUTED = ("run", "train-task", "eval")  # the commands that run under torchrun (several processes)


def expand_multiple(argv: list[str], flag: str) -> list[str]:
    """`--adapters A B C` as the parser takes it, `--adapters A --adapters B --adapters C`: the values that follow
    the flag up to the next option."""
    out, taking = [], False
    for arg in argv:
        if arg == flag:
            taking = True
            continue
        if taking and not arg.startswith("-"):
            out += [flag, arg]
            continue
        taking = False
        out.append(arg)
    return out


def _prog() -> str:
    """How messages start: "pslora", or "pslora[rank N/W]" under torchrun so a failing rank is named."""
    size = os.environ.get("WORLD_SIZE", "1").strip()
    return "pslora" if size in ("", "1") else f"pslora[rank {os.environ.get('RANK', '?')}/{size}]"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # PEFT calls a transformers API that transformers 5 marks deprecated; the warning is not the user's.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from ..methods import check_plugins

        check_plugins()
        if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "1") and argv and argv[0] not in DISTRIBUTED:
            raise InputError(f"`pslora {argv[0]}` runs in one process; under torchrun only "
                             f"{', '.join(DISTRIBUTED)} are supported")
        result = app(args=expand_multiple(argv, "--adapters"), standalone_mode=False)
        return result if isinstance(result, int) else 0
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one line and an exit code
        return _exit_code(exc)
    finally:
        if "torch" in sys.modules:
            from ..distributed import shutdown

            shutdown()


def _exit_code(exc: BaseException) -> int:
    """Print one line for a failure and return its exit code."""
    try:  # typer >= 0.22 vendors its own click
        from typer._click import exceptions as click_exceptions
    except ImportError:  # pragma: no cover - older typer on real click
        from click import exceptions as click_exceptions

    if isinstance(exc, click_exceptions.UsageError):
        exc.show()
        return 2
    if isinstance(exc, (typer.Abort, KeyboardInterrupt)):
        print(f"pslora: {'aborted' if isinstance(exc, typer.Abort) else 'interrupted'}", file=sys.stderr)
        return 130
    if isinstance(exc, InputError):
        print(f"{_prog()}: error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, Interrupted):
        print(f"{_prog()}: {exc}", file=sys.stderr)
        return 130
    if isinstance(exc, WorkError):
        print(f"{_prog()}: failed: {exc}", file=sys.stderr)
        return 1
    if not isinstance(exc, Exception) or os.environ.get("PSLORA_DEBUG"):
        raise exc
    line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if _prog() != "pslora" and any(s in line for s in ("Connection closed", "Connection reset", "NCCL", "gloo")):
        # A collective failed: another rank crashed or was killed. Rank 0 writes only finished work.
        print(f"{_prog()}: failed: another rank stopped during a collective operation, so every rank stops; "
              f"the task under way was not saved ({line[:160]})", file=sys.stderr)
        return 1
    print(f"{_prog()}: failed: {type(exc).__name__}: {line} (PSLORA_DEBUG=1 shows the traceback)", file=sys.stderr)
    return 1


def _entry(argv: list[str] | None = None) -> None:
    sys.exit(main(argv))
