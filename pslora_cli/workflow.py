"""What each command does, between the thin CLI and the library: open the store against a sequence,
train tasks, complete the accuracy matrix, merge. Returns plain dicts the CLI renders or prints as JSON.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .errors import InputError
from .report import Reporter
from .sequence import IDENTITY_KEYS, canonical_hash, identity_hash, load_sequence, task_index, validate_sequence
from .store import Store, sha256_file


@dataclass
class Options:
    store: Path
    device: str = "auto"
    seed: int | None = None
    overrides: list[str] = field(default_factory=list)
    json: bool = False
    quiet: bool = False
    base_dir: Path | None = None  # where relative data paths resolve (default: the sequence file's folder)


def resolve_device(name: str):
    import torch

    from . import distributed

    world = distributed.init_from_env(name)  # under torchrun: join the process group first
    if world.backend == "nccl":
        return torch.device("cuda", world.local_rank)
    if world.active:
        return torch.device("cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise InputError(f"--device {name!r}: expected auto, cpu or cuda")
    return torch.device(name)


def _all_overrides(opts: Options) -> list[str]:
    return list(opts.overrides) + ([f"seed={opts.seed}"] if opts.seed is not None else [])


def open_store(opts: Options, sequence_file: str | None, create: bool) -> tuple[dict, Store, str | None]:
    """Resolve the sequence (from the file, else from the store's copy) and check it against the store.

    Returns (sequence, store, yaml text when the store still has to be created by the caller).
    """
    store = Store(opts.store)
    overrides = _all_overrides(opts)
    if sequence_file is not None:
        seq, text = load_sequence(sequence_file, overrides, base_dir=opts.base_dir)
        if store.exists():
            manifest = store.manifest()
            if manifest["identity_hash"] != identity_hash(seq):
                stored = manifest["sequence"]
                differing = [k for k in IDENTITY_KEYS if canonical_hash(stored.get(k)) != canonical_hash(seq.get(k))]
                raise InputError(f"{sequence_file}: does not match the store {store.root} "
                                 f"(differs in: {', '.join(differing)}); use another --store")
            check_base_model(seq, store)
            return seq, store, None
        if not create:
            raise InputError(f"{store.root}: not a pslora store; `pslora run {sequence_file}` starts one")
        return seq, store, text
    if not store.exists():
        raise InputError(f"{store.root}: not a pslora store; pass --sequence FILE (or use `pslora run FILE`) "
                         f"to start one")
    manifest = store.manifest()
    seq = manifest["sequence"]
    if overrides:
        from .sequence import apply_overrides

        raw = {k: v for k, v in seq.items() if k != "base_dir"}
        raw["method"] = {k: v for k, v in raw["method"].items() if k != "init"}  # derived from method.name
        raw = apply_overrides(raw, overrides, f"{store.root}/sequence.yaml")
        seq = validate_sequence(raw, f"{store.root}/sequence.yaml", Path(seq["base_dir"]))
        if identity_hash(seq) != manifest["identity_hash"]:
            raise InputError("--set: backbone, lora, scenario and tasks are fixed for a store; "
                             "only method, training and seed settings may be overridden")
    check_base_model(seq, store)
    return seq, store, None


def ensure_created(seq: dict, store: Store, text: str | None, reporter: Reporter) -> None:
    from . import distributed

    if text is not None and not store.exists() and distributed.world().is_main:
        from .backbones import backbone_identity, weights_stamp

        store.create(seq, text, identity_hash(seq),
                     backbone_identity(seq["backbone"]) | {"files": weights_stamp(seq["backbone"])})
        reporter.info(f"created store {store.root} for sequence {seq['name']!r} ({len(seq['tasks'])} tasks)")
    distributed.barrier()


def writing(store: Store):
    """The store's write lock, held by the one process that writes: rank 0 under torchrun."""
    from . import distributed

    return store.locked() if distributed.world().is_main else contextlib.nullcontext()


def data_loader(seq: dict):
    """Task index -> TaskData, loaded once per process."""
    from .data import load_task_data

    @functools.lru_cache(maxsize=None)
    def load(i: int):
        task = seq["tasks"][i]
        return load_task_data(task["data"], seed=seq["seed"], base_dir=Path(seq["base_dir"]),
                              where=f"task {task['id']}: data")

    return load


def check_predecessors(seq: dict, store: Store, task_id: str) -> int:
    """Index of `task_id`; an InputError naming the earlier tasks that are not trained yet."""
    i = task_index(seq, task_id)
    missing = [t["id"] for t in seq["tasks"][:i] if not store.has_task(t["id"])]
    if missing:
        raise InputError(f"task {task_id!r} needs the earlier task(s) {', '.join(missing)} in the store first "
                         f"(pslora train-task --task {missing[0]})")
    return i


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Callable[[], bool]]:
    """While the block runs, SIGINT and SIGTERM ask training to stop at the end of its current step (it saves a
    checkpoint and raises); a second SIGINT stops at once. Yields the "was a stop asked for" function."""
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum, frame):
        if requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        requested.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: bool(requested)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def resume_key(seq: dict, i: int, previous_sha: dict, data) -> str:
    """What a checkpoint must have been written for to be resumed (checkpoint_every aside)."""
    training = {k: v for k, v in seq["training"].items() if k != "checkpoint_every"}
    return canonical_hash({"config": {k: seq[k] for k in ("backbone", "lora", "method", "scenario")},
                           "training": training, "task": seq["tasks"][i], "seed": seq["seed"], "index": i,
                           "previous": previous_sha, "data": data.fingerprint})


