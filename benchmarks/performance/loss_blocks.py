"""Block size of the lean stability loss on the CPU: forward + backward of one module's loss (rank 8, history of
3 earlier tasks as stacked factors, as training keeps it) for several block sizes, interleaved round by round so
that load on the machine hits them alike; prints the median time and the ratio to the default block size.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/performance/loss_blocks.py [--rounds 7]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pslora_cli.core import stability_lean  # noqa: E402
from pslora_cli.core.stability import adaptive_alpha, lora_delta  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--sizes", default="1024x1024,4096x4096")
    args = ap.parse_args()
    default = stability_lean.BLOCK_ELEMENTS["cpu"]
    blocks = sorted({1 << 16, 1 << 17, 1 << 18, 1 << 19, 1 << 20, 1 << 22, default})
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); default block {default} elements")
    print("| module | block (elements) | ms (median) | time / default |")
    print("| --- | --- | --- | --- |")
    for size in args.sizes.split(","):
        d_out, d_in = (int(x) for x in size.split("x"))
        g = torch.Generator().manual_seed(0)
        a = (torch.randn(8, d_in, generator=g) / d_in ** 0.5).requires_grad_(True)
        b = (torch.randn(d_out, 8, generator=g) * 1e-3).requires_grad_(True)
        prev = [(torch.randn(8, d_in, generator=g) / d_in ** 0.5, torch.randn(d_out, 8, generator=g) * 1e-3, 2.0)
                for _ in range(3)]
        h = sum(lora_delta(pa, pb, s) for pa, pb, s in prev)
        hist = stability_lean.prepare_history(h, prev, alpha=adaptive_alpha(h), store="factors")
        times = {blk: [] for blk in blocks}
        for _ in range(args.rounds):
            for blk in blocks:
                rows = max(1, min(d_out, blk // d_in))
                t0 = time.perf_counter()
                hist.loss(a, b, 2.0, block_rows=rows).backward()
                times[blk].append(time.perf_counter() - t0)
                a.grad = b.grad = None
        base = statistics.median(times[default])
        for blk in blocks:
            med = statistics.median(times[blk])
            mark = " (default)" if blk == default else ""
            print(f"| {d_out}x{d_in} | 2^{blk.bit_length() - 1}{mark} | {med * 1000:.1f} | {med / base:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
