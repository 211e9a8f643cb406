"""benchmarks/results/stores_markdown.py turns stores and committed rows into RESULTS tables: per task the accuracy
right after training → at the end, and one task order per table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "stores_markdown.py"
METRICS = {"acc": 0.6, "bwt": -0.25, "forgetting": 0.25, "learning_accuracy": 0.725, "fwt": 0.3}


def matrix(tasks: list[str], grid: list[list[float]]) -> dict:
    return {"tasks": tasks, "primary": "task_aware", "task_aware": grid, "metrics": {"primary": METRICS}}


def row(root: Path, name: str, doc: dict) -> Path:
    path = root / f"{name}.json"
    path.write_text(json.dumps({"store": "/gone", "trained": doc["tasks"], "matrix": doc}))
    return path


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_per_task_cells_read_the_diagonal_and_the_last_row(tmp_path):
    forgets = row(tmp_path, "forgets", matrix(["a", "b"], [[0.0, 0.0], [0.9, 0.1], [0.4, 0.55]]))
    keeps = row(tmp_path, "keeps", matrix(["a", "b"], [[0.0, 0.0], [0.9, 0.0], [0.9, 0.55]]))
    out = run("--per-task", forgets, keeps)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].endswith("| a | b |")
    assert lines[2] == "| forgets | 60.0 | −25.0 | 25.0 | 72.5 | +30.0 | 90.0 → 40.0 | 55.0 |", lines[2]
    assert lines[3].endswith("| 90.0 | 55.0 |"), lines[3]  # nothing forgotten: the end alone


def test_stores_of_two_task_orders_are_refused_in_one_table(tmp_path):
    one = row(tmp_path, "one", matrix(["a", "b"], [[0, 0], [1, 0], [1, 1]]))
    two = row(tmp_path, "two", matrix(["b", "a"], [[0, 0], [1, 0], [1, 1]]))
    out = run("--per-task", one, two)
    assert out.returncode != 0 and "one task order" in out.stderr


def test_a_store_gives_its_method_seed_and_matrix(tmp_path):
    store = tmp_path / "s"
    (store / "eval").mkdir(parents=True)
    (store / "tasks" / "a").mkdir(parents=True)
    (store / "manifest.json").write_text(json.dumps({"sequence": {"method": {"name": "ps-lora"}, "seed": 3}}))
    (store / "tasks" / "a" / "meta.json").write_text(json.dumps({"train": {"seconds": 120}}))
    (store / "eval" / "matrix.json").write_text(json.dumps(matrix(["a"], [[0.1], [0.8]])))
    out = run(store)
    assert out.returncode == 0, out.stderr
    assert "| s | ps-lora | 3 | 60.0 | −25.0 | 25.0 | 72.5 | 2 |" in out.stdout
    assert "base   10.0" in out.stdout and "a   80.0" in out.stdout


def test_a_row_of_another_split_is_refused(tmp_path):
    doc = {**matrix(["a"], [[0.1], [0.8]]), "split": "test"}
    out = run("--split", "validation", row(tmp_path, "r", doc))
    assert out.returncode != 0 and "a test matrix, not validation" in out.stderr
    bare = tmp_path / "bare.validation.json"  # `pslora eval --json`'s matrix, with no "matrix" key around it
    bare.write_text(json.dumps({**doc, "split": "validation"}))
    assert run("--per-task", "--split", "validation", bare).returncode == 0
