"""PS-LoRA in your own training loop: two tasks trained with a stock transformers Trainer and pslora's integration,
merged by `pslora merge --adapters` into a stock model folder, answered by pipeline("text-generation"). Offline, on
the built-in SmolLM2-135M-Instruct (any causal LM id or folder works the same).

    python examples/own_training_loop.py [OUT]      # OUT: own-loop/ unless given; PSLORA_EXAMPLE_STEPS: steps a task
"""

import os
import subprocess
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments, pipeline

from pslora_cli.api import builtin_model
from pslora_cli.integrations.transformers import PSLoRATrainer

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "own-loop")
STEPS = int(os.environ.get("PSLORA_EXAMPLE_STEPS", "30"))
BASE = builtin_model("smollm2-135m-instruct")  # a local folder; or e.g. "HuggingFaceTB/SmolLM2-135M-Instruct"
PROMPT = "{question} Choose one from the option.\nOption: yes, no\n{text}\nAnswer:"
TASKS = {  # task: (question, {answer: training inputs}, held-out inputs with their answers)
    "animal": ("Does the following word name an animal?",
               {"yes": ["cat", "horse", "eagle", "salmon", "frog", "tiger", "rabbit", "owl", "shark", "bee", "wolf",
                        "camel"],
                "no": ["table", "hammer", "cloud", "piano", "bottle", "river", "chair", "pencil", "bridge", "spoon",
                       "candle", "ladder"]},
               [("dog", "yes"), ("lamp", "no")]),
    "review": ("Is the following movie review positive?",
               {"yes": ["A wonderful, moving film.", "I loved every minute.", "Brilliant acting and a clever plot.",
                        "A joy to watch.", "Funny, warm and beautifully shot.", "The best film of the year."],
                "no": ["Boring and far too long.", "A waste of time.", "The plot makes no sense.",
                       "Dull, flat and badly acted.", "I walked out halfway.", "Painfully slow and predictable."]},
               [("Great fun from start to finish.", "yes"), ("Tedious and forgettable.", "no")]),
}

tokenizer = AutoTokenizer.from_pretrained(BASE)
pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def example(question: str, text: str, answer: str) -> dict:
    """Prompt + " answer" + end token; the loss is on the answer tokens only (labels -100 on the prompt)."""
    prompt = tokenizer(PROMPT.format(question=question, text=text), add_special_tokens=False)["input_ids"]
    target = tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return {"input_ids": prompt + target, "labels": [-100] * len(prompt) + target}


def collate(rows: list[dict]) -> dict:
    """Right-padded batch: pad tokens are masked out and carry no label."""
    width = max(len(r["input_ids"]) for r in rows)
    return {"input_ids": torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"]))
                                            for r in rows]),
            "labels": torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in rows])}


history = []  # the earlier tasks' adapter folders, oldest first
for index, (task, (question, answers, _)) in enumerate(TASKS.items()):
    torch.manual_seed(index)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    rows = [example(question, text, answer) for answer, texts in answers.items() for text in texts]
    args = TrainingArguments(output_dir=str(OUT / "trainer" / task), max_steps=STEPS, per_device_train_batch_size=8,
                             learning_rate=1e-3, lr_scheduler_type="constant", logging_steps=10, save_strategy="no",
                             report_to=[], seed=index)
    # The earlier tasks' merge is folded into the base weights, and λ·L_PS against their updates joins the loss.
    trainer = PSLoRATrainer(model=model, args=args, train_dataset=rows, data_collator=collate, history=history,
                            stability_weight=1.0)
    trainer.train()
    trainer.save_model(str(OUT / task))  # adapter_config.json + adapter_model.safetensors (PEFT's format)
    history.append(OUT / task)

# The adapters merged (PS-LoRA's magnitude merge) and folded into the base model: a stock transformers folder.
subprocess.run([sys.executable, "-m", "pslora_cli", "merge", "--adapters", *map(str, history),
                "--out", str(OUT / "merged"), "--force"], check=True)

generate = pipeline("text-generation", model=str(OUT / "merged"))
for task, (question, _, held_out) in TASKS.items():
    for text, expected in held_out:
        prompt = PROMPT.format(question=question, text=text)
        written = generate(prompt, max_new_tokens=4, do_sample=False, return_full_text=False)[0]["generated_text"]
        print(f"{task}: {text!r} -> {written.strip()!r} (expected {expected!r})")
