"""What every command needs, in one object: the store, the device, the sequence and its overrides, logging and
JSON mode. The CLI builds a Session from its options; the library functions take it."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from pathlib import Path

from .config import IDENTITY_KEYS, Sequence, canonical_hash, identity_hash, load_sequence, sequence_from_stored
from .errors import InputError
from .report import Reporter
from .runtime import default_threads, resolve_device
from .store import Store


@dataclass
class Session:
    store_path: Path
    device_name: str = "auto"
    seed: int | None = None
    overrides: list[str] = field(default_factory=list)
    json: bool = False
    quiet: bool = False
    base_dir: Path | None = None  # where relative data paths resolve (default: the sequence file's folder)
    reporter: Reporter | None = None
    threads: int | None = None  # torch's CPU threads (None: default_threads())
    # merges the command runs besides the sequence's (merge --method; a compare grid's): their options may be set
    merges: tuple[str, ...] = ()

    def __post_init__(self):
        if self.reporter is None:
            self.reporter = Reporter(quiet=self.quiet, json_mode=self.json)

    @functools.cached_property
    def device(self):
        import torch

        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads {self.threads}: must be at least 1")
        torch.set_num_threads(self.threads or default_threads())
        return resolve_device(self.device_name)

    @property
    def all_overrides(self) -> list[str]:
        return list(self.overrides) + ([f"seed={self.seed}"] if self.seed is not None else [])

    def open(self, sequence_file: str | Path | None = None, create: bool = False) -> tuple[Sequence, Store, str | None]:
        """Resolve the sequence (from the file, else from the store's copy) and check it against the store.

        Returns (sequence, store, YAML text when the store still has to be created: see `ensure_created`).
        The device is resolved first: under torchrun that joins the process group, which decides who writes.
        """
        self.device  # noqa: B018
        store = Store(self.store_path)
        if sequence_file is not None:
            seq, text = load_sequence(sequence_file, self.all_overrides, base_dir=self.base_dir,
                                      also_merges=self.merges)
            if store.exists():
                _check_same_identity(seq, store, sequence_file)
                _check_base_model(seq, store)
                check_seed(seq, store)
                return seq, store, None
            if not create:
                raise InputError(f"{store.root}: not a pslora store; `pslora run {sequence_file}` starts one")
            from .models.vision import check_weights_file

            check_weights_file(seq.backbone)  # an unreadable weights file is refused before the store exists
            return seq, store, text
        if not store.exists():
            raise InputError(f"{store.root}: not a pslora store; pass --sequence FILE (or use `pslora run FILE`) "
                             f"to start one")
        manifest = store.manifest()
        seq = sequence_from_stored(manifest["sequence"], str(store.sequence_copy), self.all_overrides, self.merges)
        if self.all_overrides and identity_hash(seq) != manifest["identity_hash"]:
            raise InputError("--set: backbone, lora, scenario and tasks are fixed for a store; "
                             "only method, training and seed settings may be overridden")
        _check_base_model(seq, store)
        check_seed(seq, store)
        return seq, store, None

    def ensure_created(self, seq: Sequence, store: Store, text: str | None) -> None:
        """Create the store (rank 0 under torchrun) when `open` said it does not exist yet."""
        from . import distributed

        if text is not None and not store.exists() and distributed.world().is_main:
            from .models import backbone_identity, weights_stamp

            store.create(seq.to_dict(), text, identity_hash(seq),
                         backbone_identity(seq.backbone) | {"files": weights_stamp(seq.backbone)})
            self.reporter.info(f"created store {store.root} for sequence {seq.name!r} ({len(seq.tasks)} tasks)")
        distributed.barrier()


def _check_same_identity(seq: Sequence, store: Store, sequence_file) -> None:
    manifest = store.manifest()
    if manifest["identity_hash"] != identity_hash(seq):
        stored, mine = manifest["sequence"], seq.section(*IDENTITY_KEYS)
        differing = [k for k in IDENTITY_KEYS if canonical_hash(stored.get(k)) != canonical_hash(mine[k])]
        raise InputError(f"{sequence_file}: does not match the store {store.root} "
                         f"(differs in: {', '.join(differing)}); use another --store")


# Settings that change what a task's adapter is; checkpointing and the scoring batch do not.
_NOT_TRAINING = {"training": ("checkpoint_every", "eval_batch_size")}


def check_same_training(seq: Sequence, store: Store) -> None:
    """`run` continues a store only with the method and training settings its tasks were trained with: a task
    added under other settings, or a finished store reused under them (by `compare`), would be reported under a
    configuration it was not trained with."""
    mine = seq.section("method", "training")
    for task_id in seq.task_ids:
        if not store.has_task(task_id):
            continue
        recorded = store.task_meta(task_id).get("config", {})
        for section in ("method", "training"):
            old, new = recorded.get(section), mine[section]
            if old is None:
                continue
            for key in sorted(set(old) | set(new)):
                if key in _NOT_TRAINING.get(section, ()) or old.get(key) == new.get(key) or _idle(seq, key, old):
                    continue
                raise InputError(f"{store.root}: task {task_id} was trained with {section}.{key}={old.get(key)!r}, "
                                 f"this run asks {new.get(key)!r}; use another --store, or --set "
                                 f"{section}.{key}={old.get(key)} to continue it")


def _idle(seq: Sequence, key: str, old: dict) -> bool:
    """A method setting that changes nothing for this method: a loss term's setting while the term is off (before
    and now), another method's own setting (InfLoRA's thresholds under inc-lora)."""
    from .methods import METHODS, TERMS, method_settings

    for term in TERMS.values():
        if key in term.settings:
            return not old.get(term.weight) and not getattr(seq.method, term.weight)
    if any(key in (spec.hooks.settings if spec.hooks else ()) for spec in METHODS.values()):
        return key not in method_settings(seq.method.spec)
    from .training.selection import tuned_fields

    return key in tuned_fields(seq)  # chosen per task by the selection protocol (recorded in meta.json)


def check_seed(seq: Sequence, store: Store) -> None:
    """A store holds one seed: the data split follows it, so a task trained under one seed and scored (or trained
    against) under another would meet its own training rows in the test split."""
    for task_id in seq.task_ids:
        if store.has_task(task_id):
            trained = store.task_meta(task_id).get("seed")
            if trained is not None and trained != seq.seed:
                raise InputError(f"seed {seq.seed}: task {task_id} in {store.root} was trained with seed {trained}, "
                                 f"whose data split differs; use seed {trained} here, or another --store for "
                                 f"seed {seq.seed}")


def _check_base_model(seq: Sequence, store: Store) -> None:
    from .models import check_base_model

    check_base_model(seq.backbone, store.manifest().get("base_model") or {}, store.root)


def writing(store: Store):
    """The store's write lock, held by the one process that writes: rank 0 under torchrun."""
    from . import distributed

    return store.locked() if distributed.world().is_main else contextlib.nullcontext()
