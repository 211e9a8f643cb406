"""Where a merging method loses its newest task: task I's test accuracy in the weights it was trained in (W0 + the
fold of tasks < I by the method's `previous` rule, plus its own update) against the matrix's stage I, after the
merge of tasks 1..I. A task learned in training and lost at the merge is the merge's loss, not the loss term's.
Scores on the store's test split with the store's scorer; nothing is written.

    PSLORA_CL_BENCHMARK=DIR .venv/bin/python benchmarks/results/fold_vs_merge.py --store STORE --task ID [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def trained_in_updates(adapters: list, method, i: int) -> dict:
    """The dense update over W0 that task i (0-based) was trained in: the method's merge of tasks < i, as training
    folded it, plus task i's own update."""
    from pslora_cli.models.adapters import merged_deltas

    history = dict(merged_deltas(adapters[:i], method.merge, "cpu", **method.merge_options)) if i else {}
    own = dict(merged_deltas(adapters[i:i + 1], "sum", "cpu"))
    return {k: history.get(k, 0) + own[k] for k in own}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from pslora_cli.config import sequence_from_stored
    from pslora_cli.data.loader import data_loader
    from pslora_cli.evaluation.scoring import Evaluator
    from pslora_cli.store import Store

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    store = Store(args.store)
    seq = sequence_from_stored(store.manifest()["sequence"], str(store.sequence_copy))
    if args.task not in seq.task_ids:
        raise SystemExit(f"--task {args.task!r}: not a task of {args.store} ({', '.join(seq.task_ids)})")
    i, method = seq.task_ids.index(args.task), seq.method
    if method.previous != "merge" or method.spec.own_adapters:
        raise SystemExit(f"{args.store}: method {method.name} does not train on a merge of the earlier tasks")
    ev = Evaluator(seq, store, cpu, data_loader(seq))
    cell = [(i, "aware")]
    trained_in = ev.score_with(i + 1, trained_in_updates(ev.adapters(i + 1), method, i), cell)[cell[0]]
    merged = ev.stage(i + 1, cell)[cell[0]]
    print(f"{args.store.name} {args.task}: {100 * trained_in:.1f} in the weights it was trained in, "
          f"{100 * merged:.1f} after the merge of tasks 1..{i + 1}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
