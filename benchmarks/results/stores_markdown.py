"""Markdown for RESULTS.md from finished stores (each one `pslora run`) or from committed rows (the `--json` output
of `pslora run`, as in benchmarks/results/rows/): per store its method, seed, ACC, BWT, forgetting, learning
accuracy and training time, then each store's primary accuracy matrix. With --per-task, one table instead: ACC, BWT,
forgetting, learning accuracy, FWT and, per task, its accuracy right after it was trained → at the end (the end
alone for the last task, and for a store that never forgets, such as the per-task bound).

    .venv/bin/python benchmarks/results/stores_markdown.py [--split validation] [--per-task] STORE|ROW.json [...]
"""

import argparse
import json
from pathlib import Path


def pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}".replace("-", "−")


def signed(v) -> str:
    return "—" if v is None else f"{100 * v:+.1f}".replace("-", "−")


def load(path: Path, split: str) -> dict:
    """Label, method, seed, training minutes (None for a row) and the matrix document of a store or a row."""
    if path.is_file():  # a row (`run --json`, or `eval --json`'s bare matrix): the store is gone, its name says what
        data = json.loads(path.read_text())
        doc = data.get("matrix", data)
        if doc.get("split", "test") != split:
            raise SystemExit(f"{path}: a {doc.get('split')} matrix, not {split} (--split)")
        return {"label": path.stem, "method": "—", "seed": "—", "minutes": None, "doc": doc}
    seq = json.loads((path / "manifest.json").read_text())["sequence"]
    folder = path / "eval" if split == "test" else path / "eval" / split
    seconds = sum(json.loads(p.read_text())["train"]["seconds"] for p in (path / "tasks").glob("*/meta.json"))
    return {"label": path.name, "method": seq["method"]["name"], "seed": seq["seed"], "minutes": seconds / 60,
            "doc": json.loads((folder / "matrix.json").read_text())}


def per_task_cells(doc: dict) -> list[str]:
    """Each task's accuracy right after its training → at the end of the sequence (primary scenario)."""
    grid, T = doc[doc["primary"]], len(doc["tasks"])
    after = [grid[i + 1][i] for i in range(T)]
    end = [grid[T][i] for i in range(T)]
    if after == end:
        return [pct(v) for v in end]
    return [f"{pct(a)} → {pct(e)}" for a, e in zip(after[:-1], end[:-1])] + [pct(end[-1])]


def per_task_table(stores: list[dict]) -> None:
    tasks = stores[0]["doc"]["tasks"]
    if any(s["doc"]["tasks"] != tasks for s in stores):
        raise SystemExit("--per-task: the stores do not share one task order; give one sequence's stores at a time")
    print("| store | ACC | BWT | forgetting | learning acc. | FWT | " + " | ".join(tasks) + " |")
    print("| --- " * (6 + len(tasks)) + "|")
    for s in stores:
        m = s["doc"]["metrics"]["primary"]
        cells = " | ".join(per_task_cells(s["doc"]))
        print(f"| {s['label']} | {pct(m['acc'])} | {pct(m['bwt'])} | {pct(m['forgetting'])} | "
              f"{pct(m['learning_accuracy'])} | {signed(m.get('fwt'))} | {cells} |")


def main(paths: list[Path], split: str = "test", per_task: bool = False) -> None:
    stores = [load(p, split) for p in paths]
    if per_task:
        return per_task_table(stores)
    print("| store | method | seed | ACC | BWT | forgetting | learning acc. | training min |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for s in stores:
        m = s["doc"]["metrics"]["primary"]
        minutes = "—" if s["minutes"] is None else f"{s['minutes']:.0f}"
        print(f"| {s['label']} | {s['method']} | {s['seed']} | {pct(m['acc'])} | {pct(m['bwt'])} | "
              f"{pct(m['forgetting'])} | {pct(m['learning_accuracy'])} | {minutes} |")
    for s in stores:
        doc = s["doc"]
        tasks = ", ".join(doc["tasks"])
        print(f"\n{s['label']} ({doc['primary']}, {doc.get('scorer', 'heads')}), after \\ on: {tasks}")
        for t, row in enumerate(doc[doc["primary"]]):
            label = "base" if t == 0 else doc["tasks"][t - 1]
            print(f"    {label:>10}  " + "  ".join(f"{pct(v):>5}" for v in row))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", type=Path, metavar="STORE|ROW.json")
    ap.add_argument("--split", default="test", choices=("test", "validation"))
    ap.add_argument("--per-task", action="store_true")
    args = ap.parse_args()
    main(args.paths, args.split, args.per_task)
