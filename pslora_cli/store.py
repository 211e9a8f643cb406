"""The on-disk adapter store.

Layout (every file is written to a temporary name and renamed into place; a task folder is built under a
temporary name and renamed whole, so a killed process leaves each file and each task complete or absent):

    STORE/
      manifest.json            schema version, resolved sequence + hash, base model identity
      sequence.yaml            copy of the sequence file the store was started with
      .lock                    advisory lock held by the command writing the store
      tasks/<id>/              one finished task:
        adapter_model.safetensors, adapter_config.json   (PEFT format; stock PeftModel loads it)
        head.safetensors       the task's classifier head (weight, bias)
        meta.json              resolved config, seed, versions, data fingerprint, train metrics, sha256 of files
      merges/<name>.safetensors + <name>.json
      eval/matrix.json, eval/matrix.csv, eval/matrix.png
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import InputError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TASK_FILES = ("adapter_model.safetensors", "adapter_config.json", "head.safetensors")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success fsync it and rename it over `final`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, final)
        _fsync_dir(final.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(final: Path, text: str) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(final: Path, obj: Any) -> None:
    write_text_atomic(final, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock_file = None

    # -- paths --------------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def task_dir(self, task_id: str) -> Path:
        path = (self.root / "tasks" / task_id)
        # Task ids are validated by the sequence schema; this guards against anything that slips past.
        if path.resolve().parent != (self.root / "tasks").resolve():
            raise InputError(f"task id {task_id!r} would escape the store {self.root}")
        return path

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def merges_dir(self) -> Path:
        return self.root / "merges"

    # -- existence and manifest -----------------------------------------------------------------------
    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def manifest(self) -> dict:
        if not self.exists():
            raise InputError(f"{self.root}: not a pslora store (no {MANIFEST}); start one with "
                             f"`pslora run SEQUENCE.yaml` or `pslora train-task --sequence SEQUENCE.yaml`")
        manifest = read_json(self.manifest_path)
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise InputError(f"{self.manifest_path}: schema_version {manifest.get('schema_version')!r} "
                             f"is not supported (this pslora reads {SCHEMA_VERSION})")
        return manifest

    def create(self, sequence: dict, sequence_yaml: str, identity: str, base_model: dict) -> dict:
        from .sequence import canonical_hash

        self.root.mkdir(parents=True, exist_ok=True)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "sequence": sequence,
            "sequence_hash": canonical_hash(sequence),
            "identity_hash": identity,
            "base_model": base_model,
        }
        write_text_atomic(self.root / "sequence.yaml", sequence_yaml)
        write_json_atomic(self.manifest_path, manifest)  # written last: its presence makes the store
        return manifest

    # -- tasks ----------------------------------------------------------------------------------------
    def trained_tasks(self) -> list[str]:
        tasks = self.root / "tasks"
        if not tasks.is_dir():
            return []
        return sorted(p.name for p in tasks.iterdir() if not p.name.startswith(".") and (p / "meta.json").is_file())

    def has_task(self, task_id: str) -> bool:
        return (self.task_dir(task_id) / "meta.json").is_file()

    def task_meta(self, task_id: str) -> dict:
        return read_json(self.task_dir(task_id) / "meta.json")

    @contextlib.contextmanager
    def new_task_dir(self, task_id: str) -> Iterator[Path]:
        """A temporary folder that becomes tasks/<id> (replacing any previous one) when the block succeeds."""
        final = self.task_dir(task_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{task_id}.", suffix=".tmp", dir=final.parent))
        try:
            yield tmp
            for f in tmp.iterdir():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
            if final.exists():
                old = final.with_name(f".{task_id}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            _fsync_dir(final.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def verify_task(self, task_id: str) -> None:
        """Check each file of a task against the sha256 recorded in its meta.json."""
        meta = self.task_meta(task_id)
        for name, digest in meta.get("sha256", {}).items():
            path = self.task_dir(task_id) / name
            if not path.is_file():
                raise InputError(f"{path}: missing (recorded in meta.json)")
            if sha256_file(path) != digest:
                raise InputError(f"{path}: sha256 does not match meta.json (file corrupted or edited)")

    # -- locking --------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive advisory lock for commands that write the store."""
        self.root.mkdir(parents=True, exist_ok=True)
        f = open(self.root / ".lock", "a+")
        try:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                raise InputError(f"{self.root}: store is in use by {holder}; wait for it to finish") from None
            f.seek(0)
            f.truncate()
            f.write(f"pslora pid {os.getpid()}")
            f.flush()
            yield
        finally:
            f.close()
