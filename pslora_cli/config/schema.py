"""The task sequence as frozen dataclasses: every YAML key is a field, with its type, default and allowed values
declared beside it (`setting`), so that the one validator (config/validate.py) and the documentation read the
same declaration.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..fields import NO_LEGACY as _NO_LEGACY, NUMBER, REQUIRED, setting  # noqa: F401 (declared here)
from ..methods import SETTINGS as METHOD_SETTINGS


@dataclass(frozen=True)
class Backbone:
    source: str = setting("builtin", (str,), choices=("builtin", "huggingface", "timm"),
            help="builtin: a model shipped inside a Python package (offline); huggingface: a hub id or local folder "
                 "loaded with transformers; timm: any timm image model name")
    name: str = setting("all-minilm-l6-v2", (str,),
            help="the model: all-minilm-l6-v2, efficientnet-lite0 or smollm2-135m-instruct for builtin; a hub id or "
                 "local folder for huggingface; a timm model name")
    pooling: str = setting("mean", (str,), choices=("mean", "cls"),
            help="how an encoder's token features become one vector for the heads")
    max_length: int = setting(64, (int,), positive=True,
            help="tokens per text (128 for language models unless set); a longer prompt's text is cut at its end so "
                 "that the instruction and the answer fit")
    trust_remote_code: bool = setting(False, (bool,),
            help="let transformers run the model repository's own code")
    pretrained: bool = setting(True, (bool,),
            help="timm names: the hub weights (false: random init with a fixed seed; image backbones only)")
    weights: str | None = setting(None, (str, type(None)),
            help="a local .safetensors/.pth file of weights for a timm model")
    image_size: int | None = setting(None, (int, type(None)), positive=True,
            help="the side images are resized to (null: the model's own)")
    model_kwargs: dict = setting({}, (dict,),
            help="passed to timm.create_model (e.g. img_size, patch_size, depth for a small ViT)")
    kind: str = setting("auto", (str,), choices=("auto", "encoder", "causal-lm", "seq2seq-lm"), legacy="encoder",
            help="encoder (pooled features feed per-task heads), causal-lm (LLaMA, SmolLM2) or seq2seq-lm (T5), which "
                 "write the answer; auto: from the model's config")
    dtype: str = setting("float32", (str,), choices=("float32", "bfloat16", "float16"), legacy="float32",
            help="the dtype the frozen backbone weights are loaded in (bfloat16: a 7B model in 13.5 GB instead of 27); "
                 "the LoRA factors, optimiser state, stability loss, heads and merges stay float32")


@dataclass(frozen=True)
class Lora:
    rank: int = setting(8, (int,), positive=True,
            help="r of each LoRA adapter")
    alpha: float = setting(16, NUMBER, positive=True,
            help="LoRA alpha; the update is (alpha / rank) · B·A")
    target_modules: list = setting(["query", "value"], (list,),
            help="the adapted modules (default: the attention query/value projections: [query, value] on BERT-style "
                 "encoders, [q_proj, v_proj] on LLaMA-style LMs, [q, v] on T5)")
    dropout: float = setting(0.0, NUMBER,
            help="dropout on the LoRA path")


class MethodSection:
    """What the method section computes (its fields: `Method` below)."""

    @property
    def spec(self):
        """What the method is (methods registry): its terms, hooks, adapter init, scoring."""
        from ..methods import get_method

        return get_method(self.name)

    @property
    def merge_options(self) -> dict:
        """The keyword arguments of the sequence's merge."""
        return self.options_for(self.merge)

    def options_for(self, merge: str) -> dict:
        """The keyword arguments of `merge` (the sequence's, or another chosen for one command): the scale as set,
        or that merge's own where the sequence left it at its merge's default (MagMax 0.5, the others 1)."""
        from ..core.merges import MERGE_SCALE_DEFAULTS, MERGES, declared_options

        scale = self.merge_scale
        if scale is None or (merge != self.merge and scale == MERGE_SCALE_DEFAULTS.get(self.merge, 1.0)):
            scale = MERGE_SCALE_DEFAULTS.get(merge, 1.0)
        given = {"density": self.merge_density, "scale": scale}
        return declared_options(merge, **given) if merge in MERGES else given

    @property
    def stage_rule(self) -> str:
        """How a stage of the accuracy matrix is formed: the merge's name, or "own" where each task is scored with
        its own adapter (the per-task oracle). Recorded in eval/matrix.json and in its row keys."""
        return "own" if self.spec.own_adapters else self.merge


