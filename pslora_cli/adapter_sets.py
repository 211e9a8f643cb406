"""PEFT LoRA adapters from anywhere (folders with `adapter_config.json` and `adapter_model.safetensors`, or the older
`adapter_model.bin` read without unpickling code): checked as a set, merged densely one module at a time with the
store's merges (`pslora merge --adapters`), written as dense updates or folded into a stock model folder, and
analysed as a store's adapters are (`pslora analyze-shifts --adapters`).

The adapters must name one base model (`base_model_name_or_path`) and agree on each module's weight shape; ranks,
alphas and rsLoRA may differ (a merge works on ΔW = s·B·A). A module that some adapters do not adapt counts as a zero
update for them. An adapter whose factors are not its update of the base weights is refused (`check_initialisation`):
PEFT's PiSSA, OLoRA, CorDA, LoRA-GA and LoftQ initialisations rewrite the base weights when they start from non-zero
factors, so s·B·A also counts the part of W0 they moved into the factors.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .errors import InputError
from .models.adapters import CONFIG_FILE, AdapterFile
from .store import atomic_folder, atomic_path, check_output_folder, sha256_file

# PEFT task types -> the transformers class whose parameter names the adapter's module names follow.
_AUTO_CLASSES = {"CAUSAL_LM": "AutoModelForCausalLM", "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
                 "SEQ_CLS": "AutoModelForSequenceClassification", "TOKEN_CLS": "AutoModelForTokenClassification",
                 "QUESTION_ANS": "AutoModelForQuestionAnswering"}


class AdapterSet:
    """Checked adapters in the order given: `modules` maps each adapted weight to its shape."""

    def __init__(self, folders: list[Path]):
        if len(folders) < 2:
            raise InputError("--adapters: give at least two adapter folders to merge")
        self.folders = [resolve_adapter_folder(Path(f)) for f in folders]
        seen = {}
        for f in self.folders:
            key = f.resolve()
            if key in seen:
                raise InputError(f"--adapters: {f} is given twice (also as {seen[key]})")
            seen[key] = f
        self.adapters = [open_adapter(f) for f in self.folders]
        bases = [a.config.get("base_model_name_or_path") for a in self.adapters]
        self.base_model = bases[0]
        for folder, base in zip(self.folders[1:], bases[1:]):
            if base != self.base_model:
                raise InputError(f"{folder}: adapts base model {base!r}, but {self.folders[0]} adapts "
                                 f"{self.base_model!r}; merge adapters of one base model")
        self.task_type = self.adapters[0].config.get("task_type")
        for folder, adapter in zip(self.folders[1:], self.adapters[1:]):
            if adapter.config.get("task_type") != self.task_type:  # their module names follow different classes
                raise InputError(f"{folder}: task_type {adapter.config.get('task_type')!r}, but {self.folders[0]} "
                                 f"has {self.task_type!r}: adapters of one model class merge")
        self.modules: dict[str, tuple[int, ...]] = {}
        self.owner: dict[str, Path] = {}
        for folder, adapter in zip(self.folders, self.adapters):
            for name in adapter.modules:
                shape = adapter.weight_shape(name)
                if name in self.modules and self.modules[name] != shape:
                    raise InputError(f"{folder}: {name} has weight shape {list(shape)}, but "
                                     f"{self.owner[name]} has {list(self.modules[name])}: not adapters of one model")
                self.modules.setdefault(name, shape)
                self.owner.setdefault(name, folder)
        self.sha256 = {str(f): sha256_file(a.path) for f, a in zip(self.folders, self.adapters)}

    def delta(self, i: int, name: str, device) -> torch.Tensor:
        """Adapter i's dense update of `name` as a matrix (zero where it does not adapt `name`)."""
        adapter = self.adapters[i]
        if name in adapter.modules:
            return adapter.delta(name, device)
        shape = self.modules[name]
        return torch.zeros((shape[0], math.prod(shape[1:])), device=device)

    def iter_deltas(self, name: str, device):
        """Every adapter's dense update of `name`, one at a time, in the weight's shape."""
        for i in range(len(self.adapters)):
            yield self.delta(i, name, device).reshape(self.modules[name])

    def describe(self) -> list[dict]:
        return [{"folder": str(f), "rank": a.rank, "alpha": a.config.get("lora_alpha"), "modules": len(a.modules),
                 "sha256": self.sha256[str(f)]} for f, a in zip(self.folders, self.adapters)]


