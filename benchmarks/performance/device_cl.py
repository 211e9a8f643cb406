"""device_check.py's cl-benchmark step: O-LoRA's benchmark sequences (Standard orders 1–3 by default, or
cl-long-order4) for every continual method and both bounds on the device, and what `--prepare` carries for it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# -- cl-benchmark: O-LoRA's benchmark sequences, every method and both bounds, on the device -------------------------

CL_SEQUENCES = "cl-standard-order1,cl-standard-order2,cl-standard-order3"
CL_METHODS = "ps-lora,inc-lora,seq-lora,o-lora,n-lora,inflora,magmax,ewc,ps-loss-only,per-task,multitask"


def cl_datasets(sequences: str) -> list[tuple[str, str]]:
    """(task id, dataset) of every task of the named task_sequences/ files, in order, each dataset once."""
    import yaml

    seen = {}
    for name in [n.strip() for n in sequences.split(",") if n.strip()]:
        for task in yaml.safe_load((ROOT / "task_sequences" / f"{name}.yaml").read_text())["tasks"]:
            seen.setdefault(task["data"]["dataset"], task["id"])
    return [(task_id, dataset) for dataset, task_id in seen.items()]


def _tiny_cl_benchmark(root: Path, sequences: str) -> Path:
    """A two-label stand-in for the sequences' datasets in O-LoRA's layout (the dry run)."""
    for _, name in cl_datasets(sequences):
        folder = root / "CL_Benchmark" / "TC" / name
        folder.mkdir(parents=True, exist_ok=True)
        labels = [f"{name} one", f"{name} two"]
        (folder / "labels.json").write_text(json.dumps(labels))
        for split, n in (("train", 4), ("test", 2)):
            rows = [{"label": lab, "sentence": f"{split} text {i} about {lab}"} for lab in labels for i in range(n)]
            (folder / f"{split}.json").write_text(json.dumps(rows))
    return root


def find_cl_benchmark(args, work: Path) -> Path | None:
    """The folder that holds CL_Benchmark/: --cl-benchmark, the carried copy, or $PSLORA_CL_BENCHMARK."""
    if args.tiny:
        return _tiny_cl_benchmark(work / "tiny-cl-benchmark", args.cl_sequences)
    for where in (args.cl_benchmark, args.carry / "cl-benchmark", os.environ.get("PSLORA_CL_BENCHMARK")):
        if where and (Path(where) / "CL_Benchmark").is_dir():
            return Path(where)
    return None


def _cl_sets(args, lm) -> tuple[str, list[str]]:
    sets = ["backbone.source=huggingface", f"backbone.name={lm}"] if lm is not None else []
    if not args.tiny:
        return args.cl_methods, sets
    sets += ["training.steps=2", "training.eval_batch_size=8", "evaluation.max_new_tokens=4",
             "training.checkpoint_every=0", "backbone.max_length=64"]
    return "ps-lora,multitask", sets + [f"tasks.{t}.data.{k}_per_class={n}" for t, _ in cl_datasets(args.cl_sequences)
                                        for k, n in (("train", 4), ("test", 2))]


def run_compare(cmd: list[str], carry: Path, log: Path, **env) -> tuple[dict | None, str]:
    """Run a `pslora compare --json` command line (the carried pylib, the scattertext stub and gguf, on the path),
    its stderr to `log`: (the JSON document, "") or (None, what failed)."""
    env = dict(os.environ, **env)
    if (carry / "pylib").is_dir():
        env["PYTHONPATH"] = os.pathsep.join([str(carry / "pylib"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    log.write_text(proc.stderr)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [""])[-1][:200]
        return None, f"exit {proc.returncode}: {last}; log {log}"
    return json.loads(proc.stdout), ""


def cl_benchmark(args, work: Path, model: tuple, row) -> list[dict]:
    """`pslora compare` on each of --cl-sequences with --cl-methods, seed 0; per run a row, and each store's matrix
    (per-prompt records included) in OUT/rows/ as the committed rows are named. Stores stay off OUT. `model`:
    device_check.find_lm's (found, LM folder or None, what it is); `row`: device_check.row."""
    root = find_cl_benchmark(args, work)
    found, lm, what = model
    if root is None or not found:
        return [row("cl-benchmark", "skipped", what if not found else "no CL_Benchmark folder: carry "
                    "benchmarks/device-carry/cl-benchmark (--prepare --cl-benchmark DIR) or pass --cl-benchmark")]
    methods, sets = _cl_sets(args, lm)
    stores = work / "cl-stores" if args.tiny else Path(tempfile.mkdtemp(prefix="cl-stores-"))
    rows = []
    for name in [n.strip() for n in args.cl_sequences.split(",") if n.strip()]:
        cmd = [sys.executable, "-m", "pslora_cli", "compare", str(ROOT / "task_sequences" / f"{name}.yaml"),
               "--methods", methods, "--seeds", "0", "--device", args.device, "--jobs", str(args.jobs),
               "--out", str(stores / name), "--json", "--quiet"] + [x for s in sets for x in ("--set", s)]
        started = time.perf_counter()
        doc, failed = run_compare(cmd, args.carry, work / f"{name}.log", PSLORA_CL_BENCHMARK=str(root))
        if doc is None:
            rows.append(row(name, "FAILED", failed))
            continue
        (work / "rows").mkdir(exist_ok=True)
        for run in doc["runs"]:
            shutil.copy2(Path(run["store"]) / "eval" / "matrix.json",
                         work / "rows" / f"{name}-{run['method']}-seed0.json")
            m, wall = run["metrics"], run["wall_seconds"]
            rows.append(row(f"{name} {run['method']}", "ok", f"{what}: ACC {100 * m['acc']:.1f}, BWT "
                            f"{100 * m['bwt']:+.1f}" + (f", {wall:.0f} s" if wall else ""), acc=m["acc"], bwt=m["bwt"]))
        rows.append(row(name, "ok", f"{len(methods.split(','))} runs in {time.perf_counter() - started:.0f} s"))
    return rows


def _copy_cl_datasets(source: Path, dest: Path, sequences: str) -> int:
    """Copy the sequences' datasets (and O-LoRA's instruction config) from source/CL_Benchmark; the bytes copied."""
    shutil.rmtree(dest, ignore_errors=True)  # the folder travels whole: nothing from an earlier --prepare
    size = 0
    for _, name in cl_datasets(sequences):
        found = sorted((source / "CL_Benchmark").glob(f"*/{name}/train.json"))
        if not found:
            raise SystemExit(f"--cl-benchmark: no {source}/CL_Benchmark/<type>/{name}/train.json (expected O-LoRA's "
                             f"CL_Benchmark layout)")
        folder = found[0].parent
        target = dest / folder.relative_to(source)
        shutil.copytree(folder, target, dirs_exist_ok=True)
        size += sum(f.stat().st_size for f in target.iterdir())
    config = source / "configs" / "instruction_config.json"
    if config.is_file():
        (dest / "configs").mkdir(parents=True, exist_ok=True)
        shutil.copy2(config, dest / "configs" / config.name)
    return size