# The method section: its name, then the settings each method module declares (methods/: the stability loss's,
# O-LoRA's, N-LoRA's, InfLoRA's, a plug-in's), then the merge and how earlier tasks enter training.
_METHOD_NAME = [("name", str, setting("ps-lora", (str,),
        help="the continual-learning method (docs/methods.md): it fixes the merge and how earlier tasks enter "
             "training, and switches the loss terms on or off"))]
_METHOD_MERGE = [
    ("merge", str, setting("magnitude", (str,),
        help="how the task updates are merged (pslora merge --help lists them); fixed by the method except for "
             "custom and per-task")),
    ("merge_density", float, setting(0.2, NUMBER,
        help="TIES: the fraction of each update kept by the trim step")),
    ("merge_scale", "float | None", setting(None, NUMBER + (type(None),),
        help="task arithmetic and MagMax: scale of the merged update (null: the merge's own, 1 for task "
             "arithmetic, 0.5 for MagMax)")),
    ("previous", str, setting("merge", (str,), choices=("merge", "sum", "none"),
        help="how earlier tasks enter task t's training forward pass: their running merge, their sum, or not at "
             "all")),
]
Method = dataclasses.make_dataclass(
    "Method", _METHOD_NAME + [(name, Any, f) for name, f in METHOD_SETTINGS.items()] + _METHOD_MERGE,
    bases=(MethodSection,), frozen=True)
Method.__module__ = __name__  # a module-level class: pickled by name like the other sections


@dataclass(frozen=True)
class Training:
    steps: int | None = setting(120, (int, type(None)), positive=True,
            help="optimiser steps per task (null: epochs decide)")
    epochs: int | None = setting(None, (int, type(None)), positive=True,
            help="passes over each task's training data, when steps is null")
    batch_size: int = setting(16, (int,), positive=True,
            help="examples per micro-batch")
    learning_rate: float = setting(1e-3, NUMBER, positive=True,
            help="AdamW learning rate of the LoRA factors")
    head_learning_rate: float = setting(5e-3, NUMBER, positive=True,
            help="AdamW learning rate of the heads (encoders)")
    weight_decay: float = setting(0.0, NUMBER, minimum=0,
            help="AdamW weight decay")
    eval_batch_size: int = setting(128, (int,), positive=True,
            help="examples per batch when scoring")
    checkpoint_every: int = setting(25, (int,), minimum=0,
            help="save the training state every this many steps (0: only when interrupted); train-task and run resume "
                 "from it")
    precision: str = setting("auto", (str,), choices=("auto", "fp32", "bf16"),
            help="forward-pass precision: bf16 autocast (auto: on GPUs that support it); loss, merge and adapters stay "
                 "float32")
    schedule: str = setting("warmup-linear", (str,), choices=("warmup-linear", "constant"), legacy="warmup-linear",
            help="learning-rate schedule: linear warm-up over the first 10 % of steps then linear decay, or constant "
                 "(O-LoRA)")
    grad_accumulation: int = setting(1, (int,), positive=True, legacy=1,
            help="micro-batches of batch_size per optimiser step (the effective batch is their product)")
    gradient_checkpointing: bool = setting(False, (bool,), legacy=False,
            help="recompute the backbone's activations in the backward pass instead of keeping them (less memory for "
                 "long inputs and large models, about a third more compute per step)")


@dataclass(frozen=True, kw_only=True)
class Task:
    id: str = setting(REQUIRED, (str,),
            help="the task's name, unique in the sequence")
    description: str = setting("", (str,),
            help="free text")
    data: dict = setting(REQUIRED, (dict,),
            help="the task's data source (docs/sequences.md), checked by the data layer")
    prompt: dict | None = setting(None, (dict, type(None)), legacy=None,
            help="language models only: instruction, template and answer texts (null: the defaults)")


@dataclass(frozen=True)
class Evaluation:
    scorer: str = setting("auto", (str,), choices=("auto", "heads", "exact-match", "rank"),
            help="heads: argmax of the task heads (encoders); exact-match: the greedy answer, generated to its end "
                 "token, compared whole with the answer text; rank: the option with the highest likelihood; auto: "
                 "heads for encoders, exact-match for language models")
    max_new_tokens: int | None = setting(None, (int, type(None)), positive=True, legacy=None,
            help="exact-match: the most tokens the model may write (null: the longest answer's tokens + 16, so that an "
                 "answer that runs on is seen and scored wrong)")


SELECTION_PROTOCOLS = ("fixed", "stability-decay", "first-tasks")