def train_one(seq: dict, store: Store, task_id: str, device, reporter: Reporter, load, restart: bool = False) -> dict:
    from .train import library_versions, train_task

    i = check_predecessors(seq, store, task_id)
    data = load(i)
    if seq["method"]["init"] == "joint":  # multitask: tasks 1..i together, one joint head
        from .data import joint_task_data

        data = joint_task_data([load(j) for j in range(i + 1)], [t["id"] for t in seq["tasks"][:i + 1]])
    previous = [store.task_dir(t["id"]) for t in seq["tasks"][:i]]
    for t in seq["tasks"][:i]:
        store.verify_task(t["id"])
    previous_sha = {t["id"]: store.task_meta(t["id"])["sha256"]["adapter_model.safetensors"] for t in seq["tasks"][:i]}
    checkpoint = store.checkpoint_path(task_id)
    if restart:
        checkpoint.unlink(missing_ok=True)
    reporter.info(f"training task {task_id} ({i + 1}/{len(seq['tasks'])}): {len(data.classes)} classes, "
                  f"{len(data.train_x)} train / {len(data.test_x)} test examples, {data.source}")
    from . import distributed

    main = distributed.world().is_main
    with (store.new_task_dir(task_id) if main else contextlib.nullcontext()) as tmp:
        with reporter.steps(f"task {task_id}") as progress, stop_on_signals() as stop_requested:
            metrics = train_task(seq, i, data, previous, tmp, device, progress, checkpoint=checkpoint,
                                 resume_key=resume_key(seq, i, previous_sha, data), stop_requested=stop_requested,
                                 note=reporter.info)
        hashes = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())} if tmp else {}
        meta = {
            "task": task_id, "index": i, "classes": load(i).classes,
            "num_train": len(data.train_x), "num_test": len(data.test_x),
            "data_fingerprint": data.fingerprint, "data_source": data.source,
            "seed": seq["seed"], "previous_tasks": previous_sha,
            "config": {k: seq[k] for k in ("backbone", "lora", "method", "training", "scenario")} | {"task": seq["tasks"][i]},
            "train": metrics, "versions": library_versions(), "sha256": hashes,
        }
        if tmp:
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if main:
        checkpoint.unlink(missing_ok=True)  # the task is saved; a leftover checkpoint would only be resumed to the end
    distributed.barrier()
    reporter.info(f"task {task_id}: trained {metrics['steps']} steps in {metrics['seconds']:.1f} s, "
                  f"final loss {metrics['final']['loss']:.4f}")
    stale = [t["id"] for t in seq["tasks"][i + 1:] if store.has_task(t["id"])]
    if stale:
        reporter.info(f"note: {', '.join(stale)} were trained against the previous {task_id}; "
                      f"retrain them (pslora train-task --task {stale[0]}) to keep the sequence consistent")
    return meta


