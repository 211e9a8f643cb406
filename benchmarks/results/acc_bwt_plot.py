"""ACC against BWT per method: the mean over its runs (seeds, or task orders: a run is one (sequence, seed)) with
its two-sided 95 % t interval on both axes (with two runs their range instead, since a 2-run t interval is ±12.7
standard errors; a point alone for one run), from finished stores and from results recorded in RESULTS.md whose
stores are gone. Up and right is better: more accurate at the end, less forgetting.

    .venv/bin/python benchmarks/results/acc_bwt_plot.py --out benchmarks/figures/acc-bwt-gen-mixed-order1.png \
        [--split test|validation] [--title TEXT] \
        METHOD=STORE [METHOD=STORE ...] [METHOD@[SEQUENCE:]SEED=ACC,BWT ...]      (recorded figures in %)

Two runs of one method with the same sequence and seed are an error (one would silently replace the other).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired import metrics  # noqa: E402  a store's seed and primary metrics
from pslora_cli.core.metrics import paired_interval  # noqa: E402


def points(items: list[str], split: str) -> dict[str, dict[tuple[str, int], tuple[float, float]]]:
    """method -> (sequence, seed) -> (ACC, BWT) in %."""
    out: dict[str, dict[tuple[str, int], tuple[float, float]]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"{item!r}: expected METHOD=STORE or METHOD@[SEQUENCE:]SEED=ACC,BWT")
        if "@" in name:
            name, _, run = name.partition("@")
            sequence, _, seed = run.rpartition(":")
            key, (acc, bwt) = (sequence, int(seed)), (float(v) for v in value.split(","))
        else:
            key, m = metrics(Path(value), split)
            acc, bwt = 100 * m["acc"], 100 * m["bwt"]
        # a run without its sequence may be any sequence's run of that seed: one of each is an error too
        clash = [k for k in out.get(name, {}) if k == key or k[1] == key[1] and "" in (k[0], key[0])]
        if clash:
            beside = "" if clash[0] == key else f" (beside {clash[0][0] or '(unnamed)'}: name both sequences)"
            raise SystemExit(f"{item!r}: {name} has a second run of sequence {key[0] or '(unnamed)'} seed {key[1]}"
                             + beside)
        out.setdefault(name, {})[key] = (acc, bwt)
    return out


def summarise(per_seed: dict[tuple[str, int], tuple[float, float]]) -> dict:
    accs, bwts = [v[0] for v in per_seed.values()], [v[1] for v in per_seed.values()]
    out = {"n": len(accs), "acc": statistics.mean(accs), "bwt": statistics.mean(bwts)}
    if len(accs) == 2:
        return {**out, "acc_ci": (min(accs), max(accs)), "bwt_ci": (min(bwts), max(bwts))}
    ia, ib = paired_interval(accs), paired_interval(bwts)  # the t interval of a mean (differences from 0)
    return {**out, "acc_ci": None if ia["low"] is None else (ia["low"], ia["high"]),
            "bwt_ci": None if ib["low"] is None else (ib["low"], ib["high"])}


def place_labels(fig, ax, summary: dict[str, dict], colors: dict[str, str]) -> None:
    """Each label at the first offset around its point that stays inside the axes and overlaps no label placed
    before it."""
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    offsets = [(6, 5), (6, -12), (-6, 5), (-6, -12), (6, 16), (6, -23), (-6, 16), (-6, -23)]
    placed = []
    order = sorted(summary.items(), key=lambda kv: -kv[1]["acc"])
    for name, s in order:
        for dx, dy in offsets:
            label = ax.annotate(f"{name} (n={s['n']})", (s["bwt"], s["acc"]), textcoords="offset points",
                                xytext=(dx, dy), fontsize=8, color=colors[name], ha="left" if dx > 0 else "right")
            box = label.get_window_extent(renderer)
            inside = frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
            if inside and not any(box.overlaps(other) for other in placed) or (dx, dy) == offsets[-1]:
                placed.append(box)
                break
            label.remove()


def plot(summary: dict[str, dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    colors = {name: f"C{i % 10}" for i, name in enumerate(summary)}
    for name, s in summary.items():
        color = colors[name]
        xerr = None if s["bwt_ci"] is None else [[s["bwt"] - s["bwt_ci"][0]], [s["bwt_ci"][1] - s["bwt"]]]
        yerr = None if s["acc_ci"] is None else [[s["acc"] - s["acc_ci"][0]], [s["acc_ci"][1] - s["acc"]]]
        ax.errorbar([s["bwt"]], [s["acc"]], xerr=xerr, yerr=yerr, fmt="o" if s["n"] > 1 else "s", color=color,
                    capsize=3, mfc=color if s["n"] > 2 else "white")
    ax.set_xlabel("BWT (points; 0 = no forgetting)")
    ax.set_ylabel("ACC (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.text(0.01, 0.01, "filled: 95 % t interval over 3+ runs; open circle: the two runs' range; "
            "open square: one run (n: runs, seeds or orders)", transform=ax.transAxes, fontsize=7, color="0.4")
    ax.margins(x=0.12, y=0.08)  # room for the labels of the outermost points
    fig.tight_layout()
    place_labels(fig, ax, summary, colors)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("items", nargs="+")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--split", default="test", choices=("test", "validation"))
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    summary = {name: summarise(per_seed) for name, per_seed in points(args.items, args.split).items()}
    for name, s in summary.items():
        ci = "" if s["acc_ci"] is None else f" ACC [{s['acc_ci'][0]:.1f}, {s['acc_ci'][1]:.1f}]" \
                                            f" BWT [{s['bwt_ci'][0]:.1f}, {s['bwt_ci'][1]:.1f}]"
        print(f"{name}: n={s['n']} ACC {s['acc']:.1f} BWT {s['bwt']:.1f}{ci}")
    plot(summary, args.out, args.title or f"ACC vs BWT ({args.split})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
