"""Reliability: resume after SIGINT/SIGTERM, random SIGKILLs, the lock, integrity checks, NaN, symlinks,
remote code. Real runs of the CLI on a tiny random BERT and real WordNet data.

Killed runs are forked from a forkserver that has imported torch, transformers and pslora once, so each of the
many runs starts in milliseconds rather than seconds.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import run_cli, tiny_sequence, tree_state
from pslora_cli.store import Store
from pslora_cli.commands.store import verify_store

KILLS_IN_CI = int(os.environ.get("PSLORA_KILL_TEST_KILLS", "50"))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def store_result(store: Path) -> dict:
    """What two runs of the same sequence must agree on: every adapter and head, the matrix, the merge."""
    out = {}
    for task in sorted((store / "tasks").iterdir()):
        if task.name.startswith("."):
            continue
        for name in ("adapter_model.safetensors", "head.safetensors", "adapter_config.json"):
            out[f"{task.name}/{name}"] = sha(task / name)
    matrix = json.loads((store / "eval" / "matrix.json").read_text())
    out["matrix"] = {k: matrix[k] for k in ("task_aware", "task_agnostic", "metrics")}
    # Merge files are compared by content: safetensors writes its metadata map in a random order.
    out["merges"] = sorted((p.name, safetensors_digest(p)) for p in (store / "merges").glob("*.safetensors"))
    return out


def safetensors_digest(path: Path) -> str:
    from safetensors import safe_open

    h = hashlib.sha256()
    with safe_open(str(path), framework="pt") as f:
        h.update(json.dumps(f.metadata(), sort_keys=True).encode())
        for key in sorted(f.keys()):
            h.update(key.encode() + f.get_tensor(key).numpy().tobytes())
    return h.hexdigest()


def kill_sequence(tiny_bert: Path, steps: int = 10, every: int = 2) -> dict:
    seq = tiny_sequence(tiny_bert)
    seq["training"] = {**seq["training"], "steps": steps, "checkpoint_every": every}
    return seq


# -- resume after SIGINT / SIGTERM -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(tiny_bert, tmp_path_factory):
    """An uninterrupted run of the 3-task kill sequence."""
    root = tmp_path_factory.mktemp("reference")
    seq_file = root / "seq.yaml"
    seq_file.write_text(yaml.safe_dump(kill_sequence(tiny_bert)))
    from pslora_cli.cli import main

    assert main(["run", str(seq_file), "--store", str(root / "store"), "--device", "cpu", "--quiet"]) == 0
    return seq_file, root / "store"


def signal_at_batch(monkeypatch, signum: int, call: int) -> None:
    """Send the process `signum` when the training loop asks for its `call`-th batch (a real signal)."""
    from pslora_cli.training import checkpoint

    original = checkpoint.BatchOrder.next
    calls = {"n": 0}

    def next_and_signal(self):
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), signum)
        return original(self)

    monkeypatch.setattr(checkpoint.BatchOrder, "next", next_and_signal)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_train_task_resumes_to_the_same_adapter(signum, reference, tmp_path, capsys, monkeypatch):
    seq_file, ref_store = reference
    store = tmp_path / "store"
    # checkpoint_every=0: the only checkpoint is the one the signal handler asks for.
    args = ["--store", store, "--device", "cpu", "--set", "training.checkpoint_every=0"]
    signal_at_batch(monkeypatch, signum, call=4)
    code, _, err = run_cli(capsys, "train-task", "--task", "t1", "--sequence", seq_file, *args)
    assert code == 130, err
    assert "interrupted after step 4/10" in err and "resumes" in err
    assert not (store / "tasks" / "t1").exists() and (store / "checkpoints" / "t1.safetensors").is_file()
    assert verify_store(Store(store))["ok"]
    code, doc, _ = run_cli(capsys, "store", "ls", "--store", store, "--json")
    assert doc["tasks"][0]["checkpoint_step"] == 4 and not doc["tasks"][0]["trained"]
    monkeypatch.undo()

    code, _, err = run_cli(capsys, "train-task", "--task", "t1", *args)
    assert code == 0, err
    assert "resuming from the checkpoint at step 4/10" in err
    assert not (store / "checkpoints" / "t1.safetensors").exists()
    for name in ("adapter_model.safetensors", "head.safetensors"):
        assert sha(store / "tasks" / "t1" / name) == sha(ref_store / "tasks" / "t1" / name)


def test_restart_and_foreign_checkpoints_are_not_resumed(reference, tmp_path, capsys, monkeypatch):
    seq_file, ref_store = reference
    store = tmp_path / "store"
    args = ["--store", store, "--device", "cpu", "--set", "training.checkpoint_every=0"]
    signal_at_batch(monkeypatch, signal.SIGINT, call=3)
    code, _, _ = run_cli(capsys, "train-task", "--task", "t1", "--sequence", seq_file, *args)
    assert code == 130
    monkeypatch.undo()
    # Another learning rate: the checkpoint is for other settings and must not be resumed.
    code, _, err = run_cli(capsys, "train-task", "--task", "t1", *args, "--set", "training.learning_rate=0.002")
    assert code == 0 and "ignoring t1.safetensors" in err and "resuming" not in err

    signal_at_batch(monkeypatch, signal.SIGINT, call=3)
    code, _, _ = run_cli(capsys, "train-task", "--task", "t1", *args)
    assert code == 130
    monkeypatch.undo()
    code, _, err = run_cli(capsys, "train-task", "--task", "t1", *args, "--restart")
    assert code == 0 and "resuming" not in err and not (store / "checkpoints" / "t1.safetensors").exists()
    assert sha(store / "tasks" / "t1" / "adapter_model.safetensors") == \
        sha(ref_store / "tasks" / "t1" / "adapter_model.safetensors")


def test_damaged_checkpoint_is_reported_and_not_used(reference, tmp_path, capsys, monkeypatch):
    seq_file, ref_store = reference
    store = tmp_path / "store"
    args = ["--store", store, "--device", "cpu", "--set", "training.checkpoint_every=0"]
    signal_at_batch(monkeypatch, signal.SIGINT, call=3)
    assert run_cli(capsys, "train-task", "--task", "t1", "--sequence", seq_file, *args)[0] == 130
    monkeypatch.undo()
    ckpt = store / "checkpoints" / "t1.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # truncated
    report = verify_store(Store(store))
    assert not report["ok"] and any("t1.safetensors: not a readable pslora checkpoint" in p for p in report["problems"])
    code, _, err = run_cli(capsys, "train-task", "--task", "t1", *args)
    assert code == 0 and "not a readable checkpoint; training from the start" in err
    assert sha(store / "tasks" / "t1" / "adapter_model.safetensors") == \
        sha(ref_store / "tasks" / "t1" / "adapter_model.safetensors")


# -- random SIGKILLs ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def forkserver():
    # The forkserver imports its preload modules with the environment's sys.path (it ignores the parent's), so
    # tests/ goes on PYTHONPATH before it starts; a module it cannot import would be skipped silently.
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent)] + ([old] if old else []))
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["_kill_preload"])
    proc = ctx.Process(target=_preloaded)
    proc.start()
    proc.join()
    assert proc.exitcode == 0, "the forkserver did not import tests/_kill_preload.py"
    yield ctx
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


def _preloaded() -> None:
    import sys

    sys.exit(0 if "_kill_preload" in sys.modules else 1)


def start(ctx, *argv) -> multiprocessing.Process:
    from pslora_cli.cli import _entry

    proc = ctx.Process(target=_entry, args=([str(a) for a in argv],))
    proc.start()
    return proc


def test_random_sigkills_leave_a_valid_store_and_reruns_finish_the_same(forkserver, reference, tmp_path):
    """SIGKILL `pslora run` at random moments (training, checkpointing, saving a task, evaluating, merging),
    at least KILLS_IN_CI times; after every kill `store verify` passes, and rerunning until a run finishes
    gives exactly the uninterrupted run's adapters, heads, accuracy matrix and merge."""
    seq_file, _ = reference
    argv = ["run", seq_file, "--device", "cpu", "--quiet"]

    # Uninterrupted runs under the same conditions as the killed ones (forked, one thread: float results
    # depend on the thread count); the first gives the expected result, the second the time scale of the kills.
    for attempt in range(2):
        started = time.perf_counter()
        proc = start(forkserver, *argv, "--store", tmp_path / f"uninterrupted{attempt}")
        proc.join()
        assert proc.exitcode == 0
        duration = time.perf_counter() - started
    expected = store_result(tmp_path / "uninterrupted0")
    assert store_result(tmp_path / "uninterrupted1") == expected

    rng = random.Random(1234)
    phases: Counter = Counter()
    kills, stores, runs = 0, 0, 0
    while kills < KILLS_IN_CI:
        stores += 1
        store = tmp_path / f"store{stores}"
        while True:
            runs += 1
            assert runs < 20 * KILLS_IN_CI, "runs never finish: resuming makes no progress"
            proc = start(forkserver, *argv, "--store", store)
            proc.join(timeout=rng.uniform(0.0, duration))
            if proc.exitcode is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.join()
                kills += 1
                phases[kill_phase(store)] += 1
                if (store / "manifest.json").exists():
                    report = verify_store(Store(store), check_shapes=False)
                    assert report["ok"], (kills, report["problems"])
                continue
            assert proc.exitcode == 0, f"run {runs} failed with exit code {proc.exitcode}"
            break
        report = verify_store(Store(store))
        assert report["ok"] and not report["warnings"], report
        assert not (store / "checkpoints").exists() or not list((store / "checkpoints").iterdir())
        assert store_result(store) == expected, f"store {stores} differs from the uninterrupted run"
    print(f"{kills} SIGKILLs over {runs} runs into {stores} stores; uninterrupted run {duration:.2f} s; "
          f"store state at the kills: {dict(sorted(phases.items()))}")


