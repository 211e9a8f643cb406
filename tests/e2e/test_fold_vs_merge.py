"""benchmarks/results/fold_vs_merge.py: a merging method's newest task in the weights it was trained in (W0 + the
magnitude merge of the earlier tasks, as training folded it, + its own update) against the matrix's merged stage."""

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


def load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fold_vs_merge", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def trained_in_accuracy(path: Path, i: int) -> float:
    """Task i's accuracy in the weights it was trained in. The script's updates are checked tensor by tensor
    against training's own fold (fold_merge: for the magnitude merge the row-block path, not merged_deltas), and
    that history is checked to differ from the sum, so that a script summing it fails here (an accuracy on eight
    prompts would not tell)."""
    import torch

    from pslora_cli.config import sequence_from_stored
    from pslora_cli.data.loader import data_loader
    from pslora_cli.evaluation.scoring import Evaluator
    from pslora_cli.models.adapters import fold_merge, merged_deltas
    from pslora_cli.store import Store

    store = Store(path)
    seq = sequence_from_stored(store.manifest()["sequence"], str(store.sequence_copy))
    ev = Evaluator(seq, store, torch.device("cpu"), data_loader(seq))
    adapters = ev.adapters(i + 1)
    own = dict(merged_deltas(adapters[i:i + 1], "sum", "cpu"))
    history = {k: torch.zeros_like(v) for k, v in own.items()}
    fold_merge(history, adapters[:i], seq.method.merge, "cpu", **seq.method.merge_options)
    summed = dict(merged_deltas(adapters[:i], "sum", "cpu"))
    assert any(not torch.allclose(history[k], summed[k].reshape(history[k].shape)) for k in history)
    want = {k: history[k] + own[k] for k in own}
    got = load_script().trained_in_updates(adapters, seq.method, i)
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k].reshape(want[k].shape), want[k], rtol=1e-6, atol=1e-7)
    return ev.score_with(i + 1, want, [(i, "aware")])[(i, "aware")]


def test_the_trained_in_weights_and_the_merged_stage(tiny_llama, write_sequence, tmp_path, capsys):  # noqa: F811
    seq = sequence(tiny_llama)
    seq["tasks"].append({"id": "t3", "data": {"type": "wordnet", "classes": ["food", "artifact"],
                                              "train_per_class": 8, "test_per_class": 4},
                         "prompt": {"instruction": "Is this a food?", "answers": {"food": "yes", "artifact": "no"}}})
    code, merged, err = run_cli(capsys, "run", write_sequence(seq), "--store", tmp_path / "s", "--json",
                                "--threads", "1")
    assert code == 0, err
    assert merged["merge"]["method"] == "magnitude"
    out = script("--store", tmp_path / "s", "--task", "t3")
    assert out.returncode == 0, out.stderr
    trained_in = 100 * trained_in_accuracy(tmp_path / "s", 2)
    after = 100 * merged["matrix"]["task_aware"][3][2]
    assert out.stdout.strip() == (f"s t3: {trained_in:.1f} in the weights it was trained in, {after:.1f} after the "
                                  f"merge of tasks 1..3"), out.stdout
    refused = script("--store", tmp_path / "s", "--task", "nope")
    assert refused.returncode != 0 and "not a task of" in refused.stderr
