"""`text_template`: a Hugging Face or files source's text assembled from several columns ({column} placeholders; a
list of templates falls back past empty columns), instead of one `text_column`. Sources without it keep their filled
form (and so their stores' identity) and their data."""

from __future__ import annotations

import json

import datasets
import pytest

from pslora_cli.data import load_task_data, validate_source
from pslora_cli.errors import InputError

WHERE = "task t: data"


def save(tmp_path, train: dict, test: dict, label_names=("neg", "pos"), name="ds") -> str:
    """A DatasetDict (train, test) with a ClassLabel `label`, saved with save_to_disk under tmp_path/name."""
    def split(columns):
        features = datasets.Dataset.from_dict(columns).features.copy()
        features["label"] = datasets.ClassLabel(names=list(label_names))
        return datasets.Dataset.from_dict(columns, features=features)

    datasets.DatasetDict({"train": split(train), "test": split(test)}).save_to_disk(str(tmp_path / name))
    return name


def load(source: dict, tmp_path):
    return load_task_data(source, seed=0, base_dir=tmp_path, where=WHERE)


def raises(source: dict, match: str, tmp_path=None) -> str:
    with pytest.raises(InputError) as info:
        load(source, tmp_path) if tmp_path is not None else validate_source(source, WHERE)
    msg = str(info.value)
    assert match in msg and "\n" not in msg, msg
    return msg


PAIRS = {"title": ["t0", "t1", "t2", "t3"], "body": ["b0", "b1", "b2", "b3"], "label": [0, 1, 0, 1]}


def test_a_template_assembles_the_text_from_several_columns(tmp_path):
    path = save(tmp_path, PAIRS, {k: v[:2] for k, v in PAIRS.items()})
    d = load({"type": "huggingface", "path": path, "text_template": "Title: {title}\nText: {body}\n"}, tmp_path)
    assert d.classes == ["neg", "pos"]
    assert sorted(zip(d.train_x, d.train_y)) == [(f"Title: t{i}\nText: b{i}\n", i % 2) for i in range(4)]
    assert sorted(d.test_x) == ["Title: t0\nText: b0\n", "Title: t1\nText: b1\n"]
    # literal braces, a column used twice
    e = load({"type": "huggingface", "path": path, "text_template": "{{{title}}} {title}={body}"}, tmp_path)
    assert sorted(e.test_x) == ["{t0} t0=b0", "{t1} t1=b1"]


def test_one_column_as_a_template_is_that_text_column(tmp_path):
    path = save(tmp_path, {"text": ["a", "b", "c", "d"], "label": [0, 1, 0, 1]}, {"text": ["e", "f"], "label": [0, 1]})
    by_column = load({"type": "huggingface", "path": path, "train_per_class": 1}, tmp_path)
    by_template = load({"type": "huggingface", "path": path, "text_template": "{text}", "train_per_class": 1},
                       tmp_path)
    assert by_template.fingerprint == by_column.fingerprint and by_template.train_x == by_column.train_x


def test_a_list_of_templates_leaves_out_empty_columns(tmp_path):
    rows = {"q": ["q0", "q1", "q2", "q3"], "body": ["b0", "", None, "b3"], "a": ["a0", "a1", "a2", ""],
            "label": [0, 1, 0, 1]}
    path = save(tmp_path, rows, rows)
    templates = ["Title: {q}\nQuestion: {body}\nAnswer: {a}\n", "Question: {q}\nAnswer: {a}\n"]
    d = load({"type": "huggingface", "path": path, "text_template": templates}, tmp_path)
    assert sorted(d.test_x) == ["Question: q1\nAnswer: a1\n", "Question: q2\nAnswer: a2\n",
                                "Question: q3\nAnswer: \n",  # no template fits: the last one, empty cells as ""
                                "Title: q0\nQuestion: b0\nAnswer: a0\n"]


def test_numbers_are_written_out_and_other_values_refused(tmp_path):
    path = save(tmp_path, {"word": ["w0", "w1"], "n": [3, 4], "label": [0, 1]},
                {"word": ["w2", "w3"], "n": [5, 6], "label": [0, 1]})
    d = load({"type": "huggingface", "path": path, "text_template": "{word} {n}"}, tmp_path)
    assert sorted(d.train_x) == ["w0 3", "w1 4"]
    save(tmp_path, {"word": [["x"], ["y"]], "label": [0, 1]}, {"word": [["z"], ["v"]], "label": [0, 1]}, name="lists")
    raises({"type": "huggingface", "path": "lists", "text_template": "w: {word}"},
           f"{WHERE}.text_template: split 'train' row 0: column 'word' holds list, expected text", tmp_path)


