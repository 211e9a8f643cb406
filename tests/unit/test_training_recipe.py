"""The training recipe (pslora_cli.training.recipe.train_task) on a tiny random BERT with a word-level tokenizer and
synthetic two-class data: it learns, it writes the adapter in PEFT's format and the head into a TaskFiles, the
stability loss is on against an earlier task, and a run stopped (or crashed) and resumed from its checkpoint ends
bitwise where an uninterrupted run ends."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import text_data, unit_sequence
from pslora_cli.errors import Interrupted
from pslora_cli.models.adapters import AdapterFile
from pslora_cli.store import TaskFiles
from pslora_cli.store.checkpoints import checkpoint_step
from pslora_cli.training.recipe import Checkpointing, lora_layers, train_task

CPU = torch.device("cpu")
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # PEFT on transformers 5
STEPS = 24
MODULES = [f"encoder.layer.{layer}.attention.self.{m}" for layer in (0, 1) for m in ("query", "value")]


@pytest.fixture(scope="module")
def seq(word_bert):
    return unit_sequence(word_bert, training={"steps": STEPS, "learning_rate": 2e-2, "head_learning_rate": 1e-1})


@pytest.fixture(scope="module")
def data():
    return text_data(train_per_class=24, test_per_class=6, seed=1)


def train(seq, out, index=0, data=None, previous=(), **kw) -> dict:
    return train_task(seq, index, data if data is not None else text_data(seed=index + 1), list(previous), out, CPU,
                      **kw)


@pytest.fixture(scope="module")
def first_task(seq, data, tmp_path_factory):
    """Task t1 trained without interruption, with every step's record."""
    out = TaskFiles(tmp_path_factory.mktemp("recipe") / "t1")
    records = []
    metrics = train(seq, out, data=data, progress=lambda step, total, record: records.append((step, total, record)))
    return out, metrics, records


def test_the_loss_goes_down(first_task, seq):
    _, metrics, records = first_task
    steps = seq.training.steps
    assert [(s, n) for s, n, _ in records] == [(s, steps) for s in range(1, steps + 1)]
    losses = [r["loss"] for _, _, r in records]
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.6 * first, losses
    assert metrics["steps"] == steps and metrics["final"]["loss"] < first
    assert metrics["final"]["stability_loss"] == 0  # nothing earlier to be stable against
    assert metrics["final"]["train_accuracy"] > 0.75


