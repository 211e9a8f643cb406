"""The selection protocols (training/selection.py): the candidates a knob declares, stability decay choosing a
weaker candidate when the strongest fails the tolerance, the choice recorded in meta.json and shown by eval and
store ls, a killed selection resumed without retraining what was done, first-tasks, and never the test split."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import class_words, run_cli
from pslora_cli.methods import METHODS, Knob
from pslora_cli.training import selection


def test_candidates_start_ten_times_stronger_and_weaken_by_the_decay():
    assert Knob("stability_weight").candidates(1.0, 0.5, 3) == [10.0, 5.0, 2.5]
    assert Knob("subspace_threshold", kind="share").candidates(0.995, 0.5, 3) == [0.9995, 0.999, 0.998]
    assert Knob("w").candidates(0.4, 0.1, 2) == [4.0, 0.4]


def test_regularised_methods_declare_knobs_and_the_others_none():
    assert [k.field for k in METHODS["ps-lora"].knobs] == ["stability_weight"]
    assert [k.field for k in METHODS["o-lora"].knobs] == ["orthogonality_weight"]
    assert [k.field for k in METHODS["n-lora"].knobs] == ["sparsity_weight"]
    assert {k.field for k in METHODS["ps-lora+o-lora"].knobs} == {"stability_weight", "orthogonality_weight"}
    for name in ("inc-lora", "seq-lora", "per-task", "multitask", "ps-merge-only"):
        assert METHODS[name].knobs == (), name


def write_tasks(tmp_path, n: int) -> list[dict]:
    """n two-class tasks of the word BERT's vocabulary in CSV files, with a validation split."""
    tasks = []
    for t in range(n):
        rows = [(" ".join(class_words(c)[j % 6:j % 6 + 3]), f"c{c}") for c in (2 * t % 4, (2 * t + 1) % 4)
                for j in range(12)]
        path = tmp_path / f"t{t + 1}.csv"
        path.write_text("text,label\n" + "".join(f"{x},{y}\n" for x, y in rows))
        tasks.append({"id": f"t{t + 1}", "data": {"type": "files", "train": str(path), "test_fraction": 0.25,
                                                    "validation_fraction": 0.25}})
    return tasks


def write_sequence(tmp_path, word_bert, n: int = 2, **selection_block) -> str:
    seq = {"name": "sel", "scenario": "task-incremental", "seed": 0,
           "backbone": {"source": "huggingface", "name": str(word_bert), "max_length": 16},
           "lora": {"rank": 2, "alpha": 4, "target_modules": ["query", "value"]},
           "method": {"name": "ps-lora"},
           "training": {"steps": 3, "batch_size": 8, "learning_rate": 1e-2, "checkpoint_every": 0,
                        "precision": "fp32"},
           "selection": {"decay": 0.1, "candidates": 3, **selection_block},
           "tasks": write_tasks(tmp_path, n)}
    path = tmp_path / "sel.yaml"
    path.write_text(yaml.safe_dump(seq, sort_keys=False))
    return str(path)


def scripted_accuracy(table: dict):
    """A stand-in for the validation scorer: the accuracy the table gives the try's stability_weight."""
    def accuracy(seq, side, device, load, tasks, stage):
        return table[seq.method.stability_weight]
    return accuracy


def count_trainings(monkeypatch) -> list:
    calls = []
    real = selection.train_one

    def counted(seq, store, task_id, *args, **kwargs):
        calls.append((task_id, seq.method.stability_weight))
        return real(seq, store, task_id, *args, **kwargs)

    monkeypatch.setattr(selection, "train_one", counted)
    return calls


def test_stability_decay_weakens_until_the_new_task_is_learned_and_records_it(word_bert, tmp_path, capsys,
                                                                               monkeypatch):
    path = write_sequence(tmp_path, word_bert, protocol="stability-decay")
    # the reference (λ 0) learns t2 to 100 %; λ 10 keeps 50 % (< 0.8 x 100), λ 1 keeps 90 %: λ 1 is chosen
    monkeypatch.setattr(selection, "_validation_accuracy", scripted_accuracy({0.0: 1.0, 10.0: 0.5, 1.0: 0.9,
                                                                              0.1: 0.95}))
    calls = count_trainings(monkeypatch)
    store = tmp_path / "store"
    code, doc, err = run_cli(capsys, "run", path, "--store", store, "--json")
    assert code == 0, err
    assert calls == [("t1", 1.0), ("t2", 0.0), ("t2", 10.0), ("t2", 1.0)]  # t1: no earlier task, nothing to choose
    meta = json.loads((store / "tasks" / "t2" / "meta.json").read_text())
    record = meta["selection"]
    assert record["values"] == {"stability_weight": 1.0} and record["accepted"] is True
    assert record["reference"] == 1.0 and record["threshold"] == pytest.approx(0.8)
    assert [(a["values"]["stability_weight"], a["accuracy"], a["accepted"]) for a in record["attempts"]] == [
        (10.0, 0.5, False), (1.0, 0.9, True)]
    assert meta["config"]["method"]["stability_weight"] == 1.0  # the chosen value trained the stored adapter
    assert json.loads((store / "tasks" / "t1" / "meta.json").read_text())["selection"]["values"] is None
    assert not (store / "selection" / "t2").exists()  # the side stores are gone once the choice is made
    assert doc["matrix"]["selection"]["t2"]["values"] == {"stability_weight": 1.0}
    code, listing, _ = run_cli(capsys, "store", "ls", "--store", store, "--json")
    assert listing["tasks"][1]["selection"]["values"] == {"stability_weight": 1.0}
    code, _, err = run_cli(capsys, "eval", "--store", store)
    assert code == 0
    code, doc, err = run_cli(capsys, "run", path, "--store", store, "--json")  # the finished store continues
    assert code == 0 and doc["trained"] == [], err


