"""The scorer (pslora_cli.evaluation.scoring.Evaluator) on a tiny random BERT with heads written by hand: its
accuracies against hand computations and against an independent forward pass of the base model plus an update,
and which head a method that trains jointly scores each task with."""

from __future__ import annotations

import random

import pytest
import torch
from safetensors.torch import save_file

from conftest import class_words, unit_sequence
from pslora_cli.data import TaskData, compute_fingerprint
from pslora_cli.evaluation.scoring import Evaluator
from pslora_cli.store import Store

CPU = torch.device("cpu")
HIDDEN = 16
MODULES = [f"encoder.layer.{layer}.attention.self.{m}.weight" for layer in (0, 1) for m in ("query", "value")]


def labelled(labels: list[int], seed: int, first_class: int = 0) -> TaskData:
    """Test examples with exactly these labels (texts from each class's words); a token training set."""
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(class_words(first_class + y)) for _ in range(rng.randint(3, 5))) for y in labels]
    classes = [f"class{first_class}", f"class{first_class + 1}"]
    return TaskData(classes=classes, train_x=texts[:2], train_y=labels[:2], test_x=texts, test_y=list(labels),
                    fingerprint=compute_fingerprint(classes, texts[:2], labels[:2], texts, labels), source="hand")


def write_head(path, weight: torch.Tensor, bias: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"weight": weight.contiguous(), "bias": bias.contiguous()}, str(path))


