"""A sequence as a store records it: Sequence.to_dict() (the plain form in manifest.json) reads back to an equal
Sequence, and the hashes of the plain form are those pslora wrote before the typed config existed, so that every
existing store still opens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pslora_cli.config import (
    IDENTITY_KEYS,
    Sequence,
    canonical_hash,
    identity_hash,
    sequence_from_stored,
    sequence_from_text,
)
from pslora_cli.errors import InputError
from pslora_cli.methods import METHODS

SAMPLE = """\
name: sample
description: a sample sequence for the identity hash
scenario: task-incremental
seed: 7
backbone: {source: huggingface, name: some/model, pooling: cls, max_length: 48}
lora: {rank: 4, alpha: 8, target_modules: [query, key, value], dropout: 0.05}
method: {name: custom, stability_weight: 0.2, merge: ties, merge_density: 0.3, previous: sum}
training: {epochs: 2, batch_size: 8, learning_rate: 2e-3}
tasks:
  - id: t1
    description: first
    data: {type: wordnet, classes: [animal, food], train_per_class: 20}
  - id: t2
    data: {type: files, train: data/train.csv, test_fraction: 0.25, classes: [pos, 1]}
  - id: t3
    data: {type: huggingface, path: nobody/ds, text_column: sentence}
"""
# The same sample read by pslora before the restructure (commit 6b506a3, pslora_cli/sequence.py, whose sequence
# was the plain dict): identity_hash(seq), and canonical_hash of that whole dict without base_dir (OLD_KEYS).
OLD_IDENTITY_HASH = "2332821705cb61d8aea95a6729d555c2f1394dec37e7a9d7868cb292ef832bb8"
OLD_PLAIN_HASH = "120d3b897d2a46c11e7f25b11a2d1ed0c9e679e02b24276681842ed56ffc8814"
OLD_KEYS = ("name", "description", "scenario", "seed", "backbone", "lora", "method", "training", "tasks")


def sample(overrides=None, base_dir: Path = Path("/tmp")) -> Sequence:
    return sequence_from_text(SAMPLE, "sample.yaml", base_dir, overrides)


def stored(seq: Sequence) -> dict:
    """What manifest.json holds and gives back: to_dict() through JSON."""
    return json.loads(json.dumps(seq.to_dict()))


def test_stored_form_reads_back_to_an_equal_sequence(tmp_path):
    seq = sample(base_dir=tmp_path)
    back = sequence_from_stored(stored(seq), "manifest.json")
    assert isinstance(back, Sequence) and back == seq
    assert back.to_dict() == seq.to_dict() and back.base_dir == str(tmp_path.resolve())
    assert back.training.epochs == 2 and back.training.steps is None  # derived settings survive
    assert back.method.merge == "ties" and back.tasks[1].data["classes"] == ["pos", 1]
    changed = sequence_from_stored(stored(seq), "manifest.json", ["method.stability_weight=0.5"])
    assert changed != seq and changed.method.stability_weight == 0.5
    assert changed.replace(method=seq.method) == seq


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_reads_back_from_its_stored_form(name):
    spec = METHODS[name]  # the sample's merge (ties) and previous (sum), unless the method fixes them
    merge = spec.merge or "ties"
    seq = sample([f"method.name={name}", f"method.merge={merge}", f"method.previous={spec.previous or 'sum'}"]
                 + [f"method.merge_density={0.5 if merge == 'ties' else 0.2}"])  # density is TIES' alone
    assert sequence_from_stored(stored(seq), "manifest.json") == seq


def test_stored_form_is_validated_again():
    plain = stored(sample())
    plain["lora"]["rank"] = 0
    with pytest.raises(InputError, match=r"^manifest\.json: lora\.rank: must be > 0"):
        sequence_from_stored(plain, "manifest.json")


def test_plain_form():
    plain = sample().to_dict()
    assert set(OLD_KEYS) | {"base_dir"} <= set(plain) and plain["base_dir"] == "/tmp"
    assert plain["method"]["init"] == "new" and plain["method"]["name"] == "custom"
    assert isinstance(plain["tasks"], list) and plain["tasks"][0] == {
        "id": "t1", "description": "first",
        "data": {"type": "wordnet", "pos": "noun", "classes": ["animal", "food"], "train_per_class": 20,
                 "test_per_class": 100, "path": None}}
    assert sample().section("lora", "scenario") == {"lora": plain["lora"], "scenario": "task-incremental"}


def test_identity_hash_is_the_hash_of_the_old_plain_form():
    seq = sample()
    plain = seq.to_dict()
    assert IDENTITY_KEYS == ("backbone", "lora", "scenario", "tasks")
    assert identity_hash(seq) == canonical_hash({k: plain[k] for k in ("backbone", "lora", "scenario", "tasks")})
    assert identity_hash(seq) == OLD_IDENTITY_HASH
    # every part the old plain form had is unchanged (sections added since are not part of it); the loss's
    # default variant has changed since, and custom no longer adds O-LoRA's term unasked, so the old defaults are
    # spelled out
    old_plain = sample(["method.variant=dir+fro", "method.orthogonality_weight=0.5"]).to_dict()
    assert canonical_hash({k: old_plain[k] for k in OLD_KEYS}) == OLD_PLAIN_HASH
    # what the identity covers, and what it leaves to be overridden per command
    assert identity_hash(sample(["tasks.t1.data.train_per_class=21"])) != OLD_IDENTITY_HASH
    assert identity_hash(sample(["lora.dropout=0.1"])) != OLD_IDENTITY_HASH
    assert identity_hash(sample(["training.batch_size=4", "method.stability_weight=1", "seed=1"])) == \
        OLD_IDENTITY_HASH
