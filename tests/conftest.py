"""Shared fixtures and helpers (the only conftest.py, so that `from conftest import ...` is unambiguous).

tests/unit - seconds each, nothing read from data packages or model packages:
    word_bert         a 2-layer, hidden-16 random BERT with a word-level tokenizer built here, in a local folder
    text_data()       a synthetic TaskData whose classes use disjoint words (learnable by that BERT)
    unit_sequence()   a typed Sequence on word_bert (its tasks' data sources are never read)
tests/e2e (and tests/test_analyze.py) - real offline models and data, the CLI end to end:
    tiny_bert         a 2-layer, hidden-32 random BERT with MiniLM's real tokenizer
    tiny_sequence()   a 3-task sequence on real WordNet data for tiny_bert
both:
    write_sequence, run_cli, tree_state
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import pytest
import yaml

TESTS = Path(__file__).resolve().parent
# Everything runs offline (as `make test` sets it): a hub id that is not cached fails at once, with no retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    """Mark each test by its folder, so that `-m unit` / `-m e2e` select them too."""
    for item in items:
        path = Path(str(item.fspath)).resolve()
        if path.is_relative_to(TESTS) and path.relative_to(TESTS).parts[0] in ("unit", "e2e"):
            item.add_marker(path.relative_to(TESTS).parts[0])


def pytest_configure(config):
    config.addinivalue_line("markers", "unit: tests/unit (tiny random models, synthetic data, seconds each)")
    config.addinivalue_line("markers", "e2e: tests/e2e (real offline models and data, the CLI end to end)")


# -- unit: a tiny BERT with a word-level tokenizer, synthetic data --------------------------------------------

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
WORDS_PER_CLASS = 8
MAX_CLASSES = 4


def class_words(c: int) -> list[str]:
    """The words examples of class c are made of (disjoint between classes)."""
    return [f"w{c}x{j}" for j in range(WORDS_PER_CLASS)]


VOCAB = SPECIAL_TOKENS + [w for c in range(MAX_CLASSES) for w in class_words(c)]


def build_word_bert(folder: Path, hidden: int = 16, seed: int = 0) -> Path:
    """A random BERT and its word-level tokenizer (WordLevel + Whitespace, [CLS] x [SEP]), saved in `folder` as a
    Hugging Face model folder that AutoTokenizer / AutoModel load offline."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", model_max_length=32).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=32)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def word_bert(tmp_path_factory) -> Path:
    """A 2-layer, hidden-16 random BERT (dropout on) with a word-level tokenizer: the unit tests' backbone."""
    from transformers import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    return build_word_bert(tmp_path_factory.mktemp("word-bert"))


def text_data(classes: int = 2, train_per_class: int = 16, test_per_class: int = 6, seed: int = 0,
              first_class: int = 0):
    """A synthetic text TaskData: each example is 3-5 words of its class's vocabulary (classes first_class..)."""
    from pslora_cli.data import TaskData, compute_fingerprint

    rng = random.Random(seed)

    def examples(n: int) -> tuple[list[str], list[int]]:
        rows = [(" ".join(rng.choice(class_words(first_class + c)) for _ in range(rng.randint(3, 5))), c)
                for c in range(classes) for _ in range(n)]
        rng.shuffle(rows)
        return [x for x, _ in rows], [y for _, y in rows]

    names = [f"class{first_class + c}" for c in range(classes)]
    train_x, train_y = examples(train_per_class)
    test_x, test_y = examples(test_per_class)
    return TaskData(classes=names, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                    fingerprint=compute_fingerprint(names, train_x, train_y, test_x, test_y),
                    source="synthetic words")


def unit_sequence(model: Path, n_tasks: int = 2, base_dir: Path = TESTS, **sections):
    """A typed Sequence on the tiny word-level BERT. `sections` update the YAML sections (method={...}, ...)."""
    from pslora_cli.config import validate_sequence

    raw = {
        "name": "unit",
        "scenario": "class-incremental",
        "seed": 0,
        "backbone": {"source": "huggingface", "name": str(model), "max_length": 16},
        "lora": {"rank": 2, "alpha": 4, "target_modules": ["query", "value"]},
        "method": {},
        "training": {"steps": 12, "batch_size": 8, "learning_rate": 1e-2, "head_learning_rate": 5e-2,
                     "eval_batch_size": 64, "checkpoint_every": 0, "precision": "fp32"},
        # Never read: the tests hand train_task / Evaluator the data themselves.
        "tasks": [{"id": f"t{i + 1}", "data": {"type": "files", "train": f"t{i + 1}.csv"}} for i in range(n_tasks)],
    }
    for key, value in sections.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    return validate_sequence(raw, "unit.yaml", base_dir)


# -- e2e: a tiny BERT with MiniLM's tokenizer, real WordNet data ----------------------------------------------

@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 random BERT in a local folder, with MiniLM's real tokenizer (read from its package)."""
    import torch
    from transformers import BertConfig, BertModel

    from pslora_cli.config import Backbone
    from pslora_cli.models import resolve_model_path

    folder = tmp_path_factory.mktemp("tiny-bert")
    minilm = Path(resolve_model_path(Backbone(source="builtin", name="all-minilm-l6-v2")))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm / name, folder / name)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    return folder


