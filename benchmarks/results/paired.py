"""Paired differences of two methods over the same seeds, from finished stores: per seed the primary ACC and BWT
of A and B, the mean ± sample std of each, and of A − B the mean with a two-sided 95 % t interval (n − 1 degrees of
freedom; with 2 seeds the interval is wide by construction). Stores are paired by (sequence, seed) from their
manifests: orders are different sequences, and two stores of one side with the same sequence and seed are an error
(one would silently replace the other).

Where both stores of a pair kept their last row's per-prompt record (matrix.json's "hits"; `pslora eval` adds it to
a store scored before), a second ACC row per pair gives the difference over the same test prompts, with its 95 %
normal interval and the prompts only one side got right: it measures the test set's sampling, not another seed's
training. A third counts every prompt once (acc_weighted): where it differs from the second, the gap comes from
weighting tasks of different sizes equally.

A committed row (benchmarks/results/rows/*.json, written by make_row.py) stands for its store wherever a store goes.

    .venv/bin/python benchmarks/results/paired.py --a STORE [STORE ...] --b STORE [STORE ...] [--names A,B]
        [--split test|validation]           (the matrix `pslora eval --split` wrote; default test)
        [--b-recorded [SEQUENCE:]SEED=ACC,BWT ...]  (a result recorded in RESULTS.md whose store is gone, in %;
                                                     without SEQUENCE it pairs with that seed of any sequence)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pslora_cli.core.metrics import paired_interval, prompt_paired_interval  # noqa: E402
from make_row import make_row  # noqa: E402 (benchmarks/results/make_row.py: one reading of a store)


def metrics(store: Path, split: str = "test") -> tuple[tuple[str, int], dict]:
    """(sequence, seed) and the primary metrics, with "hits": the last row's per-prompt records (None if any is
    missing). `store` is a store, or a committed row of one (a .json file written by make_row.py)."""
    if store.is_file():
        row = json.loads(store.read_text())
        if "sequence" not in row:
            raise SystemExit(f"{store}: a row without its sequence and data (write it with make_row.py)")
        if row["matrix"].get("split", "test") != split:
            raise SystemExit(f"{store}: a row of the {row['matrix'].get('split')} split, not {split}")
    else:
        row = make_row(store, split=split)  # a store is read as the row make_row.py would write of it
    sequence, doc, data = row["sequence"], row["matrix"], row.get("data_fingerprints") or []
    k = doc["metrics"]["primary"].get("num_tasks") or 0
    grid = (doc.get("hits") or {}).get(doc.get("primary"))
    last = grid[k][:k] if grid and k else [None]
    return (sequence["name"], sequence["seed"]), {**doc["metrics"]["primary"], "data": data[:k],
                                                  "hits": None if None in last else last}


def recorded(text: str) -> tuple[tuple[str, int], dict]:
    key, _, values = text.partition("=")
    sequence, _, seed = key.rpartition(":")
    acc, bwt = (float(v) / 100 for v in values.split(","))
    return (sequence or "*", int(seed)), {"acc": acc, "bwt": bwt}


def side(stores: list[Path], rows: list[str], split: str, name: str) -> dict:
    """(sequence, seed) -> metrics of one method; a key given twice is an error naming both."""
    out, where = {}, {}
    for key, value, origin in [(*metrics(s, split), str(s)) for s in stores] + [(*recorded(r), r) for r in rows]:
        if key in out:
            raise SystemExit(f"{name}: {origin} and {where[key]} are both sequence {key[0]} seed {key[1]}; pass one")
        out[key], where[key] = value, origin
    return out


def pairs(a: dict, b: dict) -> list[tuple[tuple[str, int], dict, dict]]:
    """The (key, a, b) with the same sequence and seed (a recorded row without a sequence matches any)."""
    out = []
    for key in sorted(a):
        sequence, seed = key
        if sequence == "*":
            found = [v for (_, other), v in b.items() if other == seed]
            match = found[0] if len(found) == 1 else None
        else:
            match = b.get(key, b.get(("*", seed)))
        if match is not None:
            out.append((key, a[key], match))
    return out


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
    a = side(args.a, args.a_recorded, args.split, name_a)
    b = side(args.b, args.b_recorded, args.split, name_b)
    matched = pairs(a, b)
    if not matched:
        raise SystemExit("no (sequence, seed) in common")
    keys = ",".join(f"{seq}:{seed}" if len({k[0] for k, _, _ in matched}) > 1 else str(seed)
                    for (seq, seed), _, _ in matched)
    for key, label in (("acc", "ACC"), ("bwt", "BWT")):
        va, vb = [x[key] for _, x, _ in matched], [y[key] for _, _, y in matched]
        per_seed = ", ".join(f"{100 * x:.1f} vs {100 * y:.1f}" for x, y in zip(va, vb))
        print(f"| {label} | {name_a} − {name_b} | seeds {keys} | {summary(va)} | {summary(vb)} | "
              f"{interval([x - y for x, y in zip(va, vb)])} | {per_seed} |")
    for (seq, seed), x, y in matched:
        if x.get("hits") and y.get("hits") and x["data"] != y["data"]:  # one name and seed, other data settings
            print(f"{seq}:{seed}: the two stores' tasks hold other data (fingerprints differ): no per-prompt row",
                  file=sys.stderr)
        elif x.get("hits") and y.get("hits"):
            d = prompt_paired_interval(x["hits"], y["hits"])
            if d["low"] is not None:  # None where a task has fewer than two prompts
                span = f"{100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
                print(f"| ACC, per prompt | {name_a} − {name_b} | {seq}:{seed} | {100 * x['acc']:.1f} | "
                      f"{100 * y['acc']:.1f} | {span} | "
                      f"{d['n']} prompts: only {name_a} right {d['a_only']}, only {name_b} right {d['b_only']} |")
            if d["pooled_low"] is None:
                continue
            right = [sum(h.count("1") for h in z["hits"]) / d["n"] for z in (x, y)]
            print(f"| ACC, each prompt once | {name_a} − {name_b} | {seq}:{seed} | {100 * right[0]:.1f} | "
                  f"{100 * right[1]:.1f} | {100 * d['pooled_mean']:+.1f} [{100 * d['pooled_low']:+.1f}, "
                  f"{100 * d['pooled_high']:+.1f}] | tasks weighted by their prompts (acc_weighted) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
