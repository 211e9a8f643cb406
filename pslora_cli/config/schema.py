"""The task sequence as frozen dataclasses: every YAML key is a field, with its type, default and allowed values
declared beside it (`setting`), so that the one validator (config/validate.py) and the documentation read the
same declaration.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

REQUIRED = object()
NUMBER = (int, float)


_NO_LEGACY = object()


def setting(default: Any, types: tuple, *, choices: tuple | None = None, minimum: float | None = None,
            positive: bool = False, legacy: Any = _NO_LEGACY) -> Any:
    """A dataclass field with its validation rule: allowed types, allowed values, lower bound. `legacy`: for a
    field added after stores were written, the value those stores mean by its absence; the plain form (to_dict,
    which store identities hash) leaves the field out at that value, so that they keep their identity."""
    meta = {"types": types, "choices": choices, "minimum": minimum, "positive": positive,
            "required": default is REQUIRED, "legacy": legacy}
    if default is REQUIRED:
        return field(metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Backbone:
    # builtin: a model that ships inside a Python package (offline); huggingface: a hub id or local folder loaded
    # with transformers; timm: any timm image model name.
    source: str = setting("builtin", (str,), choices=("builtin", "huggingface", "timm"))
    name: str = setting("all-minilm-l6-v2", (str,))
    pooling: str = setting("mean", (str,), choices=("mean", "cls"))
    max_length: int = setting(64, (int,), positive=True)
    trust_remote_code: bool = setting(False, (bool,))
    # Image backbones. pretrained: hub weights for timm names (false: random init, fixed seed); weights: a local
    # .safetensors/.pth file for a timm model; image_size: the side images are resized to (null: the model's own);
    # model_kwargs: passed to timm.create_model (e.g. img_size, patch_size, depth for a small ViT).
    pretrained: bool = setting(True, (bool,))
    weights: str | None = setting(None, (str, type(None)))
    image_size: int | None = setting(None, (int, type(None)), positive=True)
    model_kwargs: dict = setting({}, (dict,))
    # What the model is: an encoder whose pooled features feed per-task heads, or a language model that writes the
    # answer (causal-lm: LLaMA, SmolLM2; seq2seq-lm: T5). auto: from the model's config.
    kind: str = setting("auto", (str,), choices=("auto", "encoder", "causal-lm", "seq2seq-lm"), legacy="encoder")


@dataclass(frozen=True)
class Lora:
    rank: int = setting(8, (int,), positive=True)
    alpha: float = setting(16, NUMBER, positive=True)
    target_modules: list = setting(["query", "value"], (list,))
    dropout: float = setting(0.0, NUMBER)


# The stability loss's forms (the same tuples as core/stability.py's, which this torch-free module cannot import).
SCALED_VARIANTS = ("hinge+ratio", "direction-only", "magnitude-only")
LITERAL_VARIANTS = ("dir+fro", "weighted-dir+fro", "dir+factor", "deviation")


@dataclass(frozen=True)
class Method:
    # The continual-learning method (pslora_cli/methods): it fixes the merge and how earlier tasks enter training,
    # and switches the stability and orthogonality terms on or off.
    name: str = setting("ps-lora", (str,))
    # lambda of the Parameter Stability Loss, for the default variant (a mean over modules of terms in units of
    # the history's scale): 1, the best decade on gen-mixed-order1 (benchmarks/RESULTS.md, "Verdict"). The literal
    # dir+fro was tuned apart (0.01 on the encoder text sequences, which set it in their files).
    stability_weight: float = setting(1.0, NUMBER, minimum=0)
    # alpha of tanh(alpha*x): a fixed value, or adaptive = alpha_c / median|H| per module.
    alpha_mode: str = setting("adaptive", (str,), choices=("adaptive", "fixed"))
    alpha: float = setting(2.0, NUMBER, minimum=0)
    # reduction over a module's elements; "sum" applies to the literal variants only.
    reduction: str = setting("mean", (str,), choices=("mean", "sum"))
    # the loss's form (core/stability.py): "hinge+ratio" (this repository's METHOD.md;
    # METHOD.md §1b says why; averaged over modules), its halves
    # "direction-only" / "magnitude-only", or the paper's literal "dir+fro" and its relatives (summed over modules).
    variant: str = setting("hinge+ratio", (str,), choices=SCALED_VARIANTS + LITERAL_VARIANTS)
    # O-LoRA's lambda_1 for sum_{i<t} ||A_i A_t^T||_1 (null: the method's own, 0.5 for the o-lora methods and 0 for
    # custom, so that custom adds O-LoRA's term only where asked).
    orthogonality_weight: float | None = setting(None, NUMBER + (type(None),), minimum=0)
    # N-LoRA's lambda_1 for its l1 sparsity term on the new task's factors (training/regularisers.py; null: the
    # method's own, 0.4 for n-lora as its official T5 scripts set it, 0 otherwise) and the term's form: "official"
    # (sum over modules of ||A_t B_t||_1, the r x r product the official code computes, square modules only) or
    # "update" (sum over modules of ||s B_t A_t||_1 = ||dW_t||_1, the paper's statement, any module).
    sparsity_weight: float | None = setting(None, NUMBER + (type(None),), minimum=0, legacy=0.0)
    sparsity_form: str = setting("official", (str,), choices=("official", "update"), legacy="official")
    # choices: the merge registry (core/merges), checked by the validator.
    merge: str = setting("magnitude", (str,))
    merge_density: float = setting(0.2, NUMBER)  # TIES: fraction of each update kept by the trim step
    # task arithmetic and MagMax: scale of the merged update (null: the merge's own, 1 for task arithmetic, 0.5 for
    # MagMax as its official code applies it)
    merge_scale: float | None = setting(None, NUMBER + (type(None),))
    # How earlier tasks enter task t's training forward pass: their running merge, their sum, or not at all.
    previous: str = setting("merge", (str,), choices=("merge", "sum", "none"))
    # InfLoRA (core/subspace.py): the share of each task's input energy its subspace keeps, from the first task's
    # value to the last's (the official configs' lamb 0.95 and lame 1.0).
    subspace_threshold: float = setting(0.95, NUMBER, positive=True, legacy=0.95)
    subspace_threshold_end: float = setting(1.0, NUMBER, positive=True, legacy=1.0)

    @property
    def spec(self):
        """What the method is (methods registry): trains jointly or not, adapter init, scoring."""
        from ..methods import get_method

        return get_method(self.name)

    @property
    def merge_options(self) -> dict:
        """The keyword arguments of the sequence's merge."""
        return self.options_for(self.merge)

    def options_for(self, merge: str) -> dict:
        """The keyword arguments of `merge` (the sequence's, or another chosen for one command): the scale as set,
        or that merge's own where the sequence left it at its merge's default (MagMax 0.5, the others 1)."""
        from ..core.merges import MERGE_SCALE_DEFAULTS, MERGES

        scale = self.merge_scale
        if scale is None or (merge != self.merge and scale == MERGE_SCALE_DEFAULTS.get(self.merge, 1.0)):
            scale = MERGE_SCALE_DEFAULTS.get(merge, 1.0)
        given = {"density": self.merge_density, "scale": scale}
        return {k: given[k] for k in (MERGES[merge].options if merge in MERGES else given)}

    @property
    def stage_rule(self) -> str:
        """How a stage of the accuracy matrix is formed: the merge's name, or "own" where each task is scored with
        its own adapter (the per-task oracle). Recorded in eval/matrix.json and in its row keys."""
        return "own" if self.spec.own_adapters else self.merge