def kill_phase(store: Path) -> str:
    """Where a killed run was, as far as the store shows: no store yet, tasks saved, checkpoint, merged."""
    if not (store / "manifest.json").exists():
        return "before the store existed"
    tasks = len([p for p in (store / "tasks").glob("*/meta.json")]) if (store / "tasks").exists() else 0
    ckpt = "+checkpoint" if (store / "checkpoints").exists() and any((store / "checkpoints").iterdir()) else ""
    merged = "+merged" if (store / "merges").exists() and any((store / "merges").glob("*.json")) else ""
    return f"{tasks} task(s){ckpt}{merged}"


def test_two_writers_are_serialised_by_the_lock(forkserver, reference, tmp_path, capsys):
    seq_file, _ = reference
    store = tmp_path / "store"
    proc = start(forkserver, "run", seq_file, "--store", store, "--device", "cpu", "--quiet",
                 "--set", "training.steps=400")
    try:
        deadline = time.time() + 60
        while not (store / "manifest.json").exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        for argv in (["merge", "--store", store], ["eval", "--store", store],
                     ["train-task", "--task", "t1", "--store", store]):
            code, _, err = run_cli(capsys, *argv)
            assert code == 2 and f"store is in use by pslora pid {proc.pid}" in err, err
            assert err.count("\n") == 1
        assert proc.is_alive()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    assert verify_store(Store(store), check_shapes=False)["ok"]


