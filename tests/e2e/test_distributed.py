"""torchrun: a 2-process Gloo run on the CPU trains the same adapters as one process with the same global batch
and seed; a rank that dies ends every rank and leaves the store untouched; a misconfigured world is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import run_cli, tiny_sequence, tree_state
from pslora_cli.cli import main


@pytest.fixture(scope="module")
def bert_without_dropout(tiny_bert, tmp_path_factory) -> Path:
    """The tiny BERT with dropout off: with dropout, each rank draws its own masks for its own examples, so no
    multi-process run can match a single process example for example."""
    import shutil

    folder = tmp_path_factory.mktemp("bert-no-dropout")
    for p in tiny_bert.iterdir():
        shutil.copy(p, folder / p.name)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def sequence_file(folder: Path, model: Path, **training) -> Path:
    seq = tiny_sequence(model)
    seq["tasks"] = seq["tasks"][:2]
    seq["lora"] = {**seq["lora"], "dropout": 0.0}
    # Batch 7 over 2 ranks: shards of 4 and 3, and a last partial batch: the weighting of unequal shards counts.
    seq["training"] = {**seq["training"], "steps": 8, "batch_size": 7, **training}
    path = folder / "seq.yaml"
    path.write_text(yaml.safe_dump(seq))
    return path


def torchrun(*args, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
           "--nproc_per_node", str(nproc), "-m", "pslora_cli", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_two_gloo_processes_train_the_same_adapters_as_one(bert_without_dropout, tmp_path, capsys):
    seq_file = sequence_file(tmp_path, bert_without_dropout)
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert main(["run", str(seq_file), "--store", str(single), "--device", "cpu", "--quiet"]) == 0
    result = torchrun("run", seq_file, "--store", multi, "--device", "cpu", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(result.stdout)  # one JSON document: only rank 0 prints
    assert doc["trained"] == ["t1", "t2"]
    for task in ("t1", "t2"):
        meta = json.loads((multi / "tasks" / task / "meta.json").read_text())
        assert meta["train"]["world_size"] == 2
        for name in ("adapter_model.safetensors", "head.safetensors"):
            a = load_file(str(single / "tasks" / task / name))
            b = load_file(str(multi / "tasks" / task / name))
            assert a.keys() == b.keys()
            for key in a:
                torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=f"{task}/{name}: {key}")
    m_single = json.loads((single / "eval" / "matrix.json").read_text())
    m_multi = json.loads((multi / "eval" / "matrix.json").read_text())
    for grid in ("task_aware", "task_agnostic"):  # evaluation sharded over the ranks, gathered on rank 0
        for row_s, row_m in zip(m_single[grid], m_multi[grid]):
            assert [v is None for v in row_s] == [v is None for v in row_m]
            assert all(abs(x - y) <= 1 / 16 + 1e-9 for x, y in zip(row_s, row_m) if x is not None), grid
    code, _, err = run_cli(capsys, "store", "verify", "--store", multi)
    assert code == 0, err


def _worker_pids(agent_pid: int) -> dict[int, int]:
    """RANK -> pid of torchrun's worker processes (children of the agent, read from /proc)."""
    found: dict[int, int] = {}
    stack = [agent_pid]
    while stack:
        pid = stack.pop()
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                stack.append(child)
                try:
                    env = dict(item.split("=", 1) for item in Path(f"/proc/{child}/environ").read_text()
                               .split("\0") if "=" in item)
                except OSError:
                    continue
                if "RANK" in env and "TORCHELASTIC_RUN_ID" in env:
                    found[int(env["RANK"])] = child
    return found


def test_a_rank_that_dies_ends_every_rank_and_leaves_the_store_untouched(bert_without_dropout, tmp_path):
    seq_file = sequence_file(tmp_path, bert_without_dropout, steps=2000, checkpoint_every=0)
    store = tmp_path / "store"
    assert main(["train-task", "--task", "t1", "--sequence", str(seq_file), "--store", str(store), "--device", "cpu",
                 "--quiet", "--no-eval", "--set", "training.steps=4"]) == 0
    before = tree_state(store)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           "-m", "pslora_cli", "train-task", "--task", "t2", "--store", str(store), "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 180
        while not list((store / "tasks").glob(".t2.*.tmp")) and time.time() < deadline:
            time.sleep(0.1)  # rank 0 has opened the task's temporary folder: training is under way
        time.sleep(1.0)
        workers = _worker_pids(proc.pid)
        assert set(workers) == {0, 1}, workers
        os.kill(workers[1], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "pslora[rank 0/2]: failed: another rank stopped" in err and "exitcode  : -9" in err, err[-3000:]
    for pid in workers.values():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    after = {k: v for k, v in tree_state(store).items()}
    assert after == before, "the store changed"
    assert not list((store / "tasks").glob(".t2.*")), "a temporary task folder was left behind"


def test_bf16_autocast_trains_and_stores_float32(bert_without_dropout, tmp_path, capsys):
    """training.precision: bf16 runs the forward pass under autocast (here on the CPU; "auto" picks it on GPUs
    with bf16); the stability loss, the optimizer and the stored adapter stay float32."""
    seq_file = sequence_file(tmp_path, bert_without_dropout, precision="bf16")
    store = tmp_path / "store"
    code, doc, err = run_cli(capsys, "run", seq_file, "--store", store, "--device", "cpu", "--json", "--quiet")
    assert code == 0, err
    meta = json.loads((store / "tasks" / "t2" / "meta.json").read_text())
    assert meta["train"]["precision"] == "bf16" and meta["train"]["final"]["stability_loss"] > 0
    tensors = load_file(str(store / "tasks" / "t2" / "adapter_model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    fp32 = tmp_path / "fp32"
    assert main(["run", str(seq_file), "--store", str(fp32), "--device", "cpu", "--quiet",
                 "--set", "training.precision=fp32"]) == 0
    other = load_file(str(fp32 / "tasks" / "t2" / "adapter_model.safetensors"))
    assert any(not torch.equal(tensors[k], other[k]) for k in tensors)  # bf16 really changed the arithmetic