def bias_head(*bias: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A head that ignores the features: it always predicts argmax(bias)."""
    return torch.zeros(len(bias), HIDDEN), torch.tensor(bias)


def approx(expected: dict):
    """Accuracies are float32 means: equal to the fractions up to float32 rounding."""
    return pytest.approx(expected, rel=0, abs=1e-6)


def make_evaluator(seq, store: Store, data: list[TaskData]) -> Evaluator:
    return Evaluator(seq, store, CPU, lambda i: data[i])


def test_score_with_equals_hand_computed_accuracies(word_bert, tmp_path):
    seq = unit_sequence(word_bert, n_tasks=2)
    store = Store(tmp_path / "store")
    data = [labelled([0, 0, 0, 1, 1], seed=1), labelled([0, 1, 1, 1], seed=2, first_class=2)]
    write_head(store.task_files("t1").head, *bias_head(1.0, 0.0))  # always class 0 of t1
    write_head(store.task_files("t2").head, *bias_head(0.0, 2.0))  # always class 1 of t2
    ev = make_evaluator(seq, store, data)
    cells = [(0, "aware"), (1, "aware"), (0, "agnostic"), (1, "agnostic")]
    got = ev.score_with(2, None, cells)
    # aware: t1 3 of 5 labels are 0; t2 3 of 4 labels are 1. agnostic at stage 2: the logits [1, 0, 0, 2] over
    # all four classes always pick t2's class 1, never a class of t1.
    assert got == approx({(0, "aware"): 3 / 5, (1, "aware"): 3 / 4, (0, "agnostic"): 0.0, (1, "agnostic"): 3 / 4})
    # and each example's hit, in the test set's order (what pairs two stores prompt by prompt)
    assert ev.hits == {(2, 0, "aware"): "11100", (2, 1, "aware"): "0111", (2, 0, "agnostic"): "00000",
                       (2, 1, "agnostic"): "0111"}
    # agnostic at stage 1: only t1's head exists, [1, 0] picks its class 0
    assert ev.score_with(1, None, [(0, "agnostic")]) == approx({(0, "agnostic"): 3 / 5})


def independent_features(model_dir, texts: list[str], updates: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """Mean-pooled last hidden states of the base model with `updates` added to its weights, computed here."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, delta in (updates or {}).items():
            params[name].add_(delta)
        batch = tokenizer(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return (hidden * mask).sum(1) / mask.sum(1)


def test_score_with_folds_the_update_into_the_base_weights(word_bert, tmp_path):
    seq = unit_sequence(word_bert, n_tasks=1)
    g = torch.Generator().manual_seed(0)
    updates = {name: 2.0 * torch.randn(HIDDEN, HIDDEN, generator=g) for name in MODULES}
    weight, bias = torch.randn(2, HIDDEN, generator=g), torch.zeros(2)
    texts = labelled([0, 1] * 8, seed=3).test_x
    logits_base = independent_features(word_bert, texts, None) @ weight.T
    logits_upd = independent_features(word_bert, texts, updates) @ weight.T
    for logits in (logits_base, logits_upd):  # no prediction is a near tie: float noise cannot flip it
        assert (logits[:, 0] - logits[:, 1]).abs().min() > 1e-3
    pred_base, pred_upd = logits_base.argmax(-1), logits_upd.argmax(-1)
    assert not torch.equal(pred_base, pred_upd)  # the update changes some predictions
    labels = pred_upd.clone()
    labels[:3] = 1 - labels[:3]  # three wrong even with the update
    data = TaskData(classes=["a", "b"], train_x=texts[:2], train_y=[0, 1], test_x=texts, test_y=labels.tolist(),
                    fingerprint="f", source="hand")
    store = Store(tmp_path / "store")
    write_head(store.task_files("t1").head, weight, bias)
    ev = make_evaluator(seq, store, [data])
    expected_upd = (pred_upd == labels).float().mean().item()
    expected_base = (pred_base == labels).float().mean().item()
    assert expected_upd == 13 / 16 and expected_base != expected_upd
    assert ev.score_with(1, updates, [(0, "aware")]) == approx({(0, "aware"): expected_upd})
    assert ev.score_with(1, None, [(0, "aware")]) == approx({(0, "aware"): expected_base})  # W0 again
    assert ev.score_with(1, updates, [(0, "aware")]) == approx({(0, "aware"): expected_upd})


def test_a_method_that_trains_jointly_scores_earlier_tasks_with_the_stage_joint_head(word_bert, tmp_path):
    store = Store(tmp_path / "store")

    def full(v: float) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full((2, HIDDEN), v), torch.full((2,), v)

    for k, task in enumerate(("t1", "t2", "t3"), start=1):
        write_head(store.task_files(task).head, *full(k))  # own heads: 1, 2, 3
    # stage t's joint head, stored with task t: rows of every task 1..t (t1 at stage 2: 12, at stage 3: 13, ...)
    for stage, rows in (("t2", {"t1": 12, "t2": 2}), ("t3", {"t1": 13, "t2": 23, "t3": 3})):
        save_file({f"{t}.{k}": v for t, value in rows.items() for k, v in zip(("weight", "bias"), full(value))},
                  str(store.task_files(stage).joint_heads))
    data = [labelled([0, 1], seed=i) for i in range(3)]
    joint = make_evaluator(unit_sequence(word_bert, n_tasks=3, method={"name": "multitask"}), store, data)
    sequential = make_evaluator(unit_sequence(word_bert, n_tasks=3), store, data)
    expected_joint = {(0, 0): 1, (0, 1): 1, (0, 2): 12, (1, 2): 2, (0, 3): 13, (1, 3): 23, (2, 3): 3, (1, 1): 2}
    for (i, t), value in expected_joint.items():
        w, b = joint.head(i, t)
        assert torch.equal(w, full(value)[0]) and torch.equal(b, full(value)[1]), (i, t)
        w, b = sequential.head(i, t)
        assert torch.equal(w, full(i + 1)[0]), (i, t)  # one head per task, whatever the stage


def test_the_joint_head_rule_decides_the_scores(word_bert, tmp_path):
    store = Store(tmp_path / "store")
    write_head(store.task_files("t1").head, *bias_head(5.0, 0.0))   # task 1's own head: always class 0
    write_head(store.task_files("t2").head, *bias_head(0.0, 5.0))
    w, b = bias_head(0.0, 5.0)                                      # stage 2's joint rows for task 1: class 1
    save_file({"t1.weight": w, "t1.bias": b, "t2.weight": w.clone(), "t2.bias": b.clone()},
              str(store.task_files("t2").joint_heads))
    data = [labelled([0, 0, 0, 1], seed=4), labelled([0, 1], seed=5, first_class=2)]
    joint = make_evaluator(unit_sequence(word_bert, n_tasks=2, method={"name": "multitask"}), store, data)
    sequential = make_evaluator(unit_sequence(word_bert, n_tasks=2), store, data)
    assert joint.score_with(1, None, [(0, "aware")]) == approx({(0, "aware"): 3 / 4})       # stage 1: own head
    assert joint.score_with(2, None, [(0, "aware")]) == approx({(0, "aware"): 1 / 4})       # stage 2: joint rows
    assert sequential.score_with(2, None, [(0, "aware")]) == approx({(0, "aware"): 3 / 4})  # always its own head


@pytest.mark.parametrize("scorer, fwt", [("heads", None), ("exact-match", pytest.approx(0.2)), ("rank", pytest.approx(0.2))])
def test_fwt_only_where_the_zero_shot_cell_means_something(scorer, fwt):
    """With heads, task 2's head was fitted to stage 1's backbone, so R[1][2] > R[0][2] by construction: FWT is
    null there, with the reason; a language model's zero-shot answers give FWT."""
    from pslora_cli.evaluation.matrix import matrix_metrics

    grid = [[0.5, 0.5], [0.9, 0.7], [0.8, 0.9]]
    doc = {"scorer": scorer, "primary": "task_aware", "task_aware": grid, "task_agnostic": None,
           "sample_counts": [10, 10]}
    metrics = matrix_metrics(doc, 2)
    assert metrics["task_aware"]["fwt"] == fwt and metrics["primary"]["fwt"] == fwt
    assert ("fwt" in metrics.get("notes", {})) == (scorer == "heads")
