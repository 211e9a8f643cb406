"""device_check's cl-benchmark step (device_cl.py) on the CPU: which datasets a sequence needs, and carrying them."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "performance" / "device_cl.py"


@pytest.fixture(scope="module")
def dc():
    spec = importlib.util.spec_from_file_location("device_cl", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_datasets_of_the_standard_and_long_sequences(dc):
    assert [d for _, d in dc.cl_datasets(dc.CL_SEQUENCES)] == ["dbpedia", "amazon", "yahoo", "agnews"]
    long = [d for _, d in dc.cl_datasets("cl-long-order4")]
    assert len(long) == 15 and long[0] == "MNLI" and set(long) >= {"dbpedia", "amazon", "yahoo", "agnews"}
    both = dc.cl_datasets("cl-standard-order1,cl-long-order4")
    assert len(both) == 15 and [d for _, d in both][:4] == ["dbpedia", "amazon", "yahoo", "agnews"]


def test_carrying_copies_the_sequences_datasets_and_names_a_missing_one(dc, tmp_path):
    source = tmp_path / "O-LoRA"
    for kind, name in (("TC", "dbpedia"), ("SC", "amazon"), ("TC", "yahoo"), ("TC", "agnews"), ("SC", "yelp")):
        folder = source / "CL_Benchmark" / kind / name
        folder.mkdir(parents=True)
        (folder / "train.json").write_text(json.dumps([{"label": "a", "sentence": name}]))
        (folder / "labels.json").write_text('["a"]')
    (source / "configs").mkdir()
    (source / "configs" / "instruction_config.json").write_text("{}")
    dest = tmp_path / "carry"
    (dest / "CL_Benchmark" / "SC" / "yelp").mkdir(parents=True)  # left by an earlier --prepare for Long
    size = dc._copy_cl_datasets(source, dest, dc.CL_SEQUENCES)
    copied = sorted(str(p.relative_to(dest)) for p in dest.rglob("train.json"))
    assert not (dest / "CL_Benchmark" / "SC" / "yelp").exists()
    assert copied == ["CL_Benchmark/SC/amazon/train.json", "CL_Benchmark/TC/agnews/train.json",
                      "CL_Benchmark/TC/dbpedia/train.json", "CL_Benchmark/TC/yahoo/train.json"]  # not yelp
    assert (dest / "configs" / "instruction_config.json").is_file()
    assert size == sum(p.stat().st_size for p in (dest / "CL_Benchmark").rglob("*.json"))
    with pytest.raises(SystemExit, match=r"CL_Benchmark/<type>/MNLI/train.json"):
        dc._copy_cl_datasets(source, tmp_path / "carry2", "cl-long-order4")
