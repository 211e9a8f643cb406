"""Sweep PS-LoRA's open choices (METHOD.md [choice]) on a sequence with `pslora compare`, one config at a time,
and print a markdown table of ACC / BWT / forgetting (mean ± std over seeds).

    .venv/bin/python benchmarks/results/sweep.py task_sequences/wordnet-nouns.yaml --seeds 0 --out benchmarks/out/sweep \
        [--set training.steps=60 ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# name -> --set overrides on top of method.name=ps-lora (baselines use their own preset)
CONFIGS = {
    "inc-lora (no loss, sum)": ["method.name=inc-lora"],
    "ps-merge-only (no loss, magnitude)": ["method.name=ps-merge-only"],
    "ps-loss-only (loss, sum)": ["method.name=ps-loss-only"],
    "ps-lora default": [],
    "lambda=0.01": ["method.stability_weight=0.01"],
    "lambda=0.03": ["method.stability_weight=0.03"],
    "lambda=0.1": ["method.stability_weight=0.1"],
    "lambda=1": ["method.stability_weight=1"],
    "lambda=10": ["method.stability_weight=10"],
    "alpha fixed 1": ["method.alpha_mode=fixed", "method.alpha=1"],
    "alpha fixed 1000": ["method.alpha_mode=fixed", "method.alpha=1000"],
    "adaptive c=1": ["method.alpha=1"],
    "adaptive c=3": ["method.alpha=3"],
    "reduction sum": ["method.reduction=sum"],
    "variant weighted-dir+fro": ["method.variant=weighted-dir+fro"],
    "variant dir+factor": ["method.variant=dir+factor"],
    "variant deviation": ["method.variant=deviation"],
    "previous sum": ["method.previous=sum"],
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("sequence")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", default="benchmarks/out/sweep")
    parser.add_argument("--only", default=None, help="semicolon-separated config names to run")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    configs = {k: v for k, v in CONFIGS.items() if not args.only or k in args.only.split(";")}
    rows = []
    for name, sets in configs.items():
        out = Path(args.out) / name.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
        method = next((s.split("=", 1)[1] for s in sets if s.startswith("method.name=")), "ps-lora")
        cmd = [sys.executable, "-m", "pslora_cli", "compare", args.sequence, "--methods", method,
               "--seeds", args.seeds, "--out", str(out), "--json", "--quiet", "--device", "cpu"]
        for s in sets + args.overrides:
            if not s.startswith("method.name="):
                cmd += ["--set", s]
        started = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            print(f"{name}: failed: {result.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        summary = json.loads(result.stdout)["summary"][method]
        rows.append((name, summary, time.perf_counter() - started))
        print(f"{name}: acc {summary['acc']['mean']:.4f} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    print("| config | ACC | BWT | forgetting | learning acc | wall (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, s, wall in rows:
        cell = lambda m: "—" if s[m]["mean"] is None else f"{100 * s[m]['mean']:.1f} ± {100 * s[m]['std']:.1f}"  # noqa: E731
        print(f"| {name} | {cell('acc')} | {cell('bwt')} | {cell('forgetting')} | {cell('learning_accuracy')} | {wall:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
