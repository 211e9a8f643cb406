"""`pslora compare` and the method presets end to end on the tiny model."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from conftest import adapter_delta, tiny_sequence
from pslora_cli.cli import main


def two_tasks(tiny_bert, **method):
    seq = tiny_sequence(tiny_bert)
    seq["tasks"] = seq["tasks"][:2]
    seq["training"]["steps"] = 4
    seq["method"] = method
    return seq


def test_compare_runs_methods_seeds_orders(tiny_bert, write_sequence, tmp_path, capsys):
    seq = write_sequence(two_tasks(tiny_bert))
    out = tmp_path / "cmp"
    code = main(["compare", str(seq), "--methods", "ps-lora,inc-lora", "--seeds", "0,1",
                 "--orders", "2", "--out", str(out), "--device", "cpu", "--json", "--quiet"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["runs"]) == 2 * 2 * 2
    for method in ("ps-lora", "inc-lora"):
        row = doc["summary"][method]
        assert row["runs"] == 4 and row["acc"]["mean"] is not None and row["acc"]["std"] >= 0
        accs = [r["metrics"]["acc"] for r in doc["runs"] if r["method"] == method]
        mean = sum(accs) / len(accs)
        assert abs(row["acc"]["mean"] - mean) < 1e-12
    orders = {tuple(r["tasks"]) for r in doc["runs"]}
    assert orders == {("t1", "t2"), ("t2", "t1")}
    assert (out / "compare.csv").read_text().startswith("method,runs,acc_mean")
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # class-incremental: each run's BWT split into the backbone's (task-aware) and the heads' part
    for r in doc["runs"]:
        split = r["forgetting_split"]
        assert split["bwt_backbone"] + split["bwt_heads"] == pytest.approx(r["metrics"]["bwt"], abs=1e-12)
    assert doc["summary"]["ps-lora"]["bwt_heads"]["mean"] is not None
    # paired against inc-lora (the default baseline) on the same order and seed: 4 pairs
    paired = doc["paired"]
    assert paired["baseline"] == "inc-lora" and list(paired["methods"]) == ["ps-lora"]
    diffs = [a["metrics"]["acc"] - b["metrics"]["acc"] for a in doc["runs"] for b in doc["runs"]
             if a["method"] == "ps-lora" and b["method"] == "inc-lora" and (a["order"], a["seed"]) == (b["order"], b["seed"])]
    acc = paired["methods"]["ps-lora"]["acc"]
    assert acc["n"] == 4 and acc["mean"] == pytest.approx(sum(diffs) / 4, abs=1e-12) and acc["low"] <= acc["high"]
    # and per pair, over the same test prompts: the same difference, with the test set's interval
    per_prompt = paired["methods"]["ps-lora"]["acc_per_prompt"]
    assert [d["mean"] for d in per_prompt] == pytest.approx(diffs, abs=1e-6)
    assert all(d["low"] <= d["mean"] <= d["high"] and d["n"] == 2 * 16 for d in per_prompt)
    # Re-running finds every store complete and trains nothing; the table shows the split.
    code = main(["compare", str(seq), "--methods", "inc-lora,ps-lora", "--seeds", "0,1", "--out", str(out),
                 "--baseline", "ps-lora", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0 and "BWT heads" in printed and "inc-lora − ps-lora" in printed
    assert re.search(r"[+-]\d+\.\d \[[+-]\d+\.\d, [+-]\d+\.\d\]", printed), printed  # a mean and its interval
    code = main(["compare", str(seq), "--methods", "inc-lora,ps-lora", "--seeds", "0", "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out  # one seed and order: the interval over the test prompts is the one there is
    assert code == 0 and "over the test prompts" in printed, printed
    code = main(["compare", str(seq), "--methods", "inc-lora", "--seeds", "0", "--out", str(out), "--json", "--quiet"])
    assert code == 0 and json.loads(capsys.readouterr().out)["runs"][0]["trained"] == []
    # the same stores scored on validation, trained again nothing; its summary beside the test one
    test_summary = (out / "compare.json").read_bytes()
    code = main(["compare", str(seq), "--methods", "ps-lora,inc-lora", "--seeds", "0,1", "--orders", "2",
                 "--out", str(out), "--split", "validation", "--json", "--quiet"])
    val = json.loads(capsys.readouterr().out)
    assert code == 0 and val["split"] == "validation" and all(r["trained"] == [] for r in val["runs"])
    assert (out / "compare.json").read_bytes() == test_summary and (out / "compare-validation.json").is_file()
    assert [r["matrix"] for r in val["runs"]] != [r["matrix"] for r in doc["runs"]]


def test_seq_lora_continues_one_adapter_and_uses_the_last(tiny_bert, write_sequence, tmp_path, capsys):
    seq = write_sequence(two_tasks(tiny_bert, name="seq-lora"))
    store = tmp_path / "s"
    assert main(["run", str(seq), "--store", str(store), "--json", "--quiet", "--device", "cpu"]) == 0
    capsys.readouterr()
    merged = load_file(next((store / "merges").glob("last-*.safetensors")).as_posix())
    t2 = load_file(str(store / "tasks" / "t2" / "adapter_model.safetensors"))
    cfg = json.loads((store / "tasks" / "t2" / "adapter_config.json").read_text())
    p = "base_model.model.encoder.layer.0.attention.self.query"
    expected = cfg["lora_alpha"] / cfg["r"] * t2[p + ".lora_B.weight"] @ t2[p + ".lora_A.weight"]
    assert torch.equal(merged["encoder.layer.0.attention.self.query.weight"], expected)
    # Trained on from task 1's adapter: task 2's A is not a fresh random init, it moved from task 1's.
    t1 = load_file(str(store / "tasks" / "t1" / "adapter_model.safetensors"))
    moved = (t2[p + ".lora_A.weight"] - t1[p + ".lora_A.weight"]).abs().max()
    assert 0 < moved < t1[p + ".lora_A.weight"].abs().max()


def _task_vector(store, task, prefix):
    return adapter_delta(store / "tasks" / task, prefix)


@pytest.mark.parametrize("method", ["magmax", "magmax-ind"])
def test_magmax_merges_the_stored_task_vectors_by_largest_magnitude_times_half(method, tiny_bert, write_sequence,
                                                                                tmp_path, capsys):
    """MagMax's defining property: the merged update is 0.5 x, per element, the stored task vector largest in
    |value| (the later task on ties), recomputed here from the adapters' own tensors; with `magmax` each task's
    adapter continues the previous one (its cumulative task vector), with `magmax-ind` each starts anew."""
    from pslora_cli.evaluation.scoring import Evaluator
    from pslora_cli.data.loader import data_loader
    from pslora_cli.session import Session

    seq_file = write_sequence(tiny_sequence(tiny_bert, method={"name": method}, training={
        "steps": 4, "batch_size": 8, "learning_rate": 5e-3, "eval_batch_size": 64}))
    store = tmp_path / "s"
    assert main(["run", str(seq_file), "--store", str(store), "--json", "--quiet", "--device", "cpu"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["merge"]["method"] == "magmax"
    merged = load_file(doc["merge"]["files"][0])
    for prefix in ("encoder.layer.0.attention.self.query", "encoder.layer.1.attention.self.value"):
        taus = [_task_vector(store, t, prefix) for t in ("t1", "t2", "t3")]
        best = taus[0]
        for tau in taus[1:]:
            best = torch.where(tau.abs() >= best.abs(), tau, best)
        assert torch.allclose(merged[prefix + ".weight"], 0.5 * best, rtol=0, atol=1e-7), prefix
    seq, opened, _ = Session(store_path=store, device_name="cpu", quiet=True).open()
    ev = Evaluator(seq, opened, torch.device("cpu"), data_loader(seq))
    stage2 = ev.stage_update(ev.adapters(2))  # what stage 2 of the matrix is scored with: tasks 1..2 only
    prefix = "encoder.layer.0.attention.self.query"
    t1, t2 = (_task_vector(store, t, prefix) for t in ("t1", "t2"))
    assert torch.allclose(stage2[prefix + ".weight"], 0.5 * torch.where(t2.abs() >= t1.abs(), t2, t1), atol=1e-7)
    meta = json.loads((store / "tasks" / "t2" / "meta.json").read_text())
    assert meta["config"]["method"]["init"] == ("previous" if method == "magmax" else "new")
    assert meta["config"]["method"]["merge_scale"] == 0.5


def test_per_task_scores_each_task_with_its_own_adapter(tiny_bert, write_sequence, tmp_path, capsys):
    seq = write_sequence(two_tasks(tiny_bert, name="per-task"))
    store = tmp_path / "s"
    assert main(["run", str(seq), "--store", str(store), "--json", "--quiet", "--device", "cpu"]) == 0
    doc = json.loads(capsys.readouterr().out)
    aware = doc["matrix"]["task_aware"]
    assert aware[2][0] == aware[1][0]          # task 1 keeps its own adapter: no forgetting by construction
    assert doc["merge"] is None


@pytest.mark.parametrize("merge", ["ties", "task-arithmetic", "mean"])
def test_custom_merges_run(merge, tiny_bert, write_sequence, tmp_path, capsys):
    scale = {"merge_scale": 0.5} if merge == "task-arithmetic" else {}  # the scale is an option of that merge alone
    seq = write_sequence(two_tasks(tiny_bert, name="custom", merge=merge, previous="sum", **scale))
    assert main(["run", str(seq), "--store", str(tmp_path / "s"), "--json", "--quiet", "--device", "cpu"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["merge"]["method"] == merge and doc["matrix"]["metrics"]["primary"]["acc"] is not None


def test_multitask_trains_tasks_jointly_with_one_head_per_stage(tiny_bert, write_sequence, tmp_path, capsys):
    seq = write_sequence(two_tasks(tiny_bert, name="multitask"))
    store = tmp_path / "s"
    assert main(["run", str(seq), "--store", str(store), "--json", "--quiet", "--device", "cpu"]) == 0
    doc = json.loads(capsys.readouterr().out)
    t1 = json.loads((store / "tasks" / "t1" / "meta.json").read_text())
    t2 = json.loads((store / "tasks" / "t2" / "meta.json").read_text())
    assert t1["train"]["steps"] == 4 and t2["train"]["steps"] == 8      # steps per task x tasks seen
    assert t2["num_train"] == t1["num_train"] + 32 and t2["classes"] == ["person", "plant"]
    joint = load_file(str(store / "tasks" / "t2" / "joint_heads.safetensors"))
    own = load_file(str(store / "tasks" / "t2" / "head.safetensors"))
    assert torch.equal(joint["t2.weight"], own["weight"]) and joint["t1.weight"].shape == (2, 32)
    # Stage 2 scores task 1 with stage 2's joint head for t1, not with t1's own stage-1 head.
    old_head = load_file(str(store / "tasks" / "t1" / "head.safetensors"))
    assert not torch.equal(joint["t1.weight"], old_head["weight"])
    merged = load_file(next((store / "merges").glob("last-*.safetensors")).as_posix())
    assert torch.equal(merged["heads.t1.weight"], joint["t1.weight"])
    assert doc["matrix"]["task_agnostic"][2][0] is not None
    code = main(["store", "verify", "--store", str(store)])
    assert code == 0
    # its data check compares each task's joint training data with what it was trained on
    assert main(["eval", "--store", str(store), "--split", "validation", "--quiet", "--device", "cpu"]) == 0


def test_compare_jobs_plan_and_collect_give_what_the_sequential_grid_gives(tiny_bert, write_sequence, tmp_path,
                                                                           capsys):
    """A 2-run grid: run in 2 processes, it gives the sequential grid's matrices; --plan's commands, run one by one,
    give the same stores; --collect summarises whatever is finished."""
    import shlex

    seq = write_sequence(two_tasks(tiny_bert))
    grid = ["compare", str(seq), "--methods", "ps-lora,inc-lora", "--seeds", "0", "--device", "cpu", "--json",
            "--quiet", "--threads", "2"]
    assert main(grid + ["--out", str(tmp_path / "seq")]) == 0
    sequential = json.loads(capsys.readouterr().out)
    assert main(grid + ["--out", str(tmp_path / "par"), "--jobs", "2"]) == 0
    parallel = json.loads(capsys.readouterr().out)
    assert [r["matrix"] for r in parallel["runs"]] == [r["matrix"] for r in sequential["runs"]]
    assert parallel["summary"] == sequential["summary"] and parallel["missing"] == []
    assert sorted(p.name for p in (tmp_path / "par" / "logs").iterdir()) == ["inc-lora-order1-seed0.log",
                                                                             "ps-lora-order1-seed0.log"]
    # --plan: one command per run; run only the first, then --collect sees one finished run of two
    out = tmp_path / "plan"
    assert main(grid + ["--out", str(out), "--plan"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["runs"] == 2 and all(c.startswith("pslora run ") for c in plan["commands"])
    first = shlex.split(plan["commands"][0])
    assert first[first.index("--set") + 1] == "method.name=ps-lora" and not (out / "ps-lora").exists()
    assert main(first[1:]) == 0
    capsys.readouterr()
    assert main(grid + ["--out", str(out), "--collect"]) == 0
    collected = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in collected["runs"]] == ["ps-lora"] and len(collected["missing"]) == 1
    assert collected["runs"][0]["matrix"] == sequential["runs"][0]["matrix"]
    assert main(grid + ["--out", str(tmp_path / "empty"), "--collect"]) == 2


def test_n_lora_trains_with_its_l1_term_and_sums_the_adapters(tiny_bert, write_sequence, tmp_path, capsys):
    seq = write_sequence(two_tasks(tiny_bert, name="n-lora"))
    store = tmp_path / "s"
    assert main(["run", str(seq), "--store", str(store), "--json", "--quiet", "--device", "cpu"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["merge"]["method"] == "sum"
    for task in ("t1", "t2"):  # the term from the first task on
        meta = json.loads((store / "tasks" / task / "meta.json").read_text())
        assert meta["train"]["final"]["sparsity_loss"] > 0 and meta["config"]["method"]["sparsity_weight"] == 0.4
        assert meta["train"]["final"]["orthogonality_loss"] == 0


def test_planned_commands_of_shuffled_orders_find_relative_data_files(tiny_bert, write_sequence, tmp_path, capsys):
    """Order files live in OUT/orders/; their relative data paths resolve against the original sequence's folder
    (`run --data-dir`), and the order files keep the data as written (their stores' identity)."""
    import shlex

    for name in ("a", "b"):
        (tmp_path / f"{name}.csv").write_text("text,label\n" + "".join(
            f"{name}{i} w{i} x{i},{'pq'[i % 2]}\n" for i in range(24)))
    seq = tiny_sequence(tiny_bert, tasks=[{"id": n, "data": {"type": "files", "train": f"{n}.csv"}} for n in "ab"])
    seq["training"]["steps"] = 2
    path = write_sequence(seq)
    out = tmp_path / "cmp"
    assert main(["compare", str(path), "--methods", "inc-lora", "--seeds", "0", "--orders", "2", "--out", str(out),
                 "--plan", "--json", "--quiet"]) == 0
    commands = json.loads(capsys.readouterr().out)["commands"]
    order2 = shlex.split(commands[1])
    assert "orders/order2.yaml" in order2[2] and order2[order2.index("--data-dir") + 1] == str(tmp_path.resolve())
    import yaml

    written = yaml.safe_load((out / "orders" / "order2.yaml").read_text())
    assert sorted(t["data"]["train"] for t in written["tasks"]) == ["a.csv", "b.csv"]
    assert main(order2[1:] + ["--json"]) == 0
    assert sorted(json.loads(capsys.readouterr().out)["trained"]) == ["a", "b"]


def test_inflora_fixes_a_away_from_the_earlier_input_subspace_and_trains_b(tiny_bert, write_sequence, tmp_path,
                                                                           capsys):
    """InfLoRA's defining property on the tiny model: each later task's A is orthogonal to the input subspace the
    earlier tasks left in the store (so its update leaves their outputs on that subspace unchanged), is the
    official Uᵀ/√3, stays as designed while B trains; the subspace grows; retraining a task from the store gives
    the same adapter."""
    seq_file = write_sequence(tiny_sequence(tiny_bert, method={"name": "inflora"}, training={
        "steps": 4, "batch_size": 8, "learning_rate": 5e-3, "eval_batch_size": 64}))
    store = tmp_path / "s"
    assert main(["run", str(seq_file), "--store", str(store), "--json", "--quiet", "--device", "cpu"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["merge"]["method"] == "sum"
    p = "encoder.layer.1.attention.self.value"
    sizes = []
    for prev, task in (("t1", "t2"), ("t2", "t3")):
        bases = load_file(str(store / "tasks" / prev / "input_bases.safetensors"))[p + ".weight"].double()
        w = load_file(str(store / "tasks" / task / "adapter_model.safetensors"))
        a = w[f"base_model.model.{p}.lora_A.weight"].double()
        assert (a @ bases).abs().max() < 1e-5, task                       # A_t orthogonal to the earlier bases
        assert torch.allclose(a @ a.T, torch.eye(4, dtype=torch.float64) / 3, atol=1e-5)
        assert w[f"base_model.model.{p}.lora_B.weight"].abs().max() > 0    # B trained from 0
        delta = adapter_delta(store / "tasks" / task, p).double()
        assert (delta @ bases).abs().max() < 1e-5                          # outputs on the subspace unchanged
        sizes.append(bases.shape[1])
    meta = json.loads((store / "tasks" / "t3" / "meta.json").read_text())
    last = load_file(str(store / "tasks" / "t3" / "input_bases.safetensors"))[p + ".weight"]
    assert sizes[0] <= sizes[1] <= last.shape[1] == meta["train"]["input_subspace_dims"][p + ".weight"]
    assert "input_bases.safetensors" in meta["sha256"]
    # A later train-task reads the subspace from the store and continues exactly.
    before = (store / "tasks" / "t2" / "adapter_model.safetensors").read_bytes()
    assert main(["train-task", "--store", str(store), "--task", "t2", "--quiet", "--device", "cpu",
                 "--no-eval"]) == 0
    assert (store / "tasks" / "t2" / "adapter_model.safetensors").read_bytes() == before


def test_a_store_is_continued_or_reused_only_under_the_settings_it_was_trained_with(tiny_bert, write_sequence,
                                                                                    tmp_path, capsys):
    """`run` on a store trained under other method settings, and `compare` (sequential or --collect) over a
    finished store trained under other settings, exit 2 naming the key, with nothing written."""
    from conftest import tree_state

    seq = write_sequence(two_tasks(tiny_bert))
    out = tmp_path / "cmp"
    args = ["compare", str(seq), "--methods", "ps-lora", "--seeds", "0", "--out", str(out), "--device", "cpu",
            "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    before = tree_state(out)
    for extra in ([], ["--collect"]):
        assert main(args + extra + ["--set", "method.variant=hinge+ratio"]) == 2
        err = capsys.readouterr().err
        assert "trained with method.variant='magnitude-only', this run asks 'hinge+ratio'" in err, err
    store = out / "ps-lora" / "order1-seed0"
    assert main(["run", str(seq), "--store", str(store), "--device", "cpu", "--quiet",
                 "--set", "training.learning_rate=0.01"]) == 2
    assert "training.learning_rate=0.005, this run asks 0.01" in capsys.readouterr().err
    assert tree_state(out) == before
    assert main(args + ["--set", "training.checkpoint_every=3"]) == 0  # not a training setting
