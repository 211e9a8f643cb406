"""benchmarks/device_check.sh, the one command for a CUDA machine, in its CPU dry run (`--device cpu --tiny`): every
step runs (the GPU checks' script on small sizes, one training step of a tiny LLaMA in bfloat16 with plain LoRA and
PS-LoRA, gen-mixed-order1 for the main methods on a tiny random LM, two steps a task; Standard order 1 on a tiny
CL_Benchmark stand-in) and the table names each."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_device_script_dry_run_passes_on_the_cpu(tmp_path):
    # TRITON_INTERPRET=1: the Triton rows of the GPU checks run too (on the CPU, under Triton's interpreter), as on
    # a GPU; without it the dry run skipped them and missed that they asked the kernel for a form it does not cover
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", TRITON_INTERPRET="1")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--device", "cpu", "--tiny",
                           "--out", str(tmp_path), "--carry", str(tmp_path / "no-carry"),
                           "--only", "preflight,gpu-check,7b-step,gen-mixed,cl-benchmark", "--cl-sequences",
                           "cl-standard-order1"],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["step"]: r for r in json.loads((tmp_path / "device_check.json").read_text())}
    methods = ("ps-lora", "inc-lora", "o-lora", "magmax")
    assert set(rows) == {"preflight", "gpu-check", "7b-step lora", "7b-step ps-lora", "gen-mixed"} | {
        f"gen-mixed {m}" for m in methods} | {"cl-standard-order1"} | {
        f"cl-standard-order1 {m}" for m in ("ps-lora", "multitask")}
    assert all(r["status"] == "ok" for r in rows.values()), rows
    assert rows["7b-step ps-lora"]["lora_dtypes"] == ["torch.float32"]
    assert all(0 <= rows[f"gen-mixed {m}"]["acc"] <= 1 for m in methods)
    assert "| gen-mixed ps-lora" in proc.stdout and "| 7b-step ps-lora" in proc.stdout  # one table
    # the Standard grid's rows come back named as the committed rows, each a store's matrix with its per-task cells
    for m in ("ps-lora", "multitask"):
        doc = json.loads((tmp_path / "rows" / f"cl-standard-order1-{m}-seed0.json").read_text())
        assert doc["tasks"] == ["dbpedia", "amazon", "yahoo", "agnews"] and len(doc["task_aware"]) == 5