@dataclass(frozen=True)
class Selection:
    protocol: str = setting("fixed", (str,), choices=SELECTION_PROTOCOLS, legacy="fixed",
            help="how the method's strength (the knobs it declares: docs/methods.md) is chosen without seeing later "
                 "tasks: fixed (as set); stability-decay (per task: the task trained without the regulariser gives "
                 "the reference validation accuracy; the strongest candidate is tried first and weakened until the "
                 "new task's validation accuracy is within the tolerance of it; De Lange et al. 2021); first-tasks "
                 "(every candidate on the first k tasks, the best validation accuracy over them kept for the rest)")
    tolerance: float = setting(0.2, NUMBER, minimum=0, legacy=0.2,
            help="stability-decay: p, the accepted drop: accuracy >= (1 - p) x the reference's")
    decay: float = setting(0.5, NUMBER, positive=True, legacy=0.5,
            help="α, how a candidate is weakened: a weight times α, a threshold's unprotected share divided by α")
    candidates: int = setting(10, (int,), positive=True, legacy=10,
            help="the most settings tried per choice (the strongest and its weakenings), the same for every method")
    first_tasks: int = setting(3, (int,), positive=True, legacy=3,
            help="first-tasks: k, the tasks chosen on (A-GEM's 3)")


# Parts of the sequence that define what a store holds; the rest (training, method, seed) may be overridden per
# command and is recorded with each task.
IDENTITY_KEYS = ("backbone", "lora", "scenario", "tasks")


@dataclass(frozen=True)
class Sequence:
    name: str = setting(REQUIRED, (str,),
            help="the sequence's name")
    description: str = setting("", (str,),
            help="free text")
    scenario: str = setting("class-incremental", (str,), choices=("class-incremental", "task-incremental"),
            help="class-incremental (one classifier grows by each task's classes; scored without the task id too) or "
                 "task-incremental (each task scored with its own head or prompt)")
    seed: int = setting(0, (int,),
            help="the seed of data splits, initialisation and batch order; one per store")
    backbone: Backbone = field(default_factory=Backbone)
    lora: Lora = field(default_factory=Lora)
    method: Method = field(default_factory=Method)
    training: Training = field(default_factory=Training)
    evaluation: Evaluation = field(default_factory=Evaluation)
    selection: Selection = field(default_factory=Selection)
    tasks: tuple[Task, ...] = ()
    base_dir: str = "."  # where relative data paths resolve: the sequence file's folder

    @property
    def class_incremental(self) -> bool:
        return self.scenario == "class-incremental"

    @property
    def generative(self) -> bool:
        """A language model that writes the answer (no heads)."""
        return self.backbone.kind in ("causal-lm", "seq2seq-lm")

    @property
    def agnostic_scoring(self) -> bool:
        """Whether stages are also scored without the task id (argmax over every seen class's head): for
        class-incremental sequences on encoders. A language model's prompt names the task's options."""
        return self.class_incremental and not self.generative

    @property
    def scorer(self) -> str:
        if self.evaluation.scorer != "auto":
            return self.evaluation.scorer
        return "exact-match" if self.generative else "heads"

    @property
    def task_ids(self) -> list[str]:
        return [t.id for t in self.tasks]

    def index(self, task_id: str) -> int:
        """Position of a task; an InputError naming the known tasks otherwise."""
        from ..errors import InputError

        for i, t in enumerate(self.tasks):
            if t.id == task_id:
                return i
        raise InputError(f"unknown task {task_id!r} (the sequence {self.name!r} has: {', '.join(self.task_ids)})")

    def to_dict(self) -> dict:
        """The plain form stored in a store's manifest and hashed (method.init is recorded for older readers)."""
        out = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        if not out["selection"]:  # every selection setting at its legacy value: stores keep their identity
            del out["selection"]
        out["method"]["init"] = self.method.spec.init
        return out

    def section(self, *names: str) -> dict:
        """Some top-level parts in their plain form, e.g. section("backbone", "lora")."""
        plain = self.to_dict()
        return {k: plain[k] for k in names}

    def replace(self, **changes) -> Sequence:
        return dataclasses.replace(self, **changes)


def _plain(value: Any) -> Any:
    """Dataclasses as dicts (fields at their legacy value left out), tuples as lists."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.metadata.get("legacy", _NO_LEGACY) is _NO_LEGACY or getattr(value, f.name) != f.metadata["legacy"]}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


SECTIONS = {"backbone": Backbone, "lora": Lora, "method": Method, "training": Training, "evaluation": Evaluation,
            "selection": Selection}
