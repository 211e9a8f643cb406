"""`pslora merge`: the stored adapters merged into one dense update per module (keyed by the base model's
parameter names, so that W0[key] + merged[key] is the merged weight), plus the task heads, in a safetensors file
written module by module as the merge finishes each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..config import Sequence, canonical_hash
from ..errors import InputError
from ..store import Store, atomic_path, sha256_file, write_json_atomic


def merge_tasks(seq: Sequence, store: Store, method: str, task_ids: list[str] | None, out: Path | None,
                device) -> dict:
    """Merge `task_ids` (default: every trained task) with the registered merge `method`; write the file into
    the store's merges and to `out`. Returns the merge's record."""
    import torch

    from ..merge_options import check_merge_name, resolve_options
    from ..models.adapters import merged_deltas, open_adapters
    from ..store.stream_write import write_streaming

    check_merge_name(method)
    options = seq.method.options_for(method)
    ids = _tasks_to_merge(seq, store, task_ids)
    if method == seq.method.merge and ids == seq.task_ids[:len(ids)]:  # a stage: its chosen options, if any
        from ..evaluation.scoring import stage_merge_options

        options = stage_merge_options(seq, store, len(ids))
    options = resolve_options(method, options)
    adapters = open_adapters(store.task_files(t).adapter_dir for t in ids)
    heads = _heads(seq, store, ids)
    # Each update in its weight's shape (a 1x1 conv's (d_out, d_in) matrix back to (d_out, d_in, 1, 1)), so that
    # W0[key] + merged[key] holds for every key.
    shapes = {name: adapters[0].weight_shape(name) for name in adapters[0].modules}
    specs = [(name, torch.float32, shape) for name, shape in shapes.items()]
    specs += [(name, t.dtype, tuple(t.shape)) for name, t in heads.items()]

    def tensors():
        for name, delta in merged_deltas(adapters, method, device, **options):
            yield name, delta.reshape(shapes[name])
            del delta  # written by now: free it before the next module is merged
        yield from heads.items()

    metadata = {"format": "pslora-merge/1", "method": method, "tasks": json.dumps(ids),
                "base_model": json.dumps(store.manifest()["base_model"]), "scenario": seq.scenario,
                "classes": json.dumps({t: store.task_meta(t)["classes"] for t in ids})}
    target, record = store.merge_paths(f"{method}-{canonical_hash(ids)[:8]}")
    with atomic_path(target) as tmp:
        write_streaming(tmp, specs, tensors(), metadata)
    files = [target]
    if out is not None:
        with atomic_path(Path(out)) as tmp:
            shutil.copyfile(target, tmp)
        files.append(Path(out))
    info = {"method": method, "tasks": ids, "modules": len(adapters[0].modules), "files": [str(f) for f in files],
            "sha256": sha256_file(target)}
    write_json_atomic(record, info)
    return info


def _tasks_to_merge(seq: Sequence, store: Store, task_ids: list[str] | None) -> list[str]:
    ids = task_ids or [t for t in seq.task_ids if store.has_task(t)]
    if not ids:
        raise InputError(f"{store.root}: holds no trained task to merge")
    for task_id in ids:
        seq.index(task_id)
        if not store.has_task(task_id):
            raise InputError(f"--tasks: task {task_id!r} is not trained in {store.root}")
        store.verify_task(task_id)
    return ids


def _heads(seq: Sequence, store: Store, ids: list[str]) -> dict:
    """heads.<id>.weight/bias of each task. A method that trains jointly has a joint head per stage: the merged
    model (the last stage) uses the last stage's heads."""
    from safetensors.torch import load_file

    if seq.generative:  # a language model writes the answer: no heads
        return {}
    joint = load_file(str(store.task_files(ids[-1]).joint_heads)) if seq.method.spec.trains_jointly else {}
    heads = {}
    for task_id in ids:
        head = ({"weight": joint[f"{task_id}.weight"], "bias": joint[f"{task_id}.bias"]}
                if f"{task_id}.weight" in joint else load_file(str(store.task_files(task_id).head)))
        heads[f"heads.{task_id}.weight"], heads[f"heads.{task_id}.bias"] = head["weight"], head["bias"]
    return heads
