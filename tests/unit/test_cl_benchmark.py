"""The `cl-benchmark` source (pslora_cli.data.cl_benchmark): O-LoRA's CL_Benchmark folder layout, on a tiny folder
the tests write (no test needs O-LoRA's real files): texts, labels and O-LoRA's prompt, caps and splits, every
malformed input as one line naming the path, and `pslora run` on a two-task sequence of that layout."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest
import yaml

from pslora_cli.data import SOURCES, load_task_data, prompt_defaults, validate_source
from pslora_cli.data.cl_benchmark import ENV, INSTRUCTIONS
from pslora_cli.data.prompts import check_prompt, prompted
from pslora_cli.errors import InputError

from conftest import DATA_WHERE, run_cli, tree_state

WHERE = DATA_WHERE
TC = "Classify the topic. Choose one from the option.\n"  # not O-LoRA's: shows the folder's config is read
NEWS = ["World", "Sports", "Science or Technology"]


def rows(label_texts: dict[str, int], tag: str) -> list[dict]:
    return [{"label": label, "sentence": f"{tag} {label.lower()} story {i}\n"}
            for label, n in label_texts.items() for i in range(n)]


def write_bench(root: Path, config: bool = True) -> Path:
    """A tiny folder in O-LoRA's layout: TC/news (train, dev = test), SC/reviews (no test.json), NLI/pairs (test rows
    labelled "-", as MNLI's), COPA/COPA (no instruction), configs/instruction_config.json."""
    def dataset(kind, name, labels, train, test=None):
        folder = root / "CL_Benchmark" / kind / name
        folder.mkdir(parents=True)
        (folder / "labels.json").write_text(json.dumps(labels))
        (folder / "train.json").write_text(json.dumps(train))
        if test is not None:
            (folder / "test.json").write_text(json.dumps(test))
            (folder / "dev.json").write_text(json.dumps(test))

    dataset("TC", "news", NEWS, rows(dict.fromkeys(NEWS, 12), "train"), rows(dict.fromkeys(NEWS, 5), "test"))
    dataset("SC", "reviews", ["very negative", "very positive"],
            rows({"very negative": 20, "very positive": 20}, "review"))
    dataset("NLI", "pairs", ["entailment", "contradiction"], rows({"entailment": 6, "contradiction": 6}, "train"),
            rows({"entailment": 3, "contradiction": 3, "-": 2}, "test"))
    dataset("COPA", "COPA", ["A", "B"], rows({"A": 6, "B": 6}, "which"), rows({"A": 2, "B": 2}, "which test"))
    if config:
        (root / "configs").mkdir()
        (root / "configs" / "instruction_config.json").write_text(json.dumps({
            "TC": [{"instruction_type": "zero-shot", "instruction": TC},
                   {"instruction_type": "zero-shot", "instruction": "A second one, never used.\n"}],
            "SC": [{"instruction_type": "zero-shot", "instruction": INSTRUCTIONS["SC"]}],
        }))
    return root


