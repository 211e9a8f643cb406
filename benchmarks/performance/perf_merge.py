"""Benchmark 2: merging N task adapters. Each case runs in a forked child: wall time and peak RSS (ru_maxrss).

    ours        pslora's streaming magnitude merge (adapters.merged_deltas -> core.merge, from the factors
                block by block), each module written as it is finished, as `pslora merge` does
    peft-ties   PEFT's add_weighted_adapter(combination_type="ties", density=0.2) after loading the N adapters
    peft-mprune PEFT's add_weighted_adapter(combination_type="magnitude_prune", density=0.2)
    peft-ties-svd  PEFT's combination_type="ties_svd" (dense TIES on the products, then an SVD back to rank 8):
                PEFT's dense counterpart (full run, T5-large shape only: an SVD of 4096x4096 takes minutes here)
    adapters    `pslora merge --adapters` (adapter_sets.merge_adapter_set): adapters from anywhere, each module's dense
                updates streamed task by task into the magnitude merge, written as finished
    naive       stack all N dense updates of a module, argmax |.| over tasks, gather

"alloc peak" (ours only): the peak of torch's CPU allocator during a second, profiled run of the same merge
(torch.profiler memory events; deterministic, unlike RSS, which also holds the allocator's and libraries' caches).

PEFT's "ties" and "magnitude_prune" act on the stacked LoRA factors (A's and B's separately, r x d each) and
return a rank-r adapter: they never form the dense d_out x d_in update. Our merge and the naive one act on the
dense product (METHOD.md §2: the result is generally not low rank). PEFT needs the base model in memory to
load adapters; the synthetic base model here is allocated with torch.empty (pages never touched, so they do not
count in RSS), which favours PEFT.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from perf_common import random_factors, synthetic_model, fmt_mb, fmt_ratio, mem_available_bytes, profile_peak_bytes, run_forked, table

RANK, LORA_ALPHA = 8, 16
SHAPES = {  # name -> (d_model, layers with q and v adapted)
    "t5-large": (1024, 4),
    "llama-7b": (4096, 1),
}
METHODS = ("ours", "adapters", "peft-ties", "peft-mprune", "peft-ties-svd", "naive")


def write_adapters(folder: Path, d: int, layers: int, n: int, seed: int = 0) -> list[str]:
    """n PEFT adapter folders (adapter_config.json + adapter_model.safetensors) for the synthetic model."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    dirs = []
    for t in range(n):
        tensors = random_factors(d, layers, torch.Generator().manual_seed(seed * 1000 + t), RANK)
        out = folder / f"task{t:02d}"
        out.mkdir(parents=True, exist_ok=True)
        LoraConfig(r=RANK, lora_alpha=LORA_ALPHA, target_modules=["q", "v"]).save_pretrained(str(out))
        save_file(tensors, str(out / "adapter_model.safetensors"))
        dirs.append(str(out))
    return dirs


def case_ours(dirs: list[str], out: str) -> dict:
    import torch

    from pslora_cli.models.adapters import merged_deltas, open_adapters
    from pslora_cli.store.stream_write import write_streaming

    adapters = open_adapters(Path(d) for d in dirs)
    specs = [(name, torch.float32, adapters[0].weight_shape(name)) for name in adapters[0].modules]
    write_streaming(out, specs, merged_deltas(adapters, "magnitude"))  # each module written as it is finished
    return {"modules": len(specs)}


def case_adapters(dirs: list[str], out: str) -> dict:
    from pslora_cli.adapter_sets import merge_adapter_set

    info = merge_adapter_set([Path(d) for d in dirs], "magnitude", Path(out), "cpu")
    return {"modules": info["modules"]}


def case_ours_alloc(dirs: list[str], out: str) -> dict:
    return {"alloc_peak": profile_peak_bytes(lambda: case_ours(dirs, out))}