def test_the_adapter_is_written_in_peft_format(first_task, seq, word_bert, data):
    from peft import PeftModel
    from transformers import AutoModel

    out, _, _ = first_task
    assert sorted(p.name for p in out.folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                            "head.safetensors"]
    config = json.loads((out.adapter_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == seq.lora.rank and config["lora_alpha"] == seq.lora.alpha
    assert config["target_modules"] == ["query", "value"] and config["base_model_name_or_path"] == str(word_bert)
    tensors = load_file(str(out.adapter_dir / "adapter_model.safetensors"))
    hidden, r = 16, seq.lora.rank
    assert set(tensors) == {f"base_model.model.{m}.lora_{x}.weight" for m in MODULES for x in "AB"}
    for m in MODULES:
        a, b = tensors[f"base_model.model.{m}.lora_A.weight"], tensors[f"base_model.model.{m}.lora_B.weight"]
        assert a.shape == (r, hidden) and b.shape == (hidden, r) and a.dtype == b.dtype == torch.float32
        assert b.abs().sum() > 0  # B starts at zero: it was trained
    # stock PEFT loads the folder onto the plain base model, with exactly these factors
    peft_model = PeftModel.from_pretrained(AutoModel.from_pretrained(str(word_bert)), str(out.adapter_dir))
    layers = lora_layers(peft_model)
    assert sorted(layers) == sorted(f"{m}.weight" for m in MODULES)
    for m in MODULES:
        assert torch.equal(layers[f"{m}.weight"].lora_B["default"].weight, tensors[f"base_model.model.{m}.lora_B.weight"])
    adapter = AdapterFile(out.adapter_dir)  # and pslora's own reader: dense updates of the base weights' shape
    assert sorted(adapter.modules) == sorted(f"{m}.weight" for m in MODULES) and adapter.scale == 2.0
    assert adapter.delta(f"{MODULES[0]}.weight").shape == (hidden, hidden)
    head = load_file(str(out.head))
    assert head["weight"].shape == (2, hidden) and head["bias"].shape == (2,)
    with safe_open(str(out.head), "pt") as f:
        assert json.loads(f.metadata()["classes"]) == data.classes


def test_a_second_task_trains_against_the_first(first_task, seq, tmp_path):
    t1, _, _ = first_task
    out = TaskFiles(tmp_path / "t2")
    metrics = train(seq, out, index=1, data=text_data(seed=2, first_class=2), previous=[t1.adapter_dir])
    assert metrics["final"]["stability_loss"] > 0  # PS-LoRA's loss against task 1's update
    t1_b = load_file(str(t1.adapter_dir / "adapter_model.safetensors"))
    t2_b = load_file(str(out.adapter_dir / "adapter_model.safetensors"))
    assert all(not torch.equal(t1_b[k], t2_b[k]) for k in t1_b)  # a new adapter, not task 1's


def read(out: TaskFiles) -> tuple[bytes, bytes]:
    return (out.adapter_dir / "adapter_model.safetensors").read_bytes(), out.head.read_bytes()


@pytest.mark.parametrize("how", ["stop-requested", "crash-after-periodic-checkpoint"])
def test_an_interrupted_run_resumes_to_bitwise_the_same_adapter(how, first_task, seq, data, tmp_path):
    reference, _, _ = first_task
    ckpt = tmp_path / "checkpoints" / "t1.safetensors"
    notes, done = [], []
    if how == "stop-requested":  # SIGINT/SIGTERM: the state is saved at the next step boundary
        run_seq = seq
        stopping = Checkpointing(ckpt, "key-1", stop_requested=lambda: len(done) >= 5, note=notes.append)
        with pytest.raises(Interrupted, match=f"interrupted after step 5/{STEPS}"):
            train(run_seq, TaskFiles(tmp_path / "stopped"), data=data, checkpointing=stopping,
                  progress=lambda step, total, record: done.append(step))
        saved_at = 5
    else:  # a crash (here: an exception at step 7) loses the steps after the last periodic checkpoint
        run_seq = seq.replace(training=dataclasses.replace(seq.training, checkpoint_every=3))

        def crash(step, total, record):
            if step == 7:
                raise RuntimeError("crashed")

        with pytest.raises(RuntimeError, match="crashed"):
            train(run_seq, TaskFiles(tmp_path / "stopped"), data=data, progress=crash,
                  checkpointing=Checkpointing(ckpt, "key-1", note=notes.append))
        saved_at = 6
    assert checkpoint_step(ckpt) == saved_at and not (tmp_path / "stopped").exists()

    resumed, steps = TaskFiles(tmp_path / "resumed"), []
    train(run_seq, resumed, data=data, progress=lambda step, total, record: steps.append(step),
          checkpointing=Checkpointing(ckpt, "key-1", note=notes.append))
    assert notes == [f"task t1: resuming from the checkpoint at step {saved_at}/{STEPS}"]
    assert steps == list(range(saved_at + 1, STEPS + 1))
    assert read(resumed) == read(reference)


def test_a_checkpoint_for_other_settings_is_not_resumed(first_task, seq, data, tmp_path):
    reference, _, _ = first_task
    ckpt = tmp_path / "t1.safetensors"
    with pytest.raises(Interrupted):
        train(seq, None, data=data, checkpointing=Checkpointing(ckpt, "key-1", stop_requested=lambda: True))
    assert checkpoint_step(ckpt) == 0
    notes, steps, out = [], [], TaskFiles(tmp_path / "t1")
    train(seq, out, data=data, progress=lambda step, total, record: steps.append(step),
          checkpointing=Checkpointing(ckpt, "key-2", note=notes.append))
    assert notes == ["task t1: ignoring t1.safetensors: it was written for other settings or data"]
    assert steps == list(range(1, STEPS + 1)) and read(out) == read(reference)


def test_previous_sum_and_merge_give_the_loss_the_same_history_and_differ_in_the_forward_pass(first_task, seq,
                                                                                            tmp_path):
    """`previous` decides what the frozen weights hold while task t trains (the earlier tasks' running merge or
    their sum); the stability loss's history H is the sum of the earlier updates either way."""
    from pslora_cli.models import load_backbone, target_parameters
    from pslora_cli.training.recipe import fold_previous

    t1, _, _ = first_task
    t2 = TaskFiles(tmp_path / "t2")
    train(seq, t2, index=1, data=text_data(seed=2, first_class=2), previous=[t1.adapter_dir])
    previous = [AdapterFile(t1.adapter_dir), AdapterFile(t2.adapter_dir)]
    histories, weights = {}, {}
    for how in ("merge", "sum"):
        s = seq.replace(method=seq.method.__class__(**{**seq.method.__dict__, "previous": how}))
        params = target_parameters(load_backbone(s.backbone, CPU).model, s.lora.target_modules)
        histories[how] = fold_previous(s, params, previous, CPU)
        weights[how] = {k: p.detach().clone() for k, p in params.items()}
    for name, h in histories["sum"].items():
        assert torch.equal(h, histories["merge"][name])
        assert torch.allclose(h, previous[0].delta(name, CPU) + previous[1].delta(name, CPU), atol=1e-7)
    assert any(not torch.equal(weights["merge"][k], weights["sum"][k]) for k in weights["sum"])
