"""The task cache (training/cache.py): identical task trainings across a grid's stores are trained once and reused
bitwise; what acts on the training is in the key and what does not is out of it; a damaged entry is not used."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import run_cli
from pslora_cli.config import load_sequence
from pslora_cli.training import cache
from pslora_cli.training.selection import with_values
from test_selection import write_tasks


def sequence_file(tmp_path, word_bert) -> str:
    seq = {"name": "cache", "scenario": "task-incremental", "seed": 0,
           "backbone": {"source": "huggingface", "name": str(word_bert), "max_length": 16},
           "lora": {"rank": 2, "alpha": 4, "target_modules": ["query", "value"]},
           "training": {"steps": 3, "batch_size": 8, "learning_rate": 1e-2, "checkpoint_every": 0,
                        "precision": "fp32"},
           "tasks": write_tasks(tmp_path, 2)}
    path = tmp_path / "cache.yaml"
    path.write_text(yaml.safe_dump(seq, sort_keys=False))
    return str(path)


def meta(store, task) -> dict:
    return json.loads((store / "tasks" / task / "meta.json").read_text())


def adapter_sha(store, task) -> str:
    return meta(store, task)["sha256"]["adapter_model.safetensors"]


def test_a_second_store_reuses_the_identical_first_task_bitwise(word_bert, tmp_path, capsys, monkeypatch):
    path = sequence_file(tmp_path, word_bert)
    for method, store in (("inc-lora", "fresh"), ("per-task", "fresh-per-task"), ("seq-lora", "fresh-seq-lora")):
        code, _, err = run_cli(capsys, "run", path, "--store", tmp_path / store, "--set", f"method.name={method}")
        assert code == 0, err
    # what lets per-task and seq-lora share inc-lora's first training: trained apart, they are bitwise the same
    assert adapter_sha(tmp_path / "fresh-per-task", "t1") == adapter_sha(tmp_path / "fresh", "t1")
    assert adapter_sha(tmp_path / "fresh-seq-lora", "t1") == adapter_sha(tmp_path / "fresh", "t1")
    monkeypatch.setenv(cache.ENV, str(tmp_path / "task-cache"))
    for method in ("ps-lora", "inc-lora", "o-lora"):
        code, _, err = run_cli(capsys, "run", path, "--store", tmp_path / method, "--set", f"method.name={method}")
        assert code == 0, err
    assert "reused" not in meta(tmp_path / "ps-lora", "t1")["train"]
    for method in ("inc-lora", "o-lora"):  # their first task is ps-lora's: no history, so no term acts
        assert meta(tmp_path / method, "t1")["train"]["reused"]["key"]
        assert adapter_sha(tmp_path / method, "t1") == adapter_sha(tmp_path / "ps-lora", "t1")
        assert meta(tmp_path / method, "t1")["config"]["method"]["name"] == method
    # bitwise what training it again gives
    assert adapter_sha(tmp_path / "inc-lora", "t1") == adapter_sha(tmp_path / "fresh", "t1")
    # the second task reads the history: each method trains its own
    assert "reused" not in meta(tmp_path / "o-lora", "t2")["train"]
    assert adapter_sha(tmp_path / "o-lora", "t2") != adapter_sha(tmp_path / "inc-lora", "t2")
    assert adapter_sha(tmp_path / "inc-lora", "t2") == adapter_sha(tmp_path / "fresh", "t2")


def test_the_key_holds_what_acts_and_only_that(word_bert, tmp_path):
    path = sequence_file(tmp_path, word_bert)

    def key(i, *overrides, earlier=None, values=None):
        seq, _ = load_sequence(path, list(overrides))
        seq = with_values(seq, values or {})
        return cache.training_key(seq, i, earlier if earlier is not None else [{"a": "1"}] * i, "fp")

    assert key(0, "method.name=ps-lora") == key(0, "method.name=inc-lora") == key(0, "method.name=o-lora")
    assert key(0, "method.name=ps-lora") == key(0, "method.name=ps-lora", "method.stability_weight=5")
    assert key(1, "method.name=ps-lora") != key(1, "method.name=ps-lora", "method.stability_weight=5")
    assert key(1, "method.name=ps-lora") != key(1, "method.name=ps-merge-only")
    assert key(1, "method.name=ps-merge-only") != key(1, "method.name=inc-lora")  # merge vs sum folded in
    # stability decay's reference (the knob off) is the method without its term
    assert key(1, "method.name=o-lora", values={"orthogonality_weight": 0.0}) == key(1, "method.name=inc-lora")
    assert key(1, "method.name=ps-lora", values={"stability_weight": 0.0}) == key(1, "method.name=ps-merge-only")
    assert key(0, "method.name=inc-lora") != key(0, "method.name=inc-lora", "training.learning_rate=0.5")
    assert key(0, "method.name=inc-lora") == key(0, "method.name=inc-lora", "training.checkpoint_every=7")
    assert key(0, "method.name=inc-lora") != key(0, "method.name=n-lora", "method.sparsity_form=update")
    # seq-lora continues the previous adapter; with none yet it starts as inc-lora does
    assert key(0, "method.name=inc-lora") == key(0, "method.name=seq-lora") == key(0, "method.name=magmax")
    assert key(1, "method.name=seq-lora") != key(1, "method.name=magmax-ind")
    # scoring each task with its own adapter does not act on the training: per-task trains what magmax-ind does,
    # and its first task is inc-lora's
    assert key(0, "method.name=per-task") == key(0, "method.name=inc-lora")
    assert key(1, "method.name=per-task") == key(1, "method.name=magmax-ind")
    assert key(1, "method.name=per-task") != key(1, "method.name=inc-lora")  # inc-lora folds the history in
    assert key(1, "method.name=inc-lora", earlier=[{"a": "1"}]) != key(1, "method.name=inc-lora",
                                                                       earlier=[{"a": "2"}])


def test_a_damaged_entry_is_trained_again(word_bert, tmp_path, capsys, monkeypatch):
    path = sequence_file(tmp_path, word_bert)
    monkeypatch.setenv(cache.ENV, str(tmp_path / "task-cache"))
    assert run_cli(capsys, "run", path, "--store", tmp_path / "a", "--set", "method.name=inc-lora")[0] == 0
    entries = [p for p in (tmp_path / "task-cache").iterdir() if p.is_dir()]
    assert len(entries) == 2
    for e in entries:
        (e / "adapter_model.safetensors").write_bytes(b"damaged")
    code, _, err = run_cli(capsys, "run", path, "--store", tmp_path / "b", "--set", "method.name=inc-lora")
    assert code == 0, err
    assert "reused" not in meta(tmp_path / "b", "t1")["train"]
    assert adapter_sha(tmp_path / "b", "t1") == adapter_sha(tmp_path / "a", "t1")


def test_a_compare_grid_shares_its_task_cache_and_reports_the_choices(word_bert, tmp_path, capsys, monkeypatch):
    """compare puts its runs on OUT/task-cache: inc-lora's first task is ps-lora's, reused bitwise, and a
    selection protocol's choices come back with each run."""
    monkeypatch.delenv(cache.ENV, raising=False)
    path = sequence_file(tmp_path, word_bert)
    out = tmp_path / "grid"
    code, doc, err = run_cli(capsys, "compare", path, "--methods", "ps-lora,inc-lora", "--seeds", "0", "--out", out,
                             "--set", "selection.protocol=stability-decay", "--set", "selection.candidates=2",
                             "--json")
    assert code == 0, err
    ps, inc = (out / m / "order1-seed0" for m in ("ps-lora", "inc-lora"))
    assert meta(inc, "t1")["train"]["reused"]["cache"] == str((out / "task-cache").resolve())
    assert adapter_sha(inc, "t1") == adapter_sha(ps, "t1")
    runs = {r["method"]: r for r in doc["runs"]}
    assert runs["ps-lora"]["selection"]["t2"]["values"]["stability_weight"] in (10.0, 5.0)
    assert runs["inc-lora"]["selection"] is None
    assert cache.ENV not in __import__("os").environ  # the grid's cache is the grid's only


