"""`pslora store verify` and `pslora store ls`: what a store holds and whether every file is what it recorded."""

from __future__ import annotations

import json

from ..errors import InputError
from ..store.files import sha256_file
from ..store.layout import ADAPTER, Store


def verify_store(store: Store, check_shapes: bool = True) -> dict:
    """Everything `pslora store verify` checks. Returns {"ok", "problems": [...], "warnings": [...], "tasks": [...]}.

    Problems: a file whose sha256 differs from its record, a missing or unreadable file, a task folder the
    sequence does not name, a trained task whose predecessor is missing, an adapter whose modules or shapes
    do not fit the base model, a base model whose weights changed. Warnings: a task trained against an
    earlier version of a predecessor, a merge file without its record (an interrupted merge).
    """
    manifest = store.manifest()
    seq = manifest.get("sequence")
    if not isinstance(seq, dict) or not isinstance(seq.get("tasks"), list):
        return {"store": str(store.root), "ok": False, "problems": [f"{store.manifest_path}: has no resolved sequence"],
                "warnings": [], "tasks": []}
    report = {"problems": [], "warnings": []}
    if not store.sequence_copy.is_file():
        report["problems"].append(f"{store.sequence_copy}: missing")
    ids = [t["id"] for t in seq["tasks"]]
    present, pending = _check_task_folders(store, ids, report)
    trained = [t for t in ids if t in present and store.has_task(t)]
    shapes = _base_shapes(store, manifest, report) if check_shapes and trained else None
    verified = [task_id for i, task_id in enumerate(ids) if task_id in trained
                and _check_task(store, ids, i, trained, pending, shapes, report)]
    _check_merges(store, report)
    _check_matrix(store, ids, report)
    _check_checkpoints(store, ids, report)
    return {"store": str(store.root), "ok": not report["problems"], **report, "tasks": verified}


def _check_task_folders(store: Store, ids: list[str], report: dict) -> tuple[list[str], list[str]]:
    """Folders under tasks/ against the sequence; returns (present folder names, tasks pending a restore)."""
    tasks_dir = store.tasks_dir
    present = sorted(p.name for p in tasks_dir.iterdir() if not p.name.startswith(".")) if tasks_dir.is_dir() else []
    for name in present:
        path = tasks_dir / name
        if name not in ids:
            report["problems"].append(f"{path}: not a task of this store's sequence ({', '.join(ids)})")
        elif path.is_symlink() or not path.is_dir():
            report["problems"].append(f"{path}: not a folder")
        elif not store.task_files(name).meta_path.is_file():
            report["problems"].append(f"{path}: has no meta.json (not a finished task)")
    # A replacement killed between its two renames leaves tasks/.<id>.old; the next writing command restores it.
    pending = [t for t in ids if t not in present and tasks_dir.is_dir() and (tasks_dir / f".{t}.old").is_dir()]
    for t in pending:
        report["warnings"].append(f"{tasks_dir / ('.' + t + '.old')}: an interrupted replacement of task {t}; the "
                                  f"next writing command (e.g. pslora eval) restores it")
    return present, pending


def _base_shapes(store: Store, manifest: dict, report: dict) -> dict | None:
    from ..config import sequence_from_stored
    from ..models import base_weight_shapes, check_base_model

    try:
        seq = sequence_from_stored(manifest["sequence"], str(store.sequence_copy))
        check_base_model(seq.backbone, manifest.get("base_model") or {}, store.root)
        return base_weight_shapes(seq)
    except InputError as exc:
        report["problems"].append(str(exc))
        return None


