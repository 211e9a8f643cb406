"""The generative track on tiny models built in code: prompts, answer-only training targets, truncation, the two
scorers against hand computations, and a task trained on a tiny random LLaMA and T5."""

from __future__ import annotations

import math

import pytest
import torch

from pslora_cli.data import TaskData
from pslora_cli.data.prompts import DEFAULT_TEMPLATE, Prompted, check_prompt, prompted
from pslora_cli.errors import InputError
from pslora_cli.models.lm import IGNORE, AnswerModel, LanguageModel, exact_match_hits, normalise, rank_hits

WORDS = ("what is the sentiment of following review choose one from option yes no answer : , . a good bad film "
         "movie plot great terrible boring fun long story very").split()


def word_tokenizer():
    """A word-level tokenizer made in code (no files): <pad> 0, <eos> 1, <unk> 2, then WORDS."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(dict.fromkeys(WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def tiny_llama(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         pad_token_id=0, eos_token_id=1, bos_token_id=1)
    return LlamaForCausalLM(config).eval()


def sensitive(model):
    """The model with larger weights than its init's, so that its outputs depend visibly on the prompt and on the
    positions (the init's are nearly the same whatever the input)."""
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() > 1:
                weight.normal_(0, 0.6)
    return model


def tiny_t5(tokenizer):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5ForConditionalGeneration(config).eval()


class Wrapped(torch.nn.Module):
    """What AnswerModel needs of a PEFT model: the model it wraps."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def get_base_model(self):
        return self.m


def example(text: str) -> Prompted:
    return Prompted("what is the sentiment of the following review\nOption: yes, no\n", text, "\nAnswer:")


# -- prompts ----------------------------------------------------------------------------------------------------

def test_prompts_render_the_o_lora_format_with_answer_texts():
    data = TaskData(classes=["fresh", "rotten"], train_x=["a good film"], train_y=[0], test_x=["bad"], test_y=[1],
                    fingerprint="f", source="s")
    spec = check_prompt({"instruction": "Is it good? Choose one from the option.",
                         "answers": {"fresh": "yes", "rotten": "no"}}, "tasks[0].prompt")
    out = prompted(data, spec, "rotten_tomatoes", "w")
    assert out.answers == ["yes", "no"]
    assert out.train_x[0].render() == "Is it good? Choose one from the option.\nOption: yes, no\na good film\nAnswer:"
    assert out.fingerprint != data.fingerprint and out.train_y == [0]
    default = prompted(data, check_prompt(None, "p"), "rotten_tomatoes", "w")
    assert default.answers == ["fresh", "rotten"]  # the class names, when no mapping is given
    assert default.test_x[0].render().startswith("What is the sentiment of the following movie review?")
    assert check_prompt(None, "p")["template"] == DEFAULT_TEMPLATE


@pytest.mark.parametrize("raw, key", [
    ({"template": "{instruction} {foo} {text}"}, "tasks[0].prompt.template"),
    ({"template": "{instruction} no text here"}, "tasks[0].prompt.template"),
    ({"answers": {"fresh": " "}}, "tasks[0].prompt.answers.fresh"),
    ({"answers": {"fresh": "yes", "rotten": "Yes"}}, "tasks[0].prompt.answers"),
    ({"answers": {"fresh": "Yes", "rotten": "yes."}}, "tasks[0].prompt.answers"),  # one answer to exact match
    ({"instructions": "typo"}, "tasks[0].prompt.instructions"),
])
def test_bad_prompts_name_the_key(raw, key):
    with pytest.raises(InputError) as err:
        check_prompt(raw, "tasks[0].prompt")
    assert str(err.value).startswith(key + ":")


def test_answers_must_name_classes_of_the_task():
    data = TaskData(classes=["a", "b"], train_x=["x"], train_y=[0], test_x=["y"], test_y=[1], fingerprint="f",
                    source="s")
    with pytest.raises(InputError, match=r"w\.answers\.c: not a class"):
        prompted(data, check_prompt({"answers": {"c": "yes"}}, "p"), "files", "w")
    with pytest.raises(InputError, match="same answer text"):
        prompted(data, check_prompt({"answers": {"a": "b"}}, "p"), "files", "w")  # a -> "b" collides with class b
    with pytest.raises(InputError, match="same answer text"):  # "B!" and "b" are one answer to exact match
        prompted(data, check_prompt({"answers": {"a": "B!"}}, "p"), "files", "w")


# -- training targets -------------------------------------------------------------------------------------------

def test_causal_targets_are_the_answer_tokens_and_the_model_computes_only_their_logits():
    tok = word_tokenizer()
    model = tiny_llama(tok)
    lm = LanguageModel(model=model, tokenizer=tok, kind="causal-lm", max_length=64, path="")
    examples = [example("a good film"), example("a very long boring story")]
    batch, targets = lm.training_batch(examples, [0, 1], ["yes", "no"], "cpu")
    yes, no, eos = tok.convert_tokens_to_ids(["yes", "no", "<eos>"])
    assert targets.tolist() == [yes, eos, no, eos]
    # each target is the token that follows its position in the input: nothing of the prompt is a target
    assert batch["input_ids"][batch["rows"], batch["cols"] + 1].tolist() == targets.tolist()
    assert batch["attention_mask"].sum().item() == sum(len(tok(e.render())["input_ids"]) + 2 for e in examples)

    logits = AnswerModel(lm, Wrapped(model))(batch)
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(logits, full[batch["rows"], batch["cols"]], atol=1e-6)
    assert logits.shape == (4, len(tok))


def test_seq2seq_targets_and_logits():
    tok = word_tokenizer()
    model = tiny_t5(tok)
    lm = LanguageModel(model=model, tokenizer=tok, kind="seq2seq-lm", max_length=64, path="")
    batch, targets = lm.training_batch([example("a good film"), example("bad")], [0, 1], ["yes", "no"], "cpu")
    yes, no, eos = tok.convert_tokens_to_ids(["yes", "no", "<eos>"])
    assert targets.tolist() == [yes, eos, no, eos]
    assert (batch["labels"] == IGNORE).sum() == 0  # both answers have two tokens
    lengths = batch["attention_mask"].sum(1).tolist()  # the encoder reads each prompt and its end token
    assert [batch["input_ids"][i, n - 1].item() for i, n in enumerate(lengths)] == [eos, eos]

    logits = AnswerModel(lm, Wrapped(model))(batch)
    assert logits.shape == (4, len(tok))


def test_long_inputs_are_cut_inside_the_text_only():
    tok = word_tokenizer()
    lm = LanguageModel(model=None, tokenizer=tok, kind="causal-lm", max_length=24, path="")
    ex = example(" ".join(["very"] * 50) + " good")
    ids = lm.prompt_ids(ex, reserve=2)
    assert len(ids) + 2 <= 24
    text = tok.decode(ids)
    assert text.startswith("what is the sentiment of the following review") and text.endswith("answer :")
    assert "option : yes, no" in text and "good" not in text  # options kept, the end of the text cut


# -- scorers ----------------------------------------------------------------------------------------------------

class LastTokenLM(torch.nn.Module):
    """A hand-made causal LM: the next-token logits depend only on the current token, through a table."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table
        outer = self

        class NoCache:  # the next token depends on the current one only: nothing to cache
            def batch_repeat_interleave(self, repeats):
                pass

        class Decoder(torch.nn.Module):
            def forward(self, input_ids, attention_mask, **_):
                return type("Out", (), {"last_hidden_state": torch.nn.functional.one_hot(
                    input_ids, outer.table.shape[0]).float(), "past_key_values": NoCache()})()

        class Head(torch.nn.Module):
            def forward(self, hidden):
                return hidden @ outer.table

        self.base_model_, self.head = Decoder(), Head()

    @property
    def base_model(self):
        return self.base_model_

    def get_output_embeddings(self):
        return self.head

    def generate(self, input_ids, attention_mask, max_new_tokens, **_):
        out = input_ids
        for _ in range(max_new_tokens):
            out = torch.cat([out, self.table[out[:, -1]].argmax(-1, keepdim=True)], 1)
        return out


def test_rank_and_exact_match_against_hand_computations():
    tok = word_tokenizer()
    v = len(tok)
    yes, no, eos, colon, good, bad = tok.convert_tokens_to_ids(["yes", "no", "<eos>", ":", "good", "bad"])
    table = torch.zeros(v, v)
    table[colon, yes] = 2.0      # after "Answer:" the model prefers "yes" ...
    table[colon, no] = 1.0
    table[yes, eos] = 3.0        # ... and ends its answers
    table[no, eos] = 3.0
    lm = LanguageModel(model=LastTokenLM(table), tokenizer=tok, kind="causal-lm", max_length=64, path="")
    examples = [example("a good film"), example("a bad film")]
    labels = [0, 1]  # gold: yes, then no
    assert exact_match_hits(lm, examples, labels, ["yes", "no"], "cpu", batch_size=2).tolist() == [True, False]
    # rank: log p(yes, eos) vs log p(no, eos); both end tokens are equally likely, so "yes" wins for both examples
    lp = torch.log_softmax(table, -1)
    yes_score, no_score = lp[colon, yes] + lp[yes, eos], lp[colon, no] + lp[no, eos]
    assert yes_score > no_score
    assert rank_hits(lm, examples, labels, ["yes", "no"], "cpu", batch_size=3).tolist() == [True, False]
    table[colon, no] = 5.0  # now "no" is the likelier answer everywhere
    assert rank_hits(lm, examples, labels, ["yes", "no"], "cpu", batch_size=4).tolist() == [False, True]
    assert exact_match_hits(lm, examples, labels, ["yes", "no"], "cpu", batch_size=1).tolist() == [False, True]


def test_greedy_decoding_with_a_shared_prefix_writes_what_generate_writes():
    """exact-match's decoder (the prompts' common prefix read once, its cache shared by the batch) against
    `generate` on each prompt alone, on a random float64 model: prompts of different lengths, with a long common
    prefix, with none, one prompt that is the others' prefix, a batch of one; then with an end token that ends
    some rows before others, and with it equal to the padding token."""
    from pslora_cli.models.lm import greedy_causal

    tok = word_tokenizer()
    model = sensitive(tiny_llama(tok)).double()
    lm = LanguageModel(model=model, tokenizer=tok, kind="causal-lm", max_length=64, path="")
    shared = [lm.prompt_ids(example(t), 5) for t in ("a good film", "bad", "a film good bad film very long")]
    unshared = [tok("good film")["input_ids"], tok("a bad plot")["input_ids"], tok("fun")["input_ids"]]
    nested = [tok("a good film")["input_ids"], tok("a good film very long story")["input_ids"]]

    def generated(prompts, eos, pad):
        out = []
        with torch.inference_mode():
            for p in prompts:
                row = model.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                     max_new_tokens=5, do_sample=False, pad_token_id=pad, eos_token_id=eos)
                row = row[0, len(p):].tolist()
                out.append(row[:row.index(eos) + 1] if eos in row else row)
        return out

    for prompts in (shared, unshared, nested, shared[1:2]):
        want = generated(prompts, eos=1, pad=0)
        assert len({tuple(w) for w in want}) == len(want)  # the prompts' continuations differ
        assert greedy_causal(lm, prompts, 5, "cpu") == want
    # an end token that the second row writes at its second step: rows end at different steps
    eos = generated(shared, eos=1, pad=0)[1][1]
    want = generated(shared, eos=eos, pad=0)
    assert len({len(w) for w in want}) > 1 and any(w[-1] == eos for w in want)
    tok.eos_token = tok.convert_ids_to_tokens(eos)
    assert lm.eos_id == eos and greedy_causal(lm, shared, 5, "cpu") == want
    tok.pad_token = tok.eos_token  # pad == eos, as in SmolLM2
    assert lm.pad_id == eos and greedy_causal(lm, shared, 5, "cpu") == generated(shared, eos=eos, pad=eos)