@pytest.fixture
def bench(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv(ENV, raising=False)
    return write_bench(tmp_path / "olora")


def load(source: dict, base_dir: Path = Path("."), seed: int = 0):
    return load_task_data({"type": "cl-benchmark", **source}, seed=seed, base_dir=base_dir, where=WHERE)


def raises(source: dict, *parts: str, base_dir: Path = Path(".")) -> str:
    with pytest.raises(InputError) as info:
        load(source, base_dir)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, msg
    return msg


def test_texts_labels_and_o_loras_prompt(bench):
    d = load({"dataset": "news", "root": str(bench)})
    assert d.classes == NEWS  # labels.json order
    assert collections.Counter(d.train_y) == {0: 12, 1: 12, 2: 12} and collections.Counter(d.test_y) == {0: 5, 1: 5,
                                                                                                          2: 5}
    assert all(x.startswith("train ") for x in d.train_x) and all(x.startswith("test ") for x in d.test_x)
    assert all(x == f"train {NEWS[y].lower()} story {x.split()[-1]}\n" for x, y in zip(d.train_x, d.train_y))
    assert "TC/news" in d.source and "train.json, test.json" in d.source and not d.dropped
    p = prompted(d, check_prompt(None, "p"), "cl-benchmark", "p")
    assert p.answers == NEWS
    x, y = p.test_x[0], p.test_y[0]
    # O-LoRA: "Task:" + type + "\nDataset:" + name + "\n" + instruction + "Option: " + labels + " \n" + sentence +
    # "\nAnswer:" (uie_collator.get_instruction, uie_dataset_lora.load_TC_dataset), the first zero-shot instruction
    assert x.render() == f"Task:TC\nDataset:news\n{TC}Option: World, Sports, Science or Technology \n{x.text}\nAnswer:"
    assert x.text == f"test {NEWS[y].lower()} story {x.text.split()[-1]}\n"
    again = load({"dataset": "TC/news", "root": str(bench)})
    assert again.fingerprint == d.fingerprint and again.train_x == d.train_x


def test_the_folder_comes_from_root_or_the_environment(bench, monkeypatch, tmp_path):
    by_root = load({"dataset": "news", "root": "olora"}, base_dir=tmp_path)  # relative: the sequence file's folder
    monkeypatch.setenv(ENV, str(bench))
    by_env = load({"dataset": "news"})
    assert by_env.fingerprint == by_root.fingerprint
    assert load({"dataset": "NEWS"}).classes == NEWS  # the one folder matching without case


def test_caps_and_the_validation_split(bench):
    d = load({"dataset": "news", "root": str(bench), "train_per_class": 4, "test_per_class": 2})
    assert collections.Counter(d.train_y) == {0: 4, 1: 4, 2: 4} and collections.Counter(d.test_y) == {0: 2, 1: 2, 2: 2}
    assert collections.Counter(d.val_y) == {0: 2, 1: 2, 2: 2}  # the test cap, from the train rows the cap leaves out
    assert not set(d.val_x) & (set(d.train_x) | set(d.test_x)) and all(x.startswith("train") for x in d.val_x)
    v = load({"dataset": "news", "root": str(bench), "train_per_class": 4, "test_per_class": 2,
              "validation_per_class": 5})
    assert v.train_x == d.train_x and v.test_x == d.test_x and len(v.val_x) == 15
    f = load({"dataset": "news", "root": str(bench), "validation_fraction": 0.25})
    assert len(f.val_x) == 9 and len(f.train_x) == 27 and not set(f.val_x) & set(f.train_x)
    sub = load({"dataset": "news", "root": str(bench), "classes": ["Sports", "World"]})
    assert sub.classes == ["Sports", "World"] and sub.dropped == {"Science or Technology": 17}
    assert prompted(sub, check_prompt(None, "p"), "cl-benchmark", "p").train_x[0].prefix.endswith(
        "Option: Sports, World \n")
    other = load({"dataset": "news", "root": str(bench), "train_per_class": 4}, seed=1)
    assert set(other.train_x) != set(load({"dataset": "news", "root": str(bench), "train_per_class": 4}).train_x)


def test_a_dataset_without_test_json_is_split_seeded_and_disjoint_and_says_so(bench):
    d = load({"dataset": "reviews", "root": str(bench)})
    assert collections.Counter(d.test_y) == {0: 4, 1: 4} and collections.Counter(d.train_y) == {0: 16, 1: 16}
    assert not set(d.train_x) & set(d.test_x)
    assert "no test.json" in d.source and "carved with seed 0" in d.source and "disjoint" in d.source
    assert load({"dataset": "reviews", "root": str(bench)}).test_x == d.test_x
    assert set(load({"dataset": "reviews", "root": str(bench)}, seed=3).test_x) != set(d.test_x)
    half = load({"dataset": "reviews", "root": str(bench), "test_fraction": 0.5})
    assert len(half.test_x) == 20 and "0.5 of each class" in half.source
    p = prompted(d, check_prompt(None, "p"), "cl-benchmark", "p")
    assert p.train_x[0].prefix == ("Task:SC\nDataset:reviews\nWhat is the sentiment of the following paragraph? "
                                   "Choose one from the option.\nOption: very negative, very positive \n")


def test_labels_outside_labels_json_are_dropped_and_counted_or_refused(bench):
    d = load({"dataset": "pairs", "root": str(bench)})  # MNLI's test file has 131 rows labelled "-"
    assert d.dropped == {"-": 2} and len(d.test_x) == 6
    raises({"dataset": "pairs", "root": str(bench), "unknown_labels": "error"},
           f"{WHERE}.unknown_labels: 2 rows have labels outside the task's classes ('-' (2))",
           f"labels.json ({bench / 'CL_Benchmark/NLI/pairs/labels.json'}) does not list '-'")


def test_instructions_come_from_the_folder_else_from_o_lora(bench, tmp_path):
    pairs = load({"dataset": "pairs", "root": str(bench)})  # the data loads; its prompt needs an instruction
    with pytest.raises(InputError) as info:
        prompted(pairs, check_prompt(None, "p"), "cl-benchmark", "p")
    assert str(info.value) == (f"{WHERE}: {bench / 'configs/instruction_config.json'} has no instruction for task "
                               f"type 'NLI' (types: TC, SC): add one there, or give the task a prompt.instruction")
    given = prompted(pairs, check_prompt({"instruction": "Related?"}, "p"), "cl-benchmark", "p")
    assert given.train_x[0].prefix == "Task:NLI\nDataset:pairs\nRelated?\nOption: entailment, contradiction \n"
    bare = write_bench(tmp_path / "bare", config=False)  # no configs/: O-LoRA's own instructions
    d = load({"dataset": "pairs", "root": str(bare)})
    assert d.prompt_defaults["instruction"] + "\n" == INSTRUCTIONS["NLI"]
    assert load({"dataset": "news", "root": str(bare)}).prompt_defaults["instruction"] + "\n" == INSTRUCTIONS["TC"]
    copa = prompted(load({"dataset": "COPA", "root": str(bench)}), check_prompt(None, "p"), "cl-benchmark", "p")
    assert copa.answers == ["A", "B"]  # load_COPA_dataset: the sentence alone, no instruction, no options
    assert copa.test_x[0].render() == f"Task:COPA\nDataset:COPA\n{copa.test_x[0].text}\nAnswer:"
    # the task's own prompt: its instruction, template and answers win
    news = load({"dataset": "news", "root": str(bench)})
    own = prompted(news, check_prompt({"instruction": "Which topic?"}, "p"), "cl-benchmark", "p")
    assert own.train_x[0].prefix.startswith("Task:TC\nDataset:news\nWhich topic?\nOption: ")
    own = prompted(news, check_prompt({"template": "{instruction} [{options}] {text} =>",
                                       "answers": {"Science or Technology": "Science"}}, "p"), "cl-benchmark", "p")
    assert own.train_x[0].render("t") == f"{TC[:-1]} [World, Sports, Science] t =>" and own.answers[2] == "Science"


def test_the_prompt_without_the_data_is_the_loaders(bench, monkeypatch):
    """`predict` and `export` build prompts from the sequence: the same prefix, with or without the folder."""
    source = {"type": "cl-benchmark", "dataset": "news", "root": str(bench)}
    assert prompt_defaults(source, base_dir=Path("."), where=WHERE) == load(source).prompt_defaults
    assert prompt_defaults({"type": "files", "train": "x.csv"}, base_dir=Path("."), where=WHERE) is None
    gone = {"type": "cl-benchmark", "dataset": "agnews", "root": str(bench / "absent")}
    assert prompt_defaults(gone, base_dir=Path("."), where=WHERE) == {
        "instruction": INSTRUCTIONS["TC"][:-1],
        "template": "Task:TC\nDataset:agnews\n{instruction}\nOption: {options} \n{text}\nAnswer:"}
    with pytest.raises(InputError, match="not one of O-LoRA's datasets"):
        prompt_defaults({**gone, "dataset": "news"}, base_dir=Path("."), where=WHERE)


def test_the_schema():
    assert set(SOURCES["cl-benchmark"].fields) >= {"dataset", "root", "classes", "train_per_class", "test_per_class",
                                                     "test_fraction", "unknown_labels", "validation_per_class"}
    with pytest.raises(InputError, match=rf"{WHERE}\.dataset: required for data type 'cl-benchmark'"):
        validate_source({"type": "cl-benchmark"}, WHERE)
    with pytest.raises(InputError, match=rf"{WHERE}\.path: unknown key"):
        validate_source({"type": "cl-benchmark", "dataset": "x", "path": "y"}, WHERE)
    with pytest.raises(InputError, match=rf"{WHERE}\.dataset: must not be empty"):
        validate_source({"type": "cl-benchmark", "dataset": " "}, WHERE)


# -- malformed input: one line naming the path and what was expected ------------------------------------------------


def test_the_folder_missing_or_not_o_loras(bench, tmp_path, monkeypatch):
    raises({"dataset": "news"}, f"{WHERE}.root: not set, and the environment variable {ENV} is not set either",
           "CL_Benchmark/")
    raises({"dataset": "news", "root": "nowhere"}, f"{WHERE}.root: folder {tmp_path / 'nowhere'} not found",
           "expected the folder that holds O-LoRA's CL_Benchmark/", base_dir=tmp_path)
    monkeypatch.setenv(ENV, str(tmp_path / "gone"))
    raises({"dataset": "news"}, f"{WHERE}: {ENV}: folder {tmp_path / 'gone'} not found")
    raises({"dataset": "news", "root": str(tmp_path)}, f"{tmp_path / 'CL_Benchmark'} not found",
           "CL_Benchmark/<type>/<dataset>/ with train.json, test.json and labels.json")
    raises({"dataset": "news", "root": str(bench / "CL_Benchmark")}, "it is CL_Benchmark itself")
    raises({"dataset": "agnews", "root": str(bench)}, f"{WHERE}.dataset: no dataset 'agnews' in "
           f"{bench / 'CL_Benchmark'}", "available: COPA/COPA, NLI/pairs, SC/reviews, TC/news")
    (bench / "CL_Benchmark" / "SC" / "news").mkdir()
    raises({"dataset": "news", "root": str(bench)}, "'news' is under several task types", "SC/news, TC/news",
           "<type>/<dataset>")


@pytest.mark.parametrize("file, content, parts", [
    ("labels.json", None, ["labels.json not found", "expected a JSON list of label texts"]),
    ("labels.json", "[\"World\",", ["labels.json:1: invalid JSON", "expected a JSON list of label texts"]),
    ("labels.json", {"World": 0}, ["labels.json: got an object, expected a JSON list of label texts"]),
    ("labels.json", [], ["labels.json: got an empty list"]),
    ("labels.json", ["World", 3], ["labels.json: item 2 is a number 3"]),
    ("labels.json", ["World", "World"], ["'World' is listed twice"]),
    ("train.json", None, ["train.json not found", "{\"label\": ..., \"sentence\": ...}"]),
    ("train.json", "{oops", ["train.json:1: invalid JSON", "expected a JSON list of {\"label\""]),
    ("train.json", {"label": "World"}, ["train.json: got an object, expected a JSON list of {\"label\""]),
    ("train.json", [], ["train.json: holds no rows"]),
    ("train.json", [{"label": "World", "text": "x"}], ["train.json: item 1 is an object with keys 'label', 'text', "
                                                      "expected an object with \"label\" and \"sentence\""]),
    ("train.json", ["World"], ["train.json: item 1 is a string, expected an object"]),
    ("train.json", [{"label": "World", "sentence": 3}], ["item 1: \"sentence\" is a number, expected text"]),
    ("train.json", [{"label": ["World"], "sentence": "x"}], ["item 1: \"label\" is a list, expected a label text"]),
    ("test.json", "[]", ["test.json: holds no rows"]),
])
def test_malformed_files(bench, file, content, parts):
    path = bench / "CL_Benchmark" / "TC" / "news" / file
    if content is None:
        path.unlink()
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    msg = raises({"dataset": "news", "root": str(bench)}, str(path), *parts)
    assert msg.startswith(f"{WHERE}: ")


def test_classes_must_be_labels_of_labels_json(bench):
    raises({"dataset": "news", "root": str(bench), "classes": ["World", "Politics"]},
           f"{WHERE}.classes: 'Politics' is not a label of {bench / 'CL_Benchmark/TC/news/labels.json'}",
           "labels: World, Sports, Science or Technology")
    (bench / "CL_Benchmark" / "TC" / "news" / "labels.json").write_text(json.dumps(NEWS + ["Politics"]))
    raises({"dataset": "news", "root": str(bench)}, "class 'Politics' has no training examples in",
           str(bench / "CL_Benchmark/TC/news/train.json"))


def test_number_labels_are_read_as_their_text(bench):
    folder = bench / "CL_Benchmark" / "TC" / "digits"
    folder.mkdir()
    (folder / "labels.json").write_text(json.dumps(["1", "2"]))
    (folder / "train.json").write_text(json.dumps([{"label": i % 2 + 1, "sentence": f"s{i}"} for i in range(12)]))
    d = load({"dataset": "digits", "root": str(bench)})
    assert d.classes == ["1", "2"] and collections.Counter(d.train_y) == {0: 5, 1: 5}


# -- `pslora run` on the layout ---------------------------------------------------------------------------------------


def tiny_lm(folder: Path) -> Path:
    """A tiny random LLaMA with a word-level tokenizer made here (no model files read)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ("task tc sc dataset news reviews classify the topic choose one from option what is sentiment of "
             "following paragraph answer world sports science or technology very negative positive train test "
             "review story : , .").split()
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(dict.fromkeys(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128, pad_token_id=0,
                         eos_token_id=1, bos_token_id=1)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_pslora_run_on_the_layout(bench, tmp_path, capsys, monkeypatch):
    model = tiny_lm(tmp_path / "lm")
    capsys.readouterr()  # save_pretrained's progress bars
    seq = {"name": "cl-tiny", "scenario": "task-incremental",
           "backbone": {"source": "huggingface", "name": str(model), "max_length": 48},
           "lora": {"rank": 2, "alpha": 4},
           "training": {"steps": 2, "batch_size": 4, "learning_rate": 5e-3, "eval_batch_size": 16,
                        "checkpoint_every": 0},
           "tasks": [{"id": "news", "data": {"type": "cl-benchmark", "dataset": "news", "train_per_class": 4,
                                             "test_per_class": 2}},
                     {"id": "reviews", "data": {"type": "cl-benchmark", "dataset": "reviews", "train_per_class": 4,
                                                "test_per_class": 2}}]}
    file = tmp_path / "seq.yaml"
    file.write_text(yaml.safe_dump(seq, sort_keys=False))
    store = tmp_path / "store"
    code, doc, err = run_cli(capsys, "run", file, "--store", store, "--json", "--threads", "1")
    assert code == 2 and f"{ENV} is not set either" in err and len(err.strip().splitlines()) == 1, err
    assert not store.exists()  # nothing written
    monkeypatch.setenv(ENV, str(bench))
    code, doc, err = run_cli(capsys, "run", file, "--store", store, "--json", "--threads", "1")
    assert code == 0, err
    assert "no test.json, so test is 0.2 of each class of train.json, carved with seed 0" in err
    meta = json.loads((store / "tasks" / "news" / "meta.json").read_text())
    assert meta["answers"] == NEWS and meta["classes"] == NEWS
    assert doc["matrix"]["sample_counts"] and doc["matrix"]["scorer"] == "exact-match"
    code, info, err = run_cli(capsys, "export", "--store", store, "--out", tmp_path / "model", "--json")
    assert code == 0, err  # export builds the prompts from the sequence: O-LoRA's, as in training
    prompts = json.loads((tmp_path / "model" / "prompts.json").read_text())["tasks"]
    assert prompts["news"]["prefix"] == f"Task:TC\nDataset:news\n{TC}Option: World, Sports, Science or Technology \n"
    assert prompts["reviews"]["suffix"] == "\nAnswer:"
    before = tree_state(store)
    (bench / "CL_Benchmark" / "TC" / "news" / "train.json").write_text("{}")
    code, _, err = run_cli(capsys, "run", file, "--store", tmp_path / "other", "--json")
    assert code == 2 and "train.json: got an object" in err and not (tmp_path / "other").exists()
    assert tree_state(store) == before
