"""The magnitude merge against its floor: for T tasks of rank 8 on a d x d module, the time of
core.merges.magnitude.magnitude_merge_factors (what `pslora merge` runs per module) over the time of computing the
T dense products B_i @ A_i alone (into one reused buffer: the arithmetic no merge of the products can avoid). Both
on the same factors, in memory, one after the other in each round, rounds interleaved; the ratio is the median of
the per-round ratios. The merge's result is checked against a plain stack-and-argmax on the first round.

    .venv/bin/python benchmarks/performance/merge_floor.py [--sizes 1024,2048,4096] [--tasks 4,15,50] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

RANK = 8


def factors(d: int, tasks: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(d, RANK, generator=g) * 1e-2, torch.randn(RANK, d, generator=g) / d ** 0.5)
            for _ in range(tasks)]


def floor(fs) -> None:
    import torch

    buf = torch.empty(fs[0][0].shape[0], fs[0][1].shape[1])
    for b, a in fs:
        torch.matmul(b, a, out=buf)


def check(fs, merged) -> bool:
    import torch

    stack = torch.stack([b @ a for b, a in fs])
    want = stack.gather(0, stack.abs().argmax(0, keepdim=True))[0]
    return torch.equal(merged, want)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024,2048,4096")
    ap.add_argument("--tasks", default="4,15,50")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import torch

    from pslora_cli.core.merges.magnitude import magnitude_merge_factors

    torch.set_num_threads(args.threads)
    rows = []
    for d in (int(x) for x in args.sizes.split(",")):
        for t in (int(x) for x in args.tasks.split(",")):
            fs = factors(d, t)
            equal = check(fs, magnitude_merge_factors(iter(fs)))
            times = {"floor": [], "merge": []}
            for _ in range(args.rounds):
                for name, fn in (("floor", lambda: floor(fs)), ("merge", lambda: magnitude_merge_factors(iter(fs)))):
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
            ratio = statistics.median(m / f for m, f in zip(times["merge"], times["floor"]))
            row = {"d": d, "tasks": t, "floor_s": statistics.median(times["floor"]),
                   "merge_s": statistics.median(times["merge"]), "ratio": ratio, "equal_to_argmax": equal}
            rows.append(row)
            print(f"d {d} T {t}: floor {row['floor_s']:.3f} s, merge {row['merge_s']:.3f} s, ratio {ratio:.2f}x, "
                  f"equal {equal}", flush=True)
    print("\n| d x d | tasks | products alone (s) | magnitude merge (s) | merge / floor | goal <= 2x | equal to argmax |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['d']}² | {r['tasks']} | {r['floor_s']:.3f} | {r['merge_s']:.3f} | {r['ratio']:.2f}x | "
              f"{'met' if r['ratio'] <= 2 else 'not met'} | {r['equal_to_argmax']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
