"""The work of the commands that span several parts: `run` (train every task, evaluating after each, then merge),
`train-task` (one task, then the matrix) and `eval` (complete the matrix and draw it)."""

from __future__ import annotations

from .. import distributed
from ..config import Sequence
from ..data.loader import data_loader
from ..session import Session, check_same_training, writing
from ..store import Store
from ..training.selection import train_selected
from ..training.task import check_predecessors


def complete_eval(seq: Sequence, store: Store, session: Session, load, figures: bool = True,
                  split: str = "test") -> dict:
    """Fill the accuracy matrix of `split` for the trained prefix; draw its figures (rank 0)."""
    from ..evaluation.matrix import complete_matrix, trained_prefix
    from ..report import plot_matrix

    doc = complete_matrix(seq, store, session.device, load, progress=session.reporter.info, split=split)
    k = trained_prefix(seq, store)
    main = distributed.world().is_main
    doc["figures"] = [str(p) for p in plot_matrix(doc, k, store.split_eval_dir(split))] if figures and main else []
    distributed.barrier()
    doc["trained_prefix"] = k
    chosen = {t: store.task_meta(t).get("selection") for t in seq.task_ids[:k]}
    doc["selection"] = {t: record for t, record in chosen.items() if record} or None
    return doc


def preflight(seq: Sequence, device) -> None:
    """Checks a method declares that need the model's weight shapes (N-LoRA's official form on square weights,
    InfLoRA on linear layers), made before a store is created."""
    from ..methods import TERMS

    method, hooks = seq.method, seq.method.spec.hooks
    checks = [term.check for term in TERMS.values()
              if term.check is not None and (getattr(method, term.weight) or 0) > 0 and term.needs_shapes(method)]
    if hooks is not None and hooks.needs_shapes(method):
        checks.append(hooks.check)
    if checks:
        from ..models import load_backbone, target_parameters

        params = target_parameters(load_backbone(seq.backbone, device).model, seq.lora.target_modules)
        shapes = {name: tuple(p.shape) for name, p in params.items()}
        for check in checks:
            check(method, shapes)


def run_sequence(session: Session, sequence_file: str, restart: bool = False) -> dict:
    """`pslora run`: train every task not yet in the store, evaluating after each; merge; return the result."""
    from .merge import merge_tasks

    seq, store, text = session.open(sequence_file, create=True)
    if store.exists():
        check_same_training(seq, store)
    load = data_loader(seq)
    for i in range(len(seq.tasks)):  # read and validate every task's data before any training
        load(i)
    if text is not None:
        preflight(seq, session.device)
    trained = []
    with writing(store):
        session.ensure_created(seq, store, text)
        for task_id in seq.task_ids:
            if store.has_task(task_id):
                continue
            train_selected(seq, store, task_id, session.device, session.reporter, load, restart=restart)
            trained.append(task_id)
            complete_eval(seq, store, session, load, figures=False)  # the figures come at the end
        doc = complete_eval(seq, store, session, load)
        merge = None
        if not seq.method.spec.own_adapters and distributed.world().is_main:  # scored per task: no merged model
            merge = merge_tasks(seq, store, seq.method.merge, None, None, session.device)
            session.reporter.info(f"merged {len(merge['tasks'])} tasks ({merge['method']}): {merge['files'][0]}")
    return {"store": str(store.root), "trained": trained, "matrix": doc, "merge": merge}


def train_and_eval(session: Session, task_id: str, sequence_file: str | None, evaluate: bool,
                   restart: bool = False) -> dict:
    """`pslora train-task`: one task (replacing it if present), then the matrix."""
    seq, store, text = session.open(sequence_file, create=True)
    i = check_predecessors(seq, store, task_id)
    load = data_loader(seq)
    load(i)
    if text is not None:
        preflight(seq, session.device)
    with writing(store):
        session.ensure_created(seq, store, text)
        meta = train_selected(seq, store, task_id, session.device, session.reporter, load, restart=restart)
        doc = complete_eval(seq, store, session, load) if evaluate else None
    return {"store": str(store.root), "task": meta, "matrix": doc}


def evaluate_store(session: Session, split: str = "test") -> dict:
    """`pslora eval`: complete the matrix of the store's trained prefix on `split`."""
    seq, store, _ = session.open()
    with writing(store):
        return complete_eval(seq, store, session, data_loader(seq), split=split)
