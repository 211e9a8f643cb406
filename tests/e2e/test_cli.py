"""End to end through the CLI on a tiny random BERT and small slices of real WordNet data."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import adapter_delta, check_validation_eval, run_cli, tiny_sequence, tree_state
from pslora_cli.cli import main
from pslora_cli.core.merges.magnitude import magnitude_merge


@pytest.fixture(scope="module")
def finished_store(tiny_bert, tmp_path_factory):
    """A store that `pslora run` filled with three tasks."""
    import yaml

    root = tmp_path_factory.mktemp("run")
    seq_file = root / "seq.yaml"
    seq_file.write_text(yaml.safe_dump(tiny_sequence(tiny_bert)))
    store = root / "store"
    code = main(["run", str(seq_file), "--store", str(store), "--device", "cpu", "--json", "--quiet"])
    assert code == 0
    return seq_file, store


def test_run_writes_a_complete_store(finished_store, capsys):
    _, store = finished_store
    capsys.readouterr()
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["base_model"]["weights_sha256"]
    for task in ("t1", "t2", "t3"):
        folder = store / "tasks" / task
        assert {"adapter_model.safetensors", "adapter_config.json", "head.safetensors", "meta.json"} <= \
            {p.name for p in folder.iterdir()}
        meta = json.loads((folder / "meta.json").read_text())
        for name, digest in meta["sha256"].items():
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    matrix = json.loads((store / "eval" / "matrix.json").read_text())
    agnostic, aware = matrix["task_agnostic"], matrix["task_aware"]
    assert all(v is None for v in agnostic[0])                       # row 0: no class seen yet
    assert all(agnostic[t][i] is not None for t in range(1, 4) for i in range(t))
    assert agnostic[1][1] is None and agnostic[1][2] is None          # unseen classes: undefined
    assert all(aware[0][i] is not None for i in range(3))             # base model with each task's head
    assert aware[1][1] is not None and aware[1][2] is None            # next task only (forward transfer)
    m = matrix["metrics"]
    assert m["primary"] == m["task_agnostic"] and m["task_agnostic"]["fwt"] is None
    assert m["task_aware"]["fwt"] is None and "head" in m["notes"]["fwt"]  # FWT is not defined with heads
    assert (store / "eval" / "matrix.csv").read_text().startswith("matrix,stage,t1,t2,t3")
    assert (store / "eval" / "matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_on_reloaded_store_gives_the_same_matrix(finished_store, capsys):
    _, store = finished_store
    before = json.loads((store / "eval" / "matrix.json").read_text())
    (store / "eval" / "matrix.json").unlink()
    code, doc, _ = run_cli(capsys, "eval", "--store", store, "--device", "cpu", "--json", "--quiet")
    assert code == 0
    assert doc["task_agnostic"] == before["task_agnostic"]
    assert doc["task_aware"] == before["task_aware"]


def test_eval_on_the_validation_split(finished_store, capsys):
    _, store = finished_store
    doc = check_validation_eval(capsys, store, [16, 16, 16])  # validation_per_class defaults to the test cap, 8
    assert doc["task_agnostic"] != json.loads((store / "eval" / "matrix.json").read_text())["task_agnostic"]
    code, _, err = run_cli(capsys, "eval", "--store", store, "--split", "train")
    assert code == 2 and "--split 'train'" in err


def test_adapters_load_in_stock_peft(finished_store, tiny_bert):
    from peft import PeftModel
    from transformers import AutoModel

    _, store = finished_store
    base = AutoModel.from_pretrained(str(tiny_bert))
    model = PeftModel.from_pretrained(base, str(store / "tasks" / "t2"))
    weights = load_file(str(store / "tasks" / "t2" / "adapter_model.safetensors"))
    key = "base_model.model.encoder.layer.0.attention.self.query.lora_B.weight"
    loaded = model.base_model.model.encoder.layer[0].attention.self.query.lora_B["default"].weight
    assert torch.equal(loaded, weights[key]) and weights[key].abs().sum() > 0


def test_merge_out_equals_recomputed_magnitude_merge(finished_store, capsys, tmp_path):
    from safetensors import safe_open

    _, store = finished_store
    out = tmp_path / "merged.safetensors"
    code, info, _ = run_cli(capsys, "merge", "--store", store, "--out", out, "--json", "--device", "cpu")
    assert code == 0 and info["method"] == "magnitude" and info["tasks"] == ["t1", "t2", "t3"]
    merged = load_file(str(out))
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["method"] == "magnitude" and json.loads(meta["tasks"]) == ["t1", "t2", "t3"]
    deltas = []
    for task in ("t1", "t2", "t3"):
        w = load_file(str(store / "tasks" / task / "adapter_model.safetensors"))
        cfg = json.loads((store / "tasks" / task / "adapter_config.json").read_text())
        prefix = "base_model.model.encoder.layer.1.attention.self.value"
        deltas.append(cfg["lora_alpha"] / cfg["r"] * w[prefix + ".lora_B.weight"] @ w[prefix + ".lora_A.weight"])
    expected = magnitude_merge(deltas)
    assert torch.allclose(merged["encoder.layer.1.attention.self.value.weight"], expected, atol=0, rtol=0)
    assert merged["heads.t3.weight"].shape == (2, 32)
    code, info, _ = run_cli(capsys, "merge", "--store", store, "--method", "sum", "--tasks", "t1,t2", "--json")
    assert code == 0 and info["tasks"] == ["t1", "t2"] and info["method"] == "sum"


def test_merge_ties_equals_peft_ties_on_the_three_task_store(finished_store, capsys, tmp_path):
    from peft.utils.merge_utils import ties

    _, store = finished_store
    out = tmp_path / "ties.safetensors"
    # density 0.25 keeps exactly 256 of a 32x32 module's entries, where PEFT's int() and the trim's round() agree
    code, info, _ = run_cli(capsys, "merge", "--store", store, "--method", "ties", "--out", out, "--json",
                            "--device", "cpu", "--set", "method.name=custom", "--set", "method.merge_density=0.25")
    assert code == 0 and info["method"] == "ties"
    merged = load_file(str(out))
    for prefix in ("encoder.layer.0.attention.self.query", "encoder.layer.1.attention.self.value"):
        deltas = [adapter_delta(store / "tasks" / task, prefix) for task in ("t1", "t2", "t3")]
        expected = ties(torch.stack(deltas), torch.ones(3), 0.25)
        assert torch.allclose(merged[prefix + ".weight"], expected, atol=1e-7), prefix


def test_another_seed_on_a_store_is_refused_with_nothing_written(finished_store, capsys, tiny_bert, tmp_path):
    """The data split follows the seed: scoring a seed-0 store under seed 1 would score on seed-0 training rows."""
    seq_file, store = finished_store
    before = tree_state(store)
    for args in (("eval",), ("train-task", "--task", "t3"), ("run", seq_file), ("merge", "--out", tmp_path / "m.safetensors")):
        code, _, err = run_cli(capsys, *args, "--store", store, "--seed", "1", "--device", "cpu")
        assert code == 2 and "task t1" in err and "seed 0" in err and "seed 1" in err and err.count("\n") == 1, err
        assert tree_state(store) == before
    assert not (tmp_path / "m.safetensors").exists()


def test_eval_refuses_data_that_is_not_what_the_task_was_trained_on(tiny_bert, write_sequence, capsys, tmp_path):
    rows = "".join(f"w{i} x{i} y{i},{'ab'[i % 2]}\n" for i in range(40))
    (tmp_path / "d.csv").write_text("text,label\n" + rows)
    seq = tiny_sequence(tiny_bert, tasks=[{"id": "t1", "data": {"type": "files", "train": "d.csv"}}])
    store = tmp_path / "store"
    code, _, err = run_cli(capsys, "run", write_sequence(seq), "--store", store, "--device", "cpu", "--quiet")
    assert code == 0, err
    (tmp_path / "d.csv").write_text("text,label\n" + rows.replace("w3 ", "w33 "))  # one row edited
    (store / "eval" / "matrix.json").unlink()
    before = tree_state(store)
    code, _, err = run_cli(capsys, "eval", "--store", store, "--device", "cpu")
    assert code == 2 and err.startswith("pslora: error: task t1: its data as loaded now") and "seed 0 both times" in err, err
    assert tree_state(store) == before


def test_store_ls_and_verify(finished_store, capsys):
    _, store = finished_store
    code, doc, _ = run_cli(capsys, "store", "ls", "--store", store, "--json")
    assert code == 0 and [t["trained"] for t in doc["tasks"]] == [True, True, True]
    code, doc, _ = run_cli(capsys, "store", "verify", "--store", store, "--json")
    assert code == 0 and doc["tasks"] == ["t1", "t2", "t3"]


def test_rerun_trains_nothing_and_mismatch_is_refused(finished_store, capsys, tmp_path, tiny_bert):
    seq_file, store = finished_store
    code, doc, _ = run_cli(capsys, "run", seq_file, "--store", store, "--json", "--quiet", "--device", "cpu")
    assert code == 0 and doc["trained"] == []
    before = tree_state(store)
    code, _, err = run_cli(capsys, "run", seq_file, "--store", store, "--set", "lora.rank=2")
    assert code == 2 and "does not match the store" in err and "lora" in err
    assert tree_state(store) == before


def test_same_seed_gives_the_same_adapter(tiny_bert, write_sequence, capsys, tmp_path):
    seq = write_sequence(tiny_sequence(tiny_bert))
    digests = []
    for name in ("a", "b"):
        code, doc, _ = run_cli(capsys, "train-task", "--task", "t1", "--sequence", seq, "--store", tmp_path / name,
                               "--json", "--quiet", "--no-eval", "--device", "cpu")
        assert code == 0
        digests.append(doc["task"]["sha256"]["adapter_model.safetensors"])
    assert digests[0] == digests[1]


def test_train_task_needs_predecessors_and_a_sequence(tiny_bert, write_sequence, capsys, tmp_path):
    seq = write_sequence(tiny_sequence(tiny_bert))
    code, _, err = run_cli(capsys, "train-task", "--task", "t1", "--store", tmp_path / "s")
    assert code == 2 and "not a pslora store" in err and "--sequence" in err
    code, _, err = run_cli(capsys, "train-task", "--task", "t3", "--sequence", seq, "--store", tmp_path / "s")
    assert code == 2 and "t1, t2" in err
    assert err.count("\n") == 1


BAD_INPUTS = {
    "missing file": (lambda d: d / "nope.yaml", "nope.yaml: sequence file not found"),
    "yaml syntax": (lambda d: _write(d, "name: x\ntasks: [\n"), "invalid YAML"),
    "unknown key": (lambda d: _write(d, "name: x\nlearning_rate: 1\ntasks: []\n"), "learning_rate (line 2): unknown key"),
    "unknown class": (lambda d: _write(d, "name: x\ntasks:\n- id: a\n  data: {type: wordnet, classes: [unicorns]}\n"),
                      "unicorns"),
    "empty data": (lambda d: _write(d, "name: x\ntasks:\n- id: a\n  data: {type: files, train: empty.csv}\n",
                                    extra=("empty.csv", "text,label\n")), "empty.csv"),
}


def _write(d: Path, text: str, extra: tuple[str, str] | None = None) -> Path:
    if extra:
        (d / extra[0]).write_text(extra[1])
    path = d / "bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_no_write(case, finished_store, capsys, tmp_path):
    _, store = finished_store
    make, expected = BAD_INPUTS[case]
    before = tree_state(store)
    for target in (store, tmp_path / "fresh-store"):
        code, _, err = run_cli(capsys, "run", make(tmp_path), "--store", target)
        assert code == 2, err
        assert err.count("\n") == 1 and err.startswith("pslora: error: "), err
    assert expected in err, err  # on a fresh store the data itself is at fault
    assert tree_state(store) == before and not (tmp_path / "fresh-store").exists()


def test_unknown_task_and_unknown_option(finished_store, capsys):
    _, store = finished_store
    code, _, err = run_cli(capsys, "train-task", "--task", "t9", "--store", store)
    assert code == 2 and "unknown task 't9'" in err and "t1, t2, t3" in err
    code, _, _ = run_cli(capsys, "eval", "--store", store, "--frobnicate")
    assert code == 2


def test_store_in_use_is_refused(finished_store, capsys):
    import fcntl

    _, store = finished_store
    with open(store / ".lock", "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        code, _, err = run_cli(capsys, "merge", "--store", store)
    assert code == 2 and "in use" in err


def test_a_ties_matrix_scored_with_the_old_sign_rule_is_scored_again(finished_store, capsys):
    """The row keys of a TIES stage carry the corrected rule, so a matrix merged by the old one is not kept."""
    from pslora_cli.config import canonical_hash

    _, store = finished_store
    ties = ["--set", "method.name=custom", "--set", "method.merge=ties"]
    code, doc, err = run_cli(capsys, "eval", "--store", store, *ties, "--json", "--quiet", "--device", "cpu")
    assert code == 0, err
    shas = [json.loads((store / "tasks" / t / "meta.json").read_text())["sha256"]["adapter_model.safetensors"]
            for t in ("t1", "t2", "t3")]
    assert doc["row_keys"][1] != canonical_hash(["ties", 0.2, 1.0] + shas[:1])  # the key before the fix
    code, _, err = run_cli(capsys, "eval", "--store", store, "--json", "--quiet", "--device", "cpu")  # back
    assert code == 0, err


def test_eval_prints_why_fwt_is_null_with_heads(finished_store, capsys):
    from pslora_cli.cli import main

    _, store = finished_store
    capsys.readouterr()
    assert main(["eval", "--store", str(store), "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "FWT is null where tasks are scored with heads" in out and "R[i-1][i] > R[0][i]" in out  # not eaten as markup


def test_the_matrix_keeps_each_cell_s_per_prompt_record(finished_store, capsys):
    _, store = finished_store
    doc = json.loads((store / "eval" / "matrix.json").read_text())
    cells = 0
    for name in ("task_aware", "task_agnostic"):
        for t, row in enumerate(doc[name]):
            for i, value in enumerate(row):
                hits = doc["hits"][name][t][i]
                assert (value is None) == (hits is None), (name, t, i)
                if hits is not None:
                    cells += 1
                    assert len(hits) == doc["sample_counts"][i] and set(hits) <= {"0", "1"}
                    assert hits.count("1") / len(hits) == pytest.approx(value, abs=1e-6)
    # task-aware: the base row, then each stage's seen tasks and the next; task-agnostic: each stage's seen tasks
    assert cells == 3 + (2 + 3 + 3) + (1 + 2 + 3)


def test_a_matrix_scored_before_hits_were_kept_scores_its_last_row_again(finished_store, capsys, tmp_path,
                                                                        monkeypatch):
    import shutil

    from pslora_cli.evaluation.scoring import Evaluator

    _, original = finished_store
    store = tmp_path / "store"
    shutil.copytree(original, store)
    path = store / "eval" / "matrix.json"
    before = json.loads(path.read_text())
    old = {k: v for k, v in before.items() if k != "hits"}
    path.write_text(json.dumps(old))
    scored = []
    stage = Evaluator.stage
    monkeypatch.setattr(Evaluator, "stage", lambda self, t, cells, **kw: scored.append(t) or stage(self, t, cells,
                                                                                                   **kw))
    code, doc, err = run_cli(capsys, "eval", "--store", store, "--json", "--quiet", "--device", "cpu")
    assert code == 0, err
    assert scored == [3]  # only the last row, and only once
    after = json.loads(path.read_text())
    assert after["hits"]["task_agnostic"][3] == before["hits"]["task_agnostic"][3]
    assert after["hits"]["task_aware"][2] == [None, None, None]  # earlier rows keep their cells, without records
    assert after["task_aware"] == before["task_aware"] and after["task_agnostic"] == before["task_agnostic"]
    scored.clear()
    code, _, err = run_cli(capsys, "eval", "--store", store, "--json", "--quiet", "--device", "cpu")
    assert code == 0 and scored == [], err  # the record kept: nothing scored again
