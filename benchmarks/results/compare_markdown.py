"""Render a `pslora compare` result (OUT/compare.json, written by the compare command) as the markdown table of
benchmarks/RESULTS.md, adding each store's training time (the sum of its tasks' `train.seconds` in meta.json,
which a resumed or re-printed compare does not re-measure).

    .venv/bin/python benchmarks/results/compare_markdown.py benchmarks/out/compare-mixed
"""

import json
import statistics
import sys
from pathlib import Path

COLUMNS = [("acc", "ACC"), ("bwt", "BWT"), ("forgetting", "forgetting"), ("learning_accuracy", "learning acc."),
           ("avg_incremental_accuracy", "avg. incremental"), ("fwt_task_aware", "FWT (task-aware)")]


def cell(stat: dict) -> str:
    if stat["mean"] is None:
        return "—"
    std = "" if stat["std"] is None else f" ± {100 * stat['std']:.1f}"
    return f"{100 * stat['mean']:.1f}{std}".replace("-", "−")


def training_minutes(store: Path) -> float:
    seconds = 0.0
    for meta in (store / "tasks").glob("*/meta.json"):
        seconds += json.loads(meta.read_text())["train"]["seconds"]
    return seconds / 60


SPLIT = [("bwt_backbone", "BWT backbone (task-aware)"), ("bwt_heads", "BWT heads")]


def main(out: str) -> int:
    doc = json.loads((Path(out) / "compare.json").read_text())
    split = any((row.get("bwt_heads") or {}).get("mean") is not None for row in doc["summary"].values())
    columns = COLUMNS + (SPLIT if split else [])
    print(f"`{doc['sequence']}`, seeds {', '.join(map(str, doc['seeds']))}, {doc['orders']} order(s)\n")
    print("| method | runs | " + " | ".join(h for _, h in columns) + " | training per store (min) |")
    print("| --- " * (len(columns) + 3) + "|")
    for method, row in doc["summary"].items():
        stores = [Path(r["store"]) for r in doc["runs"] if r["method"] == method]
        minutes = statistics.mean(training_minutes(s) for s in stores)
        name = f"{method} (oracle: told the task)" if split and method == "per-task" else method
        print(f"| {name} | {row['runs']} | " + " | ".join(cell(row[k]) for k, _ in columns) + f" | {minutes:.1f} |")
    paired = doc.get("paired")  # an older compare.json has none
    if paired and paired["methods"]:
        print(f"\nPaired differences from {paired['baseline']} (same seed and order), mean [95 % t interval]:\n")
        print("| method | pairs | Δ ACC | Δ BWT |\n| --- | --- | --- | --- |")
        for method, row in paired["methods"].items():
            print(f"| {method} − {paired['baseline']} | {row['acc']['n']} | " +
                  " | ".join(interval(row[k]) for k in ("acc", "bwt")) + " |")
    return 0


def interval(d: dict) -> str:
    if d["mean"] is None:
        return "—"
    text = f"{100 * d['mean']:+.1f}" + ("" if d["low"] is None else f" [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]")
    return text.replace("-", "−")


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        sys.exit(print(__doc__))
    sys.exit(main(sys.argv[1]))