def complete_eval(seq: dict, store: Store, device, reporter: Reporter, load, figures: bool = True) -> dict:
    from .evaluate import complete_matrix, trained_prefix
    from .report import plot_matrix

    from . import distributed

    doc = complete_matrix(seq, store, device, load, progress=reporter.info)
    k = trained_prefix(seq, store)
    main = distributed.world().is_main
    doc["figures"] = [str(p) for p in plot_matrix(doc, k, store.eval_dir)] if figures and main else []
    distributed.barrier()
    doc["trained_prefix"] = k
    return doc


def merge_tasks(seq: dict, store: Store, method: str, task_ids: list[str] | None, out: Path | None,
                device) -> dict:
    """Write the dense merged update (base-model parameter names) plus the task heads to a safetensors file."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from .adapters import merge_options, merged_deltas, open_adapters
    from .core.merge import ALL_METHODS as METHODS
    from .store import atomic_path
    from .stream_write import write_streaming

    if method not in METHODS:
        raise InputError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    ids = task_ids or [t["id"] for t in seq["tasks"] if store.has_task(t["id"])]
    if not ids:
        raise InputError(f"{store.root}: holds no trained task to merge")
    for task_id in ids:
        task_index(seq, task_id)
        if not store.has_task(task_id):
            raise InputError(f"--tasks: task {task_id!r} is not trained in {store.root}")
        store.verify_task(task_id)
    adapters = open_adapters(store.task_dir(t) for t in ids)
    # Multitask trains a joint head per stage: the merged model (the last stage) uses the last stage's heads.
    joint = store.task_dir(ids[-1]) / "joint_heads.safetensors" if seq["method"].get("init") == "joint" else None
    joint_heads = load_file(str(joint)) if joint is not None else {}
    heads = {}
    for task_id in ids:
        head = ({"weight": joint_heads[f"{task_id}.weight"], "bias": joint_heads[f"{task_id}.bias"]}
                if f"{task_id}.weight" in joint_heads else load_file(str(store.task_dir(task_id) / "head.safetensors")))
        heads[f"heads.{task_id}.weight"], heads[f"heads.{task_id}.bias"] = head["weight"], head["bias"]
    # Each update in its weight's shape (a 1x1 conv's (d_out, d_in) matrix back to (d_out, d_in, 1, 1)), so that
    # W0[key] + merged[key] holds for every key. Written module by module as the merge finishes each.
    shapes = {name: adapters[0].weight_shape(name) for name in adapters[0].modules}
    specs = [(name, torch.float32, shape) for name, shape in shapes.items()]
    specs += [(name, t.dtype, tuple(t.shape)) for name, t in heads.items()]

    def tensors():
        for name, delta in merged_deltas(adapters, method, device, **merge_options(seq["method"])):
            yield name, delta.reshape(shapes[name])
            del delta  # written by now: free it before the next module is merged
        yield from heads.items()

    manifest = store.manifest()
    metadata = {"format": "pslora-merge/1", "method": method, "tasks": json.dumps(ids),
                "base_model": json.dumps(manifest["base_model"]), "scenario": seq["scenario"],
                "classes": json.dumps({t: store.task_meta(t)["classes"] for t in ids})}
    default_name = f"{method}-{canonical_hash(ids)[:8]}.safetensors"
    targets = [store.merges_dir / default_name] + ([Path(out)] if out is not None else [])
    with atomic_path(targets[0]) as tmp:
        write_streaming(tmp, specs, tensors(), metadata)
    for target in targets[1:]:
        with atomic_path(target) as tmp:
            shutil.copyfile(targets[0], tmp)
    info = {"method": method, "tasks": ids, "modules": len(adapters[0].modules), "files": [str(t) for t in targets],
            "sha256": sha256_file(targets[0])}
    from .store import write_json_atomic

    write_json_atomic(store.merges_dir / (default_name[:-len(".safetensors")] + ".json"), info)
    return info


def run_sequence(opts: Options, sequence_file: str, device, reporter: Reporter, restart: bool = False) -> dict:
    """`pslora run`: train every task not yet in the store, evaluating after each; merge; return the result."""
    seq, store, text = open_store(opts, sequence_file, create=True)
    load = data_loader(seq)
    for i in range(len(seq["tasks"])):  # read and validate every task's data before any training
        load(i)
    trained = []
    with writing(store):
        ensure_created(seq, store, text, reporter)
        for task in seq["tasks"]:
            if store.has_task(task["id"]):
                continue
            train_one(seq, store, task["id"], device, reporter, load, restart=restart)
            trained.append(task["id"])
            complete_eval(seq, store, device, reporter, load, figures=False)  # the figures come at the end
        doc = complete_eval(seq, store, device, reporter, load)
        merge = None
        from . import distributed

        if seq["method"]["merge"] != "own" and distributed.world().is_main:  # per-task: nothing to merge
            merge = merge_tasks(seq, store, seq["method"]["merge"], None, None, device)
            reporter.info(f"merged {len(merge['tasks'])} tasks ({merge['method']}): {merge['files'][0]}")
    return {"store": str(store.root), "trained": trained, "matrix": doc, "merge": merge}


def check_base_model(seq: dict, store: Store) -> None:
    """Refuse a store whose base model weights are not the ones the sequence's backbone loads now."""
    from .backbones import backbone_identity, weights_stamp

    recorded = store.manifest().get("base_model") or {}
    if recorded.get("files") and recorded["files"] == weights_stamp(seq["backbone"]):
        return  # the same files, untouched since the store recorded them: no need to hash them again
    current = backbone_identity(seq["backbone"])
    old, new = recorded.get("weights_sha256"), current.get("weights_sha256")
    if old and new and old != new:
        raise InputError(f"{store.root}: was written for base model {recorded.get('name')!r} with weights sha256 "
                         f"{old[:12]}…, but {seq['backbone']['name']!r} now has {new[:12]}… (the base model "
                         f"changed; use another --store)")