def test_an_unknown_column_is_an_error_naming_text_template(tmp_path):
    path = save(tmp_path, PAIRS, PAIRS)
    msg = raises({"type": "huggingface", "path": path, "text_template": "{title} {nope}"},
                 f"{WHERE}.text_template: no column 'nope' in split 'train' of 'ds'", tmp_path)
    assert "(available: title, body, label)" in msg
    validate_source({"type": "files", "train": "x.jsonl", "text_template": ["{a}", "{b} {gone}"]}, WHERE)  # valid
    (tmp_path / "x.jsonl").write_text(json.dumps({"a": "1", "b": "2", "label": "p"}) + "\n")
    raises({"type": "files", "train": "x.jsonl", "text_template": ["{a}", "{b} {gone}"]},
           f"{WHERE}.text_template: no column 'gone'", tmp_path)


@pytest.mark.parametrize("template, where", [
    ("", "text_template"), ("no column", "text_template"), ("{}", "text_template"), ("{0}", "text_template"),
    ("{a.b}", "text_template"), ("{a[0]}", "text_template"), ("{a!r}", "text_template"), ("{a:>5}", "text_template"),
    ("{unclosed", "text_template"), ([], "text_template"), (["{a}", 3], "text_template[1]"),
    (["{a}", "plain"], "text_template[1]"), (7, "text_template"),
])
def test_bad_templates_name_the_key(template, where):
    raises({"type": "huggingface", "path": "x", "text_template": template}, f"{WHERE}.{where}:")


def test_text_template_or_text_column_not_both():
    for kind in ({"type": "huggingface", "path": "x"}, {"type": "files", "train": "a.csv"}):
        raises({**kind, "text_column": "text", "text_template": "{a}"},
               f"{WHERE}.text_template: give either text_column or text_template, not both")
    raises({"type": "huggingface_images", "path": "x", "text_template": "{a}"},
           f"{WHERE}.text_template: unknown key for data type 'huggingface_images'")


def test_sources_without_a_template_keep_their_filled_form():
    hf = validate_source({"type": "huggingface", "path": "x"}, WHERE)
    assert "text_template" not in hf and hf["text_column"] == "text"
    assert validate_source({"type": "huggingface", "path": "x", "text_template": None}, WHERE) == hf  # null: not set
    files = validate_source({"type": "files", "train": "a.csv"}, WHERE)
    assert "text_template" not in files and files["text_column"] == "text"
    # with a template: no text_column, and filling again (a store's recorded form) gives the same mapping
    given = {"type": "huggingface", "path": "x", "text_template": ["{a} {b}", "{a}"]}
    filled = validate_source(given, WHERE)
    assert "text_column" not in filled and filled["text_template"] == ["{a} {b}", "{a}"]
    assert validate_source(filled, WHERE) == filled and given["text_template"] == ["{a} {b}", "{a}"]


def test_files_sources_take_a_template(tmp_path):
    rows = [{"s1": f"first {i}", "s2": f"second {i}", "y": "yes" if i % 2 else "no"} for i in range(6)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = load({"type": "files", "train": "pairs.jsonl", "label_column": "y", "test_fraction": 0.5,
              "text_template": "sentence 1: {s1}\nsentence 2: {s2}"}, tmp_path)
    assert d.classes == ["no", "yes"]
    assert sorted(d.train_x + d.test_x) == sorted(f"sentence 1: first {i}\nsentence 2: second {i}" for i in range(6))
    (tmp_path / "q.csv").write_text("title,body,y\nt0,b0,a\nt1,,b\nt2,b2,a\nt3,,b\n")
    (tmp_path / "q_test.csv").write_text("title,body,y\nt4,,a\nt5,b5,b\n")
    e = load({"type": "files", "train": "q.csv", "test": "q_test.csv", "label_column": "y",
              "text_template": ["{title}: {body}", "{title}"]}, tmp_path)
    assert sorted(e.train_x) == ["t0: b0", "t1", "t2: b2", "t3"] and sorted(e.test_x) == ["t4", "t5: b5"]
