"""Integration: the real pretrained MiniLM-L6 (offline, from its PyPI package) on small slices of real
WordNet data, through the CLI."""

import json

import pytest
import yaml

from pslora_cli.cli import main

pytestmark = pytest.mark.integration

SEQUENCE = {
    "name": "minilm-small",
    "scenario": "class-incremental",
    "backbone": {"source": "builtin", "name": "all-minilm-l6-v2", "max_length": 32},
    "training": {"steps": 25, "batch_size": 16, "learning_rate": 2e-3, "head_learning_rate": 1e-2},
    "tasks": [
        {"id": "a", "data": {"type": "wordnet", "classes": ["animal", "food"], "train_per_class": 40,
                             "test_per_class": 40}},
        {"id": "b", "data": {"type": "wordnet", "classes": ["person", "location"], "train_per_class": 40,
                             "test_per_class": 40}},
    ],
}


def test_minilm_learns_real_tasks_and_adapters_load_in_peft(tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModel

    from pslora_cli.config import Backbone
    from pslora_cli.models import resolve_model_path

    seq = tmp_path / "seq.yaml"
    seq.write_text(yaml.safe_dump(SEQUENCE))
    store = tmp_path / "store"
    assert main(["run", str(seq), "--store", str(store), "--device", "cpu", "--json", "--quiet"]) == 0
    doc = json.loads(capsys.readouterr().out)
    matrix = doc["matrix"]["task_agnostic"]
    # Four real classes, two tasks: chance is 0.5 within a task and 0.25 over all classes.
    assert matrix[1][0] > 0.8, matrix
    assert matrix[2][1] > 0.6, matrix
    assert doc["matrix"]["metrics"]["primary"]["acc"] > 0.5
    meta = json.loads((store / "tasks" / "b" / "meta.json").read_text())
    assert meta["train"]["final"]["stability_loss"] > 0          # the loss was active for the second task
    base = AutoModel.from_pretrained(resolve_model_path(Backbone(source="builtin", name="all-minilm-l6-v2")))
    model = PeftModel.from_pretrained(base, str(store / "tasks" / "b"))
    assert sum("lora_A" in n for n, _ in model.named_parameters()) == 12  # query+value in 6 layers
