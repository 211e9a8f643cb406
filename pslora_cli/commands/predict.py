"""`pslora predict`: the store's continual model (serving.py) answering new inputs.

Inputs: for text models, a file (or - for stdin) of lines, each a text or a JSON object with a "text" field (blank
lines are skipped); for image models, an image file, a folder of images, or - for a list of image paths on stdin.
Without a task id an encoder or image model predicts over every class it has seen (its heads side by side, as
task-agnostic scoring does), and a language model continues the input as the whole prompt. With `task`, the model
that `pslora eval` scores that task with answers: its head, or its prompt around the input text."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

from ..errors import InputError
from ..serving import ContinualModel, continual_model

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def read_texts(source: str) -> list[str]:
    """The texts of a file or of stdin ("-"): one per non-blank line, or a JSON object's "text" field."""
    name = "stdin" if source == "-" else source
    try:
        raw = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--input {name}: cannot read it ({exc.__class__.__name__}: {exc})") from None
    texts = []
    # "\n" only: str.splitlines would also split on U+2028 and the like, which JSON strings may hold raw
    for number, line in enumerate(raw.removeprefix("\ufeff").split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{name}: line {number}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"].strip():
                raise InputError(f"{name}: line {number}: a JSON line needs a non-empty \"text\" string field")
            line = obj["text"]
        texts.append(line)
    if not texts:
        raise InputError(f"--input {name}: holds no text")
    return texts


def read_images(source: str) -> list[Path]:
    """The image paths of an image file, a folder of images, or stdin's list of paths ("-"), each checked readable
    (without decoding: a large folder is decoded batch by batch, by `load_images`). PIL's check reads headers
    and, for some formats, not the pixel data: a truncated JPEG is reported when its batch is decoded, still
    before anything is printed."""
    from PIL import Image

    if source == "-":
        paths = [Path(line.strip()) for line in sys.stdin.read().splitlines() if line.strip()]
    else:
        root = Path(source)
        if not root.exists():
            raise InputError(f"--input {source}: not found")
        paths = (sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
                 if root.is_dir() else [root])
    if not paths:
        raise InputError(f"--input {source}: holds no image ({', '.join(IMAGE_SUFFIXES)})")
    for path in paths:
        try:
            with Image.open(path) as img:
                img.verify()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise InputError(f"{path}: not a readable image ({exc.__class__.__name__})") from None
    return paths


def load_images(paths: list[Path]) -> list:
    """The images of `paths` as arrays."""
    from PIL import Image

    from ..data.image_sources import pil_to_array

    images = []
    for path in paths:
        try:
            with Image.open(path) as img:
                images.append(pil_to_array(img))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise InputError(f"{path}: not a readable image ({exc.__class__.__name__})") from None
    return images


def predict(seq, store, device: torch.device, source: str, task: str | None = None, merge: str | None = None,
            progress=None) -> dict:
    """Predictions for every input of `source`, in order: {"predictions": [{"label", "score", ...}], ...}."""
    if task is not None:
        seq.index(task)
    image = _is_image(seq)
    inputs = read_images(source) if image else read_texts(source)  # before any model is loaded
    own = task if seq.method.spec.own_adapters else None
    model = continual_model(seq, store, device, own, merge)
    if task is not None and task not in model.tasks:
        raise InputError(f"--task {task!r}: not trained in {store.root} (trained: {', '.join(model.tasks)})")
    batch = seq.training.eval_batch_size
    with torch.inference_mode():
        if seq.generative:
            predictions = _generate(model, inputs, task, batch, progress)
        else:
            predictions = _classify(model, inputs, task, batch, progress, load_images if image else list)
    for p, given in zip(predictions, inputs):
        p["input"] = str(given)
    return {"store": str(store.root), "tasks": model.tasks, "merge": model.merge, "task": task,
            "predictions": predictions}


def _is_image(seq) -> bool:
    from ..config.backbones import backbone_modality

    return backbone_modality(seq.backbone) == "image"


def _classify(model: ContinualModel, inputs: list, task: str | None, batch: int, progress, load) -> list[dict]:
    heads = [h for h in model.heads if task is None or h.task == task]
    owners = [(h.task, c) for h in heads for c in h.classes]
    labels = model.labels if task is None else [c for h in heads for c in h.classes]
    backbone, out = model.backbone, []
    for start in range(0, len(inputs), batch):
        features = backbone.features(backbone.model, backbone.collate(load(inputs[start:start + batch]),
                                                                      model.device)).float()
        probs = torch.cat([features @ h.weight.T + h.bias for h in heads], dim=1).softmax(-1)
        score, best = probs.max(-1)
        for s, k in zip(score.tolist(), best.tolist()):
            out.append({"label": labels[k], "score": s, "task": owners[k][0], "class": owners[k][1]})
        if progress:
            progress(min(start + batch, len(inputs)), len(inputs), {})
    return out


def _generate(model: ContinualModel, inputs: list[str], task: str | None, batch: int, progress) -> list[dict]:
    """Greedy answers through the scorer's own path (models/lm.py `generated_answers`, with exact match's budget
    and prompt cut); score = the answer's probability under the model."""
    from ..data.prompts import Prompted
    from ..models.lm import generated_answers, generation_budget, normalise

    lm = model.backbone
    prompts = [p for p in model.prompts if p.task == task] if task is not None else []
    prompt = prompts[0] if prompts else None
    answers = prompt.answers if prompt else [a for p in model.prompts for a in p.answers]
    budget = generation_budget(answers, lm, model.seq.evaluation.max_new_tokens)  # as exact-match scoring gives
    reserve = max(len(lm.answer_ids(a)) for a in answers)  # prompts cut as in training and scoring
    examples = [Prompted(prompt.prefix if prompt else "", text, prompt.suffix if prompt else "") for text in inputs]
    out = []
    for start in range(0, len(examples), batch):
        texts, scores = generated_answers(lm, examples[start:start + batch], budget, model.device, reserve,
                                          with_scores=True)
        for text, score in zip(texts, scores):
            text = text.strip()
            match = [c for c, a in zip(prompt.classes, prompt.answers) if normalise(a) == normalise(text)] \
                if prompt else []
            out.append({"label": text, "score": score, "task": task, "class": match[0] if match else None})
        if progress:
            progress(min(start + batch, len(examples)), len(examples), {})
    return out
