"""benchmarks/results/paired.py pairs stores by (sequence, seed): orders are not mixed up, and two stores of one
method with the same sequence and seed are an error, not a silent replacement."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "paired.py"
MAKE_ROW = SCRIPT.with_name("make_row.py")


def store(root: Path, name: str, sequence: str, seed: int, acc: float, bwt: float) -> Path:
    folder = root / name
    (folder / "eval").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"sequence": {"name": sequence, "seed": seed}}))
    (folder / "eval" / "matrix.json").write_text(json.dumps({"metrics": {"primary": {"acc": acc, "bwt": bwt}}}))
    return folder


def paired(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_stores_pair_by_sequence_and_seed(tmp_path):
    a1 = store(tmp_path, "a1", "order1", 0, 0.80, -0.1)
    a2 = store(tmp_path, "a2", "order2", 0, 0.70, -0.2)
    b1 = store(tmp_path, "b1", "order1", 0, 0.75, -0.1)
    b2 = store(tmp_path, "b2", "order2", 0, 0.72, -0.1)
    out = paired("--a", a1, a2, "--b", b2, b1, "--names", "A,B")
    assert out.returncode == 0, out.stderr
    acc = out.stdout.splitlines()[0]
    assert "order1:0,order2:0" in acc and "80.0 vs 75.0, 70.0 vs 72.0" in acc and "+1.5" in acc, acc


def test_two_stores_with_the_same_sequence_and_seed_are_an_error(tmp_path):
    a1 = store(tmp_path, "a1", "order1", 0, 0.80, -0.1)
    a2 = store(tmp_path, "a2", "order1", 0, 0.60, -0.1)
    b1 = store(tmp_path, "b1", "order1", 0, 0.75, -0.1)
    out = paired("--a", a1, a2, "--b", b1)
    assert out.returncode != 0 and "both sequence order1 seed 0" in out.stderr, out.stderr


def test_a_recorded_row_pairs_by_seed(tmp_path):
    a1 = store(tmp_path, "a1", "order1", 1, 0.80, -0.1)
    out = paired("--a", a1, "--b-recorded", "1=70.0,-5.0")
    assert out.returncode == 0 and "80.0 vs 70.0" in out.stdout, out.stderr


def with_hits(folder: Path, last_row: list[str], fingerprints: tuple[str, str] = ("d1", "d2")) -> Path:
    """A two-task store's matrix with its last row's per-prompt records, and its tasks' data fingerprints."""
    path = folder / "eval" / "matrix.json"
    doc = json.loads(path.read_text())
    doc["metrics"]["primary"]["num_tasks"] = 2
    path.write_text(json.dumps({**doc, "tasks": ["t1", "t2"], "primary": "task_aware",
                                "hits": {"task_aware": [[None, None], [None, None], last_row]}}))
    for task, fingerprint in zip(("t1", "t2"), fingerprints):
        (folder / "tasks" / task).mkdir(parents=True)
        (folder / "tasks" / task / "meta.json").write_text(json.dumps({"data_fingerprint": fingerprint}))
    return folder


def test_stores_with_per_prompt_records_get_a_per_prompt_row(tmp_path):
    a1 = with_hits(store(tmp_path, "a1", "order1", 0, 0.75, -0.1), ["1100", "11"])
    b1 = with_hits(store(tmp_path, "b1", "order1", 0, 0.50, -0.1), ["1010", "00"])
    lines = paired("--a", a1, "--b", b1).stdout.splitlines()
    # the hand case of test_core_metrics: +50.0 with half-width 1.96 sqrt(1/6) / 2 = 40.0 points
    assert lines[2] == ("| ACC, per prompt | A − B | order1:0 | 75.0 | 50.0 | +50.0 [+10.0, +90.0] | "
                        "6 prompts: only A right 3, only B right 1 |"), lines
    # every prompt once: 4/6 against 2/6, +33.3 with half-width 1.96 / 3 = 65.3 points
    assert lines[3] == ("| ACC, each prompt once | A − B | order1:0 | 66.7 | 33.3 | +33.3 [-32.0, +98.7] | "
                        "tasks weighted by their prompts (acc_weighted) |"), lines
    assert len(paired("--a", store(tmp_path, "a2", "o", 0, 0.7, 0), "--b", store(tmp_path, "b2", "o", 0, 0.6, 0))
               .stdout.splitlines()) == 2  # without records: no such row


def test_stores_of_other_data_get_no_per_prompt_row(tmp_path):
    a1 = with_hits(store(tmp_path, "a1", "order1", 0, 0.75, -0.1), ["1100", "11"])
    b1 = with_hits(store(tmp_path, "b1", "order1", 0, 0.50, -0.1), ["1010", "00"], ("d1", "other"))
    out = paired("--a", a1, "--b", b1)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 2 and "fingerprints differ" in out.stderr


def test_a_one_prompt_task_gives_the_pooled_row_alone(tmp_path):
    a1 = with_hits(store(tmp_path, "a1", "order1", 0, 0.75, -0.1), ["1100", "1"])
    b1 = with_hits(store(tmp_path, "b1", "order1", 0, 0.50, -0.1), ["1010", "0"])
    out = paired("--a", a1, "--b", b1)
    assert out.returncode == 0, out.stderr
    rows = out.stdout.splitlines()[2:]
    assert len(rows) == 1 and rows[0].startswith("| ACC, each prompt once |"), rows


