"""The on-disk adapter store. Only this package knows a path inside a store.

Layout (every file is written to a temporary name and renamed into place; a task folder is built under a
temporary name and renamed whole, so a killed process leaves each file and each task complete or absent):

    STORE/
      manifest.json            schema version, resolved sequence + hash, base model identity
      sequence.yaml            copy of the sequence file the store was started with (without --set overrides)
      .lock                    advisory lock held by the command writing the store
      tasks/<id>/              one finished task:
        adapter_model.safetensors, adapter_config.json   (PEFT format; stock PeftModel loads the folder)
        head.safetensors       the task's classifier head (weight, bias)
        joint_heads.safetensors  multitask only: every task's rows of stage <id>'s joint head
        meta.json              resolved config, seed, versions, data fingerprint, train metrics, sha256 of files
      merges/<name>.safetensors + <name>.json
      eval/matrix.json, eval/matrix.csv, eval/*.png
      analysis/                the files of the last analyze-shifts
      checkpoints/<id>.safetensors   training state of an interrupted task (removed when the task is saved)

Replacing a finished task renames tasks/<id> to tasks/.<id>.old before the new folder takes its place; a
process killed between the two renames leaves .<id>.old, which the next writer renames back (`recover`).
The store never follows a symbolic link inside itself, so nothing it writes can land outside the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import InputError
from ..hashing import canonical_hash
from .files import SAFETENSORS_TMP, fsync_dir, read_json, sha256_file, write_json_atomic, write_text_atomic

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ADAPTER = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
HEAD = "head.safetensors"
TASK_FILES = (ADAPTER, ADAPTER_CONFIG, HEAD)


class TaskFiles:
    """The files of one task's folder: a finished task, or one being written under a temporary name."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.adapter_dir = folder  # the PEFT adapter folder (save_pretrained writes it, PeftModel reads it)
        self.head = folder / HEAD
        self.joint_heads = folder / "joint_heads.safetensors"  # joint training: every task's rows of the head
        self.meta_path = folder / "meta.json"

    def seal(self, meta: dict) -> dict:
        """Record every file's sha256 in meta.json (written last); returns the meta as written."""
        meta = dict(meta, sha256={p.name: sha256_file(p) for p in sorted(self.folder.iterdir())})
        self.meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return meta


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- paths --------------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def sequence_copy(self) -> Path:
        return self.root / "sequence.yaml"

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

    @property
    def tasks_dir(self) -> Path:
        return self.inside("tasks")

    def task_dir(self, task_id: str) -> Path:
        # Task ids are validated by the sequence schema; this guards against anything that slips past.
        return self.inside("tasks", task_id)

    def task_files(self, task_id: str) -> TaskFiles:
        return TaskFiles(self.task_dir(task_id))

    @property
    def eval_dir(self) -> Path:
        return self.inside("eval")

    @property
    def matrix_path(self) -> Path:
        return self.eval_dir / "matrix.json"

    def split_eval_dir(self, split: str = "test") -> Path:
        """Where a split's matrix and figures go: eval/ for test, eval/validation/ for validation."""
        return self.eval_dir if split == "test" else self.eval_dir / split

    def split_matrix_path(self, split: str = "test") -> Path:
        return self.split_eval_dir(split) / "matrix.json"

    @property
    def merges_dir(self) -> Path:
        return self.inside("merges")

    def merge_paths(self, name: str) -> tuple[Path, Path]:
        """(merged tensors, their JSON record) of a merge named `name`."""
        return self.merges_dir / f"{name}.safetensors", self.merges_dir / f"{name}.json"

    def merge_files(self) -> list[Path]:
        return sorted(self.merges_dir.glob("*.safetensors")) if self.merges_dir.is_dir() else []

    @property
    def analysis_dir(self) -> Path:
        return self.inside("analysis")

    @property
    def checkpoints_dir(self) -> Path:
        return self.inside("checkpoints")

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
        self.root.mkdir(parents=True, exist_ok=True)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "sequence": sequence,
            "sequence_hash": canonical_hash(sequence),
            "identity_hash": identity,
            "base_model": base_model,
        }
        write_text_atomic(self.sequence_copy, sequence_yaml)
        write_json_atomic(self.manifest_path, manifest)  # written last: its presence makes the store
        return manifest

    # -- tasks ----------------------------------------------------------------------------------------
    def has_task(self, task_id: str) -> bool:
        return self.task_files(task_id).meta_path.is_file()

    def task_meta(self, task_id: str) -> dict:
        return read_json(self.task_files(task_id).meta_path)

    def adapter_sha256(self, task_id: str) -> str:
        return self.task_meta(task_id)["sha256"][ADAPTER]

    def head_sha256(self, task_id: str) -> str | None:
        """The head's sha256; None for a language model's task (it has no head)."""
        return self.task_meta(task_id)["sha256"].get(HEAD)

    def trained_prefix(self, task_ids: list[str]) -> list[str]:
        """The longest prefix of `task_ids` whose tasks are all in the store (stages exist only for prefixes)."""
        done = []
        for task_id in task_ids:
            if not self.has_task(task_id):
                break
            done.append(task_id)
        return done

    @contextlib.contextmanager
    def new_task(self, task_id: str) -> Iterator[TaskFiles]:
        """A temporary task folder that becomes tasks/<id> (replacing any previous one) when the block succeeds."""
        final = self.task_dir(task_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{task_id}.", suffix=".tmp", dir=final.parent))
        try:
            yield TaskFiles(tmp)
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
            fsync_dir(final.parent)
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
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), dict):
            return [f"{folder / 'meta.json'}: has no sha256 record"]
        problems = []
        if meta.get("task") != task_id:
            problems.append(f"{folder / 'meta.json'}: belongs to task {meta.get('task')!r}, not {task_id!r}")
        required = TASK_FILES[:2] if meta.get("generative") else TASK_FILES  # a language model's task has no head
        problems += [f"{folder / name}: not recorded in meta.json" for name in required if name not in meta["sha256"]]
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
                if not p.is_symlink() and p.name.startswith("."):
                    done += _recover_entry(folder, p)
        return done + self._drop_finished_checkpoints()

    def _drop_finished_checkpoints(self) -> list[str]:
        """A checkpoint older than its task's saved meta.json belongs to the training that saved it (a process
        killed between saving the task and removing the checkpoint leaves it): remove it. A newer one is an
        interrupted replacement of that task, and is kept for resuming."""
        done = []
        folder = self.root / "checkpoints"
        if folder.is_symlink() or not folder.is_dir():
            return done
        for ckpt in sorted(folder.glob("*.safetensors")):
            try:
                meta = self.task_files(ckpt.stem).meta_path
            except InputError:  # not a task id: store verify reports it
                continue
            if meta.is_file() and not ckpt.is_symlink() and meta.stat().st_mtime_ns > ckpt.stat().st_mtime_ns:
                ckpt.unlink(missing_ok=True)
                done.append(f"removed {ckpt.name} (its task was saved after it)")
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


def _recover_entry(folder: Path, p: Path) -> list[str]:
    """Put back or remove one dot-entry a killed writer left in `folder`."""
    if folder.name == "tasks" and p.name.endswith(".old") and p.is_dir():
        final = folder / p.name[1:-len(".old")]
        if not final.exists():
            os.replace(p, final)
            return [f"restored {final} (a replacement was interrupted)"]
        shutil.rmtree(p, ignore_errors=True)
    elif p.name.endswith(".tmp") or (SAFETENSORS_TMP.fullmatch(p.name) and p.is_file()):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        return [f"removed {p.name} (left by an interrupted write)"]
    return []