def test_exact_match_leaves_generation_settings_and_windows_to_generate(monkeypatch):
    """A generation config that makes greedy `generate` more than an argmax (a repetition penalty, suppressed
    tokens) sends exact match back to `generate`; a sliding window or non-attention layers stop the prefix sharing."""
    import pslora_cli.models.lm as lm_module
    from pslora_cli.models.lm import argmax_is_generate, shares_prefix

    tok = word_tokenizer()
    model = sensitive(tiny_llama(tok)).double()
    assert argmax_is_generate(model) and shares_prefix(model)
    model.generation_config.repetition_penalty = 1.0
    model.generation_config.no_repeat_ngram_size = 0
    assert argmax_is_generate(model)
    model.generation_config.repetition_penalty = 1.3
    assert not argmax_is_generate(model)
    model.generation_config.repetition_penalty = None
    model.generation_config.suppress_tokens = [5]
    assert not argmax_is_generate(model)
    lm = LanguageModel(model=model, tokenizer=tok, kind="causal-lm", max_length=64, path="")
    monkeypatch.setattr(lm_module, "greedy_causal", lambda *a: pytest.fail("greedy_causal used"))
    hits = exact_match_hits(lm, [example("a good film"), example("bad")], [0, 1], ["yes", "no"], "cpu", 2)
    assert hits.shape == (2,)
    model.config.sliding_window = 4
    assert not shares_prefix(model)
    model.config.sliding_window = None
    model.config.layer_types = ["full_attention", "linear_attention"]
    assert not shares_prefix(model)


