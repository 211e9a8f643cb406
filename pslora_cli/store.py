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
      checkpoints/<id>.safetensors   training state of an interrupted task (removed when the task is saved)

Replacing a finished task renames tasks/<id> to tasks/.<id>.old before the new folder takes its place; a
process killed between the two renames leaves .<id>.old, which the next writer renames back (`recover`).
The store never follows a symbolic link inside itself, so nothing it writes can land outside the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import InputError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TASK_FILES = ("adapter_model.safetensors", "adapter_config.json", "head.safetensors")


# safetensors' save_file writes through a temporary file of its own (Rust's tempfile: ".tmp" + 6 characters)
# in the target's folder and renames it; a process killed meanwhile leaves that file behind.
_SAFETENSORS_TMP = re.compile(r"\.tmp[A-Za-z0-9]{6}")


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

    def inside(self, *parts: str) -> Path:
        """root/parts..., refused when a part is a symbolic link or the path leaves the store."""
        path = self.root
        for part in parts:
            if not part or part in (".", "..") or "/" in part or "\\" in part:
                raise InputError(f"{part!r} is not a valid name inside the store {self.root}")
            path = path / part
            if path.is_symlink():
                raise InputError(f"{path}: is a symbolic link; a store never follows links (replace it with a "
                                 f"real folder or file)")
        return path

    def task_dir(self, task_id: str) -> Path:
        # Task ids are validated by the sequence schema; this guards against anything that slips past.
        return self.inside("tasks", task_id)

    @property
    def eval_dir(self) -> Path:
        return self.inside("eval")

    @property
    def merges_dir(self) -> Path:
        return self.inside("merges")

    @property
    def analysis_dir(self) -> Path:
        return self.inside("analysis")

    def checkpoint_path(self, task_id: str) -> Path:
        return self.inside("checkpoints", f"{task_id}.safetensors")

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
        tasks = self.inside("tasks")
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

    def task_problems(self, task_id: str) -> list[str]:
        """What is wrong with a finished task's folder: each file against the sha256 in its meta.json."""
        folder = self.task_dir(task_id)
        try:
            meta = self.task_meta(task_id)
        except InputError as exc:
            return [str(exc)]
        problems = []
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), dict):
            return [f"{folder / 'meta.json'}: has no sha256 record"]
        if meta.get("task") != task_id:
            problems.append(f"{folder / 'meta.json'}: belongs to task {meta.get('task')!r}, not {task_id!r}")
        for name in TASK_FILES:
            if name not in meta["sha256"]:
                problems.append(f"{folder / name}: not recorded in meta.json")
        for name, digest in meta["sha256"].items():
            path = folder / name
            if path.is_symlink() or not path.is_file():
                problems.append(f"{path}: missing (recorded in meta.json)")
            elif sha256_file(path) != digest:
                problems.append(f"{path}: sha256 does not match meta.json (file truncated, corrupted or edited)")
        return problems

    def verify_task(self, task_id: str) -> None:
        """Raise an InputError naming the first damaged file of a task (checked against its sha256)."""
        problems = self.task_problems(task_id)
        if problems:
            raise InputError(problems[0])

    def recover(self) -> list[str]:
        """Undo what a killed writer left: a task folder renamed aside but not replaced goes back; temporary
        files and folders are removed. Call with the lock held. Returns what was done."""
        done = []
        for folder in (self.root, self.root / "tasks", self.root / "eval", self.root / "merges",
                       self.root / "checkpoints", self.root / "analysis"):
            if folder.is_symlink() or not folder.is_dir():
                continue
            for p in folder.iterdir():
                if p.is_symlink() or not p.name.startswith("."):
                    continue
                if folder.name == "tasks" and p.name.endswith(".old") and p.is_dir():
                    final = folder / p.name[1:-len(".old")]
                    if not final.exists():
                        os.replace(p, final)
                        done.append(f"restored {final} (a replacement was interrupted)")
                    else:
                        shutil.rmtree(p, ignore_errors=True)
                elif p.name.endswith(".tmp") or (_SAFETENSORS_TMP.fullmatch(p.name) and p.is_file()):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                    done.append(f"removed {p.name} (left by an interrupted write)")
        return done

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
            self.recover()
            yield
        finally:
            f.close()
