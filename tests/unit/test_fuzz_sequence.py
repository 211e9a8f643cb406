"""Property-based fuzzing of the sequence loader and --set overrides: any input either validates or ends in
an InputError with one line; never another exception."""

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pslora_cli.errors import InputError
from pslora_cli.config import sequence_from_text

VALID = {
    "name": "f",
    "lora": {"rank": 4},
    "method": {"name": "ps-lora"},
    "training": {"steps": 3},
    "tasks": [{"id": "a", "data": {"type": "wordnet", "classes": ["animal", "food"]}}],
}
KEYS = ["name", "scenario", "seed", "backbone", "lora", "method", "training", "tasks", "id", "data", "type",
        "classes", "rank", "alpha", "steps", "epochs", "merge", "previous", "stability_weight", "pos", "path",
        "train_per_class", "target_modules", "unknown"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["noun", "wordnet", "files", "ps-lora", "sum", "t1"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
                      max_leaves=20)


def check(text: str, overrides=None) -> None:
    try:
        sequence_from_text(text, "fuzz.yaml", Path("."), overrides)
    except InputError as exc:
        assert "\n" not in str(exc) and str(exc)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_random_documents(doc):
    check(yaml.safe_dump(doc))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_random_text(text):
    check(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.lists(st.sampled_from(KEYS + ["0", "1", "a", "tasks"]), min_size=1, max_size=4),
                          st.text(max_size=15)), max_size=3))
def test_random_overrides(pairs):
    overrides = [".".join(path) + "=" + value for path, value in pairs]
    check(yaml.safe_dump(VALID), overrides)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["training", "lora", "method", "backbone"]), st.sampled_from(KEYS), scalars)
def test_mutated_valid_sequence(section, key, value):
    doc = yaml.safe_load(yaml.safe_dump(VALID))
    doc.setdefault(section, {})
    if isinstance(doc[section], dict):
        doc[section][key] = value
    check(yaml.safe_dump(doc))