def _running_on_table(tok):
    """A LastTokenLM table that answers "yes" after "Answer:" and then runs on: "yes , bad film <eos>"."""
    ids = dict(zip(["yes", ",", "bad", "film", "<eos>", ":", "no"],
                   tok.convert_tokens_to_ids(["yes", ",", "bad", "film", "<eos>", ":", "no"])))
    table = torch.zeros(len(tok), len(tok))
    for a, b in ((":", "yes"), ("yes", ","), (",", "bad"), ("bad", "film"), ("film", "<eos>")):
        table[ids[a], ids[b]] = 3.0
    return table


def _full_greedy_answer(model, prompt: list[int], eos: int, steps: int = 40) -> list[int]:
    """The reference: the model's argmax continuation of one prompt, token by token, to its end token."""
    seq = list(prompt)
    for _ in range(steps):
        token = int(model.table[seq[-1]].argmax())
        if token == eos:
            break
        seq.append(token)
    return seq[len(prompt):]


@pytest.mark.parametrize("through_generate", [False, True])
def test_exact_match_compares_the_whole_answer_the_model_writes(through_generate):
    """The model writes "yes, bad film": exact match against "yes" is a miss (a 2-token budget read it as "yes"),
    against the whole sentence a hit; the same through `generate` (a generation config with a repetition penalty),
    whose output starts with the prompt."""
    from transformers import GenerationConfig

    tok = word_tokenizer()
    model = LastTokenLM(_running_on_table(tok))
    if through_generate:
        model.generation_config = GenerationConfig(repetition_penalty=1.3)
    lm = LanguageModel(model=model, tokenizer=tok, kind="causal-lm", max_length=64, path="")
    examples = [example("a good film"), example("a bad film")]
    written = tok.decode(_full_greedy_answer(model, lm.prompt_ids(examples[0], 0), lm.eos_id))
    assert normalise(written) == "yes, bad film"
    assert exact_match_hits(lm, examples, [0, 0], ["yes", "no"], "cpu", 2).tolist() == [False, False]
    assert exact_match_hits(lm, examples, [0, 1], [written, "no"], "cpu", 2).tolist() == [True, False]
    # a budget of the label's length cuts the sentence to "yes,": the prefix match the budget must not be
    assert exact_match_hits(lm, examples, [0, 0], ["yes", "no"], "cpu", 2, max_new_tokens=2).tolist() == [True, True]


