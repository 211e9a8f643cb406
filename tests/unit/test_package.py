"""The package as a whole, without models or data: `pslora --help` does not import torch, a misconfigured
torchrun world is refused, no pickle is ever loaded."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import run_cli

PACKAGE = Path(__file__).resolve().parents[2] / "pslora_cli"


def test_help_does_not_import_torch():
    code = ("import sys; from pslora_cli.cli import app; import typer.main; "
            "typer.main.get_command(app); print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    result = subprocess.run([sys.executable, "-m", "pslora_cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "train-task" in result.stdout and "analyze" not in result.stderr


def test_misconfigured_world_is_refused(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    code, _, err = run_cli(capsys, "eval", "--store", tmp_path / "nothing", "--device", "cpu")
    assert code == 2 and "$RANK is not set" in err and "torchrun" in err and err.count("\n") == 1, err
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")
    code, _, err = run_cli(capsys, "eval", "--store", tmp_path / "nothing", "--device", "cpu")
    assert code == 2 and "need 0 <= RANK < WORLD_SIZE" in err, err
    code, _, err = run_cli(capsys, "merge", "--store", tmp_path / "nothing")
    assert code == 2 and "runs in one process" in err, err


def test_no_pickle_loading_in_the_package():
    """torch.load only with weights_only=True, and no pickle/dill/joblib anywhere in pslora's own code."""
    files = list(PACKAGE.rglob("*.py"))
    assert len(files) > 40 and PACKAGE / "store" / "layout.py" in files  # the walk sees the subpackages
    for path in files:
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(pickle|dill|joblib|cloudpickle)\b", text, re.M), path
        for call in re.finditer(r"torch\.load\([^\n]*", text):
            assert "weights_only=True" in call.group(0), (path, call.group(0))


def test_default_threads_half_the_cores_unless_omp_says(monkeypatch):
    import pslora_cli.runtime as session
    from pslora_cli.runtime import default_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(session, "usable_cores", lambda: 16)  # not this machine's cgroup quota
    assert default_threads() == 8
    monkeypatch.setattr(session, "usable_cores", lambda: 1)
    assert default_threads() == 1


def test_usable_cores_reads_cgroup_quotas(monkeypatch, tmp_path):
    import os

    from pslora_cli.runtime import usable_cores

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    root, proc = tmp_path / "cg", tmp_path / "proc-self-cgroup"
    root.mkdir()
    cores = lambda: usable_cores(str(root), str(proc))  # noqa: E731
    assert cores() == 64  # no cgroup files: the affinity
    (root / "cpu.max").write_text("max 100000\n")
    assert cores() == 64  # v2 without a quota
    (root / "cpu.max").write_text("250000 100000\n")
    assert cores() == 3  # v2: 2.5 CPUs, rounded up
    (root / "cpu.max").unlink()
    (root / "cpu").mkdir()
    (root / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cores() == 64  # v1 without a quota
    (root / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    assert cores() == 2  # v1: 2 CPUs


def test_usable_cores_reads_the_quota_of_a_nested_cgroup(monkeypatch, tmp_path):
    """A Slurm job or a systemd slice sets its quota on the process's own cgroup or a parent, not on the root."""
    import os

    from pslora_cli.runtime import usable_cores

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    root, proc = tmp_path / "cg", tmp_path / "proc-self-cgroup"
    job = root / "slurm" / "job_7" / "step_0"
    job.mkdir(parents=True)
    proc.write_text("not a cgroup line\n0::/slurm/job_7/step_0\n")  # a line it cannot read is passed over
    (root / "cpu.max").write_text("max 100000\n")
    assert usable_cores(str(root), str(proc)) == 64
    (root / "slurm" / "job_7" / "cpu.max").write_text("400000 100000\n")  # the parent's quota applies
    assert usable_cores(str(root), str(proc)) == 4
    (job / "cpu.max").write_text("100000 100000\n")  # the tightest on the path wins
    assert usable_cores(str(root), str(proc)) == 1
    proc.write_text("12:cpu,cpuacct:/user.slice/app\n")  # v1: under the cpu controller's hierarchy
    (root / "cpu" / "user.slice" / "app").mkdir(parents=True)
    (root / "cpu" / "user.slice" / "cpu.cfs_quota_us").write_text("300000\n")
    (root / "cpu" / "user.slice" / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cores(str(root), str(proc)) == 3