def base_shapes(seq: dict) -> dict[str, tuple[int, ...]]:
    """Shape of each base-model weight the sequence's LoRA adapts (loads the backbone on the CPU)."""
    import torch

    from .backbones import load_backbone, target_parameters

    backbone = load_backbone(seq["backbone"], torch.device("cpu"))
    return {name: tuple(p.shape) for name, p in target_parameters(backbone.model,
                                                                    seq["lora"]["target_modules"]).items()}


def verify_store(store: Store, check_shapes: bool = True) -> dict:
    """Everything `pslora store verify` checks. Returns {"problems": [...], "warnings": [...], "tasks": [...]}.

    Problems: a file whose sha256 differs from its record, a missing or unreadable file, a task folder the
    sequence does not name, a trained task whose predecessor is missing, an adapter whose modules or shapes
    do not fit the base model, a base model whose weights changed. Warnings: a task trained against an
    earlier version of a predecessor, a merge file without its record (an interrupted merge).
    """
    from .adapters import AdapterFile
    from .checkpoint import read_checkpoint

    problems: list[str] = []
    warnings_: list[str] = []
    manifest = store.manifest()
    seq = manifest.get("sequence")
    if not isinstance(seq, dict) or not isinstance(seq.get("tasks"), list):
        return {"problems": [f"{store.manifest_path}: has no resolved sequence"], "warnings": [], "tasks": []}
    if not (store.root / "sequence.yaml").is_file():
        problems.append(f"{store.root / 'sequence.yaml'}: missing")
    ids = [t["id"] for t in seq["tasks"]]
    tasks_dir = store.inside("tasks")
    present = sorted(p.name for p in tasks_dir.iterdir() if not p.name.startswith(".")) if tasks_dir.is_dir() else []
    for name in present:
        path = tasks_dir / name
        if name not in ids:
            problems.append(f"{path}: not a task of this store's sequence ({', '.join(ids)})")
        elif path.is_symlink() or not path.is_dir():
            problems.append(f"{path}: not a folder")
        elif not (path / "meta.json").is_file():
            problems.append(f"{path}: has no meta.json (not a finished task)")
    trained = [t for t in ids if t in present and store.has_task(t)]
    # A replacement killed between its two renames leaves tasks/.<id>.old; the next writing command restores it.
    pending = [t for t in ids if t not in present and tasks_dir.is_dir() and (tasks_dir / f".{t}.old").is_dir()]
    for t in pending:
        warnings_.append(f"{tasks_dir / ('.' + t + '.old')}: an interrupted replacement of task {t}; the next "
                         f"writing command (e.g. pslora eval) restores it")
    shapes = None
    if check_shapes and trained:
        try:
            check_base_model(seq, store)
            shapes = base_shapes(seq)
        except InputError as exc:
            problems.append(str(exc))
    verified = []
    for i, task_id in enumerate(ids):
        if task_id not in trained:
            continue
        missing = [t for t in ids[:i] if t not in trained and t not in pending]
        if missing:
            problems.append(f"{store.task_dir(task_id)}: trained, but its predecessor {missing[0]} is not in the store")
        mine = store.task_problems(task_id)
        problems += mine
        if mine:
            continue
        meta = store.task_meta(task_id)
        for prev, digest in (meta.get("previous_tasks") or {}).items():
            if prev in trained and store.task_meta(prev)["sha256"].get("adapter_model.safetensors") != digest:
                warnings_.append(f"task {task_id} was trained against an earlier version of {prev}; retrain it "
                                 f"(pslora train-task --task {task_id})")
        try:
            adapter = AdapterFile(store.task_dir(task_id))
            if shapes is not None:
                if set(adapter.modules) != set(shapes):
                    odd = sorted(set(adapter.modules) ^ set(shapes))[0]
                    problems.append(f"{adapter.path}: adapts other modules than the base model's "
                                    f"lora.target_modules (e.g. {odd})")
                for name in adapter.modules:
                    if name in shapes and adapter.weight_shape(name) != shapes[name]:
                        problems.append(f"{adapter.path}: {name} has shape {adapter.weight_shape(name)}, the base "
                                        f"model's weight is {shapes[name]}")
                        break
        except InputError as exc:
            problems.append(str(exc))
            continue
        verified.append(task_id)
    merges = store.merges_dir
    if merges.is_dir():
        for f in sorted(merges.glob("*.safetensors")):
            record = f.with_suffix(".json")
            if not record.is_file():
                warnings_.append(f"{f}: has no {record.name} record (an interrupted merge); rerun pslora merge")
                continue
            try:
                digest = json.loads(record.read_text(encoding="utf-8")).get("sha256")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                problems.append(f"{record}: not valid JSON")
                continue
            if digest != sha256_file(f):
                problems.append(f"{f}: sha256 does not match {record.name} (file truncated, corrupted or edited)")
    matrix = store.eval_dir / "matrix.json"
    if matrix.is_file():
        try:
            doc = json.loads(matrix.read_text(encoding="utf-8"))
            if doc.get("tasks") != ids:
                problems.append(f"{matrix}: its tasks are not this store's sequence")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            problems.append(f"{matrix}: not valid JSON")
    checkpoints = store.inside("checkpoints")
    if checkpoints.is_dir():
        for f in sorted(checkpoints.glob("*.safetensors")):
            if f.stem not in ids:
                problems.append(f"{f}: not a checkpoint of a task of this store's sequence")
            elif read_checkpoint(f) is None:
                problems.append(f"{f}: not a readable pslora checkpoint")
    return {"store": str(store.root), "ok": not problems, "problems": problems, "warnings": warnings_,
            "tasks": verified}


def store_listing(store: Store) -> dict:
    manifest = store.manifest()
    seq = manifest["sequence"]
    tasks = []
    for t in seq["tasks"]:
        entry = {"id": t["id"], "trained": store.has_task(t["id"])}
        if store.checkpoint_path(t["id"]).is_file():
            from .checkpoint import checkpoint_step

            entry["checkpoint_step"] = checkpoint_step(store.checkpoint_path(t["id"]))
        if entry["trained"]:
            meta = store.task_meta(t["id"])
            entry.update(classes=meta["classes"], num_train=meta["num_train"], steps=meta["train"]["steps"],
                         seconds=meta["train"]["seconds"], final_loss=meta["train"]["final"]["loss"])
        tasks.append(entry)
    merges = sorted(p.name for p in store.merges_dir.glob("*.safetensors")) if store.merges_dir.is_dir() else []
    matrix = store.eval_dir / "matrix.json"
    return {"store": str(store.root), "sequence": seq["name"], "scenario": seq["scenario"],
            "base_model": manifest["base_model"], "tasks": tasks, "merges": merges,
            "matrix": str(matrix) if matrix.is_file() else None}


def environment_note() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
