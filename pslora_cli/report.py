"""Terminal output (rich, on stderr unless it is the result), progress, and the PNG figures."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rich.console import Console
from rich.table import Table

METRIC_ORDER = ["acc", "acc_weighted", "avg_incremental_accuracy", "bwt", "fwt", "forgetting",
                "forgetting_last", "learning_accuracy"]


class Reporter:
    """Logs and progress go to stderr; the result goes to stdout (a table, or one JSON document with --json)."""

    def __init__(self, quiet: bool = False, json_mode: bool = False):
        self.quiet, self.json_mode = quiet, json_mode
        # Piped to a file or a CI log, rich would assume 80 columns and cut the tables; give them room instead.
        self.err = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 160)
        self.out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)

    def info(self, message: str) -> None:
        if not self.quiet:
            self.err.print(message, markup=False)

    @contextmanager
    def steps(self, description: str) -> Iterator:
        """A progress callback (step, total, stats): a rich bar on a terminal, plain lines otherwise."""
        if self.quiet:
            yield lambda step, total_, stats: None
            return
        if self.err.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=self.err,
                          transient=False) as bar:
                task = bar.add_task(description, total=None, stats="")
                started = time.perf_counter()

                def update(step: int, total_: int, stats: dict) -> None:
                    rate = step / max(time.perf_counter() - started, 1e-9)
                    bar.update(task, completed=step, total=total_, stats=_stats_text(stats) + f" {rate:.1f} step/s")

                yield update
            return
        started = time.perf_counter()

        def plain(step: int, total_: int, stats: dict) -> None:
            if step % max(1, total_ // 10) == 0 or step == total_:
                rate = step / max(time.perf_counter() - started, 1e-9)
                print(f"{description}: step {step}/{total_} {_stats_text(stats)} {rate:.1f} step/s",
                      file=sys.stderr, flush=True)

        yield plain


def _stats_text(stats: dict) -> str:
    if "loss" not in stats:  # progress without training statistics (e.g. predict)
        return ""
    from .methods import TERMS

    parts = [f"loss {stats['loss']:.4f}"]
    # Four significant digits: a regulariser's raw value can be 1e-7 (EWC on LoRA factors) or 1e4 (N-LoRA's L1).
    parts += [f"{term.short} {stats[f'{name}_loss']:.4g}" for name, term in TERMS.items() if stats.get(f"{name}_loss")]
    parts.append(f"acc {stats['train_accuracy']:.2f}")
    return " ".join(parts)


def _fmt(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def matrix_table(doc: dict, name: str, k: int) -> Table:
    grid = doc[name]
    scorer = doc.get("scorer", "heads")
    title = {"task_agnostic": "Accuracy (%) — task-agnostic: argmax over all classes seen so far",
             "task_aware": "Accuracy (%) — task-aware: each task's own head" if scorer == "heads" else
             f"Accuracy (%) — {scorer} of the answers to each task's prompts"}[name]
    if doc.get("split", "test") != "test":
        title += f" [{doc['split']} split]"
    table = Table(title=title, title_justify="left")
    table.add_column("after \\ on", style="bold")
    for task_id in doc["tasks"][:k]:
        table.add_column(task_id, justify="right")
    for t in range(k + 1):
        label = "base" if t == 0 else doc["tasks"][t - 1]
        table.add_row(label, *[_fmt(v) for v in grid[t][:k]])
    return table


def metrics_table(metrics: dict, primary: str) -> Table:
    table = Table(title="Continual-learning metrics (accuracy points; BWT < 0 = forgetting)", title_justify="left")
    table.add_column("metric", style="bold")
    names = [n for n in ("task_agnostic", "task_aware") if n in metrics]
    for n in names:
        table.add_column(n.replace("_", "-") + (" (primary)" if n == primary else ""), justify="right")
    for m in METRIC_ORDER:
        row = []
        for n in names:
            v = metrics[n].get(m)
            row.append("—" if v is None else f"{100 * v:+.1f}" if m in ("bwt", "fwt") else f"{100 * v:.1f}")
        table.add_row(m, *row)
    return table


def print_matrix(reporter: Reporter, doc: dict, k: int) -> None:
    for name in ("task_agnostic", "task_aware"):
        if doc.get(name) is not None:
            reporter.out.print(matrix_table(doc, name, k))
    if doc.get("metrics"):
        reporter.out.print(metrics_table(doc["metrics"], doc["primary"]))
        for metric, note in (doc["metrics"].get("notes") or {}).items():
            reporter.out.print(f"{metric.upper()} is {note}.", markup=False, highlight=False)
        for task_id, record in (doc.get("selection") or {}).items():
            reporter.out.print(selection_line(task_id, record), markup=False, highlight=False)
        split = doc["metrics"].get("forgetting_split") or {}
        if split.get("mostly"):
            agnostic = 100 * (split['bwt_backbone'] + split['bwt_heads'])
            reporter.out.print(f"Forgetting (task-agnostic BWT {agnostic:+.1f}): "
                               f"backbone {100 * split['bwt_backbone']:+.1f} (task-aware BWT), heads "
                               f"{100 * split['bwt_heads']:+.1f}; mostly in the {split['mostly']}.")


def selection_line(task_id: str, record: dict) -> str:
    """One line: what the selection protocol chose for a task, on what (validation) accuracy."""
    if not record.get("values"):
        return f"selection ({record['protocol']}) {task_id}: {record.get('note', 'nothing chosen')}"
    values = ", ".join(f"{k}={v:g}" for k, v in record["values"].items())
    tries = " / ".join(f"{_fmt(a['accuracy'])}" for a in record.get("attempts", []))
    ref = f", reference {_fmt(record['reference'])}" if record.get("reference") is not None else ""
    note = f" ({record['note']})" if record.get("note") else ""
    return f"selection ({record['protocol']}) {task_id}: {values}{note}; validation accuracy of the tries {tries}{ref}"


def plot_matrix(doc: dict, k: int, out_dir: Path) -> list[Path]:
    """Heatmap of the primary accuracy matrix and accuracy curves per task; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .store import atomic_path

    if k == 0:
        return []
    grid = doc[doc["primary"]]
    ids = doc["tasks"][:k]
    values = np.array([[np.nan if v is None else 100 * v for v in row[:k]] for row in grid[:k + 1]])
    written = []
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * k, 1.0 + 0.7 * (k + 1)))
    im = ax.imshow(values, vmin=0, vmax=100, cmap="viridis")
    ax.set_xticks(range(k), ids)
    ax.set_yticks(range(k + 1), ["base"] + ids)
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("after training")
    for t in range(k + 1):
        for i in range(k):
            if not np.isnan(values[t, i]):
                ax.text(i, t, f"{values[t, i]:.0f}", ha="center", va="center",
                        color="white" if values[t, i] < 60 else "black", fontsize=8)
    split = "" if doc.get("split", "test") == "test" else f", {doc['split']} split"
    ax.set_title(f"accuracy (%), {doc['primary'].replace('_', '-')}{split}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    written.append(_save(fig, out_dir / "matrix.png", atomic_path))
    fig, ax = plt.subplots(figsize=(6, 4))
    stages = np.arange(1, k + 1)
    for i in range(k):
        ax.plot(stages[i:], values[1 + i:, i], marker="o", label=ids[i])
    avg = [np.nanmean(values[t, :t]) for t in range(1, k + 1)]
    ax.plot(stages, avg, color="black", linewidth=2.5, label="mean of seen tasks")
    ax.set_xticks(stages, ids)
    ax.set_xlabel("after training")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("accuracy on each task as the sequence goes on")
    fig.tight_layout()
    written.append(_save(fig, out_dir / "curves.png", atomic_path))
    return written


def _save(fig, path: Path, atomic_path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
