"""Bad inputs end in exit 2 with one line and nothing on disk: YAML that cannot be a sequence (recursive aliases,
alias bombs), a weights file holding a pickle, and rows whose label is not one of the task's classes."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from conftest import class_words, run_cli


def csv_rows(path, rows) -> None:
    path.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows))


@pytest.fixture
def labelled_csv(tmp_path):
    """Two classes of the word BERT's vocabulary, plus rows of a third label the task does not list."""
    rows = [(" ".join(class_words(c)[j:j + 3]), f"c{c}") for c in range(3) for j in range(5)]
    path = tmp_path / "rows.csv"
    csv_rows(path, rows)
    return path


def sequence(word_bert, csv, **data) -> dict:
    return {"name": "bad", "scenario": "task-incremental",
            "backbone": {"source": "huggingface", "name": str(word_bert), "max_length": 16},
            "lora": {"rank": 2, "alpha": 4}, "training": {"steps": 2, "batch_size": 4},
            "tasks": [{"id": "t1", "data": {"type": "files", "train": str(csv), "classes": ["c0", "c1"],
                                            "test_fraction": 0.4, **data}}]}


@pytest.mark.parametrize("text, line", [
    ("name: x\ntasks: &t\n  - id: a\n    data: *t\n", "line 2"),           # a list that contains itself
    ("name: &n [*n]\ntasks: []\n", "line 1"),
])
def test_recursive_aliases_exit_2_naming_the_line(tmp_path, capsys, text, line):
    path = tmp_path / "rec.yaml"
    path.write_text(text)
    code, _, err = run_cli(capsys, "run", path, "--store", tmp_path / "store")
    assert code == 2 and line in err and "recursive alias" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "store").exists()


def test_an_alias_bomb_is_refused_quickly(tmp_path, capsys):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines + ["name: bomb", "tasks: *a9"]) + "\n")  # 9^10 values once expanded
    started = time.perf_counter()
    code, _, err = run_cli(capsys, "run", path, "--store", tmp_path / "store")
    assert code == 2 and "more than 1,000,000 values" in err, err
    assert time.perf_counter() - started < 30
    assert not (tmp_path / "store").exists()


def test_a_weights_file_holding_a_pickle_is_refused_before_anything_is_written(tmp_path, capsys, labelled_csv):
    import torch

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    weights = tmp_path / "model.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": Payload()}, weights)
    seq = {"name": "pickled", "backbone": {"source": "timm", "name": "vit_tiny_patch16_224", "pretrained": False,
                                           "weights": str(weights), "model_kwargs": {"img_size": 28, "patch_size": 7,
                                                                                      "depth": 1, "embed_dim": 16,
                                                                                      "num_heads": 1}},
           "lora": {"target_modules": ["qkv"]},
           "tasks": [{"id": "t1", "data": {"type": "image_folder", "path": str(tmp_path)}}]}
    path = tmp_path / "seq.yaml"
    path.write_text(yaml.safe_dump(seq))
    code, out, err = run_cli(capsys, "run", path, "--store", tmp_path / "store")
    assert code == 2 and "holds Python objects besides tensors" in err, err
    assert len(err.strip().splitlines()) == 1 and "weights_only" not in err and "Warning" not in err, err
    assert "this must never run" not in (out or "") and not (tmp_path / "store").exists()


def test_rows_outside_the_classes_are_counted_and_reported(word_bert, labelled_csv, tmp_path, capsys):
    path = tmp_path / "seq.yaml"
    path.write_text(yaml.safe_dump(sequence(word_bert, labelled_csv)))
    code, doc, err = run_cli(capsys, "train-task", "--task", "t1", "--sequence", path, "--store", tmp_path / "s",
                             "--json", "--no-eval")
    assert code == 0, err
    assert "left out 5 rows whose label is not one of its classes (c2 5" in err
    meta = json.loads((tmp_path / "s" / "tasks" / "t1" / "meta.json").read_text())
    assert meta["dropped_rows"] == {"c2": 5} and doc["task"]["dropped_rows"] == {"c2": 5}


def test_rows_outside_the_classes_can_be_an_error(word_bert, labelled_csv, tmp_path, capsys):
    path = tmp_path / "seq.yaml"
    path.write_text(yaml.safe_dump(sequence(word_bert, labelled_csv, unknown_labels="error")))
    code, _, err = run_cli(capsys, "run", path, "--store", tmp_path / "s")
    assert code == 2 and "tasks[0].data.unknown_labels" not in err  # loaded data names the task, not the YAML key
    assert "data.unknown_labels: 5 rows have labels outside the task's classes ('c2' (5))" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "s").exists()


def test_threads_option(word_bert, labelled_csv, tmp_path, capsys):
    import torch

    path = tmp_path / "seq.yaml"
    path.write_text(yaml.safe_dump(sequence(word_bert, labelled_csv)))
    code, _, err = run_cli(capsys, "train-task", "--task", "t1", "--sequence", path, "--store", tmp_path / "s",
                           "--threads", "0")
    assert code == 2 and "--threads 0: must be at least 1" in err and not (tmp_path / "s").exists(), err
    before = torch.get_num_threads()
    try:
        code, doc, err = run_cli(capsys, "train-task", "--task", "t1", "--sequence", path, "--store", tmp_path / "s",
                                 "--threads", "1", "--json", "--no-eval")
    finally:
        torch.set_num_threads(before)
    assert code == 0 and doc["task"]["train"]["threads"] == 1, err