def resolve_adapter_folder(given: Path) -> Path:
    """A local folder as given; else a hub id ("owner/name"), whose config and weights are fetched into the hub's
    cache where the hub is reachable."""
    if given.is_dir():
        return given
    text = str(given)
    if given.exists() or text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise InputError(f"--adapters: {given}: not a folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, allow_patterns=[CONFIG_FILE, "adapter_model.safetensors",
                                                            "adapter_model.bin"]))
    except Exception as exc:  # noqa: BLE001 - offline, unknown repository, no access: one line either way
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"--adapters: {given}: not a local folder, and not fetched from the hub ({first[:160]})") \
            from None


def open_adapter(folder: Path) -> AdapterFile:
    """One PEFT LoRA adapter folder from anywhere, checked: a LoRA adapter, its factors its update of the base weights
    (`check_initialisation`), nothing beside the factors that a merge would drop. InputError naming the file."""
    folder = Path(folder)
    config = folder / CONFIG_FILE
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{config}: missing: not a PEFT adapter folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{config}: not valid JSON ({exc})") from None
    kind = raw.get("peft_type") if isinstance(raw, dict) else None
    if kind != "LORA":
        raise InputError(f"{config}: peft_type {kind!r} is not LORA: only LoRA adapters can be merged as dense updates")
    check_initialisation(raw, config)
    adapter = AdapterFile(folder, allow_bin=True)
    if adapter.other_keys:
        raise InputError(f"{adapter.path}: holds {adapter.other_keys[0]} beside the LoRA factors (modules_to_save, "
                         f"e.g. a task head): a merge of the LoRA updates would drop it")
    return adapter


# init_lora_weights values whose adapter computes W0 + s·B·A on the unchanged base weights W0: the default (B = 0),
# random factors (False, "orthogonal": the adapter's s·B·A is still all it adds to W0), and those that start from
# B·A = 0 ("gaussian", "eva", "mica").
PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal", "mica")
# Those that rewrite W0 and start from non-zero factors; PEFT converts the first four to plain LoRA (rank 2r) given the
# adapter saved before training.
CONVERTIBLE_INITS = ("pissa", "olora", "corda", "lora_ga")
CONVERSION = ("convert it with PEFT first: peft_model.save_pretrained(OUT, "
              "path_initial_model_for_weight_conversion=INITIAL), INITIAL being the adapter saved before training, "
              "gives a plain LoRA adapter of rank 2r to merge")


def check_initialisation(config: dict, where: Path | str) -> None:
    """InputError unless the adapter's s·B·A is its update of the unchanged base weights: PiSSA (and pissa_niter_N),
    OLoRA, CorDA and LoRA-GA move part of W0 into the starting factors (W0 - s·B0·A0 is what they train on), LoftQ
    replaces W0 by its quantisation; activated LoRA (alora_invocation_tokens) acts only after its invocation tokens, so
    folded into the weights it would act on every token."""
    init = config.get("init_lora_weights", True)
    if isinstance(init, bool) or init in PLAIN_INITS:
        pass
    else:
        family = next((f for f in CONVERTIBLE_INITS if isinstance(init, str) and init.lower().startswith(f)), None)
        if family is not None:
            raise InputError(f"{where}: init_lora_weights {init!r} rewrites the base weights (W0 - s·B0·A0) and "
                             f"starts from non-zero factors, so s·B·A is not this adapter's update; {CONVERSION}")
        if init == "loftq":
            raise InputError(f"{where}: init_lora_weights 'loftq' trains against a quantised W0 and starts from "
                             f"non-zero factors, so s·B·A is not an update of W0; no conversion to plain LoRA exists")
        raise InputError(f"{where}: init_lora_weights {init!r}: an initialisation pslora does not know, so it cannot "
                         f"tell whether s·B·A is the adapter's update (known: {', '.join(map(repr, PLAIN_INITS))})")
    if config.get("alora_invocation_tokens"):
        raise InputError(f"{where}: alora_invocation_tokens is set: an activated LoRA acts only after its invocation "
                         f"tokens, so folded into the weights it would act on every token; not supported")


