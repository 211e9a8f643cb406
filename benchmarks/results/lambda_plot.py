"""ACC and BWT against λ, one line per loss variant, from finished `pslora run` stores (one seed each), with the
λ = 0 result (the merge alone) drawn as a horizontal line.

    .venv/bin/python benchmarks/results/lambda_plot.py --out benchmarks/figures/lambda-gen.png \
        --zero 78.0,-17.3 [--recorded dir+fro:0.01:79.0:-15.3 ...] STORE [STORE ...]

--zero ACC,BWT is the λ = 0 point and --recorded VARIANT:λ:ACC:BWT a point whose store is gone (both in percent).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from paired import metrics  # benchmarks/results/paired.py: a store's seed and primary metrics


def store_point(store: Path) -> tuple[str, float, float, float]:
    method = json.loads((store / "manifest.json").read_text())["sequence"]["method"]
    _, primary = metrics(store)
    return method["variant"], float(method["stability_weight"]), 100 * primary["acc"], 100 * primary["bwt"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stores", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--zero", help="ACC,BWT at λ = 0 (percent)")
    ap.add_argument("--recorded", action="append", default=[], help="VARIANT:λ:ACC:BWT (percent)")
    ap.add_argument("--title", default="gen-mixed-order1, seed 0")
    args = ap.parse_args()

    points = [store_point(s) for s in args.stores]
    for r in args.recorded:
        variant, lam, acc, bwt = r.rsplit(":", 3)
        points.append((variant, float(lam), float(acc), float(bwt)))
    by_variant = defaultdict(list)
    for variant, lam, acc, bwt in points:
        by_variant[variant].append((lam, acc, bwt))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for variant, rows in sorted(by_variant.items()):
        rows.sort()
        for ax, column in zip(axes, (1, 2)):
            ax.plot([r[0] for r in rows], [r[column] for r in rows], marker="o", label=variant)
    if args.zero:
        zero = [float(v) for v in args.zero.split(",")]
        for ax, value in zip(axes, zero):
            ax.axhline(value, color="grey", linestyle="--", label="λ = 0 (merge only)")
    for ax, name in zip(axes, ("ACC (%)", "BWT (%)")):
        ax.set_xscale("log")
        ax.set_xlabel("λ (stability_weight)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(args.title)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    for variant, rows in sorted(by_variant.items()):
        print(variant, " ".join(f"λ={lam:g}: {acc:.1f}/{bwt:.1f}" for lam, acc, bwt in rows))


if __name__ == "__main__":
    main()
