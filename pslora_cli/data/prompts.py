"""Tasks as prompts, for language models that write the answer: each example becomes (prompt, answer) in the style
of O-LoRA's benchmark (the task's instruction, its options, the input text, an answer cue), and each class an
answer text (its name, or a label -> text mapping). The data stays what the loader made; `prompted` wraps it.

Template placeholders: {instruction}, {options} (the answer texts joined by ", ") and {text} (required). Long
inputs are cut inside {text} only (the model layer does it, in tokens), never in the instruction, options or answer.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass, field

from pslora_cli.data._common import TaskData
from pslora_cli.errors import InputError

DEFAULT_TEMPLATE = "{instruction}\nOption: {options}\n{text}\nAnswer:"
PLACEHOLDERS = ("instruction", "options", "text")
# A default instruction per source type, in O-LoRA's wording ("... Choose one from the option.").
DEFAULT_INSTRUCTIONS = {
    "wordnet": "What is the category of the word defined by the following dictionary definition? "
               "Choose one from the option.",
    "rotten_tomatoes": "What is the sentiment of the following movie review? Choose one from the option.",
    "convention_speeches": "At which party's 2012 convention was the following sentence spoken? "
                           "Choose one from the option.",
}
GENERIC_INSTRUCTION = "What is the label of the following text? Choose one from the option."


def normalise(text: str) -> str:
    """How exact match compares answers: case, surrounding space and punctuation, and repeated spaces ignored. Two
    classes' answer texts must differ under it, or a constant answer would score on both."""
    return re.sub(r"\s+", " ", text).strip().strip(".!?,;:\"'").strip().lower()


@dataclass(frozen=True)
class PromptSpec:
    """A task's prompt settings (the task key `prompt:`), checked."""
    instruction: str | None = None
    template: str = DEFAULT_TEMPLATE
    answers: dict = field(default_factory=dict)  # class name -> answer text (default: the class name)


@dataclass(frozen=True)
class Prompted:
    """One example as a prompt: the text between a fixed prefix and suffix (only the text may be shortened)."""
    prefix: str
    text: str
    suffix: str

    def render(self, text: str | None = None) -> str:
        return self.prefix + (self.text if text is None else text) + self.suffix


def check_prompt(raw, where: str) -> dict:
    """Validate a task's `prompt:` mapping (keys instruction, template, answers); returns it with defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected a mapping with instruction, template, answers")
    unknown = [k for k in raw if k not in ("instruction", "template", "answers")]
    if unknown:
        raise InputError(f"{where}.{unknown[0]}: unknown key (allowed: instruction, template, answers)")
    out = {"instruction": raw.get("instruction"), "template": raw.get("template", DEFAULT_TEMPLATE),
           "answers": raw.get("answers") or {}}
    template_given = "template" in raw
    for key in ("instruction", "template"):
        if out[key] is not None and (not isinstance(out[key], str) or not out[key].strip()):
            raise InputError(f"{where}.{key}: expected a non-empty string")
    _check_template(out["template"], f"{where}.template")
    if not isinstance(out["answers"], dict):
        raise InputError(f"{where}.answers: expected a mapping class -> answer text")
    seen: dict[str, str] = {}
    for name, text in out["answers"].items():
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{where}.answers.{name}: the answer text must be a non-empty string")
        if normalise(text) in seen:
            raise InputError(f"{where}.answers: {seen[normalise(text)]!r} and {name!r} have the same answer "
                             f"text {text.strip()!r} as exact match compares them (case and end punctuation aside)")
        seen[normalise(text)] = name
    # template_given: whether the task wrote its template (else a source's own prompt, cl-benchmark's, is used)
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in out.items()} | {"template_given": template_given}


def _check_template(template: str, where: str) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise InputError(f"{where}: not a valid template ({exc}); write literal braces as {{{{ and }}}}") from None
    for name in fields:
        if name not in PLACEHOLDERS:
            raise InputError(f"{where}: unknown placeholder {{{name}}} (allowed: "
                             f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)})")
    if fields.count("text") != 1:
        raise InputError(f"{where}: must hold {{text}} exactly once")


def answer_texts(classes: list[str], spec: dict, where: str) -> list[str]:
    """The answer text of each class; every text distinct, every mapped class a class of the task."""
    unknown = [c for c in spec["answers"] if c not in classes]
    if unknown:
        raise InputError(f"{where}.answers.{unknown[0]}: not a class of this task (classes: {', '.join(classes)})")
    texts = [str(spec["answers"].get(c, c)).strip() for c in classes]
    seen: dict[str, str] = {}
    for c, text in zip(classes, texts):
        if not text:
            raise InputError(f"{where}.answers.{c}: the answer text is empty")
        if not normalise(text):
            raise InputError(f"{where}.answers.{c}: the answer text {text!r} is only punctuation")
        if normalise(text) in seen:
            raise InputError(f"{where}.answers: classes {seen[normalise(text)]!r} and {c!r} have the same answer text "
                             f"{text!r} as exact match compares them (case and end punctuation aside)")
        seen[normalise(text)] = c
    return texts


def prompt_parts(classes: list[str], spec: dict, source_type: str, where: str,
                 defaults: dict | None = None) -> tuple[str, str, list[str]]:
    """(prefix, suffix, answer texts) of a task's prompts: every prompt is prefix + text + suffix.

    ``defaults``: the source's own prompt ({"instruction", "template"}; cl-benchmark: O-LoRA's), used where the task's
    `prompt:` gives no instruction or no template."""
    answers = answer_texts(list(classes), spec, where)
    defaults = defaults or {}
    template = spec["template"]
    if defaults.get("template") and not spec.get("template_given", True):
        template = defaults["template"]
    if not spec["instruction"] and defaults.get("missing") and "{instruction}" in template:
        raise InputError(defaults["missing"])  # the source has no instruction for this task, and the task gives none
    instruction = (spec["instruction"] or defaults.get("instruction")
                   or DEFAULT_INSTRUCTIONS.get(source_type, GENERIC_INSTRUCTION))
    before, _, after = template.partition("{text}")
    fill = {"instruction": instruction, "options": ", ".join(answers)}
    return before.format(**fill, text=""), after.format(**fill, text=""), answers


def prompted(data: TaskData, spec: dict, source_type: str, where: str) -> TaskData:
    """The task's examples as Prompted (x) with `answers` (the answer text of each class)."""
    prefix, suffix, answers = prompt_parts(list(data.classes), spec, source_type, where,
                                           getattr(data, "prompt_defaults", None))

    def wrap(xs):
        return [Prompted(prefix, str(x), suffix) for x in xs]

    def digest(fp):
        return hashlib.sha256(json.dumps([fp, prefix, suffix, answers]).encode()).hexdigest()

    out = TaskData(classes=list(data.classes), train_x=wrap(data.train_x), train_y=list(data.train_y),
                   test_x=wrap(data.test_x), test_y=list(data.test_y), fingerprint=digest(data.fingerprint),
                   source=data.source, modality=data.modality, dropped=dict(data.dropped),
                   val_x=wrap(data.val_x), val_y=list(data.val_y), val_fingerprint=digest(data.val_fingerprint))
    out.answers = answers
    return out
