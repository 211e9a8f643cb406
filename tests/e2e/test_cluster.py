"""`pslora compare --executor slurm|submitit-local`: the grid's runs as one submitit job array, waited for and
summarised as --collect does; run here through submitit's local executor (the same path, local processes)."""

import json
import sys

from conftest import tiny_sequence
from pslora_cli.cli import main


def _grid(tiny_bert, write_sequence):
    seq = tiny_sequence(tiny_bert)
    seq["tasks"] = seq["tasks"][:2]
    seq["training"]["steps"] = 4
    return ["compare", str(write_sequence(seq)), "--methods", "ps-lora,inc-lora", "--seeds", "0", "--device", "cpu",
            "--json", "--quiet", "--threads", "1"]


def test_a_job_array_gives_what_the_local_grid_gives(tiny_bert, write_sequence, tmp_path, capsys, monkeypatch):
    import submitit

    grid = _grid(tiny_bert, write_sequence)
    assert main(grid + ["--out", str(tmp_path / "local")]) == 0
    local = json.loads(capsys.readouterr().out)
    # --executor slurm, with the cluster swapped for submitit's local one: the slurm options reach the executor
    made = []

    class Recording(submitit.AutoExecutor):
        def __init__(self, folder, cluster=None, **kwargs):
            made.append({"cluster": cluster})
            super().__init__(folder, cluster="local", **kwargs)

        def update_parameters(self, **kwargs):
            made[-1].update(kwargs)
            super().update_parameters(**kwargs)

    monkeypatch.setattr(submitit, "AutoExecutor", Recording)
    out = tmp_path / "array"
    code = main(grid + ["--out", str(out), "--executor", "slurm", "--partition", "gpu", "--time", "30",
                        "--array-parallelism", "2", "--cpus-per-job", "1", "--log-folder", str(tmp_path / "logs")])
    array = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [r["matrix"] for r in array["runs"]] == [r["matrix"] for r in local["runs"]]
    assert array["summary"] == local["summary"] and array["missing"] == []
    assert made == [{"cluster": "slurm", "timeout_min": 30, "cpus_per_task": 1, "gpus_per_node": 0, "tasks_per_node": 1,
                     "nodes": 1, "name": "pslora-array", "slurm_partition": "gpu", "slurm_array_parallelism": 2}]
    logs = sorted(p.name for p in (tmp_path / "logs").rglob("*.out"))
    assert len(logs) == 2, logs  # one job of the array per run, each with its log
    # everything finished: submitting again submits nothing and summarises the same
    monkeypatch.undo()
    assert main(grid + ["--out", str(out), "--executor", "submitit-local"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["summary"] == local["summary"] and not (out / "submitit").exists()


def test_the_executor_is_refused_where_it_cannot_run(tiny_bert, write_sequence, tmp_path, capsys, monkeypatch):
    grid = _grid(tiny_bert, write_sequence) + ["--out", str(tmp_path / "x")]
    assert main(grid + ["--executor", "slurm", "--jobs", "2"]) == 2
    assert "--executor slurm" in capsys.readouterr().err
    assert main(grid + ["--executor", "pbs"]) == 2
    assert "expected one of local, slurm, submitit-local" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "submitit", None)  # not installed
    assert main(grid + ["--executor", "slurm"]) == 2
    err = capsys.readouterr().err
    assert "needs the package submitit" in err and "pslora[slurm]" in err
    assert not (tmp_path / "x" / "ps-lora").exists()
