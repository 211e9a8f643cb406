"""PS-LoRA in your own training loop (README, "Use PS-LoRA in your own training loop"): the README's example is
examples/own_training_loop.py verbatim and runs (on the built-in SmolLM2, with 2 steps a task: PSLORA_EXAMPLE_STEPS,
the same code path); a two-task run through a stock transformers Trainer + PSLoRATrainer trains the adapters
`pslora run` trains from the same data, seed, steps and optimiser settings; TRL's SFTTrainer takes the mixin."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "own_training_loop.py"
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


def test_the_readme_example_is_the_example_file():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Use PS-LoRA in your own training loop"):]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert block == EXAMPLE.read_text(encoding="utf-8")


def test_the_readme_example_runs_offline_on_the_builtin_smollm2(tmp_path):
    env = dict(os.environ, PSLORA_EXAMPLE_STEPS="2", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(EXAMPLE), str(tmp_path / "out")], env=env, capture_output=True,
                          text=True, timeout=1200, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    answers = [line for line in done.stdout.splitlines() if line.startswith(("animal: ", "review: "))]
    assert len(answers) == 4 and {a.split(":")[0] for a in answers} == {"animal", "review"}, done.stdout
    for task in ("animal", "review"):
        assert (tmp_path / "out" / task / "adapter_model.safetensors").is_file()
    assert (tmp_path / "out" / "merged" / "config.json").is_file()
    assert "merged 2 adapters (magnitude" in done.stdout


# -- a Trainer and `pslora run`, two tasks --------------------------------------------------------------------

WORDS = "good great fun fine nice bad poor dull sad awful red blue green pink gray hot cold warm cool icy".split()
STEPS, BATCH, LR = 4, 4, 0.05


def _tiny_llama(folder: Path) -> Path:
    """A tiny random LLaMA with a word-level tokenizer, in a local folder."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(
        dict.fromkeys(WORDS + "is it yes no option answer : , . ? the word choose one from".split()))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                            unk_token="<unk>").save_pretrained(folder)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                 pad_token_id=0, eos_token_id=1, bos_token_id=1)).save_pretrained(folder)
    return folder


def _two_task_sequence(tmp_path: Path, model: Path) -> Path:
    # 4 + 4 examples: whole batches of 4, so that the Trainer's batches of the ordered rows are `pslora run`'s
    tasks = {"t1": (WORDS[:4], WORDS[5:9], "Is it good?"), "t2": (WORDS[10:14], WORDS[15:19], "Is it hot?")}
    lines = []
    for task, (yes, no, question) in tasks.items():
        for split in ("train", "test"):
            with open(tmp_path / f"{task}-{split}.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["text", "label"])
                writer.writerows([(w, "y") for w in yes] + [(w, "n") for w in no])
        lines.append(f"  - {{id: {task}, data: {{type: files, train: {task}-train.csv, test: {task}-test.csv}}, "
                     f"prompt: {{instruction: '{question}', answers: {{y: 'yes', n: 'no'}}}}}}")
    path = tmp_path / "seq.yaml"
    path.write_text(f"""name: trainer-equivalence
scenario: task-incremental
seed: 0
backbone: {{source: huggingface, name: {model}, max_length: 32}}
lora: {{rank: 2, alpha: 4, target_modules: [q_proj, v_proj]}}
method: {{name: ps-lora, stability_weight: 1.0}}
training: {{steps: {STEPS}, batch_size: {BATCH}, learning_rate: {LR}, schedule: constant, checkpoint_every: 0,
           precision: fp32}}
tasks:
""" + "\n".join(lines) + "\n")
    return path


def _trainer_rows(seq, index: int, lm) -> list[dict]:
    """Task `index`'s examples in the order `pslora run` draws them (its seeded batch order), tokenised as it does:
    prompt tokens + answer tokens + end token, the loss on the answer only."""
    from pslora_cli.data.loader import data_loader
    from pslora_cli.training.checkpoint import BatchOrder
    from pslora_cli.training.recipe import task_seed

    data = data_loader(seq)(index)
    assert len(data.train_x) % BATCH == 0  # no partial batch (which `pslora run` keeps)
    order = BatchOrder(len(data.train_x), BATCH, task_seed(seq.seed, index))
    rows = []
    for _ in range(STEPS):
        for j in order.next():
            answer = lm.answer_ids(data.answers[data.train_y[j]])
            prompt = lm.prompt_ids(data.train_x[j], len(answer))
            rows.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    return rows


def _collate(pad: int):
    def collate(rows):
        width = max(len(r["input_ids"]) for r in rows)
        return {"input_ids": torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in rows]),
                "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"]))
                                                for r in rows]),
                "labels": torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in rows])}
    return collate