def untimed(record: dict) -> dict:
    """A selection record without its timings (they differ from run to run)."""
    return {k: [{x: y for x, y in a.items() if x != "seconds"} for a in v] if k == "attempts" else v
            for k, v in record.items() if k != "reference_seconds"}


def test_a_killed_selection_resumes_without_retraining_the_scored_tries(word_bert, tmp_path, capsys, monkeypatch):
    path = write_sequence(tmp_path, word_bert, protocol="stability-decay")
    scores = {0.0: 1.0, 10.0: 0.5, 1.0: 0.6, 0.1: 0.9}
    monkeypatch.setattr(selection, "_validation_accuracy", scripted_accuracy(scores))
    calls = count_trainings(monkeypatch)
    real = selection.train_one

    def killed_at_lambda_1(seq, store, task_id, *args, **kwargs):
        if task_id == "t2" and seq.method.stability_weight == 1.0:
            raise KeyboardInterrupt
        return real(seq, store, task_id, *args, **kwargs)

    monkeypatch.setattr(selection, "train_one", killed_at_lambda_1)
    try:
        code, _, _ = run_cli(capsys, "run", path, "--store", tmp_path / "store")
    except KeyboardInterrupt:
        code = 130
    assert code != 0
    capsys.readouterr()
    state = json.loads((tmp_path / "store" / "selection" / "t2" / "state.json").read_text())
    assert [t["accuracy"] for t in state["tries"]] == [1.0, 0.5, None, None]
    monkeypatch.setattr(selection, "train_one", real)
    calls.clear()
    code, _, err = run_cli(capsys, "run", path, "--store", tmp_path / "store")
    assert code == 0, err
    assert calls == [("t2", 1.0), ("t2", 0.1)]  # the reference and λ 10 were not trained again
    # the same store as an uninterrupted run's
    monkeypatch.setattr(selection, "_validation_accuracy", scripted_accuracy(scores))
    code, _, err = run_cli(capsys, "run", path, "--store", tmp_path / "again")
    assert code == 0, err
    for task in ("t1", "t2"):
        a = json.loads((tmp_path / "store" / "tasks" / task / "meta.json").read_text())
        b = json.loads((tmp_path / "again" / "tasks" / task / "meta.json").read_text())
        assert a["sha256"]["adapter_model.safetensors"] == b["sha256"]["adapter_model.safetensors"]
        assert untimed(a["selection"]) == untimed(b["selection"])
    assert b["selection"]["values"] == {"stability_weight": 0.1} and b["selection"]["accepted"]


def test_first_tasks_chooses_on_the_first_k_tasks_and_keeps_the_value(word_bert, tmp_path, capsys, monkeypatch):
    path = write_sequence(tmp_path, word_bert, n=3, protocol="first-tasks", first_tasks=2)
    monkeypatch.setattr(selection, "_validation_accuracy", scripted_accuracy({10.0: 0.6, 1.0: 0.8, 0.1: 0.7}))
    calls = count_trainings(monkeypatch)
    store = tmp_path / "store"
    code, _, err = run_cli(capsys, "run", path, "--store", store)
    assert code == 0, err
    # t1 is the same for every try (the loss reads earlier tasks): trained once; t2 per try; t3 with the choice
    assert calls == [("t1", 10.0), ("t2", 10.0), ("t2", 1.0), ("t2", 0.1), ("t3", 1.0)]
    for task in ("t1", "t2", "t3"):
        record = json.loads((store / "tasks" / task / "meta.json").read_text())["selection"]
        assert record["values"] == {"stability_weight": 1.0}, task
    assert not (store / "selection").exists() or not any((store / "selection").iterdir())


