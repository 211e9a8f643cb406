"""O-LoRA's benchmarks for T5-large (task_sequences/standard-order{1,2,3}.yaml, long-order{4,5,6}.yaml).

Each file is checked against what O-LoRA's repository (github.com/cmnfriend/O-LoRA) defines - task orders, label
texts, instructions, how each dataset's sentence is laid out, the protocol - written out below as tables, then run end
to end offline: a tiny random T5 built from a config stands in for t5-large, and tiny local datasets (saved with
save_to_disk) stand in for the hub datasets, with the same splits, columns and label values.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli

SEQUENCES = Path(__file__).resolve().parents[2] / "task_sequences"

# -- What O-LoRA defines -----------------------------------------------------------------------------------------------

# scripts/order_{1,2,3}.sh; orders 4 and 5 from the paper's table of orders, 6 = scripts/long.sh.
ORDERS = {
    "standard-order1": ["dbpedia", "amazon", "yahoo", "agnews"],
    "standard-order2": ["dbpedia", "amazon", "agnews", "yahoo"],
    "standard-order3": ["yahoo", "amazon", "agnews", "dbpedia"],
    "long-order4": ["mnli", "cb", "wic", "copa", "qqp", "boolq", "rte", "imdb", "yelp", "amazon", "sst2", "dbpedia",
                    "agnews", "multirc", "yahoo"],
    "long-order5": ["multirc", "boolq", "wic", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst2", "dbpedia", "agnews",
                    "yelp", "amazon", "yahoo"],
    "long-order6": ["yelp", "amazon", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst2", "dbpedia", "agnews", "yahoo",
                    "multirc", "boolq", "wic"],
}

# configs/instruction_config.json (each ends in a newline; COPA has none).
INSTRUCTIONS = {
    "TC": "What is the topic of the following paragraph? Choose one from the option.\n",
    "SC": "What is the sentiment of the following paragraph? Choose one from the option.\n",
    "NLI": 'What is the logical relationship between the "sentence 1" and the "sentence 2"? Choose one from the '
           "option.\n",
    "QQP": 'Whether the "first sentence" and the "second sentence" have the same meaning? Choose one from the '
           "option.\n",
    "BoolQA": "According to the following passage, is the question true or false? Choose one from the option.\n",
    "MultiRC": "According to the following passage and question, is the candidate answer true or false? Choose one "
               "from the option.\n",
    "WiC": "Given a word and two sentences, whether the word is used with the same sense in both sentence? Choose one "
           "from the option.\n",
}

# Task id -> (task type, dataset name) from configs/*_configs/<name>/train_tasks.json, and the label texts in
# CL_Benchmark/<type>/<name>/labels.json order (the order of the prompt's options).
OLORA = {
    "dbpedia": ("TC", "dbpedia", ["Company", "Educational Institution", "Artist", "Athlete", "Office Holder",
                                  "Mean of Transportation", "Building", "Natural Place", "Village", "Animal", "Plant",
                                  "Album", "Film", "Written Work"]),
    "amazon": ("SC", "amazon", ["very negative", "negative", "neutral", "positive", "very positive"]),
    "yahoo": ("TC", "yahoo", ["Society & Culture", "Science & Mathematics", "Health", "Education & Reference",
                              "Computers & Internet", "Sports", "Business & Finance", "Entertainment & Music",
                              "Family & Relationships", "Politics & Government"]),
    "agnews": ("TC", "agnews", ["World", "Sports", "Business", "Science or Technology"]),
    "yelp": ("SC", "yelp", ["very negative", "negative", "neutral", "positive", "very positive"]),
    "mnli": ("NLI", "MNLI", ["neutral", "entailment", "contradiction"]),
    "cb": ("NLI", "CB", ["entailment", "contradiction", "neutral"]),
    "copa": ("COPA", "COPA", ["A", "B"]),
    "qqp": ("QQP", "QQP", ["False", "True"]),
    "rte": ("NLI", "RTE", ["contradiction", "entailment"]),
    "imdb": ("SC", "IMDB", ["Good", "Bad"]),
    "sst2": ("SC", "SST-2", ["Good", "Bad"]),
    "multirc": ("MultiRC", "MultiRC", ["False", "True"]),
    "boolq": ("BoolQA", "BoolQA", ["True", "False"]),
    "wic": ("WiC", "WiC", ["True", "False"]),
}


def olora_sentence(task: str, r: dict) -> str:
    """The "sentence" of O-LoRA's CL_Benchmark/*/*/{train,test}.json, from the original dataset's columns."""
    if task == "yahoo":
        if r["question_content"]:
            return f"Title: {r['question_title']}\nQuestion: {r['question_content']}\nAnswer: {r['best_answer']}\n"
        return f"Question: {r['question_title']}\nAnswer: {r['best_answer']}\n"
    layouts = {
        "dbpedia": "Title: {title}\nText: {content}\n",
        "amazon": "Title: {review_title}\nText: {review_text}\n",
        "agnews": "Title: {title}\nText: {description}\n",
        "yelp": "Text: {text}\n",
        "mnli": "sentence 1: {premise}\nsentence 2: {hypothesis}",
        "cb": "sentence 1: {premise}\nsentence 2: {hypothesis}",
        "rte": "sentence 1: {sentence1}\nsentence 2: {sentence2}",
        "copa": 'Which sentence is the {question} of "{premise}"? Choose one between A and B.\n'
                "A: {choice1}\nB: {choice2}",
        "qqp": "first sentence: {question1}\nsecond sentence: {question2}",
        "imdb": "{text}",
        "sst2": "Text: {sentence}",
        "multirc": "paragraph: {paragraph}\nquestion: {question}\ncandidate answer: {answer}",
        "boolq": "question: {question}\npassage: {passage}",
        "wic": "word: {word}\n{sentence1}\n{sentence2}",
    }
    return layouts[task].format(**r)


def olora_prompt(task: str, sentence: str) -> str:
    """src/uie_dataset_lora.py + src/uie_collator.py with --add_task_name and --add_dataset_name."""
    kind, name, labels = OLORA[task]
    head = f"Task:{kind}\nDataset:{name}\n"
    if kind == "COPA":
        return head + sentence + "\nAnswer:"
    return head + INSTRUCTIONS[kind] + "Option: " + ", ".join(labels) + " \n" + sentence + "\nAnswer:"


# -- The hub datasets chosen for them ----------------------------------------------------------------------------------

# Task id -> hub id, config, train split, test split, per-class caps (train, test): O-LoRA's row counts
# (logs_and_outputs/*_olora/outputs/*/all_results.json) as per-class caps; None: every row (O-LoRA used them all).
HUB = {
    "dbpedia": ("fancyzhx/dbpedia_14", None, "train", "test", 1000, 543),
    "amazon": ("yassiracharki/Amazon_Reviews_for_Sentiment_Analysis_fine_grained_5_classes", None, "train", "test",
               1000, 1520),
    "yahoo": ("community-datasets/yahoo_answers_topics", None, "train", "test", 1000, 760),
    "agnews": ("sh0416/ag_news", None, "train", "test", 1000, None),
    "yelp": ("Yelp/yelp_review_full", None, "train", "test", 1000, 1520),
    "mnli": ("nyu-mll/glue", "mnli", "train", "validation_matched", 1000, 2533),
    "cb": ("aps/super_glue", "cb", "train", "validation", None, None),
    "copa": ("aps/super_glue", "copa", "train", "validation", None, None),
    "qqp": ("nyu-mll/glue", "qqp", "train", "validation", 1000, 3800),
    "rte": ("nyu-mll/glue", "rte", "train", "validation", 1000, None),
    "imdb": ("stanfordnlp/imdb", None, "train", "test", 1000, 3800),
    "sst2": ("nyu-mll/glue", "sst2", "train", "validation", 1000, None),
    "multirc": ("aps/super_glue", "multirc", "train", "validation", 1000, None),
    "boolq": ("aps/super_glue", "boolq", "train", "validation", 1000, None),
    "wic": ("aps/super_glue", "wic", "train", "validation", 1000, None),
}

# Each hub dataset's splits, text columns, other columns and label column with its values (ClassLabel names, or plain
# integers), and which label value is which O-LoRA label text.
STANDARD = ("train", "test")
GLUE = ("train", "validation", "test")
STANDINS = {
    "dbpedia": (STANDARD, ["title", "content"], {}, "label",
                ["Company", "EducationalInstitution", "Artist", "Athlete", "OfficeHolder", "MeanOfTransportation",
                 "Building", "NaturalPlace", "Village", "Animal", "Plant", "Album", "Film", "WrittenWork"]),
    "amazon": (STANDARD, ["review_title", "review_text"], {}, "class_index", [1, 2, 3, 4, 5]),
    "yahoo": (STANDARD, ["question_title", "question_content", "best_answer"], {"id": 0}, "topic",
              list(OLORA["yahoo"][2])),
    "agnews": (STANDARD, ["title", "description"], {}, "label", [1, 2, 3, 4]),
    "yelp": (STANDARD, ["text"], {}, "label", ["1 star", "2 star", "3 stars", "4 stars", "5 stars"]),
    "mnli": (("train", "validation_matched", "validation_mismatched", "test_matched"), ["premise", "hypothesis"],
             {"idx": 0}, "label", ["entailment", "neutral", "contradiction"]),
    "cb": (GLUE, ["premise", "hypothesis"], {"idx": 0}, "label", ["entailment", "contradiction", "neutral"]),
    "copa": (GLUE, ["premise", "choice1", "choice2", "question"], {"idx": 0}, "label", ["choice1", "choice2"]),
    "qqp": (GLUE, ["question1", "question2"], {"idx": 0}, "label", ["not_duplicate", "duplicate"]),
    "rte": (GLUE, ["sentence1", "sentence2"], {"idx": 0}, "label", ["entailment", "not_entailment"]),
    "imdb": (("train", "test", "unsupervised"), ["text"], {}, "label", ["neg", "pos"]),
    "sst2": (GLUE, ["sentence"], {"idx": 0}, "label", ["negative", "positive"]),
    "multirc": (GLUE, ["paragraph", "question", "answer"], {"idx": {"paragraph": 0, "question": 0, "answer": 0}},
                "label", ["False", "True"]),
    "boolq": (GLUE, ["question", "passage"], {"idx": 0}, "label", ["False", "True"]),
    "wic": (GLUE, ["word", "sentence1", "sentence2"],
            {"start1": 0, "start2": 0, "end1": 1, "end2": 1, "idx": 0}, "label", ["False", "True"]),
}
# Hub label value (its position among the values above) -> O-LoRA's label text.
LABEL_TEXT = {
    "dbpedia": OLORA["dbpedia"][2], "amazon": OLORA["amazon"][2], "yahoo": OLORA["yahoo"][2],
    "agnews": OLORA["agnews"][2], "yelp": OLORA["yelp"][2],
    "mnli": ["entailment", "neutral", "contradiction"], "cb": ["entailment", "contradiction", "neutral"],
    "copa": ["A", "B"], "qqp": ["False", "True"], "rte": ["entailment", "contradiction"], "imdb": ["Bad", "Good"],
    "sst2": ["Bad", "Good"], "multirc": ["False", "True"], "boolq": ["False", "True"], "wic": ["False", "True"],
}

ROWS_PER_CLASS = 2


def standin_rows(task: str, split: str) -> list[dict]:
    """Rows of the stand-in split: ROWS_PER_CLASS per label value, texts made of a few words; an unlabelled hub
    test split (GLUE, SuperGLUE) holds label -1 only. Yahoo: a question without a body, and one without an answer."""
    _, text_columns, extra, label_column, values = STANDINS[task]
    labelled = not (split.startswith("test") and task in ("mnli", "cb", "copa", "qqp", "rte", "sst2", "multirc",
                                                          "boolq", "wic")) and split != "unsupervised"
    rows = []
    for v, value in enumerate(values):
        for k in range(ROWS_PER_CLASS):
            row = {c: f"{c.replace('_', ' ')} {split} {task} c{v} r{k}" for c in text_columns}
            if task == "copa":
                row["question"] = ("cause", "effect")[k % 2]
            if task == "yahoo" and k == 0:
                row["question_content"] = ""
            if task == "yahoo" and v == 1 and k == 1:
                row["best_answer"] = ""
            label = (v if isinstance(value, str) else value) if labelled else -1
            rows.append(row | extra | {label_column: label})
    return rows


def write_standin(task: str, folder: Path) -> Path:
    import datasets

    splits, _, _, label_column, values = STANDINS[task]
    label_feature = (datasets.ClassLabel(names=values) if isinstance(values[0], str) else datasets.Value("int64"))
    out = {}
    for split in splits:
        rows = standin_rows(task, split)
        columns = {c: [r[c] for r in rows] for c in rows[0]}
        features = datasets.Dataset.from_dict(columns).features.copy()
        features[label_column] = label_feature
        out[split] = datasets.Dataset.from_dict(columns, features=features)
    datasets.DatasetDict(out).save_to_disk(str(folder / task))
    return folder / task


# -- The tiny model ----------------------------------------------------------------------------------------------------

def words_of(texts) -> list[str]:
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.Whitespace()
    return list(dict.fromkeys(w.lower() for t in texts for w, _ in split.pre_tokenize_str(t)))


def build_tiny_t5(folder: Path, texts) -> Path:
    """A random 2-layer T5 (d_model 16) and a word-level tokenizer over `texts`' words, saved in `folder`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(words_of(texts))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()  # joins words with spaces
    # like T5's own tokenizer, end every encoded text with </s> (pslora adds it itself; a stock user's call relies on it)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            model_max_length=512).save_pretrained(folder)
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(vocab), d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def offline(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """(the tiny T5's folder, task id -> its stand-in dataset folder)."""
    import datasets
    from transformers import logging

    logging.set_verbosity_error()
    root = tmp_path_factory.mktemp("o-lora-benchmarks")
    datasets.disable_progress_bars()
    try:
        standins = {task: write_standin(task, root / "data") for task in STANDINS}
    finally:
        datasets.enable_progress_bars()
    # the tokenizer's words: every prompt (sentences included) and every label text
    texts = [olora_prompt(task, olora_sentence(task, r)) for task in STANDINS for split in STANDINS[task][0]
             for r in standin_rows(task, split)] + [t for task in OLORA for t in OLORA[task][2]]
    return build_tiny_t5(root / "tiny-t5", texts), standins


def offline_overrides(name: str, model: Path, standins: dict[str, Path]) -> list[str]:
    """--set overrides: the tiny T5, the stand-ins, a few rows and small batches."""
    out = [f"backbone.name={model}", "training.batch_size=4", "training.grad_accumulation=2",
           "training.eval_batch_size=16", "training.checkpoint_every=0"]
    for task in ORDERS[name]:
        out += [f"tasks.{task}.data.path={standins[task]}", f"tasks.{task}.data.train_per_class=2",
                f"tasks.{task}.data.test_per_class=1"]
    return out


# -- The files against O-LoRA ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ORDERS))
def test_each_file_is_o_loras_benchmark(name):
    from pslora_cli.config import load_sequence

    seq, text = load_sequence(SEQUENCES / f"{name}.yaml")
    assert seq.task_ids == ORDERS[name]
    assert text.startswith("# ") and "github.com/cmnfriend/O-LoRA" in text.split("\nname:")[0]  # the source, cited
    assert (seq.backbone.source, seq.backbone.name, seq.backbone.kind) == ("huggingface", "google-t5/t5-large",
                                                                          "seq2seq-lm")
    assert seq.backbone.max_length == 512  # --max_source_length 512
    assert (seq.lora.rank, seq.lora.alpha, seq.lora.dropout, seq.lora.target_modules) == (8, 32, 0.1, ["q", "v"])
    t = seq.training
    assert (t.epochs, t.steps, t.learning_rate, t.schedule, t.precision) == (1, None, 1e-3, "constant", "fp32")
    assert t.batch_size * t.grad_accumulation == 64  # 8 per device x 8 GPUs x accumulation 1
    assert seq.scorer == "exact-match" and seq.method.name == "ps-lora"
    for task in seq.tasks:
        kind, dataset, labels = OLORA[task.id]
        path, config, train_split, test_split, train_cap, test_cap = HUB[task.id]
        d = task.data
        assert (d["type"], d["path"], d["name"], d["train_split"], d["test_split"]) == \
            ("huggingface", path, config, train_split, test_split), task.id
        assert (d["train_per_class"], d["test_per_class"]) == (train_cap, test_cap), task.id
        assert d["label_column"] == STANDINS[task.id][3]
        # the options in labels.json order: the answer text of each listed class
        values = STANDINS[task.id][4]
        answers = task.prompt.get("answers") or {}
        listed = [values[c] if isinstance(c, int) and isinstance(values[0], str) else c for c in d["classes"]]
        texts = [answers.get(str(c), str(c)) for c in listed]
        assert texts == labels, task.id
        if kind == "COPA":
            assert task.prompt["template"] == "Task:COPA\nDataset:COPA\n{text}\nAnswer:"
        else:
            assert task.prompt["instruction"] + "\n" == INSTRUCTIONS[kind]
            assert task.prompt["template"] == f"Task:{kind}\nDataset:{dataset}\n{{instruction}}\nOption: {{options}} " \
                                              f"\n{{text}}\nAnswer:"


# -- End to end, offline -----------------------------------------------------------------------------------------------

def check_prompts(seq, standins) -> None:
    """Every rendered training prompt of every task is O-LoRA's prompt for its stand-in row, and its answer that
    row's O-LoRA label text."""
    from pslora_cli.data.loader import data_loader

    load = data_loader(seq)
    for i, task in enumerate(seq.task_ids):
        data = load(i)
        assert data.answers == OLORA[task][2], task  # the options, in labels.json order
        rows = {olora_sentence(task, r): r for r in standin_rows(task, HUB[task][2])}
        assert data.train_x, task
        for x, y in zip(data.train_x, data.train_y):
            assert x.text in rows, (task, x.text)
            assert x.render() == olora_prompt(task, x.text), task
            value = rows[x.text][STANDINS[task][3]]
            position = STANDINS[task][4].index(value) if isinstance(STANDINS[task][4][0], int) else value
            assert data.answers[y] == LABEL_TEXT[task][position], task


@pytest.mark.parametrize("name", sorted(ORDERS))
def test_each_file_runs_end_to_end_offline(name, offline, tmp_path, capsys):
    from pslora_cli.config import load_sequence

    model, standins = offline
    file = SEQUENCES / f"{name}.yaml"
    overrides = offline_overrides(name, model, standins)
    seq, _ = load_sequence(file, overrides)
    check_prompts(seq, standins)

    store = tmp_path / "store"
    args = ["run", file, "--store", store, "--json"] + [a for o in overrides for a in ("--set", o)]
    code, doc, err = run_cli(capsys, *args)
    assert code == 0, err
    for task in ORDERS[name]:  # every task trained: a stock PEFT adapter, no head
        files = sorted(p.name for p in (store / "tasks" / task).iterdir())
        assert files == ["adapter_config.json", "adapter_model.safetensors", "meta.json"], task
    matrix = doc["matrix"]
    assert matrix["scorer"] == "exact-match" and matrix["primary"] == "task_aware"
    rows = matrix["task_aware"]
    n = len(ORDERS[name])
    assert len(rows) == n + 1 and all(len(row) == n for row in rows)
    for stage in range(1, n + 1):  # after task `stage`: every task seen so far scored
        assert all(isinstance(rows[stage][j], float) and 0.0 <= rows[stage][j] <= 1.0 for j in range(stage)), stage
    if name == "standard-order1":  # one file is enough to check the seq2seq export
        check_export(store, tmp_path / "model", matrix, capsys)


def check_export(store: Path, out: Path, matrix: dict, capsys) -> None:
    """The exported T5 folder answers through stock transformers (generate with the folder's generation config;
    transformers 5 has no text2text pipeline) as `pslora eval` scored it."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from pslora_cli.models.lm import normalise
    from pslora_cli.data.loader import data_loader
    from pslora_cli.session import Session

    code, info, err = run_cli(capsys, "export", "--store", store, "--out", out, "--json")
    assert code == 0 and info["kind"] == "seq2seq-lm", err
    prompts = json.loads((out / "prompts.json").read_text())["tasks"]
    model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    seq, _, _ = Session(store_path=store, device_name="cpu", quiet=True).open()
    load = data_loader(seq)
    for i, task in enumerate(seq.task_ids):
        data = load(i)
        p = prompts[task]
        ids = [tokenizer(p["prefix"] + x.text + p["suffix"], add_special_tokens=False).input_ids
               + [tokenizer.eos_token_id] for x in data.test_x]  # as prompts.json says
        answers = [tokenizer.decode(model.generate(torch.tensor([i]), max_new_tokens=p["max_new_tokens"])[0],
                                    skip_special_tokens=True) for i in ids]
        hits = [normalise(a) == normalise(data.answers[y]) for a, y in zip(answers, data.test_y)]
        assert sum(hits) / len(hits) == pytest.approx(matrix["task_aware"][-1][i], abs=1e-9), task
        inputs = out.parent / f"{task}.jsonl"
        inputs.write_text("".join(json.dumps({"text": x.text}) + "\n" for x in data.test_x))
        code, doc, err = run_cli(capsys, "predict", "--store", store, "--input", inputs, "--task", task, "--json")
        assert code == 0 and [p["label"] for p in doc["predictions"]] == [a.strip() for a in answers], err