# -- integrity ---------------------------------------------------------------------------------------------

@pytest.fixture
def store_copy(reference, tmp_path) -> Path:
    _, ref_store = reference
    store = tmp_path / "store"
    shutil.copytree(ref_store, store)
    return store


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate-adapter", "flip-head", "delete-config"])
def test_damaged_task_files_are_named_and_never_used(damage, store_copy, capsys):
    t2 = store_copy / "tasks" / "t2"
    target = {"truncate-adapter": t2 / "adapter_model.safetensors", "flip-head": t2 / "head.safetensors",
              "delete-config": t2 / "adapter_config.json"}[damage]
    if damage == "truncate-adapter":
        target.write_bytes(target.read_bytes()[:-7])
    elif damage == "flip-head":
        flip_byte(target, -3)
    else:
        target.unlink()
    (store_copy / "eval" / "matrix.json").unlink()  # so eval has to read the damaged task
    before = tree_state(store_copy)
    code, doc, err = run_cli(capsys, "store", "verify", "--store", store_copy, "--json")
    assert code == 2 and not doc["ok"] and str(target) in doc["problems"][0]
    for argv in (["eval"], ["merge"], ["train-task", "--task", "t3"], ["analyze-shifts"]):
        code, _, err = run_cli(capsys, *argv, "--store", store_copy, "--device", "cpu")
        assert code == 2 and str(target) in err and err.count("\n") == 1, (argv, err)
    assert tree_state(store_copy) == before


