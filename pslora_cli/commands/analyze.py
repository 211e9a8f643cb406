"""`pslora analyze-shifts`: check the options, analyse the store (and the compared one), write the files."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from ..config import Sequence
from ..errors import InputError
from ..session import Session
from ..store import Store
from ..analysis.files import render_files, write_all
from ..analysis.intervention import intervene
from ..analysis.options import AnalysisOptions, parse_subset
from ..analysis.stats import analyze_store, comparison


ADAPTERS_OUT = Path("pslora-shifts")  # where --adapters writes without --out


def analyze_shifts(session: Session, aopts: AnalysisOptions) -> dict:
    started = time.perf_counter()
    _check_options(aopts)
    reporter, device = session.reporter, session.device
    if aopts.adapters:
        return _analyze_adapters(aopts, device, reporter, started)
    seq, store, _ = session.open()
    other = _open_compared(session, aopts, store)
    doc = analyze_store(seq, store, aopts, device, reporter)
    if other is not None:
        doc["compare"] = analyze_store(*other, aopts, device, reporter)
        doc["comparison"] = comparison(doc, doc["compare"])
    doc["intervention"] = intervene(seq, store, doc, aopts, device, reporter) if aopts.intervene else None
    files = render_files(doc, aopts.figures)
    targets = [(store.analysis_dir, True)] if aopts.write_store else []  # (folder, inside the store)
    if aopts.out is not None:
        targets.append((Path(aopts.out), False))
    doc["files"] = [str(folder / name) for folder, _ in targets for name in ["shifts.json"] + sorted(files)]
    doc["seconds"] = round(time.perf_counter() - started, 3)
    for folder, in_store in targets:
        if in_store:
            with store.locked():
                write_all(folder, files, doc)
        else:
            write_all(folder, files, doc)
    if targets:
        reporter.info("wrote " + ", ".join(sorted(files)) + " and shifts.json to "
                      + " and ".join(str(folder) for folder, _ in targets))
    return doc


def _analyze_adapters(aopts: AnalysisOptions, device, reporter, started: float) -> dict:
    """--adapters: adapters from anywhere, no store: the statistics and figures, written to --out."""
    from ..analysis.stats import analyze_adapter_set

    for flag, given in (("--intervene", aopts.intervene), ("--compare", aopts.compare is not None)):
        if given:
            raise InputError(f"{flag}: needs a store (its model, data and accuracy matrix); not with --adapters")
    doc = analyze_adapter_set(list(aopts.adapters), aopts, device, reporter)
    doc["intervention"] = None
    files = render_files(doc, aopts.figures)
    folder = Path(aopts.out) if aopts.out is not None else ADAPTERS_OUT
    doc["files"] = [str(folder / name) for name in ["shifts.json"] + sorted(files)]
    doc["seconds"] = round(time.perf_counter() - started, 3)
    write_all(folder, files, doc)
    reporter.info("wrote " + ", ".join(sorted(files)) + f" and shifts.json to {folder}")
    return doc


def _check_options(aopts: AnalysisOptions) -> None:
    aopts.parsed_subset = parse_subset(aopts.subset)
    if aopts.bins < 1:
        raise InputError(f"--bins {aopts.bins}: must be at least 1")
    if aopts.max_samples < 2:
        raise InputError(f"--max-samples {aopts.max_samples}: must be at least 2")
    if aopts.out is not None and aopts.out.exists() and not aopts.out.is_dir():
        raise InputError(f"--out {aopts.out}: exists and is not a folder")


def _open_compared(session: Session, aopts: AnalysisOptions, store: Store) -> tuple[Sequence, Store] | None:
    """The sequence and store of --compare (read only), or None without it."""
    if aopts.compare is None:
        return None
    other_seq, other_store, _ = dataclasses.replace(session, store_path=aopts.compare).open()
    if other_store.root.resolve() == store.root.resolve():
        raise InputError(f"--compare {aopts.compare}: is the same store as --store")
    return other_seq, other_store
