"""`pslora analyze-shifts` end to end on the tiny BERT: the JSON against an independent numpy recomputation from
the stored adapter files, the files and figures, --intervene (also on a multitask store), --compare, and bad
input."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file, save_file

from conftest import run_cli, tiny_sequence, tree_state
from pslora_cli.cli import main

TASKS = ("t1", "t2", "t3")


@pytest.fixture(scope="module")
def stores(tiny_bert, tmp_path_factory):
    """Store A trained by `pslora run` (3 tasks, with its accuracy matrix); store B a copy whose t2 and t3
    adapters have lora_B negated in the value modules (its meta.json sha256 updated), so that B differs from A."""
    root = tmp_path_factory.mktemp("analyze")
    seq = tiny_sequence(tiny_bert, training={"steps": 4, "batch_size": 8, "learning_rate": 5e-3,
                                             "eval_batch_size": 64})
    (root / "seq.yaml").write_text(yaml.safe_dump(seq))
    a = root / "a"
    assert main(["run", str(root / "seq.yaml"), "--store", str(a), "--device", "cpu", "--quiet", "--json"]) == 0
    b = root / "b"
    shutil.copytree(a, b)
    for task in ("t2", "t3"):
        folder = b / "tasks" / task
        path = folder / "adapter_model.safetensors"
        tensors = load_file(str(path))
        tensors = {k: (-v if "value.lora_B" in k else v) for k, v in tensors.items()}
        save_file(tensors, str(path))
        meta = json.loads((folder / "meta.json").read_text())
        meta["sha256"]["adapter_model.safetensors"] = hashlib.sha256(path.read_bytes()).hexdigest()
        (folder / "meta.json").write_text(json.dumps(meta))
    return a, b


def dense_updates(store: Path) -> list[dict[str, np.ndarray]]:
    """ΔW = (lora_alpha / r) · B @ A per module, read with safetensors + numpy, in float64."""
    out = []
    for task in TASKS:
        folder = store / "tasks" / task
        cfg = json.loads((folder / "adapter_config.json").read_text())
        w = load_file(str(folder / "adapter_model.safetensors"))
        scale = cfg["lora_alpha"] / cfg["r"]
        deltas = {}
        for key in w:
            if key.endswith(".lora_A.weight"):
                prefix = key[: -len(".lora_A.weight")]
                name = prefix.removeprefix("base_model.model.") + ".weight"
                deltas[name] = scale * (w[prefix + ".lora_B.weight"].astype(np.float64)
                                        @ w[key].astype(np.float64))
        out.append(deltas)
    return out


def reference(d: np.ndarray, h: np.ndarray) -> dict:
    """The statistics of METHOD.md §4 written out in numpy, independently of core/shifts.py."""
    d, h = d.ravel(), h.ravel()
    c = h + d
    both = (d != 0) & (h != 0)
    same = both & (np.sign(d) == np.sign(h))
    prod = d * h
    hs, cs = np.sort(h), np.sort(c)
    grid = np.concatenate([hs, cs])
    ks = np.max(np.abs(np.searchsorted(hs, grid, "right") - np.searchsorted(cs, grid, "right"))) / h.size
    order = np.argsort(-np.abs(d), kind="stable")[: int(np.ceil(0.10 * d.size))]
    opp_top = order[(d[order] * h[order]) < 0]
    return {
        "relative_norm": np.linalg.norm(d) / np.linalg.norm(h),
        "same_fraction": same.sum() / both.sum(),
        "conflict_ratio": np.abs(prod[prod < 0]).sum() / np.abs(prod).sum(),
        "flip_rate": ((np.sign(c) != np.sign(h)) & (h != 0)).sum() / (h != 0).sum(),
        "wasserstein1": np.mean(np.abs(hs - cs)),
        "ks": ks,
        "top_opposite_fraction": opp_top.size / order.size,
        "top_opposite_l1_share": np.abs(d[opp_top]).sum() / np.abs(d).sum(),
        "q50_delta": np.quantile(np.abs(d), 0.5), "q99_history": np.quantile(np.abs(h), 0.99),
    }


def check_against_reference(doc: dict, store: Path) -> None:
    deltas = dense_updates(store)
    modules = sorted(deltas[0])
    assert sorted(doc["modules"]) == modules and len(modules) == 4
    assert [st["task"] for st in doc["stages"]] == ["t2", "t3"]
    for st in doc["stages"]:
        t = st["stage"]
        history = {m: sum(deltas[i][m] for i in range(t - 1)) for m in modules}
        cases = [(st["modules"][m], deltas[t - 1][m], history[m]) for m in modules]
        cases.append((st["pooled"], np.concatenate([deltas[t - 1][m].ravel() for m in doc["modules"]]),
                      np.concatenate([history[m].ravel() for m in doc["modules"]])))
        for stats, d, h in cases:
            ref = reference(d, h)
            top = stats["subsets"]["top"]["10"]
            got = {"relative_norm": stats["norms"]["relative"], "same_fraction": stats["sign"]["same_fraction"],
                   "conflict_ratio": stats["sign"]["conflict_ratio"], "flip_rate": stats["sign"]["flip_rate"],
                   "wasserstein1": stats["shift"]["wasserstein1"], "ks": stats["shift"]["ks"],
                   "top_opposite_fraction": top["opposite"]["fraction"],
                   "top_opposite_l1_share": top["opposite"]["l1_share"],
                   "q50_delta": stats["quantiles"]["delta"][stats["quantiles"]["levels"].index(0.5)],
                   "q99_history": stats["quantiles"]["history"][stats["quantiles"]["levels"].index(0.99)]}
            for key, value in ref.items():
                # float32 products on disk vs float64 here: agreement to float32 precision
                assert got[key] == pytest.approx(float(value), rel=2e-4, abs=1e-7), (st["task"], key)
            edges = np.array(stats["histogram"]["edges"])
            for name, x in (("delta", d), ("history", h), ("combined", h + d)):
                counts, _ = np.histogram(x, bins=edges)
                assert np.abs(counts - np.array(stats["histogram"][name])).sum() <= 2
                assert sum(stats["histogram"][name]) == x.size


def test_json_agrees_with_an_independent_recomputation(stores, capsys, tmp_path):
    a, _ = stores
    code, doc, err = run_cli(capsys, "analyze-shifts", "--store", a, "--device", "cpu", "--json", "--quiet",
                             "--out", tmp_path / "out")
    assert code == 0, err
    check_against_reference(doc, a)
    # correlation: 3 tasks give 2 stages, too few; the drops themselves come from the matrix
    matrix = json.loads((a / "eval" / "matrix.json").read_text())["task_agnostic"]
    assert doc["correlation"]["points"] == 2 and "at least 3" in doc["correlation"]["note"]
    assert all(v["pearson"] is None and v["spearman"] is None for v in doc["correlation"]["statistics"].values())
    assert doc["stages"][0]["accuracy"]["drop"] == pytest.approx(matrix[1][0] - matrix[2][0])
    assert doc["stages"][1]["accuracy"]["drop"] == pytest.approx(
        (matrix[2][0] + matrix[2][1]) / 2 - (matrix[3][0] + matrix[3][1]) / 2)
    # files: the same set in the store and in --out, PNG figures, CSV rows per stage and module (+ pooled)
    for folder in (a / "analysis", tmp_path / "out"):
        names = {p.name for p in folder.iterdir()}
        assert {"shifts.json", "shifts.csv", "subsets.csv", "histograms.csv", "correlation.csv",
                "shift-histograms.png", "sign-agreement.png"} <= names
        assert not any(n.startswith(".") for n in names)                      # no temporary files left
        for png in ("shift-histograms.png", "sign-agreement.png"):
            assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        rows = list(csv.DictReader((folder / "shifts.csv").open()))
        assert len(rows) == 2 * 5 and {r["module"] for r in rows} == {"pooled", *doc["modules"]}
        pooled_t3 = next(r for r in rows if r["task"] == "t3" and r["module"] == "pooled")
        assert float(pooled_t3["conflict_ratio"]) == pytest.approx(doc["stages"][1]["summary"]["conflict_ratio"])
        assert len(list(csv.DictReader((folder / "subsets.csv").open()))) == 2 * 5 * 2 * 5
    saved = json.loads((a / "analysis" / "shifts.json").read_text())
    assert saved["stages"][0]["summary"] == doc["stages"][0]["summary"]
    # --rank-by changes the subsets only; the terminal output is tables
    code, doc2, _ = run_cli(capsys, "analyze-shifts", "--store", a, "--rank-by", "history", "--tasks", "t3",
                            "--ks", "5,50", "--json", "--quiet", "--device", "cpu", "--no-figures")
    assert code == 0 and [st["task"] for st in doc2["stages"]] == ["t3"]
    assert doc2["stages"][0]["pooled"]["subsets"]["rank_by"] == "history"
    assert list(doc2["stages"][0]["pooled"]["subsets"]["top"]) == ["5", "50"]
    assert doc2["stages"][0]["pooled"]["sign"] == doc["stages"][1]["pooled"]["sign"]


def test_terminal_tables(stores, capsys):
    a, _ = stores
    code = main(["analyze-shifts", "--store", str(a), "--device", "cpu", "--quiet", "--no-figures"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    assert "shifts per stage" in out and "t3" in out and "correlation with the accuracy drop" in out
    # the analysis folder describes this run only: the figures of the earlier run are gone
    names = {p.name for p in (a / "analysis").iterdir()}
    assert "shifts.json" in names and not any(n.endswith(".png") for n in names)


def test_intervene_and_compare(stores, capsys, tmp_path):
    a, b = stores
    before_b = tree_state(b)
    code, doc, err = run_cli(capsys, "analyze-shifts", "--store", a, "--compare", b, "--intervene",
                             "--subset", "opposite:top:20", "--device", "cpu", "--json", "--quiet",
                             "--out", tmp_path)
    assert code == 0, err
    assert tree_state(b) == before_b                                          # the compared store is only read
    check_against_reference(doc["compare"], b)
    cmp = doc["comparison"]
    assert cmp["tasks"] == ["t2", "t3"] and cmp["same_modules"]
    row = cmp["stages"][1]
    assert row["a"] == doc["stages"][1]["summary"] and row["b"] == doc["compare"]["stages"][1]["summary"]
    assert row["a_minus_b"]["conflict_ratio"] == pytest.approx(row["a"]["conflict_ratio"] - row["b"]["conflict_ratio"])
    assert row["a"]["conflict_ratio"] != row["b"]["conflict_ratio"]          # B's value modules were negated
    assert doc["compare"]["stages"][0]["accuracy"] is None                    # B's matrix rows are stale now

    iv = doc["intervention"]
    assert iv["subset"] == {"sign": "opposite", "part": "top", "k": 20, "rank_by": "delta"}
    assert iv["kind"] == "task_agnostic" and [e["task"] for e in iv["stages"]] == ["t2", "t3"]
    deltas = dense_updates(a)
    for e in iv["stages"]:
        t = e["stage"]
        d = np.concatenate([deltas[t - 1][m].ravel() for m in doc["modules"]])
        h = np.concatenate([sum(deltas[i][m] for i in range(t - 1)).ravel() for m in doc["modules"]])
        top = np.argsort(-np.abs(d), kind="stable")[: int(np.ceil(0.2 * d.size))]
        assert e["count"] == int(((d[top] * h[top]) < 0).sum()) > 0
        v = e["variants"]
        assert v["none"]["removed"] == 0 and v["selected"]["removed"] == e["count"]
        assert v["random"]["removed"] == e["count"] and v["other_sign"]["removed"] == e["count"]
        assert v["selected"]["removed_sign_mix"]["opposite"] == e["count"]
        assert v["other_sign"]["removed_sign_mix"]["same"] == e["count"]
        # the unmodified stage reproduces the stored accuracy matrix exactly
        assert e["baseline_matches_matrix"] is True
        assert v["none"]["old_accuracy"] == pytest.approx(e["matrix_old_accuracy"])
        for name in v:
            assert len(v[name]["old_per_task"]) == t - 1 and 0 <= v[name]["new_accuracy"] <= 1
    for name in ("compare.png", "intervention.png", "shift-histograms.png", "sign-agreement.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG" and (a / "analysis" / name).is_file()
    rows = list(csv.DictReader((tmp_path / "intervention.csv").open()))
    assert len(rows) == 2 * 4
    assert len(list(csv.DictReader((tmp_path / "comparison.csv").open()))) == 2 * 10


@pytest.mark.parametrize("scenario", ["class-incremental", "task-incremental"])
def test_intervention_on_a_multitask_store_scores_with_each_stages_heads(scenario, tiny_bert, write_sequence,
                                                                        tmp_path, capsys):
    """Multitask trains a joint head per stage: the unmodified stage of the intervention must score task i at
    stage t with stage t's rows of the joint head, as the accuracy matrix does, not with task i's first head."""
    seq = tiny_sequence(tiny_bert, scenario=scenario, method={"name": "multitask"},
                        training={"steps": 4, "batch_size": 8, "learning_rate": 5e-3, "eval_batch_size": 64})
    store = tmp_path / "multitask"
    code, _, err = run_cli(capsys, "run", write_sequence(seq), "--store", store, "--device", "cpu", "--quiet",
                           "--json")
    assert code == 0, err
    code, doc, err = run_cli(capsys, "analyze-shifts", "--store", store, "--intervene", "--device", "cpu",
                             "--json", "--quiet", "--no-figures")
    assert code == 0, err
    matrix = json.loads((store / "eval" / "matrix.json").read_text())
    primary = matrix[matrix["primary"]]
    iv = doc["intervention"]
    assert iv["merge"] == "last" and [e["stage"] for e in iv["stages"]] == [2, 3]
    for e in iv["stages"]:
        t, none = e["stage"], e["variants"]["none"]
        assert e["baseline_matches_matrix"] is True, (t, none["old_per_task"], primary[t])
        assert none["old_per_task"] == pytest.approx(primary[t][:t - 1], abs=1e-5)
        assert none["new_accuracy"] == pytest.approx(primary[t][t - 1], abs=1e-5)


BAD = {
    "rank key": (["--rank-by", "sideways"], "--rank-by"),
    "subset": (["--intervene", "--subset", "opposite:middle:10"], "--subset"),
    "ks": (["--ks", "0,5"], "--ks"),
    "first task": (["--tasks", "t1"], "first task"),
    "unknown task": (["--tasks", "t9"], "t9"),
    "bins": (["--bins", "0"], "--bins"),
    "compare": (["--compare", "{tmp}/nowhere"], "not a pslora store"),
    "out is a file": (["--out", "{tmp}/file.txt"], "--out"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_2_with_one_line(case, stores, capsys, tmp_path):
    a, _ = stores
    (tmp_path / "file.txt").write_text("x")
    args, expected = BAD[case]
    before = tree_state(a)
    code, _, err = run_cli(capsys, "analyze-shifts", "--store", a, "--device", "cpu",
                           *[x.format(tmp=tmp_path) for x in args])
    assert code == 2, err
    assert err.startswith("pslora: error: ") and err.count("\n") == 1 and expected in err, err
    assert tree_state(a) == before


def test_store_with_one_task_and_a_locked_store(stores, capsys, tmp_path):
    import fcntl

    a, _ = stores
    one = tmp_path / "one"
    shutil.copytree(a, one)
    for task in ("t2", "t3"):
        shutil.rmtree(one / "tasks" / task)
    code, _, err = run_cli(capsys, "analyze-shifts", "--store", one, "--device", "cpu")
    assert code == 2 and "at least 2 trained tasks" in err
    # the lock is taken only to write the store's analysis folder
    with open(a / ".lock", "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        code, _, err = run_cli(capsys, "analyze-shifts", "--store", a, "--device", "cpu", "--quiet",
                               "--no-figures")
    assert code == 2 and "in use" in err
