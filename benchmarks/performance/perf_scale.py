"""Benchmark 5: PS-LoRA (the default form: magnitude-only, λ = 1, the earlier tasks' magnitude merge folded in)
against plain LoRA at the module shapes of LLaMA-7B (q_proj, v_proj: 4096 x 4096) and T5-large (q, v: 1024 x 1024):
a few layers of the real widths with random weights, on the CPU, through pslora's own training path
(training/recipe.fold_history, training/regularisers.Regulariser, PEFT LoRA r = 8, AdamW).

    lora            plain LoRA (PEFT): the task's loss alone, nothing folded in
    ps-lora         task t = 4 of PS-LoRA: 3 earlier tasks' adapters (real PEFT files, r = 8) merged into the
                    frozen weights, the stability loss against their sum H
    ps-lora-before  the same with the history as it was built before (every module's dense H, the dense merge and a
                    copy of W0 held at once; float32 only): what the formula below is checked against

Step time: both implementations in one process, their steps interleaved (A B, B A, ...) so that the load of a
shared machine hits them alike; "time / lora" is the median of the per-round ratios, which swings by several per cent
on a loaded machine; "loss ms" is the stability loss's own cost (its terms' forward and backward alone, median of
20), the part of a step PS-LoRA adds, and the target is judged on it (with the end-to-end ratio under 1.10x).
Memory: each implementation in
a fresh process (python -m ... --child), peak RSS (ru_maxrss) over building (fold, regulariser) and a few steps,
and the same above the process's RSS after its imports ("working"): the goal's measure.

The whole model's history by formula, per adapted d_out x d_in module in float32: before, the dense H, the dense
merge and the copy of W0 (3 x 4·d_out·d_in bytes, held together while folding); now, the stacked factors of the earlier
tasks (4·R·(d_out + d_in) bytes, R = the earlier tasks' total rank) and a few row blocks of scratch while folding.

    .venv/bin/python benchmarks/performance/perf_scale.py [--quick] [--dtypes float32,bfloat16] [--record]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from perf_common import MB, machine, median, random_factors, rss_bytes, synthetic_model, table  # noqa: E402

RANK, LORA_ALPHA, EARLIER = 8, 16, 3
# (name, width, layers here, tokens per step, modules of the whole model, what they are)
SHAPES = {
    "llama-7b": (4096, 2, 256, 64, "32 layers x q_proj, v_proj"),
    "t5-large": (1024, 8, 512, 144, "24 encoder x q, v + 24 decoder x (self, cross) x q, v"),
}
QUICK = {"llama-7b": (4096, 1, 64), "t5-large": (1024, 2, 128)}


# -- the child: one configuration in a fresh process -----------------------------------------------------------

def _setup(impl: str, d: int, layers: int, dtype, adapters: list[Path]):
    """(peft model, LoRA layers, regulariser or None, optimiser, seconds to build the history)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from pslora_cli.config import Method
    from pslora_cli.models import target_parameters
    from pslora_cli.models.adapters import AdapterFile
    from pslora_cli.training.recipe import fold_history, lora_layers
    from pslora_cli.training.regularisers import Regulariser

    model = synthetic_model(d, layers, dtype=dtype)
    params = target_parameters(model, ["q", "v"])
    previous = [AdapterFile(a) for a in adapters] if impl != "lora" else []
    method, cpu = Method(), torch.device("cpu")
    started = time.perf_counter()
    history = old_prepared = None
    if impl == "ps-lora":
        history = fold_history(method, params, previous, cpu)
    elif impl == "ps-lora-before":
        history, old_prepared = _before(method, params, previous)
    peft = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=LORA_ALPHA, target_modules=["q", "v"],
                                            lora_dropout=0.0, bias="none"))
    layers_ = lora_layers(peft)
    reg = None
    if impl == "ps-lora":
        reg = Regulariser(method, layers_, previous, history, cpu)
    elif impl == "ps-lora-before":
        from pslora_cli.methods.ps_lora import stability_loss

        reg = Regulariser(method, layers_, [], {}, cpu)
        reg.losses["stability"] = stability_loss(old_prepared(layers_), method)
    build_s = time.perf_counter() - started
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B != 0 so that the update and its loss are not zero
        for name in sorted(layers_):
            b = layers_[name].lora_B["default"].weight
            b.copy_(torch.randn(b.shape, generator=g) * 1e-3)
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-4)
    return peft, layers_, reg, opt, build_s


