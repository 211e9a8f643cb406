"""The store's layout on its own (no model, no data): a sealed task folder and the checks against its sha256
record, the atomic replacement of a task folder and the recovery of an interrupted one, the trained prefix, the
merge paths, and names that would leave the store."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from pslora_cli.errors import InputError
from pslora_cli.store import Store, TaskFiles
from pslora_cli.store.layout import ADAPTER, ADAPTER_CONFIG, HEAD


def write_task_files(out: TaskFiles, tag: str) -> None:
    """Stand-ins for a task's three files (the store checks bytes against sha256, not their format)."""
    out.folder.mkdir(parents=True, exist_ok=True)
    (out.adapter_dir / ADAPTER).write_bytes(f"adapter {tag}".encode())
    (out.adapter_dir / ADAPTER_CONFIG).write_text(json.dumps({"r": 2, "tag": tag}))
    out.head.write_bytes(f"head {tag}".encode())


def add_task(store: Store, task_id: str, tag: str = "v1") -> dict:
    with store.new_task(task_id) as out:
        write_task_files(out, tag)
        return out.seal({"task": task_id, "tag": tag})


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")


def test_seal_records_every_file_and_verify_accepts_the_folder(store):
    meta = add_task(store, "t1")
    folder = store.task_dir("t1")
    assert set(meta["sha256"]) == {ADAPTER, ADAPTER_CONFIG, HEAD}
    assert all(meta["sha256"][name] == sha(folder / name) for name in meta["sha256"])
    assert json.loads((folder / "meta.json").read_text()) == meta and meta["tag"] == "v1"
    assert store.has_task("t1") and store.task_meta("t1") == meta
    assert store.adapter_sha256("t1") == sha(folder / ADAPTER) and store.head_sha256("t1") == sha(folder / HEAD)
    assert store.task_problems("t1") == []
    store.verify_task("t1")


@pytest.mark.parametrize("damage", ["flip-head", "truncate-adapter", "delete-config"])
def test_a_damaged_file_is_named(damage, store):
    add_task(store, "t1")
    folder = store.task_dir("t1")
    if damage == "flip-head":
        target = folder / HEAD
        data = bytearray(target.read_bytes())
        data[0] ^= 0x01
        target.write_bytes(bytes(data))
        expected = f"{target}: sha256 does not match meta.json"
    elif damage == "truncate-adapter":
        target = folder / ADAPTER
        target.write_bytes(target.read_bytes()[:-1])
        expected = f"{target}: sha256 does not match meta.json"
    else:
        target = folder / ADAPTER_CONFIG
        target.unlink()
        expected = f"{target}: missing (recorded in meta.json)"
    problems = store.task_problems("t1")
    assert len(problems) == 1 and problems[0].startswith(expected), problems
    with pytest.raises(InputError) as exc:
        store.verify_task("t1")
    assert str(exc.value) == problems[0]


def test_meta_json_itself_is_checked(store):
    add_task(store, "t1")
    meta_path = store.task_files("t1").meta_path
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "task": "t2"}))
    assert any("belongs to task 't2', not 't1'" in p for p in store.task_problems("t1"))
    meta_path.write_text(json.dumps({**meta, "sha256": {k: v for k, v in meta["sha256"].items() if k != HEAD}}))
    assert store.task_problems("t1") == [f"{store.task_dir('t1') / HEAD}: not recorded in meta.json"]
    meta_path.write_text("{")
    assert "not valid JSON" in store.task_problems("t1")[0]
    meta_path.write_text(json.dumps({"task": "t1"}))
    assert store.task_problems("t1") == [f"{meta_path}: has no sha256 record"]


def test_new_task_replaces_a_folder_only_when_the_block_succeeds(store):
    add_task(store, "t1", "v1")
    tasks = store.tasks_dir
    with pytest.raises(RuntimeError, match="killed"):
        with store.new_task("t1") as out:
            write_task_files(out, "v2")
            assert out.folder.parent == tasks and out.folder.name.startswith(".t1.")  # a temporary sibling
            assert store.task_meta("t1")["tag"] == "v1"  # the finished task is untouched meanwhile
            raise RuntimeError("killed")
    assert store.task_meta("t1")["tag"] == "v1" and store.task_problems("t1") == []
    assert sorted(p.name for p in tasks.iterdir()) == ["t1"]  # the temporary folder is gone
    add_task(store, "t1", "v2")
    assert store.task_meta("t1")["tag"] == "v2" and store.task_problems("t1") == []
    assert (store.task_dir("t1") / ADAPTER).read_bytes() == b"adapter v2"
    assert sorted(p.name for p in tasks.iterdir()) == ["t1"]  # no .t1.old left behind