def test_verify_checks_folders_and_shapes_against_the_manifest_and_base_model(store_copy, capsys):
    from safetensors.torch import load_file, save_file

    code, _, out = run_cli(capsys, "store", "verify", "--store", store_copy)
    assert code == 0
    shutil.copytree(store_copy / "tasks" / "t1", store_copy / "tasks" / "t9")
    # An adapter whose shapes fit its own rank but not the base model (d_in 31 instead of 32), recorded in
    # meta.json so that only the shape check can catch it.
    t3 = store_copy / "tasks" / "t3"
    tensors = load_file(str(t3 / "adapter_model.safetensors"))
    tensors = {k: (v[:, :31].contiguous() if ".lora_A." in k else v) for k, v in tensors.items()}
    save_file(tensors, str(t3 / "adapter_model.safetensors"))
    meta = json.loads((t3 / "meta.json").read_text())
    meta["sha256"]["adapter_model.safetensors"] = sha(t3 / "adapter_model.safetensors")
    (t3 / "meta.json").write_text(json.dumps(meta))
    code, doc, _ = run_cli(capsys, "store", "verify", "--store", store_copy, "--json")
    problems = "\n".join(doc["problems"])
    assert code == 2 and "t9: not a task of this store's sequence" in problems
    assert "has shape (32, 31), the base model's weight is (32, 32)" in problems
    shutil.rmtree(store_copy / "tasks" / "t1")
    code, doc, _ = run_cli(capsys, "store", "verify", "--store", store_copy, "--json")
    assert "trained, but its predecessor t1 is not in the store" in "\n".join(doc["problems"])


def test_interrupted_replacement_is_restored_by_the_next_writer(store_copy, capsys):
    tasks = store_copy / "tasks"
    os.replace(tasks / "t1", tasks / ".t1.old")  # killed between the two renames of a replacement
    (tasks / ".t2.abc.tmp").mkdir()
    (store_copy / "eval" / ".matrix.json.xyz.tmp").write_text("{")
    (store_copy / "checkpoints").mkdir(exist_ok=True)
    (store_copy / "checkpoints" / ".tmpAb3xYz").write_bytes(b"\0" * 10)  # safetensors' own temporary file
    code, doc, _ = run_cli(capsys, "store", "verify", "--store", store_copy, "--json")
    assert code == 0 and "interrupted replacement of task t1" in doc["warnings"][0]
    code, _, err = run_cli(capsys, "eval", "--store", store_copy, "--device", "cpu")
    assert code == 0, err
    assert (tasks / "t1" / "meta.json").is_file() and not (tasks / ".t1.old").exists()
    assert not (tasks / ".t2.abc.tmp").exists() and not (store_copy / "eval" / ".matrix.json.xyz.tmp").exists()
    assert not (store_copy / "checkpoints" / ".tmpAb3xYz").exists()


def test_store_of_another_base_model_is_refused(reference, tmp_path, tiny_bert, capsys):
    seq_file, ref_store = reference
    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    seq = yaml.safe_load(seq_file.read_text())
    seq["backbone"]["name"] = str(model)
    seq_file2 = tmp_path / "seq.yaml"
    seq_file2.write_text(yaml.safe_dump(seq))
    store = tmp_path / "store"
    assert run_cli(capsys, "train-task", "--task", "t1", "--sequence", seq_file2, "--store", store,
                   "--device", "cpu", "--quiet", "--no-eval")[0] == 0
    # Unchanged files (same size and mtime as recorded) are not hashed again on every command.
    import pslora_cli.models as models

    def no_hashing(cfg):
        raise AssertionError("hashed the base model although its files are unchanged")

    original, models.backbone_identity = models.backbone_identity, no_hashing
    try:
        assert run_cli(capsys, "merge", "--store", store, "--device", "cpu", "--quiet")[0] == 0
    finally:
        models.backbone_identity = original
    flip_byte(model / "model.safetensors", -11)  # the base model's weights change under the store
    before = tree_state(store)
    for argv in (["eval"], ["train-task", "--task", "t2"], ["merge"]):
        code, _, err = run_cli(capsys, *argv, "--store", store, "--device", "cpu")
        assert code == 2 and "the base model changed" in err and err.count("\n") == 1, err
    code, doc, _ = run_cli(capsys, "store", "verify", "--store", store, "--json")
    assert code == 2 and "the base model changed" in doc["problems"][0]
    assert tree_state(store) == before