KEY_SEQUENCE = """
name: k
scenario: task-incremental
backbone: {source: builtin, name: smollm2-135m-instruct}
training: {steps: 5}
tasks:
  - {id: a, data: {type: wordnet, classes: [animal, food]}}
  - {id: b, data: {type: wordnet, classes: [person, plant]}}
"""
# The keys of a second task as the cache computed them before methods became plug-ins (c7346dd): a restructuring
# that changes a key silently retrains everything a cache holds.
PINNED_KEYS = {
    "ps-lora": "1ca3a3494ed661554d06777a19fc465f9e0ab94f39f84c97df14d6b5c5567ca3",
    "o-lora": "23b432d43f63954bce60a47f0c4c4637a83389429c3849e814d66839a83edfb4",
    "n-lora": "f56ecde8d3e8e55b85311aaa590a80a6edae458adc1f1c034517f68bae4ca616",
    "inflora": "fd9dec04457552d4ec9999a0602f4e0e8080344a07b36e3c56223e92544a6f5e",
    "ps-lora+o-lora": "e6372a92082d9b2c8ce0f0d746c0caee875025787db4968e0b58bbdaafa8a4c1",
}


@pytest.mark.parametrize("method", sorted(PINNED_KEYS))
def test_a_task_s_cache_key_is_the_one_older_versions_computed(method):
    from pslora_cli.config import sequence_from_text
    from pslora_cli.training.cache import training_key

    extra = ["method.sparsity_form=update"] if method == "n-lora" else []
    seq = sequence_from_text(KEY_SEQUENCE, "k.yaml", ".", overrides=[f"method.name={method}", *extra])
    assert training_key(seq, 1, [{"adapter_model.safetensors": "0" * 64}], "f" * 64) == PINNED_KEYS[method]
