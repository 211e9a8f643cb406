"""Side by side, one process, interleaved: the streaming magnitude merge of this tree vs another version of
pslora_cli (e.g. the previous commit), on the same synthetic adapters; checks the outputs are bitwise equal.

    mkdir -p /tmp/old && git archive HEAD~1 pslora_cli | tar -x -C /tmp/old && mv /tmp/old/pslora_cli /tmp/old/pslora_old
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/performance/merge_ab.py /tmp/old [--tasks 15] [--rounds 5]
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from perf_merge import SHAPES, write_adapters  # noqa: E402

from pslora_cli.models.adapters import merged_deltas, open_adapters  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("other", help="folder holding the other version as package pslora_old")
    parser.add_argument("--tasks", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, args.other)
    from pslora_old.adapters import merged_deltas as old_merged, open_adapters as old_open

    torch.set_num_threads(1)
    print(f"| shape | modules | tasks | this tree s | other s | other / this (median of rounds) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for shape, (d, layers) in SHAPES.items():
        dirs = write_adapters(Path(tempfile.mkdtemp()), d, layers, args.tasks)
        new = lambda: dict(merged_deltas(open_adapters(Path(x) for x in dirs), "magnitude"))  # noqa: E731
        old = lambda: dict(old_merged(old_open(Path(x) for x in dirs), "magnitude"))  # noqa: E731
        a, b = new(), old()
        assert all(torch.equal(a[k].view(torch.int32), b[k].view(torch.int32)) for k in a), "outputs differ"
        del a, b
        tn, to = [], []
        for _ in range(args.rounds):
            t = time.perf_counter(); new(); tn.append(time.perf_counter() - t)  # noqa: E702
            t = time.perf_counter(); old(); to.append(time.perf_counter() - t)  # noqa: E702
        ratio = statistics.median(o / n for o, n in zip(to, tn))
        print(f"| {shape} | {2 * layers} of {d}x{d} | {args.tasks} | {statistics.median(tn):.3f} | "
              f"{statistics.median(to):.3f} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