# -- numerical faults --------------------------------------------------------------------------------------

def test_nan_loss_stops_training_and_keeps_the_previous_state(store_copy, capsys):
    before = tree_state(store_copy)
    code, _, err = run_cli(capsys, "train-task", "--task", "t3", "--store", store_copy, "--device", "cpu",
                           "--set", "training.learning_rate=1e30", "--set", "training.checkpoint_every=1")
    assert code == 1 and "loss became" in err and "nothing was saved" in err, err
    after = tree_state(store_copy)
    # Periodic checkpoints before the fault may exist; every finished file is untouched.
    assert {k: v for k, v in after.items() if not k.startswith("checkpoints/")} == before
    assert verify_store(Store(store_copy))["ok"]


# -- paths and code the store must never follow ------------------------------------------------------------

@pytest.mark.parametrize("link,commands", [
    ("eval", [["eval"], ["train-task", "--task", "t3"]]),
    ("merges", [["merge"]]),
    ("tasks", [["eval"], ["merge"], ["train-task", "--task", "t3"]]),
    ("tasks/t2", [["eval"], ["merge"], ["train-task", "--task", "t3"]]),
])
def test_symlinks_inside_the_store_are_refused(link, commands, store_copy, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    target = store_copy / link
    shutil.move(str(target), str(outside / "moved"))
    target.symlink_to(outside / "moved", target_is_directory=True)
    before = tree_state(outside)
    for argv in commands:
        code, _, err = run_cli(capsys, *argv, "--store", store_copy, "--device", "cpu", "--quiet")
        assert code == 2 and "is a symbolic link" in err and err.count("\n") == 1, (argv, err)
    assert tree_state(outside) == before


def test_remote_code_runs_only_when_the_sequence_asks(tiny_bert, tmp_path, write_sequence, capsys):
    model = tmp_path / "custom-model"
    shutil.copytree(tiny_bert, model)
    marker = tmp_path / "remote-code-ran"
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="pslora-evil", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"})
    (model / "config.json").write_text(json.dumps(config))
    (model / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import BertConfig, BertModel\n"
        "class EvilConfig(BertConfig):\n    model_type = 'pslora-evil'\n"
        "class EvilModel(BertModel):\n    config_class = EvilConfig\n")
    seq = tiny_sequence(tiny_bert)
    seq["backbone"]["name"] = str(model)
    store = tmp_path / "store"
    code, _, err = run_cli(capsys, "train-task", "--task", "t1", "--sequence", write_sequence(seq),
                           "--store", store, "--device", "cpu", "--quiet", "--no-eval")
    assert code == 2 and "backbone.trust_remote_code: true" in err and err.count("\n") == 1, err
    assert not marker.exists()
    seq["backbone"]["trust_remote_code"] = True
    code, _, err = run_cli(capsys, "train-task", "--task", "t1", "--sequence", write_sequence(seq, "trusted.yaml"),
                           "--store", tmp_path / "store2", "--device", "cpu", "--quiet", "--no-eval")
    assert marker.exists(), err  # the sequence asked for it explicitly


# -- malformed adapter files (property-based) --------------------------------------------------------------

def _store_with_t3(reference, name: str, data: bytes) -> Path:
    """A copy of the reference store whose t3 file `name` holds `data`, recorded in meta.json so that the
    sha256 check passes and the parser itself has to cope."""
    import tempfile

    _, ref_store = reference
    store = Path(tempfile.mkdtemp(prefix="pslora-fuzz-")) / "store"
    shutil.copytree(ref_store, store)
    t3 = store / "tasks" / "t3"
    (t3 / name).write_bytes(data)
    meta = json.loads((t3 / "meta.json").read_text())
    meta["sha256"][name] = hashlib.sha256(data).hexdigest()
    (t3 / "meta.json").write_text(json.dumps(meta))
    return store


def _check_commands(store: Path, capsys) -> None:
    """merge, analyze-shifts and store verify: exit 0 or 2 with one line; a refusal writes nothing."""
    before = tree_state(store)
    for argv in (["merge"], ["analyze-shifts", "--no-figures"], ["store", "verify", "--no-shapes"]):
        code, _, err = run_cli(capsys, *argv, "--store", store, "--quiet")
        assert code in (0, 2), (argv, err)
        if code == 2 and argv[0] != "store":
            assert err.count("\n") == 1 and err.startswith("pslora: error: "), (argv, err)
            assert tree_state(store) == before, argv
    shutil.rmtree(store.parent)


def _header_mutations():
    from hypothesis import strategies as st

    dtypes = st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "XYZ", ""])
    shapes = st.lists(st.integers(-3, 2**40), max_size=5)
    offsets = st.lists(st.integers(-5, 2**40), min_size=0, max_size=3)
    entry = st.fixed_dictionaries({}, optional={"dtype": dtypes, "shape": shapes, "data_offsets": offsets})
    return st.tuples(st.integers(0, 10**6), entry, st.sampled_from(["replace", "drop", "rename", "metadata"]))


