"""Performance benchmarks, each measured side by side in one run, with ratios:

  1. training step time and peak memory: PS-LoRA (lean loss) vs plain LoRA (PEFT) vs a naive dense loss
     (MiniLM-L6, T5-large-sized and LLaMA-7B-sized layers)            benchmarks/performance/perf_train.py
  2. merging 4, 15, 50 task adapters: our streaming magnitude merge vs PEFT add_weighted_adapter (ties,
     magnitude_prune) vs naive stack-and-argmax: wall time, peak RSS   benchmarks/performance/perf_merge.py
  3. evaluation throughput: merge folded into the weights vs PEFT unmerged adapters   benchmarks/performance/perf_eval.py
  4. `pslora --help` latency (fresh processes)

    .venv/bin/python benchmarks/performance/run.py [--quick] [--only train,merge,eval,help] [--threads N] [--record]

--quick: smaller cases (under a minute on a 2-core machine). --threads: torch CPU threads, 1 by default (0: torch's
default), the same for every implementation. --record: write the tables into
benchmarks/RESULTS.md, section "Performance" (only that section is touched; a rerun of the same command
replaces its own entry). `make bench` runs this script.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from perf_common import machine, median, table  # noqa: E402

SECTION = "## Performance"
RESULTS = HERE.parent / "RESULTS.md"
PARTS = ("merge", "train", "eval", "help")


def help_latency(runs: int) -> dict:
    exe = Path(sys.executable).parent / "pslora"
    cmd = [str(exe), "--help"] if exe.exists() else [sys.executable, "-m", "pslora_cli", "--help"]
    env = dict(os.environ, COLUMNS="100")
    subprocess.run(cmd, capture_output=True, env=env, check=True)  # warm the file cache
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, env=env, check=True)
        times.append(time.perf_counter() - t0)
    probe = subprocess.run([sys.executable, "-c", "import sys, pslora_cli.cli; print('torch' in sys.modules)"],
                           capture_output=True, text=True, check=True).stdout.strip()
    return {"cmd": " ".join(shlex.quote(c) for c in cmd), "runs": runs, "median_s": median(times),
            "min_s": min(times), "max_s": max(times), "imports_torch": probe == "True"}


def targets(out: dict) -> list[list[str]]:
    rows = []
    train = {r["size"]: r for r in out.get("train", [])}
    if "llama-7b" in train:
        imp = train["llama-7b"]["impls"]
        lora, ps = imp["lora"], imp["ps-lean"]
        ratio = median([t / t0 for t, t0 in zip(ps["times"], lora["times"])])
        rows.append(["PS-LoRA step time <= 1.05x LoRA (LLaMA-7B size)", f"{ratio:.2f}x",
                     "met" if ratio <= 1.05 else "NOT met"])
        lt, pt = lora["persistent"] + lora["step_peak"], ps["persistent"] + ps["step_peak"]
        extra = (pt - lt) / lt
        rows.append(["PS-LoRA extra peak memory <= 10% of LoRA's (LLaMA-7B size)", f"{100 * extra:+.1f}%",
                     "met" if extra <= 0.10 else "NOT met"])
    merge = out.get("merge")
    if merge:
        for p in merge["plan"]:
            ours = [r for r in merge["rows"] if r["shape"] == p["shape"] and r["method"] == "ours" and "error" not in r]
            if len(ours) >= 2:
                g = [r["peak_rss"] - r["start_rss"] for r in ours]
                ratio = g[-1] / max(1, g[0])
                alloc = [r.get("alloc_peak") for r in ours]
                a_ratio = alloc[-1] / alloc[0] if all(alloc) else float("nan")
                rows.append([f"merge peak memory independent of #tasks ({p['shape']}, {ours[0]['n']} -> "
                             f"{ours[-1]['n']} tasks)", f"torch alloc peak x{a_ratio:.2f}, RSS growth x{ratio:.2f}",
                             "met" if a_ratio <= 1.01 else "NOT met"])
            by = {r["method"]: r for r in merge["rows"] if r["shape"] == p["shape"] and r["n"] == 15}
            if "ours" in by and "peft-ties" in by and "error" not in by["ours"] and "error" not in by["peft-ties"]:
                sp = by["peft-ties"]["wall_s"] / by["ours"]["wall_s"]
                rows.append([f"merge >= 3x faster than PEFT ties at 15 tasks ({p['shape']})", f"{sp:.2f}x",
                             "met" if sp >= 3 else "NOT met"])
    if "help" in out:
        h = out["help"]["median_s"]
        rows.append(["`pslora --help` < 0.3 s (median)", f"{h:.3f} s", "met" if h < 0.3 else "NOT met"])
    return rows


def render(out: dict, args, header: dict) -> str:
    import perf_eval
    import perf_merge
    import perf_train

    lines = [f"### `{header['command']}`", "",
             f"Date {header['date']}; machine: {header['machine']['nproc']} CPUs ({header['machine']['cpu']}), "
             f"{header['machine']['mem_gb']} GB RAM, 1-min load average at start {header['machine']['load_1min']} "
             f"(shared machine); torch {header['torch']} with {header['threads']} thread(s), peft {header['peft']}; "
             f"total wall time {header['wall_s']:.0f} s.", ""]
    if "train" in out:
        lines += ["#### 1. Training step (forward + loss + backward + AdamW)", "", perf_train.__doc__.strip(), "```",
                  perf_train.report(out["train"]).strip(), "```", ""]
    if "merge" in out:
        lines += ["#### 2. Merging task adapters", "", perf_merge.__doc__.strip(), "```",
                  perf_merge.report(out["merge"]).strip(), "```", ""]
    if "eval" in out:
        lines += ["#### 3. Evaluation throughput", "", perf_eval.__doc__.strip(), "```",
                  perf_eval.report(out["eval"]).strip(), "```", ""]
    if "help" in out:
        h = out["help"]
        lines += ["#### 4. `pslora --help` latency", "",
                  f"`{h['cmd']}`, {h['runs']} fresh processes: median {h['median_s']:.3f} s (min {h['min_s']:.3f}, "
                  f"max {h['max_s']:.3f}); importing pslora_cli.cli imports torch: {h['imports_torch']}.", ""]
    rows = targets(out)
    if rows:
        lines += ["#### Targets (ratios from this run)", "", table(["target", "measured", "status"], rows),
                  ""]
    return "\n".join(lines)


def record(entry: str, command: str) -> None:
    """Put `entry` into RESULTS.md under SECTION, replacing an earlier entry of the same command; nothing else in
    the file changes."""
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    lines = text.splitlines()
    start = next((i for i, l in enumerate(lines) if l.strip() == SECTION), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + SECTION + "\n\n" + entry.rstrip("\n") + "\n"
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        body = lines[start + 1:end]
        heading = f"### `{command}`"
        # split the section body into entries at "### " headings; drop the one of this command
        entries, cur, preamble = [], None, []
        for l in body:
            if l.startswith("### "):
                cur = [l]
                entries.append(cur)
            elif cur is None:
                preamble.append(l)
            else:
                cur.append(l)
        kept = [e for e in entries if e[0].strip() != heading]
        parts = ["\n".join(preamble).strip("\n")] + ["\n".join(e).strip("\n") for e in kept] + [entry.strip("\n")]
        section = SECTION + "\n\n" + "\n\n".join(p for p in parts if p) + "\n"
        new = "\n".join(lines[:start]) + ("\n" if start else "") + section
        if end < len(lines):
            new += "\n" + "\n".join(lines[end:]) + "\n"
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, RESULTS)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small cases, under a minute on an idle 2-core machine")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on a shared machine, several threads make every parallel "
                         "region wait for a descheduled thread, and the step times swing by 10x; 0: torch's default)")
    ap.add_argument("--sizes", default=None, help="train: comma-separated subset of minilm,smollm2,t5-large,llama-7b")
    ap.add_argument("--record", action="store_true", help=f"write the results into {RESULTS}")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    bad = set(parts) - set(PARTS)
    if bad:
        ap.error(f"--only: unknown part(s) {', '.join(sorted(bad))}; expected {', '.join(PARTS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    started = time.perf_counter()
    # the command as recorded: what determines the results (--record and --json only say where they go)
    shown, skip_next = [], False
    for a in (argv if argv is not None else sys.argv[1:]):
        if skip_next:
            skip_next = False
        elif a == "--json":
            skip_next = True
        elif a != "--record" and not a.startswith("--json="):
            shown.append(a)
    command = " ".join(["python benchmarks/performance/run.py"] + shown)
    import torch
    import peft

    if args.threads:
        torch.set_num_threads(args.threads)
    header = {"command": command, "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine(),
              "torch": torch.__version__, "peft": peft.__version__, "threads": torch.get_num_threads()}
    print(f"machine: {header['machine']}; torch threads {header['threads']}", flush=True)
    log = lambda m: print(m, flush=True)  # noqa: E731
    out: dict = {}
    # The merge cases run in forked children: before this process does any torch computation.
    if "merge" in parts:
        import perf_merge

        out["merge"] = perf_merge.run(args.quick, log)
    if "train" in parts:
        import perf_train

        out["train"] = perf_train.run(args.quick, log, [x.strip() for x in args.sizes.split(",")] if args.sizes else None)
    if "eval" in parts:
        import perf_eval

        out["eval"] = perf_eval.run(args.quick, log)
    if "help" in parts:
        out["help"] = help_latency(3 if args.quick else 10)
    header["wall_s"] = time.perf_counter() - started
    entry = render(out, args, header)
    print("\n" + entry)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "results": out}, indent=1, default=str))
    if args.record:
        record(entry, command)
        print(f"recorded in {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
