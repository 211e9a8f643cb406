"""Export a finished store with `pslora export` and score the exported folder with the stock libraries only
(transformers' AutoModel / pipeline, timm's create_model("local-dir:..."), safetensors) on every task's test set;
print the accuracies next to what `pslora eval` recorded for the last stage (eval/matrix.json).

    .venv/bin/python benchmarks/checks/export_check.py STORE [--out DIR]

pslora is used only to export and to read the test sets (the same data the matrix was scored on) and, for images,
to turn them into the pixel batches the model's config.json describes."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from pslora_cli.cli import main as pslora
from pslora_cli.data.loader import data_loader
from pslora_cli.session import Session


def _encoder(out: Path, sets, task_aware: bool) -> list[float]:
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    encoder, tokenizer = AutoModel.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    head, info = load_file(str(out / "classifier.safetensors")), json.loads((out / "labels.json").read_text())
    accs = []
    for (texts, ys), (start, end) in zip(sets, (t["outputs"] for t in info["tasks"].values())):
        hits = 0
        for k in range(0, len(texts), 64):
            batch = tokenizer(texts[k:k + 64], padding=True, truncation=True, max_length=info["max_length"],
                              return_tensors="pt")
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            feats = hidden[:, 0] if info["pooling"] == "cls" else (hidden * mask).sum(1) / mask.sum(1)
            logits = feats @ head["weight"].T + head["bias"]
            if task_aware:
                pred = logits[:, start:end].argmax(-1)
                gold = torch.tensor(ys[k:k + 64])
            else:
                pred, gold = logits.argmax(-1), torch.tensor(ys[k:k + 64]) + start
            hits += (pred == gold).sum().item()
        accs.append(hits / len(texts))
    return accs


def _language_model(out: Path, sets, answers, kind: str) -> list[float]:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, pipeline

    from pslora_cli.models.lm import normalise

    if kind == "seq2seq-lm":  # transformers 5 has no text2text pipeline: generate with the folder's config
        model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)

        def answer(prompt: str, limit: int) -> str:
            ids = tokenizer(prompt, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
            return tokenizer.decode(model.generate(torch.tensor([ids]), max_new_tokens=limit)[0],
                                    skip_special_tokens=True)
    else:
        pipe = pipeline("text-generation", model=str(out), device="cpu")

        def answer(prompt: str, limit: int) -> str:
            return pipe(prompt, add_special_tokens=False, max_new_tokens=limit, return_full_text=False)[0][
                "generated_text"]
    prompts = json.loads((out / "prompts.json").read_text())["tasks"]
    accs = []
    for (examples, ys), task_answers, task in zip(sets, answers, prompts):
        limit = prompts[task]["max_new_tokens"]
        hits = [normalise(answer(prompts[task]["prefix"] + x.text + prompts[task]["suffix"], limit))
                == normalise(task_answers[y]) for x, y in zip(examples, ys)]
        accs.append(sum(hits) / len(hits))
    return accs


def check(store: Path, out: Path) -> dict:
    started = time.perf_counter()
    assert pslora(["export", "--store", str(store), "--out", str(out), "--force", "--quiet"]) == 0
    export_seconds = time.perf_counter() - started
    seq, st, _ = Session(store_path=store, device_name="cpu", quiet=True).open()
    load = data_loader(seq)
    k = len(st.trained_prefix(seq.task_ids))
    sets = [(list(load(i).test_x), list(load(i).test_y)) for i in range(k)]
    matrix = json.loads(st.matrix_path.read_text())
    primary = matrix["primary"]
    with torch.inference_mode():
        if seq.generative:
            accs = _language_model(out, sets, [load(i).answers for i in range(k)], seq.backbone.kind)
        elif (out / "labels.json").is_file():
            accs = _encoder(out, sets, primary == "task_aware")
        else:
            accs = _timm(out, sets, seq, st)
    recorded = matrix[primary][k][:k]
    return {"store": str(store), "primary": primary, "stock": accs, "eval": recorded,
            "equal": all(abs(a - b) < 1e-9 for a, b in zip(accs, recorded)),
            "export_seconds": round(export_seconds, 1), "check_seconds": round(time.perf_counter() - started, 1)}


def _timm(out: Path, sets, seq, st) -> list[float]:
    """timm's one classifier holds every task's classes side by side: task i's labels start after the earlier
    tasks' class counts."""
    import timm

    from pslora_cli.models import load_backbone

    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    pixels = load_backbone(seq.backbone, torch.device("cpu"))  # preprocessing only: resize + normalise
    accs, start = [], 0
    for (images, ys), task in zip(sets, seq.task_ids):
        hits = 0
        for k in range(0, len(images), 64):
            logits = model(pixels.collate(images[k:k + 64], torch.device("cpu"))["pixel_values"])
            hits += (logits.argmax(-1) == torch.tensor(ys[k:k + 64]) + start).sum().item()
        accs.append(hits / len(images))
        start += len(st.task_meta(task)["classes"])
    return accs


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="pslora-export-check-")) / "model"
    result = check(args.store, out)
    print(json.dumps(result, indent=2))
    sys.exit(0 if result["equal"] else 1)
