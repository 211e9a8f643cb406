"""benchmarks/results/fold_vs_merge.py: a merging method's newest task in the weights it was trained in (for a
second task: W0 + the first task's update + its own, what `eval` scores under the sum merge) against the matrix's
merged stage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import run_cli
from test_generative_cli import sequence, smollm2_folder, tiny_llama  # noqa: F401  (fixtures)

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "fold_vs_merge.py"


def script(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def summed_stage(path: Path, t: int, i: int) -> float:
    """Task i's accuracy under W0 + the sum of tasks 1..t's updates, through the evaluator."""
    import torch

    from pslora_cli.config import sequence_from_stored
    from pslora_cli.data.loader import data_loader
    from pslora_cli.evaluation.scoring import Evaluator
    from pslora_cli.models.adapters import merged_deltas
    from pslora_cli.store import Store

    store = Store(path)
    seq = sequence_from_stored(store.manifest()["sequence"], str(store.sequence_copy))
    ev = Evaluator(seq, store, torch.device("cpu"), data_loader(seq))
    return ev.score_with(t, dict(merged_deltas(ev.adapters(t), "sum", "cpu")), [(i, "aware")])[(i, "aware")]


def test_the_trained_in_weights_and_the_merged_stage(tiny_llama, write_sequence, tmp_path, capsys):  # noqa: F811
    seq = write_sequence(sequence(tiny_llama))
    code, merged, err = run_cli(capsys, "run", seq, "--store", tmp_path / "s", "--json", "--threads", "1")
    assert code == 0, err
    out = script("--store", tmp_path / "s", "--task", "t2")
    assert out.returncode == 0, out.stderr
    # with one earlier task, the magnitude merge of the history is that task's update: W0 + Δ1 + Δ2, the sum merge
    trained_in = 100 * summed_stage(tmp_path / "s", 2, 1)
    after = 100 * merged["matrix"]["task_aware"][2][1]
    assert out.stdout.strip() == (f"s t2: {trained_in:.1f} in the weights it was trained in, {after:.1f} after the "
                                  f"merge of tasks 1..2"), out.stdout
    refused = script("--store", tmp_path / "s", "--task", "nope")
    assert refused.returncode != 0 and "not a task of" in refused.stderr
