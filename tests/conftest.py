"""Shared fixtures: a tiny random BERT (saved as a local Hugging Face folder, with MiniLM's real tokenizer)
and small sequences on real offline data."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 random BERT in a local folder: the fast stand-in for MiniLM in unit tests."""
    import torch
    from transformers import BertConfig, BertModel

    from pslora_cli.backbones import resolve_model_path

    folder = tmp_path_factory.mktemp("tiny-bert")
    minilm = Path(resolve_model_path({"source": "builtin", "name": "all-minilm-l6-v2"}))
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


@pytest.fixture
def write_sequence(tmp_path):
    def write(seq: dict, name: str = "seq.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(seq, sort_keys=False))
        return path

    return write


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