def test_selection_never_reads_the_test_split(word_bert, tmp_path, capsys, monkeypatch):
    """The real scorer runs; any read of a task's test examples while choosing fails the test."""
    from pslora_cli.data import TaskData

    path = write_sequence(tmp_path, word_bert, protocol="stability-decay")
    real_split = TaskData.split
    choosing = [False]

    def guarded(self, name):
        assert not (choosing[0] and name == "test"), "the selection read the test split"
        return real_split(self, name)

    real_select = selection._stability_decay

    def flagged(*args, **kwargs):
        choosing[0] = True
        try:
            return real_select(*args, **kwargs)
        finally:
            choosing[0] = False

    monkeypatch.setattr(TaskData, "split", guarded)
    monkeypatch.setattr(selection, "_stability_decay", flagged)
    code, doc, err = run_cli(capsys, "run", path, "--store", tmp_path / "store", "--json")
    assert code == 0, err
    record = doc["matrix"]["selection"]["t2"]
    assert record["split"] == "validation" and 0 <= record["reference"] <= 1 and record["attempts"]


def test_magmax_scale_is_chosen_per_stage_on_validation_and_used_for_that_stage(word_bert, tmp_path, capsys):
    """No training cost: each stage's merge scale is the candidate with the best mean validation accuracy over the
    seen tasks; test scoring, the merge and the matrix's row keys use it."""
    from pslora_cli.config import load_sequence
    from pslora_cli.evaluation.scoring import Evaluator, stage_merge_options
    from pslora_cli.data.loader import data_loader
    from pslora_cli.store import Store

    from pslora_cli.evaluation import scoring

    used = []
    real_update = scoring.Evaluator.stage_update

    def recorded(self, adapters, options=None):
        used.append((self.split, len(adapters), options))
        return real_update(self, adapters, options)

    path = write_sequence(tmp_path, word_bert, protocol="stability-decay", candidates=4)
    store = tmp_path / "store"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scoring.Evaluator, "stage_update", recorded)
        code, doc, err = run_cli(capsys, "run", path, "--store", store, "--set", "method.name=magmax-ind", "--json")
    assert code == 0, err
    for t, task in enumerate(("t1", "t2"), start=1):
        record = json.loads((store / "tasks" / task / "meta.json").read_text())["selection"]["merge"]
        assert [a["values"]["merge_scale"] for a in record["attempts"]] == [1.0, 0.75, 0.5, 0.25]
        best = max(record["attempts"], key=lambda a: a["accuracy"])
        assert record["values"] == best["values"] and record["options"] == {"scale": best["values"]["merge_scale"]}
        assert record["tasks"] == ["t1", "t2"][:t]
    seq, _ = load_sequence(path, ["method.name=magmax-ind"])
    chosen = stage_merge_options(seq, Store(store), 2)
    assert chosen == record["options"]
    # the test matrix scored each stage with the scale chosen for it on validation
    test_options = {n: options for split, n, options in used if split == "test" and n}
    for t, task in enumerate(("t1", "t2"), start=1):
        meta = json.loads((store / "tasks" / task / "meta.json").read_text())
        assert test_options[t] == meta["selection"]["merge"]["options"], t
    load = data_loader(seq)
    evaluator = Evaluator(seq, Store(store), "cpu", load, "test")
    by_hand = evaluator.score_with(2, evaluator.stage_update(evaluator.adapters(2), chosen), [(0, "aware"), (1, "aware")])
    assert doc["matrix"]["task_aware"][2][:2] == [round(by_hand[(0, "aware")], 6), round(by_hand[(1, "aware")], 6)]
    assert doc["merge"]["method"] == "magmax"


def test_first_tasks_tunes_inflora_threshold_and_stability_decay_leaves_it(word_bert, tmp_path, capsys, monkeypatch):
    """InfLoRA's threshold is a run-level knob (it shapes the subspace every later task reads): first-tasks tries
    its candidates (the unprotected share ten times smaller than the default first); stability decay, which tunes
    per task, trains it as set."""
    monkeypatch.setattr(selection, "_validation_accuracy",
                        lambda seq, side, device, load, tasks, stage: {0.995: 0.6, 0.95: 0.7}[
                            seq.method.subspace_threshold])
    path = write_sequence(tmp_path, word_bert, protocol="first-tasks", first_tasks=2, candidates=2)
    code, _, err = run_cli(capsys, "run", path, "--store", tmp_path / "ft", "--set", "method.name=inflora")
    assert code == 0, err
    for task in ("t1", "t2"):
        meta = json.loads((tmp_path / "ft" / "tasks" / task / "meta.json").read_text())
        assert [a["values"]["subspace_threshold"] for a in meta["selection"]["attempts"]] == [0.995, 0.95]
        assert meta["selection"]["values"] == {"subspace_threshold": 0.95}
        assert meta["config"]["method"]["subspace_threshold"] == 0.95
    path = write_sequence(tmp_path, word_bert, protocol="stability-decay", candidates=2)
    code, _, err = run_cli(capsys, "run", path, "--store", tmp_path / "sd", "--set", "method.name=inflora")
    assert code == 0, err
    meta = json.loads((tmp_path / "sd" / "tasks" / "t2" / "meta.json").read_text())
    assert "selection" not in meta and meta["config"]["method"].get("subspace_threshold", 0.95) == 0.95  # as set
