"""`pslora export`: the store's continual model (serving.py) written as a folder that the field's stock library
opens with no pslora installed:

- a language model: a transformers folder (config, safetensors weights, tokenizer, generation config) that
  `transformers.pipeline("text-generation", model=DIR)` answers with (an encoder-decoder such as T5:
  `AutoModelForSeq2SeqLM.from_pretrained(DIR).generate`, since transformers 5 has no text2text pipeline), and
  `prompts.json` with each task's prompt (prefix + text + suffix) and answer texts;
- a timm model: `model.safetensors` with a classifier over every class seen, and a timm `config.json` (architecture,
  preprocessing, class names) that `timm.create_model("local-dir:DIR", pretrained=True)` reads;
- a text encoder: the merged encoder as a transformers folder (`AutoModel.from_pretrained(DIR)`), plus
  `classifier.safetensors` (every task's head side by side, on the pooled features) and `labels.json`;
- always a `README.md` model card: base model, tasks, method, merge, the accuracy matrix, the command.

The folder is written under a temporary name and renamed into place whole."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import InputError
from ..serving import ContinualModel, continual_model
from ..store import Store, atomic_folder, check_output_folder


def export_model(seq, store: Store, device: torch.device, out: Path, task: str | None = None,
                 merge: str | None = None, force: bool = False, command: str = "") -> dict:
    """Write the continual model to `out`; returns what was written."""
    _check_not_the_store(out, store)
    check_output_folder(out, force)  # before any model is loaded
    model = continual_model(seq, store, device, task, merge)
    kind = "image" if getattr(model.backbone, "modality", "text") == "image" else (
        model.backbone.kind if seq.generative else "encoder")
    with atomic_folder(out, force) as tmp:
        if seq.generative:
            loading = _write_language_model(model, tmp)
        elif kind == "image":
            loading = _write_timm(model, tmp)
        else:
            loading = _write_encoder(model, tmp)
        (tmp / "README.md").write_text(_model_card(model, store, kind, loading, command), encoding="utf-8")
        files = sorted(p.name for p in tmp.iterdir())
    return {"out": str(out), "kind": kind, "tasks": model.tasks, "merge": model.merge, "files": files}


def _check_not_the_store(out: Path, store: Store) -> None:
    """--force replaces the folder: refuse one that is, or holds, the store or the working folder; and one inside
    the store, whose layout `pslora store verify` checks (a model under tasks/ breaks it)."""
    target, root, here = out.resolve(), store.root.resolve(), Path.cwd().resolve()
    for protected, what in ((root, "the store"), (here, "the working folder")):
        if target == protected or target in protected.parents:
            raise InputError(f"--out {out}: is or holds {what}; export into a folder of its own")
    if root in target.parents:
        raise InputError(f"--out {out}: is inside the store {store.root}; export into a folder outside it")


def _write_language_model(model: ContinualModel, folder: Path) -> str:
    from ..models.lm import generation_budget

    lm = model.backbone
    limit = model.seq.evaluation.max_new_tokens
    budget = generation_budget([a for p in model.prompts for a in p.answers], lm, limit)
    config = lm.model.generation_config
    # What `pslora eval`'s exact match does: greedy, up to the end token or the budget (the longest answer + slack);
    # each task's own budget is in prompts.json.
    config.do_sample, config.max_new_tokens = False, budget
    config.pad_token_id, config.eos_token_id = lm.pad_id, lm.eos_id
    for unused in ("temperature", "top_p", "top_k"):  # sampling settings contradict greedy decoding
        if hasattr(config, unused):
            setattr(config, unused, None)
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    prompts = {"how": "prompt = prefix + text + suffix, tokenized without special tokens (an encoder-decoder's "
                      "prompt then ends with the end token); the model answers with one of the task's answer texts, "
                      "greedily, in at most max_new_tokens tokens (what pslora eval's exact match generates)",
               "max_length": lm.max_length,
               "long_inputs": "pslora cuts the text (never the prefix or suffix) so that the prompt and the answer "
                              "fit in max_length tokens",
               "tasks": {p.task: {"prefix": p.prefix, "suffix": p.suffix, "answers": dict(zip(p.classes, p.answers)),
                                  "max_new_tokens": generation_budget(p.answers, lm, limit)}
                         for p in model.prompts}}
    (folder / "prompts.json").write_text(json.dumps(prompts, indent=2) + "\n", encoding="utf-8")
    prompt = (f'task = json.load(open("DIR/prompts.json"))["tasks"]["{model.prompts[0].task}"]\n'
              f'prompt = task["prefix"] + "your text here" + task["suffix"]\n')
    if lm.kind == "seq2seq-lm":  # transformers 5 has no text2text pipeline: generate() reads generation_config.json
        return ("import json, torch\nfrom transformers import AutoModelForSeq2SeqLM, AutoTokenizer\n\n"
                'model = AutoModelForSeq2SeqLM.from_pretrained("DIR")\n'
                'tokenizer = AutoTokenizer.from_pretrained("DIR")\n'
                + prompt + "ids = tokenizer(prompt, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]\n"
                'answer = model.generate(torch.tensor([ids]), max_new_tokens=task["max_new_tokens"])\n'
                "print(tokenizer.decode(answer[0], skip_special_tokens=True))")
    return ('import json\nfrom transformers import pipeline\n\npipe = pipeline("text-generation", model="DIR")\n'
            + prompt + 'print(pipe(prompt, add_special_tokens=False, max_new_tokens=task["max_new_tokens"], '
            'return_full_text=False)[0]["generated_text"].strip())')


def _write_timm(model: ContinualModel, folder: Path) -> str:
    from safetensors.torch import save_file

    from ..models import target_parameters
    from ..models.adapters import WeightFolder
    from ..models.vision import _architecture, build_model

    cfg, vision = model.seq.backbone, model.backbone
    # A fresh timm model (plain BatchNorm, not pslora's frozen copy) with the update folded in, and one classifier
    # over every class: the heads side by side, as task-agnostic scoring concatenates them.
    net = build_model(cfg)
    WeightFolder(target_parameters(net, model.seq.lora.target_modules)).fold(model.updates)
    weight = torch.cat([h.weight for h in model.heads]).cpu()
    bias = torch.cat([h.bias for h in model.heads]).cpu()
    net.reset_classifier(weight.shape[0])
    classifier = net.get_classifier()
    if not isinstance(classifier, torch.nn.Linear) or classifier.weight.shape != weight.shape:
        raise InputError(f"backbone.name: timm {cfg.name!r} has no linear classifier on its pooled features to "
                         f"hold the heads")
    with torch.no_grad():
        classifier.weight.copy_(weight)
        classifier.bias.copy_(bias)
    weights = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    save_file(weights, str(folder / "model.safetensors"))
    labels = model.labels
    arch = net.pretrained_cfg.get("architecture") or _architecture(cfg)  # a timm name, also for hf-hub: backbones
    config = {"architecture": arch, "num_classes": len(labels), "num_features": vision.feature_dim,
              "model_args": dict(cfg.model_kwargs or {}), "label_names": labels,
              "pretrained_cfg": {"input_size": [vision.channels, *vision.image_size], "mean": list(vision.mean),
                                 "std": list(vision.std), "interpolation": vision.interpolation, "crop_pct": 1.0,
                                 "crop_mode": "squash", "num_classes": len(labels),  # pslora resizes, never crops
                                 "classifier": _classifier_name(net)}}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return ('import timm\n\nmodel = timm.create_model("local-dir:DIR", pretrained=True).eval()\n'
            'labels = model.pretrained_cfg["label_names"]\n'
            '# preprocessing: resize to input_size, scale to [0, 1], normalise with mean/std (config.json)')


def _classifier_name(net: torch.nn.Module) -> str:
    classifier = net.get_classifier()
    return next(name for name, module in net.named_modules() if module is classifier)


def _write_encoder(model: ContinualModel, folder: Path) -> str:
    from safetensors.torch import save_file

    text = model.backbone
    text.model.save_pretrained(folder)
    text.tokenizer.save_pretrained(folder)
    save_file({"weight": torch.cat([h.weight for h in model.heads]).cpu().contiguous(),
               "bias": torch.cat([h.bias for h in model.heads]).cpu().contiguous()},
              str(folder / "classifier.safetensors"))
    start, tasks = 0, {}
    for h in model.heads:
        tasks[h.task] = {"classes": h.classes, "outputs": [start, start + len(h.classes)]}
        start += len(h.classes)
    labels = {"labels": model.labels, "tasks": tasks, "pooling": text.pooling, "max_length": text.max_length}
    (folder / "labels.json").write_text(json.dumps(labels, indent=2) + "\n", encoding="utf-8")
    pool = ("hidden[:, 0]" if text.pooling == "cls" else
            "(hidden * mask).sum(1) / mask.sum(1)  # mean over the tokens")
    return ("import json, torch\nfrom safetensors.torch import load_file\n"
            "from transformers import AutoModel, AutoTokenizer\n\n"
            'encoder, tokenizer = AutoModel.from_pretrained("DIR").eval(), AutoTokenizer.from_pretrained("DIR")\n'
            'head, info = load_file("DIR/classifier.safetensors"), json.load(open("DIR/labels.json"))\n'
            'batch = tokenizer(["your text here"], padding=True, truncation=True, max_length=info["max_length"], '
            'return_tensors="pt")\n'
            "hidden = encoder(**batch).last_hidden_state\nmask = batch[\"attention_mask\"].unsqueeze(-1).float()\n"
            f"features = {pool}\n"
            'logits = features @ head["weight"].T + head["bias"]  # info["tasks"][t]["outputs"]: task t\'s slice\n'
            'print(info["labels"][logits.argmax(-1).item()])')


def _model_card(model: ContinualModel, store: Store, kind: str, loading: str, command: str) -> str:
    seq = model.seq
    what = (f"the merge ({model.merge}) of the updates of {len(model.tasks)} tasks" if model.merge
            else f"task {model.tasks[0]}'s own update")
    lines = [f"# {seq.name}: continual model exported by pslora", "",
             f"Base model `{seq.backbone.name}` ({seq.backbone.source}) with {what} folded into its weights "
             f"(LoRA r {seq.lora.rank}, alpha {seq.lora.alpha:g} on {', '.join(seq.lora.target_modules)}).", "",
             f"- method: `{seq.method.name}` ({_loss_text(seq.method)}); scenario: {seq.scenario}",
             f"- tasks, in training order: " + "; ".join(
                 f"{t} ({', '.join(c)})" for t, c in _task_classes(model)), ""]
    lines += _matrix_lines(store, model)
    lines += ["## Loading it (no pslora needed)", "", "```python", loading.replace("DIR", "."), "```", ""]
    if command:
        lines += ["## Made with", "", "```", command, "```", ""]
    return "\n".join(lines)


def _loss_text(method) -> str:
    if not method.stability_weight:
        return "no stability loss"
    return f"stability loss `{method.variant}`, weight {method.stability_weight:g}"


def _task_classes(model: ContinualModel) -> list[tuple[str, list[str]]]:
    """Each exported task with its classes, as the model holds them (heads or prompts)."""
    return [(p.task, p.classes) for p in model.heads or model.prompts]


def _matrix_lines(store: Store, model: ContinualModel) -> list[str]:
    """The accuracy matrix pslora eval recorded for this model's stage (when it is in the store)."""
    path = store.matrix_path
    if model.merge is None or model.merge != model.seq.method.merge or not path.is_file():
        return ["(No accuracy matrix recorded for exactly this model: run `pslora eval`.)", ""]
    doc = json.loads(path.read_text(encoding="utf-8"))
    key = doc.get("primary", "task_aware")
    rows = doc.get(key) or []
    k = len(model.tasks)
    if len(rows) <= k or any(v is None for v in rows[k][:k]):
        return ["(The accuracy matrix of this stage is not complete: run `pslora eval`.)", ""]
    header = "| after task | " + " | ".join(doc["tasks"][:k]) + " |"
    out = [f"## Accuracy ({key.replace('_', '-')}, %, from pslora eval)", "", header,
           "|" + " --- |" * (k + 1)]
    for t in range(1, k + 1):
        out.append(f"| {doc['tasks'][t - 1]} | " + " | ".join(  # the tasks seen by stage t
            "" if v is None or j >= t else f"{100 * v:.1f}" for j, v in enumerate(rows[t][:k])) + " |")
    out.append("")
    return out
