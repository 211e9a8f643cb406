"""A tried and rejected alternative to the magnitude merge's fold: per row block, all T products
into one (T, rows, d) buffer, then |.| on the bit patterns, argmax over the task dimension (ties to the earlier
task) and a gather. Fewer passes over memory than folding task by task, but torch's argmax over a non-last
dimension is not vectorised on the CPU. Times against the shipped merge and merge_floor.py's floor (the T products), same
factors, rounds interleaved, medians; the result is checked equal to the shipped merge.

    .venv/bin/python benchmarks/performance/merge_argmax_trial.py [--cases 1024x4,2048x15,2048x50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from merge_floor import factors, floor  # noqa: E402


def argmax_merge(pairs, block_elements: int = 1 << 18):
    import torch

    d_out, d_in = pairs[0][0].shape[0], pairs[0][1].shape[1]
    rows = max(16, block_elements // d_in // 16 * 16)
    out = torch.empty(d_out, d_in)
    products = torch.empty(len(pairs), rows, d_in)
    magnitudes = torch.empty(len(pairs), rows, d_in, dtype=torch.int32)
    for r0 in range(0, d_out, rows):
        k = min(r0 + rows, d_out) - r0
        for t, (b, a) in enumerate(pairs):
            torch.matmul(b[r0:r0 + k], a, out=products[t, :k])
        torch.bitwise_and(products[:, :k].view(torch.int32), 0x7FFFFFFF, out=magnitudes[:, :k])
        winner = magnitudes[:, :k].argmax(0, keepdim=True)
        torch.gather(products[:, :k], 0, winner, out=out[r0:r0 + k][None])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="1024x4,2048x15,2048x50")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    from pslora_cli.core.merges.magnitude import magnitude_merge_factors

    torch.set_num_threads(args.threads)
    print("| d x d, T | shipped merge / floor | argmax trial / floor | trial / shipped | equal |")
    print("| --- | --- | --- | --- | --- |")
    for case in args.cases.split(","):
        d, tasks = (int(v) for v in case.split("x"))
        pairs = factors(d, tasks)
        equal = torch.equal(magnitude_merge_factors(pairs), argmax_merge(pairs))
        times = {"shipped": [], "trial": [], "floor": []}
        for _ in range(args.rounds):
            for name, fn in (("shipped", magnitude_merge_factors), ("trial", argmax_merge), ("floor", floor)):
                t0 = time.perf_counter()
                fn(pairs)
                times[name].append(time.perf_counter() - t0)
        m = {k: statistics.median(v) for k, v in times.items()}
        print(f"| {d}², {tasks} | {m['shipped'] / m['floor']:.1f}x | {m['trial'] / m['floor']:.1f}x | "
              f"{m['trial'] / m['shipped']:.1f}x | {equal} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