def test_exact_match_through_generate_equals_the_generated_answers_of_a_real_llama():
    """A tiny LLaMA whose generation config has a repetition penalty: exact match goes through `generate` and
    scores what `generate` writes after each prompt (alone, unpadded), up to the end token."""
    from pslora_cli.models.lm import argmax_is_generate

    tok = word_tokenizer()
    model = sensitive(tiny_llama(tok)).double()
    model.generation_config.repetition_penalty = 1.3
    assert not argmax_is_generate(model)
    lm = LanguageModel(model=model, tokenizer=tok, kind="causal-lm", max_length=64, path="")
    examples = [example(t) for t in ("a good film", "bad", "a film good bad film very long", "fun")]
    budget = 6
    written = []
    for ex in examples:
        p = lm.prompt_ids(ex, budget)
        row = model.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                             max_new_tokens=budget, do_sample=False, pad_token_id=lm.pad_id,
                             eos_token_id=lm.eos_id)[0, len(p):].tolist()
        written.append(normalise(tok.decode(row[:row.index(lm.eos_id)] if lm.eos_id in row else row)))
    answers = list(dict.fromkeys(written))
    assert len(answers) >= 2, written  # the prompts' answers differ: hits and misses both occur below
    labels = [0] * len(examples)
    want = [w == answers[0] for w in written]
    got = exact_match_hits(lm, examples, labels, answers, "cpu", batch_size=3, max_new_tokens=budget).tolist()
    assert got == want and True in want and False in want