@dataclass(frozen=True)
class Training:
    steps: int | None = setting(120, (int, type(None)), positive=True)
    epochs: int | None = setting(None, (int, type(None)), positive=True)
    batch_size: int = setting(16, (int,), positive=True)
    learning_rate: float = setting(1e-3, NUMBER, positive=True)
    head_learning_rate: float = setting(5e-3, NUMBER, positive=True)
    weight_decay: float = setting(0.0, NUMBER, minimum=0)
    eval_batch_size: int = setting(128, (int,), positive=True)
    # Save the training state every this many steps (0: only when interrupted), so that a crash loses at most
    # that much work; `train-task`/`run` resume from it.
    checkpoint_every: int = setting(25, (int,), minimum=0)
    # Forward-pass precision: bf16 autocast ("auto": on GPUs that support it); loss, merge, adapters: float32.
    precision: str = setting("auto", (str,), choices=("auto", "fp32", "bf16"))
    # Learning-rate schedule: linear warm-up over the first 10% of steps then linear decay, or constant (O-LoRA).
    schedule: str = setting("warmup-linear", (str,), choices=("warmup-linear", "constant"), legacy="warmup-linear")
    # Micro-batches of batch_size per optimiser step (the effective batch is their product).
    grad_accumulation: int = setting(1, (int,), positive=True, legacy=1)


@dataclass(frozen=True, kw_only=True)
class Task:
    id: str = setting(REQUIRED, (str,))
    description: str = setting("", (str,))
    data: dict = setting(REQUIRED, (dict,))  # checked by the data layer (pslora_cli/data)
    # Language models: instruction, template and answer texts (data/prompts.py); null: the defaults.
    prompt: dict | None = setting(None, (dict, type(None)), legacy=None)


@dataclass(frozen=True)
class Evaluation:
    # heads: argmax of the task heads (encoders); exact-match: greedy generation compared with the answer text
    # (the paper's metric); rank: the option with the highest likelihood. auto: heads for encoders, exact-match
    # for language models.
    scorer: str = setting("auto", (str,), choices=("auto", "heads", "exact-match", "rank"))
    # exact-match: the most tokens the model may write before its end token (null: the longest answer's tokens + 16,
    # room for a sentence, so that an answer that runs on past the label is seen and scored wrong).
    max_new_tokens: int | None = setting(None, (int, type(None)), positive=True, legacy=None)


# Parts of the sequence that define what a store holds; the rest (training, method, seed) may be overridden per
# command and is recorded with each task.
IDENTITY_KEYS = ("backbone", "lora", "scenario", "tasks")


@dataclass(frozen=True)
class Sequence:
    name: str = setting(REQUIRED, (str,))
    description: str = setting("", (str,))
    scenario: str = setting("class-incremental", (str,), choices=("class-incremental", "task-incremental"))
    seed: int = setting(0, (int,))
    backbone: Backbone = field(default_factory=Backbone)
    lora: Lora = field(default_factory=Lora)
    method: Method = field(default_factory=Method)
    training: Training = field(default_factory=Training)
    evaluation: Evaluation = field(default_factory=Evaluation)
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


SECTIONS = {"backbone": Backbone, "lora": Lora, "method": Method, "training": Training, "evaluation": Evaluation}