def tiny_sequence(tiny_bert: Path, **changes) -> dict:
    seq = {
        "name": "tiny",
        "scenario": "class-incremental",
        "seed": 0,
        "backbone": {"source": "huggingface", "name": str(tiny_bert), "max_length": 24},
        "lora": {"rank": 4, "alpha": 8, "target_modules": ["query", "value"]},
        "method": {"stability_weight": 1.0},
        "training": {"steps": 6, "batch_size": 8, "learning_rate": 5e-3, "eval_batch_size": 64},
        "tasks": [
            {"id": "t1", "data": {"type": "wordnet", "classes": ["animal", "food"], "train_per_class": 16,
                                  "test_per_class": 8}},
            {"id": "t2", "data": {"type": "wordnet", "classes": ["person", "plant"], "train_per_class": 16,
                                  "test_per_class": 8}},
            {"id": "t3", "data": {"type": "wordnet", "classes": ["artifact", "time"], "train_per_class": 16,
                                  "test_per_class": 8}},
        ],
    }
    for key, value in changes.items():
        seq[key] = value
    return seq


# -- both ------------------------------------------------------------------------------------------------------

@pytest.fixture
def write_sequence(tmp_path):
    def write(seq: dict, name: str = "seq.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(seq, sort_keys=False))
        return path

    return write


def generated_block(doc: Path, begin: str, end: str) -> str:
    """The part of a document between a generated block's markers, both included."""
    text = doc.read_text(encoding="utf-8")
    return text[text.index(begin):text.index(end) + len(end)]


def run_cli(capsys, *args) -> tuple[int, dict | None, str]:
    """Run `pslora ARGS` in-process: (exit code, the JSON document on stdout if any, stderr)."""
    from pslora_cli.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    doc = json.loads(out) if out.strip().startswith("{") else None
    return code, doc, err


def tree_state(root: Path) -> dict:
    """sha256 of every file under root (the lock file aside): to assert that nothing was written."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


# -- data sources and image backbones: helpers shared by tests/unit and tests/e2e ------------------------------

DATA_WHERE = "task t2: data"


def load_source(source: dict, seed: int = 0, base_dir: Path = Path("."), where: str = DATA_WHERE):
    """load_task_data with the tests' error prefix."""
    from pslora_cli.data import load_task_data

    return load_task_data(source, seed=seed, base_dir=base_dir, where=where)


def source_raises(source: dict, match: str, base_dir: Path = Path("."), **kw) -> str:
    """The one-line InputError a source raises, checked to contain `match`."""
    from pslora_cli.errors import InputError

    with pytest.raises(InputError) as info:
        load_source(source, base_dir=base_dir, **kw)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert match in msg, msg
    return msg


def check_text_data(d) -> None:
    """The shape every loaded text task has."""
    assert len(d.train_x) == len(d.train_y) and len(d.test_x) == len(d.test_y)
    assert d.train_x and d.test_x
    assert set(d.train_y) == set(range(len(d.classes))) == set(d.test_y)
    assert all(isinstance(x, str) and x for x in d.train_x + d.test_x)
    assert len(d.fingerprint) == 64 and int(d.fingerprint, 16) >= 0
    assert d.modality == "text"


TINY_VIT = {"img_size": 28, "patch_size": 7, "depth": 2, "embed_dim": 64, "num_heads": 2}


def vit_backbone(**changes):
    """A tiny random timm ViT backbone config (no weights)."""
    from pslora_cli.config import Backbone

    cfg = {"source": "timm", "name": "vit_tiny_patch16_224", "pooling": "mean", "max_length": 64,
           "trust_remote_code": False, "pretrained": False, "weights": None, "image_size": None,
           "model_kwargs": dict(TINY_VIT)}
    cfg.update(changes)
    return Backbone(**cfg)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny batches gain nothing from a second thread, and on a shared 2-core machine two threads wait on each
    other for whichever core another process holds (measured: the vision tests 29 s with one thread, 184 s with
    two)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def check_validation_eval(capsys, store: Path, sample_counts: list[int]) -> dict:
    """`pslora eval --split validation` on a finished store: its own matrix in eval/validation/, the test matrix
    untouched, every cell scored on the validation examples (their counts)."""
    test_matrix = (store / "eval" / "matrix.json").read_bytes()
    code, doc, err = run_cli(capsys, "eval", "--store", store, "--split", "validation", "--device", "cpu", "--json")
    assert code == 0, err
    assert doc["split"] == "validation" and doc["sample_counts"][:len(sample_counts)] == sample_counts
    assert json.loads((store / "eval" / "validation" / "matrix.json").read_text())["split"] == "validation"
    assert (store / "eval" / "validation" / "matrix.png").is_file()
    assert (store / "eval" / "matrix.json").read_bytes() == test_matrix
    grid = doc[doc["primary"]]
    assert all(grid[t][i] is not None for t in range(1, len(sample_counts) + 1) for i in range(t))
    code, again, _ = run_cli(capsys, "eval", "--store", store, "--split", "validation", "--json", "--quiet")
    assert code == 0 and again[again["primary"]] == grid  # complete: read back, not rescored
    return doc


def adapter_delta(folder: Path, module: str):
    """A saved PEFT adapter's update of `module` from its own files: (lora_alpha / r) · B @ A."""
    from safetensors.torch import load_file

    w = load_file(str(Path(folder) / "adapter_model.safetensors"))
    cfg = json.loads((Path(folder) / "adapter_config.json").read_text())
    key = "base_model.model." + module
    return cfg["lora_alpha"] / cfg["r"] * w[key + ".lora_B.weight"] @ w[key + ".lora_A.weight"]