def test_two_tasks_through_a_trainer_give_the_adapters_of_pslora_run(tmp_path, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, TrainingArguments

    from pslora_cli.config import load_sequence
    from pslora_cli.integrations.transformers import PSLoRATrainer
    from pslora_cli.models import load_backbone
    from pslora_cli.training.recipe import task_seed

    torch.set_num_threads(1)
    model_dir = _tiny_llama(tmp_path / "llama")
    seq_path = _two_task_sequence(tmp_path, model_dir)
    code, _, err = run_cli(capsys, "run", seq_path, "--store", tmp_path / "store", "--device", "cpu", "--quiet",
                           "--threads", "1")
    assert code == 0, err

    seq, _ = load_sequence(seq_path)
    lm = load_backbone(seq.backbone, torch.device("cpu"))
    history, logs = [], []
    for index, task in enumerate(seq.task_ids):
        torch.manual_seed(task_seed(seq.seed, index))  # the seed `pslora run` initialises task `index`'s LoRA with
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                               LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                          task_type="CAUSAL_LM"))
        args = TrainingArguments(output_dir=str(tmp_path / "trainer" / task), max_steps=STEPS,
                                 per_device_train_batch_size=BATCH, learning_rate=LR, lr_scheduler_type="constant",
                                 weight_decay=0.0, optim="adamw_torch", max_grad_norm=0.0,
                                 train_sampling_strategy="sequential", logging_steps=1, save_strategy="no",
                                 report_to=[], use_cpu=True, disable_tqdm=True)
        trainer = PSLoRATrainer(model=model, args=args, train_dataset=_trainer_rows(seq, index, lm),
                                data_collator=_collate(lm.pad_id), history=history)
        trainer.train()
        trainer.save_model(str(tmp_path / "trainer-adapters" / task))
        history.append(tmp_path / "trainer-adapters" / task)
        logs.append([h for h in trainer.state.log_history if "loss" in h])

    assert all("stability_loss" not in h for h in logs[0]) and any(h["stability_loss"] > 0 for h in logs[1])
    for task, folder in zip(seq.task_ids, history):
        ours = load_file(str(folder / "adapter_model.safetensors"))
        cli = load_file(str(tmp_path / "store" / "tasks" / task / "adapter_model.safetensors"))
        assert ours.keys() == cli.keys()
        for key in cli:
            assert cli[key].abs().max() > 0, key
            assert torch.allclose(ours[key], cli[key], rtol=0, atol=1e-6), (task, key,
                                                                                (ours[key] - cli[key]).abs().max())


def test_trl_sft_trainer_takes_the_mixin(tmp_path):
    """TRL's SFTTrainer with PSLoRAMixin: the second task logs the stability loss and saves a PEFT adapter."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from pslora_cli.integrations.transformers import PSLoRAMixin

    class PSLoRASFTTrainer(PSLoRAMixin, SFTTrainer):
        pass

    torch.set_num_threads(1)
    model_dir = _tiny_llama(tmp_path / "llama")
    data = Dataset.from_list([{"prompt": f"is it {w} ?", "completion": " yes" if i % 2 else " no"}
                              for i, w in enumerate(WORDS)])
    history, logs = [], []
    for task in ("t1", "t2"):
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                               LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                          task_type="CAUSAL_LM"))
        args = SFTConfig(output_dir=str(tmp_path / "sft" / task), max_steps=3, per_device_train_batch_size=4,
                         learning_rate=0.05, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                         disable_tqdm=True)
        trainer = PSLoRASFTTrainer(model=model, args=args, train_dataset=data, history=history)
        trainer.train()
        trainer.save_model(str(tmp_path / task))
        history.append(tmp_path / task)
        logs.append([h for h in trainer.state.log_history if "loss" in h])
    assert any(h.get("stability_loss", 0) > 0 for h in logs[1]) and all("stability_loss" not in h for h in logs[0])
    assert (tmp_path / "t2" / "adapter_config.json").is_file()
    assert (tmp_path / "t2" / "adapter_model.safetensors").is_file()
