"""What each command does, between the thin CLI and the library: open the store against a sequence,
train tasks, complete the accuracy matrix, merge. Returns plain dicts the CLI renders or prints as JSON.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

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
        raw = apply_overrides(raw, overrides, f"{store.root}/sequence.yaml")
        seq = validate_sequence(raw, f"{store.root}/sequence.yaml", Path(seq["base_dir"]))
        if identity_hash(seq) != manifest["identity_hash"]:
            raise InputError("--set: backbone, lora, scenario and tasks are fixed for a store; "
                             "only method, training and seed settings may be overridden")
    return seq, store, None


def ensure_created(seq: dict, store: Store, text: str | None, reporter: Reporter) -> None:
    if text is None or store.exists():
        return
    from .backbones import backbone_identity

    store.create(seq, text, identity_hash(seq), backbone_identity(seq["backbone"]))
    reporter.info(f"created store {store.root} for sequence {seq['name']!r} ({len(seq['tasks'])} tasks)")


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


def train_one(seq: dict, store: Store, task_id: str, device, reporter: Reporter, load) -> dict:
    from .train import library_versions, train_task

    i = check_predecessors(seq, store, task_id)
    data = load(i)
    previous = [store.task_dir(t["id"]) for t in seq["tasks"][:i]]
    for t in seq["tasks"][:i]:
        store.verify_task(t["id"])
    reporter.info(f"training task {task_id} ({i + 1}/{len(seq['tasks'])}): {len(data.classes)} classes, "
                  f"{len(data.train_x)} train / {len(data.test_x)} test examples, {data.source}")
    with store.new_task_dir(task_id) as tmp:
        with reporter.steps(f"task {task_id}") as progress:
            metrics = train_task(seq, i, data, previous, tmp, device, progress)
        hashes = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        meta = {
            "task": task_id, "index": i, "classes": data.classes,
            "num_train": len(data.train_x), "num_test": len(data.test_x),
            "data_fingerprint": data.fingerprint, "data_source": data.source,
            "seed": seq["seed"], "previous_tasks": {t["id"]: store.task_meta(t["id"])["sha256"]
                                                    ["adapter_model.safetensors"] for t in seq["tasks"][:i]},
            "config": {k: seq[k] for k in ("backbone", "lora", "method", "training", "scenario")} | {"task": seq["tasks"][i]},
            "train": metrics, "versions": library_versions(), "sha256": hashes,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    reporter.info(f"task {task_id}: trained {metrics['steps']} steps in {metrics['seconds']:.1f} s, "
                  f"final loss {metrics['final']['loss']:.4f}")
    stale = [t["id"] for t in seq["tasks"][i + 1:] if store.has_task(t["id"])]
    if stale:
        reporter.info(f"note: {', '.join(stale)} were trained against the previous {task_id}; "
                      f"retrain them (pslora train-task --task {stale[0]}) to keep the sequence consistent")
    return meta


def complete_eval(seq: dict, store: Store, device, reporter: Reporter, load) -> dict:
    from .evaluate import complete_matrix, trained_prefix
    from .report import plot_matrix

    doc = complete_matrix(seq, store, device, load, progress=reporter.info)
    k = trained_prefix(seq, store)
    doc["figures"] = [str(p) for p in plot_matrix(doc, k, store.eval_dir)]
    doc["trained_prefix"] = k
    return doc


def merge_tasks(seq: dict, store: Store, method: str, task_ids: list[str] | None, out: Path | None,
                device) -> dict:
    """Write the dense merged update (base-model parameter names) plus the task heads to a safetensors file."""
    from safetensors.torch import load_file, save_file

    from .adapters import merge_options, merged_deltas, open_adapters
    from .core.merge import ALL_METHODS as METHODS
    from .store import atomic_path

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
    # Each update in its weight's shape (a 1x1 conv's (d_out, d_in) matrix back to (d_out, d_in, 1, 1)), so that
    # W0[key] + merged[key] holds for every key.
    tensors = {name: delta.reshape(adapters[0].weight_shape(name)).cpu().contiguous()
               for name, delta in merged_deltas(adapters, method, device, **merge_options(seq["method"]))}
    for task_id in ids:
        head = load_file(str(store.task_dir(task_id) / "head.safetensors"))
        tensors[f"heads.{task_id}.weight"] = head["weight"]
        tensors[f"heads.{task_id}.bias"] = head["bias"]
    manifest = store.manifest()
    metadata = {"format": "pslora-merge/1", "method": method, "tasks": json.dumps(ids),
                "base_model": json.dumps(manifest["base_model"]), "scenario": seq["scenario"],
                "classes": json.dumps({t: store.task_meta(t)["classes"] for t in ids})}
    default_name = f"{method}-{canonical_hash(ids)[:8]}.safetensors"
    targets = [store.merges_dir / default_name] + ([Path(out)] if out is not None else [])
    for target in targets:
        with atomic_path(target) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
    info = {"method": method, "tasks": ids, "modules": len(adapters[0].modules), "files": [str(t) for t in targets],
            "sha256": sha256_file(targets[0])}
    from .store import write_json_atomic

    write_json_atomic(store.merges_dir / (default_name[:-len(".safetensors")] + ".json"), info)
    return info


def run_sequence(opts: Options, sequence_file: str, device, reporter: Reporter) -> dict:
    """`pslora run`: train every task not yet in the store, evaluating after each; merge; return the result."""
    seq, store, text = open_store(opts, sequence_file, create=True)
    load = data_loader(seq)
    for i in range(len(seq["tasks"])):  # read and validate every task's data before any training
        load(i)
    trained = []
    with store.locked():
        ensure_created(seq, store, text, reporter)
        for task in seq["tasks"]:
            if store.has_task(task["id"]):
                continue
            train_one(seq, store, task["id"], device, reporter, load)
            trained.append(task["id"])
            complete_eval(seq, store, device, reporter, load)
        doc = complete_eval(seq, store, device, reporter, load)
        merge = None
        if seq["method"]["merge"] != "own":  # per-task keeps the adapters apart: nothing to merge
            merge = merge_tasks(seq, store, seq["method"]["merge"], None, None, device)
            reporter.info(f"merged {len(merge['tasks'])} tasks ({merge['method']}): {merge['files'][0]}")
    return {"store": str(store.root), "trained": trained, "matrix": doc, "merge": merge}


def store_listing(store: Store) -> dict:
    manifest = store.manifest()
    seq = manifest["sequence"]
    tasks = []
    for t in seq["tasks"]:
        entry = {"id": t["id"], "trained": store.has_task(t["id"])}
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