def _check_task(store: Store, ids: list[str], i: int, trained: list[str], pending: list[str], shapes: dict | None,
                report: dict) -> bool:
    """Check one trained task's files, predecessors and adapter; True when it verified."""
    from ..models.adapters import AdapterFile

    task_id = ids[i]
    missing = [t for t in ids[:i] if t not in trained and t not in pending]
    if missing:
        report["problems"].append(f"{store.task_dir(task_id)}: trained, but its predecessor {missing[0]} is not in "
                                  f"the store")
    mine = store.task_problems(task_id)
    report["problems"] += mine
    if mine:
        return False
    for prev, digest in (store.task_meta(task_id).get("previous_tasks") or {}).items():
        if prev in trained and store.task_meta(prev)["sha256"].get(ADAPTER) != digest:
            report["warnings"].append(f"task {task_id} was trained against an earlier version of {prev}; retrain it "
                                      f"(pslora train-task --task {task_id})")
    try:
        adapter = AdapterFile(store.task_files(task_id).adapter_dir)
    except InputError as exc:
        report["problems"].append(str(exc))
        return False
    if shapes is not None:
        report["problems"] += _shape_problems(adapter, shapes)
    return True


def _shape_problems(adapter, shapes: dict) -> list[str]:
    if set(adapter.modules) != set(shapes):
        odd = sorted(set(adapter.modules) ^ set(shapes))[0]
        return [f"{adapter.path}: adapts other modules than the base model's lora.target_modules (e.g. {odd})"]
    for name in adapter.modules:
        if adapter.weight_shape(name) != shapes[name]:
            return [f"{adapter.path}: {name} has shape {adapter.weight_shape(name)}, the base model's weight is "
                    f"{shapes[name]}"]
    return []


def _check_merges(store: Store, report: dict) -> None:
    for f in store.merge_files():
        record = f.with_suffix(".json")
        if not record.is_file():
            report["warnings"].append(f"{f}: has no {record.name} record (an interrupted merge); rerun pslora merge")
            continue
        try:
            digest = json.loads(record.read_text(encoding="utf-8")).get("sha256")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            report["problems"].append(f"{record}: not valid JSON")
            continue
        if digest != sha256_file(f):
            report["problems"].append(f"{f}: sha256 does not match {record.name} (file truncated, corrupted or edited)")


def _check_matrix(store: Store, ids: list[str], report: dict) -> None:
    matrix = store.matrix_path
    if matrix.is_file():
        try:
            if json.loads(matrix.read_text(encoding="utf-8")).get("tasks") != ids:
                report["problems"].append(f"{matrix}: its tasks are not this store's sequence")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            report["problems"].append(f"{matrix}: not valid JSON")


def _check_checkpoints(store: Store, ids: list[str], report: dict) -> None:
    from ..store.checkpoints import read_checkpoint

    if store.checkpoints_dir.is_dir():
        for f in sorted(store.checkpoints_dir.glob("*.safetensors")):
            if f.stem not in ids:
                report["problems"].append(f"{f}: not a checkpoint of a task of this store's sequence")
            elif read_checkpoint(f) is None:
                report["problems"].append(f"{f}: not a readable pslora checkpoint")


def store_listing(store: Store) -> dict:
    """What `pslora store ls` shows: the sequence, each task's state, the merges, the matrix."""
    from ..store.checkpoints import checkpoint_step

    manifest = store.manifest()
    seq = manifest["sequence"]
    tasks = []
    for t in seq["tasks"]:
        entry = {"id": t["id"], "trained": store.has_task(t["id"])}
        if store.checkpoint_path(t["id"]).is_file():
            entry["checkpoint_step"] = checkpoint_step(store.checkpoint_path(t["id"]))
        if entry["trained"]:
            meta = store.task_meta(t["id"])
            entry.update(classes=meta["classes"], num_train=meta["num_train"], steps=meta["train"]["steps"],
                         seconds=meta["train"]["seconds"], final_loss=meta["train"]["final"]["loss"],
                         selection=meta.get("selection"))
        tasks.append(entry)
    return {"store": str(store.root), "sequence": seq["name"], "scenario": seq["scenario"],
            "base_model": manifest["base_model"], "tasks": tasks, "merges": [p.name for p in store.merge_files()],
            "matrix": str(store.matrix_path) if store.matrix_path.is_file() else None}
