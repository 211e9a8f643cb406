"""Paired differences of two methods over the same seeds, from finished stores: per seed the primary ACC and BWT
of A and B, the mean ± sample std of each, and of A − B the mean with a two-sided 95 % t interval (n − 1 degrees of
freedom; with 2 seeds the interval is wide by construction). Stores are paired by the seed in their manifest.

    .venv/bin/python benchmarks/results/paired.py --a STORE [STORE ...] --b STORE [STORE ...] [--names A,B]
        [--split test|validation]           (the matrix `pslora eval --split` wrote; default test)
        [--b-recorded SEED=ACC,BWT ...]     (a result recorded in RESULTS.md whose store is gone, in %)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pslora_cli.core.metrics import paired_interval  # noqa: E402


def metrics(store: Path, split: str = "test") -> tuple[int, dict]:
    seed = json.loads((store / "manifest.json").read_text())["sequence"]["seed"]
    folder = store / "eval" if split == "test" else store / "eval" / split
    doc = json.loads((folder / "matrix.json").read_text())
    return seed, doc["metrics"]["primary"]


def recorded(text: str) -> tuple[int, dict]:
    seed, _, values = text.partition("=")
    acc, bwt = (float(v) / 100 for v in values.split(","))
    return int(seed), {"acc": acc, "bwt": bwt}


def summary(values: list[float]) -> str:
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def interval(diffs: list[float]) -> str:
    d = paired_interval(diffs)  # the interval `pslora compare` reports
    if d["low"] is None:
        return f"{100 * d['mean']:+.1f} (one seed: no interval)"
    return f"{100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", nargs="*", type=Path, default=[])
    ap.add_argument("--b", nargs="*", type=Path, default=[])
    ap.add_argument("--names", default="A,B")
    ap.add_argument("--split", default="test", choices=("test", "validation"))
    ap.add_argument("--a-recorded", nargs="*", default=[])
    ap.add_argument("--b-recorded", nargs="*", default=[])
    args = ap.parse_args()
    name_a, name_b = args.names.split(",")
    a = dict(metrics(s, args.split) for s in args.a) | dict(recorded(r) for r in args.a_recorded)
    b = dict(metrics(s, args.split) for s in args.b) | dict(recorded(r) for r in args.b_recorded)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise SystemExit("no seed in common")
    for key, label in (("acc", "ACC"), ("bwt", "BWT")):
        va, vb = [a[s][key] for s in seeds], [b[s][key] for s in seeds]
        per_seed = ", ".join(f"{100 * x:.1f} vs {100 * y:.1f}" for x, y in zip(va, vb))
        print(f"| {label} | {name_a} − {name_b} | seeds {','.join(map(str, seeds))} | {summary(va)} | {summary(vb)} | "
              f"{interval([x - y for x, y in zip(va, vb)])} | {per_seed} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
