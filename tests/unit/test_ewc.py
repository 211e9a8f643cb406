"""EWC on one LoRA adapter (methods/ewc.py): the penalty against a hand computation and a float64 gradient check,
the Fisher as the mean over minibatches of the squared task-loss gradient, its accumulation over tasks
(F ← γ·F + F_new), and the defining property: against the same training without the penalty, the factors the
earlier task's Fisher marks as important move less."""

from __future__ import annotations

import types

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import text_data, unit_sequence
from pslora_cli.methods import METHODS
from pslora_cli.methods.ewc import FISHER_FILE, empirical_fisher, penalty
from pslora_cli.store import TaskFiles
from pslora_cli.training.recipe import train_task

CPU = torch.device("cpu")
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


def _layer(a: torch.Tensor, b: torch.Tensor) -> nn.Module:
    layer = nn.Module()
    layer.lora_A = nn.ModuleDict({"default": nn.Linear(a.shape[1], a.shape[0], bias=False)})
    layer.lora_B = nn.ModuleDict({"default": nn.Linear(b.shape[1], b.shape[0], bias=False)})
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(a)
        layer.lora_B["default"].weight.copy_(b)
    return layer.to(a.dtype)


def test_the_penalty_is_half_the_fisher_weighted_squared_distance_to_the_anchor():
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0], [-1.0]])
    layers = {"m": _layer(a, b)}
    fisher = {"m.A": torch.tensor([[2.0, 0.5]]), "m.B": torch.tensor([[1.0], [4.0]])}
    anchor = {"m.A": torch.tensor([[0.0, 1.0]]), "m.B": torch.tensor([[3.0], [0.0]])}
    # 1/2 (2·1² + 0.5·1² + 1·0² + 4·1²) = 3.25
    assert penalty(layers, fisher, anchor).item() == pytest.approx(3.25)


def test_the_penalty_s_gradient_in_float64():
    g = torch.Generator().manual_seed(0)
    fisher = {"m.A": torch.rand(2, 5, generator=g, dtype=torch.float64),
              "m.B": torch.rand(4, 2, generator=g, dtype=torch.float64)}
    anchor = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in fisher.items()}

    def value(a, b):
        layer = types.SimpleNamespace(lora_A={"default": types.SimpleNamespace(weight=a)},
                                      lora_B={"default": types.SimpleNamespace(weight=b)})
        return penalty({"m": layer}, fisher, anchor)

    a = torch.randn(2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(value, (a, b))
    value(a, b).backward()
    torch.testing.assert_close(a.grad, fisher["m.A"] * (a.detach() - anchor["m.A"]))


def test_the_fisher_is_the_mean_over_minibatches_of_the_squared_gradient():
    layer = _layer(torch.tensor([[1.0, -1.0]]), torch.tensor([[2.0]]))
    xs = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0])]
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight

    def task_loss(idx):  # the mean over the batch of (B A x)², as a task loss
        return torch.stack([((b @ a) @ xs[i]).pow(2).sum() for i in idx]).mean()

    run = types.SimpleNamespace(layers={"m": layer}, model=nn.Module(), task_loss=task_loss,
                                data=types.SimpleNamespace(train_x=xs),
                                seq=types.SimpleNamespace(training=types.SimpleNamespace(batch_size=2)))
    fisher = empirical_fisher(run)
    expected_a = torch.zeros_like(a)
    for idx in ([0, 1], [2]):  # two minibatches of at most 2
        grad, = torch.autograd.grad(task_loss(idx), a)
        expected_a += grad ** 2
    torch.testing.assert_close(fisher["m.A"], expected_a / 2)
    assert a.grad is None and b.grad is None  # the pass leaves no gradient behind


def _ewc_sequence(word_bert, **method):
    return unit_sequence(word_bert, training={"steps": 16, "learning_rate": 5e-2},
                         method={"name": "ewc", **method})


def _train_two(seq, root):
    for i in range(2):
        train_task(seq, i, text_data(seed=i + 1), [root / f"t{j + 1}" for j in range(i)], TaskFiles(root / f"t{i + 1}"),
                   CPU)
    return [load_file(str(root / f"t{i + 1}" / FISHER_FILE)) for i in range(2)]


def test_ewc_is_registered_as_seq_lora_with_its_penalty():
    spec = METHODS["ewc"]
    assert (spec.init, spec.merge, spec.previous) == ("previous", "last", "none")
    assert spec.term_state("ewc") is True and spec.knobs[0].field == "ewc_weight"


def test_the_fisher_accumulates_over_tasks_with_its_decay(word_bert, tmp_path):
    kept = _train_two(_ewc_sequence(word_bert), tmp_path / "summed")
    fresh = _train_two(_ewc_sequence(word_bert, ewc_decay=0.0), tmp_path / "fresh")
    for key in kept[0]:
        if key.startswith("fisher."):
            assert kept[0][key].min() >= 0
            # task 2 trained alike in both (γ acts after training): γ = 1 adds task 1's Fisher to the new one
            torch.testing.assert_close(kept[1][key], kept[0][key] + fresh[1][key])
    adapter = load_file(str(next((tmp_path / "summed" / "t2").rglob("adapter_model.safetensors"))))
    anchors = {k: v for k, v in kept[1].items() if k.startswith("anchor.")}
    assert len(anchors) == len(adapter)  # the anchor is the trained factors, A and B of every module


def test_factors_important_to_the_earlier_task_move_less_than_without_the_penalty(word_bert, tmp_path):
    with_ewc = _train_two(_ewc_sequence(word_bert, ewc_weight=1e4), tmp_path / "ewc")
    without = _train_two(_ewc_sequence(word_bert, ewc_weight=1e-12), tmp_path / "plain")  # the penalty negligible
    fisher = {k[len("fisher."):]: v for k, v in with_ewc[0].items() if k.startswith("fisher.")}

    def weighted_move(files):
        return sum(float((fisher[k] * (files[1][f"anchor.{k}"] - files[0][f"anchor.{k}"]) ** 2).sum())
                   for k in fisher)

    assert with_ewc[0].keys() == without[0].keys()
    torch.testing.assert_close(with_ewc[0]["anchor." + next(iter(fisher))], without[0]["anchor." + next(iter(fisher))])
    assert weighted_move(with_ewc) < 0.5 * weighted_move(without)
