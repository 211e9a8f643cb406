"""Markdown for RESULTS.md from finished stores (each one `pslora run`): per store its method, seed, ACC, BWT,
forgetting, learning accuracy and training time, then each store's primary accuracy matrix.

    .venv/bin/python benchmarks/results/stores_markdown.py [--split validation] STORE [STORE ...]
"""

import json
import sys
from pathlib import Path


def pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}".replace("-", "−")


def main(stores: list[Path], split: str = "test") -> None:
    rows = []
    print("| store | method | seed | ACC | BWT | forgetting | learning acc. | training min |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for store in stores:
        seq = json.loads((store / "manifest.json").read_text())["sequence"]
        folder = store / "eval" if split == "test" else store / "eval" / split
        doc = json.loads((folder / "matrix.json").read_text())
        m = doc["metrics"]["primary"]
        minutes = sum(json.loads(p.read_text())["train"]["seconds"] for p in (store / "tasks").glob("*/meta.json")) / 60
        print(f"| {store.name} | {seq['method']['name']} | {seq['seed']} | {pct(m['acc'])} | {pct(m['bwt'])} | "
              f"{pct(m['forgetting'])} | {pct(m['learning_accuracy'])} | {minutes:.0f} |")
        rows.append((store.name, doc))
    for name, doc in rows:
        grid = doc[doc["primary"]]
        print(f"\n{name} ({doc['primary']}, {doc.get('scorer', 'heads')}), after \\ on: {', '.join(doc['tasks'])}")
        for t, row in enumerate(grid):
            label = "base" if t == 0 else doc["tasks"][t - 1]
            print(f"    {label:>10}  " + "  ".join(f"{pct(v):>5}" for v in row))


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        sys.exit(print(__doc__))
    split = "test"
    if args[:1] == ["--split"]:
        split, args = args[1], args[2:]
    main([Path(a) for a in args], split)