@pytest.mark.parametrize("kind", ["random-bytes", "truncated", "header-bytes", "header-fields"])
def test_malformed_adapter_safetensors_exit_2(kind, reference, capsys):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    _, ref_store = reference
    real = (ref_store / "tasks" / "t3" / "adapter_model.safetensors").read_bytes()
    header_len = int.from_bytes(real[:8], "little")
    header = json.loads(real[8:8 + header_len])

    def mutate(draw_value) -> bytes:
        if kind == "random-bytes":
            return draw_value
        if kind == "truncated":
            return real[:draw_value % len(real)]
        if kind == "header-bytes":
            pos, byte = draw_value
            data = bytearray(real)
            data[pos % (8 + header_len)] = byte
            return bytes(data)
        pick, entry, how = draw_value
        doc = json.loads(json.dumps(header))
        key = sorted(k for k in doc if k != "__metadata__")[pick % (len(doc) - 1)]
        if how == "replace":
            doc[key] = {**doc[key], **entry}
        elif how == "drop":
            del doc[key]
        elif how == "rename":
            doc[key.replace("lora_B", "lora_X").replace("lora_A", "lora_Y")] = doc.pop(key)
        else:
            doc["__metadata__"] = {"format": entry.get("dtype", "pt")} if entry else {"x": ["not", "a string"]}
        text = json.dumps(doc).encode()
        return len(text).to_bytes(8, "little") + text + real[8 + header_len:]

    strategy = {"random-bytes": st.binary(max_size=300), "truncated": st.integers(0, 10**9),
                "header-bytes": st.tuples(st.integers(0, 10**9), st.integers(0, 255)),
                "header-fields": _header_mutations()}[kind]

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(strategy)
    def check(value):
        _check_commands(_store_with_t3(reference, "adapter_model.safetensors", mutate(value)), capsys)

    check()


def test_malformed_adapter_configs_exit_2(reference, capsys):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    _, ref_store = reference
    config = json.loads((ref_store / "tasks" / "t3" / "adapter_config.json").read_text())
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2, 10**12), st.floats(allow_nan=True),
                        st.text(max_size=8))
    values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                          max_leaves=8)
    keys = st.sampled_from(["r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern", "target_modules",
                            "peft_type", "fan_in_fan_out"])

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.one_of(st.dictionaries(keys, values, max_size=3).map(lambda d: json.dumps({**config, **d},
                                                                                         allow_nan=True)),
                     values.map(json.dumps), st.text(max_size=40)))
    def check(text):
        _check_commands(_store_with_t3(reference, "adapter_config.json", text.encode("utf-8", "surrogatepass")),
                        capsys)

    check()