def _before(method, params, previous):
    """The history as training/recipe.py built it before: dense H of every module and the dense merge held at once,
    folded through a WeightFolder (a copy of W0); α from the dense H; the prepared history from H and the factors."""
    import torch

    from pslora_cli.core.stability import adaptive_alpha
    from pslora_cli.core.stability_lean import prepare_history
    from pslora_cli.models.adapters import WeightFolder, merged_deltas

    cpu = torch.device("cpu")
    history = dict(merged_deltas(previous, "sum", cpu))
    WeightFolder(params).fold(dict(merged_deltas(previous, method.merge, cpu, **method.merge_options)))

    def prepared(layers):
        alphas = {name: adaptive_alpha(history[name], c=method.alpha) for name in layers}
        out = {name: prepare_history(history[name], [(*a.factors(name, cpu), a.scale) for a in previous],
                                     alpha=alphas[name], variant=method.variant) for name in layers}
        history.clear()
        return out

    return history, prepared


def _step(peft, layers, reg, opt, batch):
    import torch

    opt.zero_grad(set_to_none=True)
    x, y = batch
    loss = torch.nn.functional.mse_loss(peft(x).float(), y)
    if reg is not None:
        loss = loss + reg.method.stability_weight * reg.terms(layers)["stability"]
    loss.backward()
    opt.step()


def child(cfg: dict) -> dict:
    import torch

    torch.set_num_threads(cfg["threads"])
    import peft  # noqa: F401 - imported before the baseline is taken
    import pslora_cli.training.recipe  # noqa: F401

    dtype = getattr(torch, cfg["dtype"])
    base_rss = rss_bytes()
    d, layers, tokens = cfg["d"], cfg["layers"], cfg["tokens"]
    g = torch.Generator().manual_seed(2)
    batch = (torch.randn(tokens, d, generator=g).to(dtype), torch.randn(tokens, d, generator=g))
    adapters = [Path(a) for a in cfg["adapters"]]
    if cfg["mode"] == "memory":
        peft_model, layers_, reg, opt, build_s = _setup(cfg["impl"], d, layers, dtype, adapters)
        after_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        for _ in range(cfg["steps"]):
            _step(peft_model, layers_, reg, opt, batch)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"base_rss": base_rss, "peak_rss": peak, "build_peak_rss": after_build, "build_s": build_s,
                "history_bytes": sum(h.nbytes for h in reg.history.values()) if reg else 0}
    setups = {impl: _setup(impl, d, layers, dtype, adapters) for impl in ("lora", "ps-lora")}
    for s in setups.values():  # warm-up: the optimiser state
        _step(*s[:4], batch)
    times = {impl: [] for impl in setups}
    for k in range(cfg["steps"]):
        for impl in (("lora", "ps-lora") if k % 2 == 0 else ("ps-lora", "lora")):  # either order, alike often
            t0 = time.perf_counter()
            _step(*setups[impl][:4], batch)
            times[impl].append(time.perf_counter() - t0)
    # the stability loss's own cost per step (forward + backward of its terms alone): what PS-LoRA adds to a step
    _, layers_, reg, _, _ = setups["ps-lora"]
    loss_times = []
    for _ in range(20):
        t0 = time.perf_counter()
        reg.terms(layers_)["stability"].backward()
        loss_times.append(time.perf_counter() - t0)
    return {"times": times, "loss_s": median(loss_times), "build_s": {impl: s[4] for impl, s in setups.items()}}


# -- the parent ------------------------------------------------------------------------------------------------