def case_naive(dirs: list[str], out: str) -> dict:
    import torch
    from safetensors.torch import save_file

    from pslora_cli.models.adapters import open_adapters

    adapters = open_adapters(Path(d) for d in dirs)
    tensors = {}
    for param in adapters[0].modules:
        first = adapters[0].delta(param)
        stack = torch.empty((len(adapters), *first.shape), dtype=first.dtype)
        stack[0] = first
        del first
        for i, a in enumerate(adapters[1:], start=1):
            stack[i] = a.delta(param)
        idx = stack.abs().argmax(0, keepdim=True)  # first maximum: ties go to the earlier task
        tensors[param] = stack.gather(0, idx)[0]
        del stack, idx
    save_file(tensors, out)
    return {"modules": len(tensors)}


def case_peft(dirs: list[str], out: str, d: int, layers: int, combination: str) -> dict:
    from peft import PeftModel

    model = synthetic_model(d, layers, untouched=True)
    pm = PeftModel.from_pretrained(model, dirs[0], adapter_name="t0")
    for i, folder in enumerate(dirs[1:], start=1):
        pm.load_adapter(folder, adapter_name=f"t{i}")
    names = [f"t{i}" for i in range(len(dirs))]
    pm.add_weighted_adapter(names, [1.0] * len(names), "merged", combination_type=combination, density=0.2)
    pm.save_pretrained(out, selected_adapters=["merged"])
    return {}


def preload() -> None:
    """Import everything the cases use, so that forked children neither pay for nor count the imports."""
    import peft  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch  # noqa: F401
    from peft import LoraConfig, PeftModel  # noqa: F401

    import pslora_cli.adapter_sets  # noqa: F401
    import pslora_cli.models.adapters  # noqa: F401