def merge_adapter_set(folders: list[Path], method: str, out: Path, device, *, base: str | None = None,
                      density: float = 0.2, scale: float | None = None, force: bool = False) -> dict:
    """Merge the adapters with the registered merge `method`; write the dense updates (`out` ending in
    .safetensors) or, for a folder, the base model with the merge folded in, as its stock library writes it."""
    from .core.merges import MERGES, merge_module
    from .merge_options import check_merge_name, resolve_options

    check_merge_name(method, allowed=tuple(m for m in MERGES if m != "last"))
    options = resolve_options(method, {"density": density, "scale": scale},
                              {"density": "--density", "scale": "--scale"})
    aset = AdapterSet(folders)
    as_file = out.suffix == ".safetensors"
    model = None
    if not as_file:
        check_output_folder(out, force)
        model = _load_base(base or aset.base_model, aset)
    elif out.exists() and out.is_dir():
        raise InputError(f"--out {out}: is a folder; a .safetensors name writes the dense updates")


    def merged():
        for name in aset.modules:
            yield name, merge_module(lambda n=name: aset.iter_deltas(n, device), method,
                                     **options).reshape(aset.modules[name])

    info = {"method": method, "options": options, "adapters": aset.describe(),
            "base_model": base or aset.base_model, "modules": len(aset.modules), "out": str(out)}
    if as_file:
        from .store.stream_write import write_streaming

        specs = [(name, torch.float32, shape) for name, shape in aset.modules.items()]
        metadata = {"format": "pslora-merge/1", "method": method, "adapters": json.dumps(aset.describe()),
                    "base_model": json.dumps(info["base_model"])}
        with atomic_path(out) as tmp:
            write_streaming(tmp, specs, ((n, d.float().cpu()) for n, d in merged()), metadata)
        info["kind"] = "dense updates"
        return info
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, delta in merged():
            params[name].add_(delta.to(params[name].dtype).to(params[name].device))
    with atomic_folder(out, force) as tmp:
        model.save_pretrained(tmp)
        _save_tokenizer(base or aset.base_model, tmp)
        (tmp / "README.md").write_text(_model_card(info), encoding="utf-8")
    info["kind"] = "model folder"
    return info


def _load_base(base: str | None, aset: AdapterSet):
    """The base model, in the class whose parameter names the adapters' module names follow; every adapted
    module checked against it (name and shape) before anything is written."""
    import transformers

    if not base:
        raise InputError("--base: the adapters name no base model (base_model_name_or_path); give --base MODEL")
    cls = getattr(transformers, _AUTO_CLASSES.get(aset.task_type, "AutoModel"))
    try:
        model = cls.from_pretrained(base, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"--base {base}: cannot load it as {cls.__name__} ({first})") from None
    params = dict(model.named_parameters())
    for name, shape in aset.modules.items():
        if name not in params:
            raise InputError(f"{aset.owner[name]}: adapts {name}, which {base} ({cls.__name__}) does not have")
        if tuple(params[name].shape) != shape:
            raise InputError(f"{aset.owner[name]}: {name} has shape {list(shape)} in the adapter, "
                             f"{list(params[name].shape)} in {base}")
    return model


def _save_tokenizer(base: str, folder: Path) -> None:
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    except (OSError, ValueError):
        pass  # a model without a tokenizer (or one the base does not ship): the weights are the product


def _model_card(info: dict) -> str:
    rows = "\n".join(f"| {a['folder']} | {a['rank']} | {a['alpha']} | {a['modules']} | `{a['sha256']}` |"
                     for a in info["adapters"])
    return (f"# Merged LoRA adapters\n\nBase model: `{info['base_model']}`. Merge: `{info['method']}` "
            f"(options {json.dumps(info['options'])}), {info['modules']} modules, folded into the base weights by "
            f"`pslora merge --adapters` (W = W0 + merge of the dense updates s·B·A).\n\n"
            f"| adapter | r | alpha | modules | sha256 of its weights |\n| --- | --- | --- | --- | --- |\n{rows}\n")