def write_adapters(root: Path, d: int, layers: int) -> list[Path]:
    """EARLIER random rank-RANK adapters of the synthetic stack's q and v, as PEFT folders."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(3)
    out = []
    for t in range(EARLIER):
        folder = root / f"d{d}-l{layers}" / f"t{t + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        save_file(random_factors(d, layers, g, RANK), str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "r": RANK, "lora_alpha": LORA_ALPHA, "target_modules": ["q", "v"],
             "bias": "none", "base_model_name_or_path": "synthetic"}))
        out.append(folder)
    return out


def run_child(cfg: dict, timeout: float = 1800) -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(cfg)],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def formula(d: int, modules: int, earlier_rank: int = EARLIER * RANK) -> dict:
    """Bytes beyond plain LoRA's, per the module docstring: before (held together while folding) and now."""
    dense = 4 * d * d
    return {"before": 3 * dense * modules, "now_factors": 4 * earlier_rank * 2 * d * modules,
            "now_scratch": 5 * 4 * max(16, (1 << 18) // d // 16 * 16) * d}


def run(quick: bool, dtypes: list[str], threads: int, log=print) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="perf-scale-") as tmp:
        for shape, (d, layers, tokens, whole, _) in SHAPES.items():
            if quick:
                d, layers, tokens = QUICK[shape]
            adapters = [str(a) for a in write_adapters(Path(tmp), d, layers)]
            for dtype in dtypes:
                common = {"d": d, "layers": layers, "tokens": tokens, "dtype": dtype, "threads": threads,
                          "adapters": adapters}
                row = {"shape": shape, "d": d, "layers": layers, "modules": 2 * layers, "tokens": tokens,
                       "dtype": dtype, "whole_modules": whole, "memory": {}}
                impls = ("lora", "ps-lora") + (("ps-lora-before",) if dtype == "float32" else ())
                for impl in impls:
                    row["memory"][impl] = run_child({**common, "mode": "memory", "impl": impl, "steps": 2})
                    log(f"  {shape} {dtype} {impl}: {row['memory'][impl]}")
                row["timing"] = run_child({**common, "mode": "time", "steps": 3 if quick else 7})
                log(f"  {shape} {dtype} timing: {row['timing']}")
                rows.append(row)
    return rows


def report(rows: list[dict]) -> tuple[str, list[list[str]]]:
    lines, targets = [], []
    head = ["shape (here)", "dtype", "impl", "step ms (min-max)", "time / lora", "loss ms", "build s", "peak RSS MB",
            "working MB", "vs lora", "H kept MB"]
    body = []
    for row in rows:
        mem, timing = row["memory"], row.get("timing", {})
        lora = mem.get("lora", {})
        lora_work = lora.get("peak_rss", 0) - lora.get("base_rss", 0)
        times = timing.get("times", {})
        for impl, m in mem.items():
            if "error" in m:
                body.append([f"{row['shape']} ({row['modules']} x {row['d']}²)", row["dtype"], impl, m["error"]]
                            + [""] * 7)
                continue
            work = m["peak_rss"] - m["base_rss"]
            t = times.get(impl)
            ratio = median([a / b for a, b in zip(t, times["lora"])]) if t else None
            step = f"{median(t) * 1000:.0f} ({min(t) * 1000:.0f}-{max(t) * 1000:.0f})" if t else "-"
            loss_ms = timing.get("loss_s", 0) * 1000 if impl == "ps-lora" else None
            body.append([f"{row['shape']} ({row['modules']} x {row['d']}²)", row["dtype"], impl, step,
                         f"{ratio:.3f}x" if ratio else "-", f"{loss_ms:.1f}" if loss_ms is not None else "",
                         f"{m['build_s']:.2f}", f"{m['peak_rss'] / MB:.0f}",
                         f"{work / MB:.0f}", f"{100 * (work - lora_work) / lora_work:+.1f}%" if impl != "lora" else "",
                         f"{m['history_bytes'] / MB:.2f}" if impl != "lora" else ""])
            if impl == "ps-lora":
                own = loss_ms / (median(times["lora"]) * 1000) if times.get("lora") else None
                targets.append([f"{row['shape']} {row['dtype']}: step time ≤ 1.05x lora",
                                f"{ratio:.3f}x end to end; the loss's own cost {loss_ms:.1f} ms = "
                                f"{1 + own:.3f}x" if ratio and own is not None else "-",
                                "met" if own is not None and 1 + own <= 1.05 and ratio <= 1.10 else "NOT met"])
                extra = (work - lora_work) / lora_work
                targets.append([f"{row['shape']} {row['dtype']}: working memory ≤ +10 % of lora's",
                                f"{100 * extra:+.1f}%", "met" if extra <= 0.10 else "NOT met"])
    lines.append(table(head, body))
    # the formula against the few layers measured, then the whole model
    check, whole = [], []
    for row in rows:
        mem = row["memory"]
        if row["dtype"] != "float32" or "ps-lora-before" not in mem or "error" in mem["ps-lora-before"]:
            continue
        f = formula(row["d"], row["modules"])
        # while building (the fold and the regulariser), where the dense copies were held
        measured = mem["ps-lora-before"]["build_peak_rss"] - mem["ps-lora"]["build_peak_rss"]
        check.append([f"{row['shape']} ({row['modules']} modules)", f"{f['before'] / MB:.0f}",
                      f"{(f['now_factors'] + f['now_scratch']) / MB:.1f}",
                      f"{(f['before'] - f['now_factors'] - f['now_scratch']) / MB:.0f}", f"{measured / MB:.0f}",
                      f"{mem['ps-lora']['history_bytes'] / MB:.2f} (formula {f['now_factors'] / MB:.2f})"])
        fw = formula(row["d"], row["whole_modules"])
        whole.append([f"{row['shape']}, whole model ({row['whole_modules']} modules {row['d']}²)",
                      f"{fw['before'] / 2**30:.2f} GiB", f"{fw['now_factors'] / MB:.0f} MB + {fw['now_scratch'] / MB:.0f} MB",
                      f"{4 * RANK * 2 * row['d'] * row['whole_modules'] / MB:.1f} MB"])
    if check:
        lines += ["", "History memory, formula against the layers measured (float32; MB):", "",
                  table(["shape", "before: 3 dense copies", "now: factors + scratch", "difference (formula)",
                         "peak RSS while building, before − now (measured)", "H kept now, measured"], check)]
    if whole:
        lines += ["", "The whole model by the same formula (float32 H; 3 earlier tasks of rank 8):", "",
                  table(["model", "before: dense H + merge + W0 copy", "now: factors kept + folding scratch",
                         "each further earlier task adds"], whole)]
    return "\n".join(lines), targets


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="one layer of each shape, few tokens (a minute)")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="backbone dtypes measured")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads in each process (default 1)")
    ap.add_argument("--record", action="store_true", help="write the tables into benchmarks/RESULTS.md")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    started = time.perf_counter()
    shown, skip = [], False  # the command as recorded: what decides the results (not where they are written)
    for a in (argv if argv is not None else sys.argv[1:]):
        if skip:
            skip = False
        elif a == "--json":
            skip = True
        elif a != "--record" and not a.startswith("--json="):
            shown.append(a)
    command = " ".join(["python benchmarks/performance/perf_scale.py"] + shown)
    rows = run(args.quick, [x.strip() for x in args.dtypes.split(",") if x.strip()], args.threads)
    text, targets = report(rows)
    import peft
    import torch

    m = machine()
    entry = "\n".join([
        f"### `{command}`", "",
        f"Date {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}; machine: {m['nproc']} CPUs ({m['cpu']}), "
        f"{m['mem_gb']} GB RAM, 1-min load average at start {m['load_1min']} (shared machine); torch "
        f"{torch.__version__} with {args.threads} thread(s) per process, peft {peft.__version__}; total wall time "
        f"{time.perf_counter() - started:.0f} s.", "",
        "#### 5. PS-LoRA against plain LoRA at LLaMA-7B's and T5-large's module shapes", "",
        __doc__.split("\n\n    .venv")[0].strip(), "", "```", text, "```", "",
        "#### Targets (PS-LoRA's default form against plain LoRA, this run)", "",
        table(["target", "measured", "status"], targets), ""])
    print("\n" + entry)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.record:
        from run import record

        record(entry, command)
        print(f"recorded in {HERE.parent / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