def test_recover_restores_an_interrupted_replacement_and_removes_temporaries(store):
    add_task(store, "t1", "v1")
    add_task(store, "t2", "v1")
    tasks = store.tasks_dir
    os.replace(tasks / "t1", tasks / ".t1.old")  # killed between the two renames of a replacement
    (tasks / ".t2.abc.tmp").mkdir()               # killed while writing a task folder
    os.replace(tasks / "t2", tasks / ".t2.old")   # ... and a replacement whose new folder did arrive:
    add_task(store, "t2", "v2")                  # t2 exists again, .t2.old is stale
    (store.root / "eval").mkdir()
    (store.root / "eval" / ".matrix.json.xyz.tmp").write_text("{")
    assert not store.has_task("t1")
    done = store.recover()
    assert any("restored" in d and d.endswith("(a replacement was interrupted)") for d in done), done
    assert store.has_task("t1") and store.task_meta("t1")["tag"] == "v1" and store.task_problems("t1") == []
    assert store.task_meta("t2")["tag"] == "v2"  # the finished replacement wins over the stale .old copy
    assert sorted(p.name for p in tasks.iterdir()) == ["t1", "t2"]
    assert list((store.root / "eval").iterdir()) == []
    assert store.recover() == []  # nothing left to do


def test_recover_drops_a_checkpoint_its_saved_task_outlived_and_keeps_a_newer_one(store):
    ckpt = store.checkpoint_path("t1")
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"state of the training that saved t1")
    os.utime(ckpt, ns=(1_000_000_000, 1_000_000_000))  # written before the task was saved
    add_task(store, "t1")  # killed after saving t1, before removing its checkpoint
    done = store.recover()
    assert not ckpt.exists() and any("t1.safetensors" in d for d in done), done
    ckpt.write_bytes(b"state of an interrupted replacement of t1")  # newer than t1's meta.json: resumable
    later = store.task_files("t1").meta_path.stat().st_mtime_ns + 1_000_000_000
    os.utime(ckpt, ns=(later, later))
    assert store.recover() == [] and ckpt.exists()


def test_trained_prefix(store):
    ids = ["t1", "t2", "t3"]
    assert store.trained_prefix(ids) == []
    add_task(store, "t1")
    add_task(store, "t3")
    assert store.trained_prefix(ids) == ["t1"]  # t3 without t2 is no stage
    add_task(store, "t2")
    assert store.trained_prefix(ids) == ids
    assert store.trained_prefix(["t2", "t1"]) == ["t2", "t1"]
    (store.task_files("t2").meta_path).unlink()  # a folder without meta.json is not a finished task
    assert store.trained_prefix(ids) == ["t1"]


def test_merge_paths(store, tmp_path):
    target, record = store.merge_paths("magnitude-0123abcd")
    assert target == store.root / "merges" / "magnitude-0123abcd.safetensors"
    assert record == store.root / "merges" / "magnitude-0123abcd.json"
    assert store.merge_files() == []
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    assert store.merge_files() == [target]
    outside = tmp_path / "outside"
    outside.mkdir()
    target.unlink()
    target.parent.rmdir()
    target.parent.symlink_to(outside, target_is_directory=True)
    with pytest.raises(InputError, match="is a symbolic link"):
        store.merge_paths("magnitude-0123abcd")


def test_task_ids_cannot_escape_the_store(tmp_path):
    store = Store(tmp_path / "store")
    for bad in ("../x", "..", "a/b", "/etc", ""):
        with pytest.raises(InputError):
            store.task_dir(bad)


def test_atomic_folder(tmp_path):
    import pytest

    from pslora_cli.errors import InputError
    from pslora_cli.store import atomic_folder

    out = tmp_path / "out"
    with atomic_folder(out) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not out.exists()  # nothing under the final name until it is complete
    assert (out / "a.txt").read_text() == "1" and oct(out.stat().st_mode & 0o777) != "0o700"
    with pytest.raises(InputError, match="not empty"):
        with atomic_folder(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_folder(out, force=True) as tmp:
            (tmp / "b.txt").write_text("2")
            raise RuntimeError("killed half-way")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]  # the old folder is untouched
    with atomic_folder(out, force=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or set-aside folder left