def run(quick: bool, log=print) -> dict:
    """Run the merge cases (forked children; call before the parent does any torch computation)."""
    preload()
    if quick:
        plan = [("t5-large", 1, [4, 15])]
        skip = {"peft-mprune", "peft-ties-svd"}
    else:
        skip = set()
        plan = [("t5-large", SHAPES["t5-large"][1], [4, 15, 50]), ("llama-7b", SHAPES["llama-7b"][1], [4, 15, 50])]
    tmp = Path(tempfile.mkdtemp(prefix="pslora-bench-merge-"))
    results = {"plan": [], "rows": []}
    try:
        for shape, layers, counts in plan:
            d = SHAPES[shape][0]
            folder = tmp / shape
            w = run_forked(lambda: {"dirs": write_adapters(folder, d, layers, max(counts))})
            if "error" in w:
                raise RuntimeError(f"writing adapters failed: {w['error']}\n{w.get('trace', '')}")
            dirs = w["dirs"]
            results["plan"].append({"shape": shape, "d": d, "modules": 2 * layers, "rank": RANK, "tasks": counts})
            for n in counts:
                for method in METHODS:
                    if method in skip or (method == "peft-ties-svd" and shape != "t5-large"):
                        continue
                    out = str(tmp / f"{shape}-{n}-{method}.safetensors")
                    if method == "naive":
                        need = n * d * d * 4 * 2.2
                        avail = mem_available_bytes()
                        if avail is not None and need > 0.6 * avail:
                            results["rows"].append({"shape": shape, "n": n, "method": method,
                                                    "skipped": f"needs ~{need / 2**30:.1f} GiB"})
                            continue
                        r = run_forked(case_naive, dirs[:n], out)
                    elif method == "adapters":
                        r = run_forked(case_adapters, dirs[:n], out)
                    elif method == "ours":
                        r = run_forked(case_ours, dirs[:n], out)
                        a = run_forked(case_ours_alloc, dirs[:n], out + ".alloc")
                        r["alloc_peak"] = a.get("alloc_peak")
                    else:
                        combination = {"peft-ties": "ties", "peft-mprune": "magnitude_prune",
                                       "peft-ties-svd": "ties_svd"}[method]
                        r = run_forked(case_peft, dirs[:n], out, d, layers, combination)
                    r.update({"shape": shape, "n": n, "method": method, "out": out})
                    results["rows"].append(r)
                    log(f"  merge {shape} n={n} {method}: "
                        + (r["error"] if "error" in r else f"{r['wall_s']:.2f} s, peak RSS +"
                           f"{fmt_mb(r['peak_rss'] - r['start_rss'])} MB"))
        results["agree"] = _check_agreement(results["rows"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def _check_agreement(rows: list[dict]) -> dict:
    """Our streaming merge and the naive stack-and-argmax must give identical tensors."""
    from safetensors.torch import load_file

    out = {}
    by = {(r["shape"], r["n"], r["method"]): r for r in rows}
    for (shape, n, method), r in by.items():
        naive = by.get((shape, n, "naive"))
        if method not in ("ours", "adapters") or "error" in r or not naive or "out" not in naive or "error" in naive:
            continue
        a, b = load_file(r["out"]), load_file(naive["out"])
        key = f"{shape} n={n}" if method == "ours" else f"{shape} n={n} (--adapters)"
        out[key] = a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    return out


def report(res: dict) -> str:
    lines = []
    for p in res["plan"]:
        lines.append(f"\n{p['shape']}-shaped adapters: {p['modules']} modules of {p['d']}x{p['d']}, rank {p['rank']}")
        rows = []
        by = {(r["n"], r["method"]): r for r in res["rows"] if r["shape"] == p["shape"]}
        for n in p["tasks"]:
            ours = by.get((n, "ours"))
            for method in METHODS:
                r = by.get((n, method))
                if r is None:
                    continue
                if "skipped" in r or "error" in r:
                    rows.append([n, method, r.get("skipped") or r["error"][:60], "", "", "", "", ""])
                    continue
                grow = r["peak_rss"] - r["start_rss"]
                ok = ours and "error" not in ours
                rows.append([n, method, f"{r['wall_s']:.2f}", fmt_ratio(r["wall_s"] / ours["wall_s"]) if ok else "-",
                             fmt_mb(grow), fmt_mb(r["peak_rss"]),
                             fmt_ratio(grow / max(1, ours["peak_rss"] - ours["start_rss"])) if ok else "-",
                             fmt_mb(r.get("alloc_peak"))])
        lines.append(table(["tasks", "method", "wall s", "time / ours", "peak RSS growth MB", "peak RSS MB",
                            "growth / ours", "alloc peak MB"], rows))
        growth = [by[(n, "ours")]["peak_rss"] - by[(n, "ours")]["start_rss"] for n in p["tasks"]
                  if (n, "ours") in by and "error" not in by[(n, "ours")]]
        alloc = [by[(n, "ours")].get("alloc_peak") for n in p["tasks"] if (n, "ours") in by]
        grow_a = [by[(n, "adapters")]["peak_rss"] - by[(n, "adapters")]["start_rss"] for n in p["tasks"]
                  if (n, "adapters") in by and "error" not in by[(n, "adapters")]]
        if len(grow_a) >= 2:
            lines.append(f"--adapters: peak RSS growth at {p['tasks'][-1]} tasks / at {p['tasks'][0]} tasks = "
                         f"{grow_a[-1] / max(1, grow_a[0]):.2f}")
        if len(growth) >= 2:
            lines.append(f"ours: peak RSS growth at {p['tasks'][-1]} tasks / at {p['tasks'][0]} tasks = "
                         f"{growth[-1] / max(1, growth[0]):.2f}")
        if len(alloc) >= 2 and all(alloc):
            lines.append(f"ours: torch allocator peak at {p['tasks'][-1]} tasks / at {p['tasks'][0]} tasks = "
                         f"{alloc[-1] / alloc[0]:.2f}")
        if 15 in p["tasks"] and (15, "ours") in by and (15, "peft-ties") in by \
                and "error" not in by[(15, "ours")] and "error" not in by[(15, "peft-ties")]:
            lines.append(f"15 tasks: PEFT ties time / ours = "
                         f"{by[(15, 'peft-ties')]['wall_s'] / by[(15, 'ours')]['wall_s']:.2f} (target >= 3)")
    if res.get("agree"):
        lines.append("ours and --adapters == naive stack-and-argmax (bitwise): "
                     + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in res["agree"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    res = run("--quick" in sys.argv)
    print(report(res))
    print(json.dumps({"agree": res.get("agree")}))
