"""A committed row from a finished store: what the tables and the paired differences need once the store is gone
(stores do not survive a change of machine). The row is the run's `--json` output when given (checked to be this
store's), with the store's evaluated matrix (per-prompt records included), its sequence's name and seed, and its
tasks' data fingerprints. `paired.py` and `stores_markdown.py` read rows as they read stores. `--split validation`
makes the row of the store's validation scoring (`pslora eval --split validation`; its `--json` output as the run JSON).

    .venv/bin/python benchmarks/results/make_row.py STORE --out benchmarks/results/rows/NAME.json [--run-json FILE]
        [--split validation]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path


def matrix_path(store: Path, split: str = "test") -> Path:
    """The store's evaluated matrix of `split`; a store without one is one line naming it (no traceback)."""
    path = store / "eval" / "matrix.json" if split == "test" else store / "eval" / split / "matrix.json"
    if not path.is_file():
        raise SystemExit(f"{store}: no {path.relative_to(store)} (not a finished store"
                         f"{'' if split == 'test' else ', or not scored on ' + split})")
    return path


def make_row(store: Path, run_json: Path | None = None, split: str = "test") -> dict:
    doc = json.loads(matrix_path(store, split).read_text())
    sequence = json.loads((store / "manifest.json").read_text())["sequence"]
    metas = [store / "tasks" / task / "meta.json" for task in doc.get("tasks") or []]
    row = json.loads(run_json.read_text()) if run_json else {"store": str(store)}
    if run_json and "matrix" not in row:  # `pslora eval --json` prints the matrix itself, its selection beside it
        row = {"store": str(store), "selection": row.get("selection"), "matrix": row}
    elif run_json and split != "test":
        raise SystemExit(f"{run_json}: a run's output, scored on test; for the {split} row pass `pslora eval --split "
                         f"{split} --json`'s output")
    elif not run_json and split != "test":  # what a selection protocol chose, from the tasks' meta.json
        row["selection"] = {m.parent.name: json.loads(m.read_text()).get("selection") for m in metas if m.is_file()}
    if run_json and row.get("matrix", {}).get(doc["primary"]) != doc.get(doc["primary"]):
        raise SystemExit(f"{run_json}: its matrix is not {store}'s evaluated matrix (another store, or a rescoring)")
    row.update(matrix=doc, sequence={"name": sequence["name"], "seed": sequence["seed"]},
               data_fingerprints=[json.loads(m.read_text()).get("data_fingerprint") if m.is_file() else None
                                  for m in metas])
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--run-json", type=Path, default=None)
    ap.add_argument("--split", choices=("test", "validation"), default="test")
    args = ap.parse_args()
    row = make_row(args.store, args.run_json, args.split)
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, prefix=f".{args.out.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(row, f, indent=1)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would keep a row from the rest of a shared checkout
    os.replace(tmp, args.out)  # whole or not at all
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