def test_normalise_ignores_case_space_and_end_punctuation():
    assert normalise("  Positive. ") == normalise("positive") == "positive"
    assert normalise("very  good") == "very good" and normalise("no") != normalise("not")


# -- one task trained ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("maker, kind", [(tiny_llama, "causal-lm"), (tiny_t5, "seq2seq-lm")])
def test_a_generative_task_trains_and_scores(tmp_path, maker, kind):
    from pslora_cli.config import sequence_from_text
    from pslora_cli.store import TaskFiles
    from pslora_cli.training.recipe import train_task

    tok = word_tokenizer()
    folder = tmp_path / "model"
    maker(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    seq = sequence_from_text(f"""
name: g
backbone: {{source: huggingface, name: {folder}, max_length: 32}}
lora: {{rank: 2, alpha: 4}}
training: {{steps: 8, batch_size: 4, learning_rate: 0.05, checkpoint_every: 0}}
tasks: [{{id: t1, data: {{type: files, train: x.csv}}}}]
""", "g.yaml", tmp_path)
    assert seq.backbone.kind == kind and seq.generative and seq.scorer == "exact-match"
    assert seq.lora.target_modules == (["q_proj", "v_proj"] if kind == "causal-lm" else ["q", "v"])
    texts = ["a good film", "a great movie", "a bad film", "a boring movie"] * 4
    data = prompted(TaskData(classes=["good", "bad"], train_x=texts, train_y=[0, 0, 1, 1] * 4, test_x=texts,
                             test_y=[0, 0, 1, 1] * 4, fingerprint="f", source="s"),
                    check_prompt({"answers": {"good": "yes", "bad": "no"}}, "p"), "files", "w")
    out = tmp_path / "task"
    out.mkdir()
    metrics = train_task(seq, 0, data, [], TaskFiles(out), torch.device("cpu"))
    assert metrics["steps"] == 8 and metrics["final"]["task_loss"] < math.log(len(tok))
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]  # no head