def row(folder: Path, out: Path, *run_json) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(MAKE_ROW), str(folder), "--out", str(out), *map(str, run_json)],
                          capture_output=True, text=True)


def test_a_committed_row_stands_for_its_store(tmp_path):
    """The stores are gone on another machine; the rows made from them give the same lines, per-prompt rows and the
    data check included, and a row that is not its store's matrix is refused."""
    a1 = with_hits(store(tmp_path, "a1", "order1", 0, 0.75, -0.1), ["1100", "11"])
    b1 = with_hits(store(tmp_path, "b1", "order1", 0, 0.50, -0.1), ["1010", "00"])
    c1 = with_hits(store(tmp_path, "c1", "order1", 0, 0.50, -0.1), ["1010", "00"], ("d1", "other"))
    for name in ("a1", "b1", "c1"):
        assert row(tmp_path / name, tmp_path / f"{name}.json").returncode == 0
    from_stores = paired("--a", a1, "--b", b1).stdout
    assert len(from_stores.splitlines()) == 4
    assert paired("--a", tmp_path / "a1.json", "--b", tmp_path / "b1.json").stdout == from_stores
    assert paired("--a", tmp_path / "a1.json", "--b", b1).stdout == from_stores
    other = paired("--a", tmp_path / "a1.json", "--b", tmp_path / "c1.json")
    assert len(other.stdout.splitlines()) == 2 and "fingerprints differ" in other.stderr
    (tmp_path / "run.json").write_text(json.dumps({"store": "x", "matrix": {"task_aware": [[0.1]]}}))
    refused = row(a1, tmp_path / "a1-run.json", "--run-json", tmp_path / "run.json")
    assert refused.returncode != 0 and "evaluated matrix" in refused.stderr and not (tmp_path / "a1-run.json").exists()
    (tmp_path / "bare.json").write_text(json.dumps({"matrix": {}}))
    assert "without its sequence" in paired("--a", tmp_path / "bare.json", "--b", b1).stderr


def test_a_validation_row_stands_for_the_stores_validation_scoring(tmp_path):
    """make_row --split validation writes the row of eval/validation (from `pslora eval --json`'s output too);
    paired --split validation reads it as the store, and a store never scored on validation is one line, no trace."""
    a1, b1 = store(tmp_path, "a1", "order1", 0, 0.75, -0.1), store(tmp_path, "b1", "order1", 0, 0.50, -0.1)
    for folder, acc, hits in ((a1, 0.6, ["1100", "10"]), (b1, 0.4, ["1010", "00"])):
        (folder / "eval" / "validation").mkdir()
        doc = {"split": "validation", "tasks": ["t1", "t2"], "primary": "task_aware",
               "metrics": {"primary": {"acc": acc, "bwt": 0.0, "num_tasks": 2}},
               "hits": {"task_aware": [[], [hits[0], hits[1]], [hits[0], hits[1]]]}}
        (folder / "eval" / "validation" / "matrix.json").write_text(json.dumps(doc))
    (tmp_path / "a1.val.json").write_text(json.dumps(
        {**json.loads((a1 / "eval" / "validation" / "matrix.json").read_text()), "selection": {"food": 0.1}}))
    assert row(a1, tmp_path / "a1-val.json", "--split", "validation", "--run-json", tmp_path / "a1.val.json"
               ).returncode == 0
    assert row(b1, tmp_path / "b1-val.json", "--split", "validation").returncode == 0
    assert json.loads((tmp_path / "a1-val.json").read_text())["selection"] == {"food": 0.1}
    from_stores = paired("--a", a1, "--b", b1, "--split", "validation")
    assert from_stores.returncode == 0 and "60.0 vs 40.0" in from_stores.stdout, from_stores.stderr
    from_rows = paired("--a", tmp_path / "a1-val.json", "--b", tmp_path / "b1-val.json", "--split", "validation")
    assert from_rows.stdout == from_stores.stdout
    assert "validation split, not test" in paired("--a", tmp_path / "a1-val.json", "--b", b1).stderr  # test asked
    c1 = store(tmp_path, "c1", "order1", 0, 0.5, 0.0)
    missing = paired("--a", a1, "--b", c1, "--split", "validation")
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "eval/validation/matrix.json" in missing.stderr
    refused = row(c1, tmp_path / "c1-val.json", "--split", "validation")
    assert "not scored on validation" in refused.stderr and not (tmp_path / "c1-val.json").exists()
    (tmp_path / "run.json").write_text(json.dumps({"store": "a1", "matrix": {}}))  # `pslora run --json`: test only
    wrong = row(a1, tmp_path / "a1-wrong.json", "--split", "validation", "--run-json", tmp_path / "run.json")
    assert "eval --split validation --json" in wrong.stderr and not (tmp_path / "a1-wrong.json").exists()
    assert row(a1, tmp_path / "a1-test.json").returncode == 0  # a test row without a run's output: nothing added
    keys = set(json.loads((tmp_path / "a1-test.json").read_text()))
    assert keys == {"store", "matrix", "sequence", "data_fingerprints"}
