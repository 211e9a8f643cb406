"""Atomic file writes (temporary file, fsync, rename) and safe reads: a killed process never leaves a half-written
file under its final name."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError

# safetensors' save_file writes through a temporary file of its own (Rust's tempfile: ".tmp" + 6 characters)
# in the target's folder and renames it; a process killed meanwhile leaves that file behind.
SAFETENSORS_TMP = re.compile(r"\.tmp[A-Za-z0-9]{6}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
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
    tmp_path.chmod(0o666 & ~_umask())  # mkstemp makes it private; the file is an ordinary one
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, final)
        fsync_dir(final.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_folder(final: Path, force: bool) -> None:
    """Refuse (InputError) an output folder that is a file, or a folder with files in it unless `force`."""
    if final.exists() and not final.is_dir():
        raise InputError(f"--out {final}: exists and is not a folder")
    if final.is_dir() and any(final.iterdir()) and not force:
        raise InputError(f"--out {final}: folder is not empty (use --force to replace it)")


@contextlib.contextmanager
def atomic_folder(final: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; on success it takes `final`'s name in one rename (rename(2) replaces
    an empty folder and refuses a full one, so a folder filled meanwhile is never lost). With `force` a full `final`
    is first moved aside and deleted only once the new folder is in place (put back if the rename fails)."""
    check_output_folder(final, force)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; an export is an ordinary folder
    aside = None
    try:
        yield tmp
        if force and final.is_dir() and any(final.iterdir()):
            aside = final.with_name(f".{final.name}.{os.getpid()}.old")
            os.replace(final, aside)
        try:
            os.replace(tmp, final)
        except OSError:
            if aside is not None:
                os.replace(aside, final)
                aside = None
            raise
        fsync_dir(final.parent)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


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