@pytest.mark.parametrize("kind", ["causal-lm", "seq2seq-lm"])
def test_rank_reads_each_prompt_once_and_scores_as_full_passes(kind):
    """The shared-prompt option scores equal the log-likelihoods of each prompt + option read whole, one example
    at a time (options of different lengths, prompts of different lengths in one batch)."""
    from pslora_cli.models.lm import _option_scores_causal, _option_scores_seq2seq

    tok = word_tokenizer()
    model = sensitive(tiny_llama(tok) if kind == "causal-lm" else tiny_t5(tok))
    lm = LanguageModel(model=model, tokenizer=tok, kind=kind, max_length=64, path="")
    answers = ["yes", "no", "a good film"]
    options = [lm.answer_ids(a) for a in answers]
    examples = [example("a good film"), example("bad"), example("a film good bad film")]
    prompts = [lm.prompt_ids(ex, max(len(o) for o in options)) for ex in examples]
    score = _option_scores_causal if kind == "causal-lm" else _option_scores_seq2seq
    with torch.inference_mode():
        got = score(lm, prompts, options, "cpu")
        want = torch.empty(len(prompts), len(options), dtype=torch.float64)
        for i, p in enumerate(prompts):
            for k, o in enumerate(options):
                if kind == "causal-lm":
                    logits = model(input_ids=torch.tensor([p + o])).logits[0, len(p) - 1:-1]
                else:
                    logits = model(input_ids=torch.tensor([p]), labels=torch.tensor([o])).logits[0]
                want[i, k] = torch.log_softmax(logits.double(), -1).gather(1, torch.tensor(o)[:, None]).sum()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert rank_hits(lm, examples, [0, 1, 2], answers, "cpu", batch_size=2).tolist() == \
        (want.argmax(1) == torch.tensor([0, 1, 2])).tolist()


def test_exact_match_cuts_long_prompts_as_training_does_whatever_the_budget(monkeypatch):
    """The budget bounds what the model writes, not what it reads: prompts leave room for the answer only, as in
    training, so a budget past max_length does not cut a prompt to one token."""
    import pslora_cli.models.lm as lm_module

    tok = word_tokenizer()
    lm = LanguageModel(model=LastTokenLM(_running_on_table(tok)), tokenizer=tok, kind="causal-lm", max_length=16,
                       path="")
    long = example("a good film very long story very boring fun great terrible plot movie")
    seen = []
    real = lm_module.greedy_causal
    monkeypatch.setattr(lm_module, "greedy_causal", lambda lm_, prompts, steps, device: seen.append(prompts) or
                        real(lm_, prompts, steps, device))
    for budget in (None, 64):
        exact_match_hits(lm, [long], [0], ["yes", "no"], "cpu", 1, max_new_tokens=budget)
    trained_prompt = lm.training_batch([long], [0], ["yes", "no"], "cpu")[0]["input_ids"][0].tolist()
    reserve = len(lm.answer_ids("yes"))
    assert seen[0] == seen[1] == [lm.prompt_ids(long, reserve)]
    assert trained_prompt[:len(seen[0][0])] == seen[0][0] and len(seen[0][0]) > 1


def test_predict_s_answer_probability_is_the_same_on_both_decoders():
    """`generated_answers(with_scores=True)`, predict's path: the greedy decoder's token log-probabilities give the
    answer probability `generate`'s transition scores give, and the same texts as without scores."""
    from pslora_cli.models.lm import generated_answers

    tok = word_tokenizer()
    model = sensitive(tiny_llama(tok)).double()
    lm = LanguageModel(model=model, tokenizer=tok, kind="causal-lm", max_length=64, path="")
    examples = [example(t) for t in ("a good film", "bad", "a film good bad film very long")]
    with torch.inference_mode():
        texts, fast = generated_answers(lm, examples, 5, "cpu", 2, with_scores=True)
        assert texts == generated_answers(lm, examples, 5, "cpu", 2)
        model.generation_config.repetition_penalty = 1.0 + 1e-12  # not neutral: forces the generate path
        slow_texts, slow = generated_answers(lm, examples, 5, "cpu", 2, with_scores=True)
    assert slow_texts == texts and all(0 < p <= 1 for p in fast)
    assert fast == pytest.approx(slow, rel=1e-6)
