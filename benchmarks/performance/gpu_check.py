"""GPU check of the lean stability loss: run through benchmarks/gpu_check.sh on a CUDA machine.

1. Correctness on the device: for every variant x reduction x history form, float64, the lean loss on CUDA vs the
   dense reference on CUDA and on the CPU (value and gradients; max relative difference).
2. Timing and memory on the device, float32, rank 8, 3 earlier tasks: forward+backward of the loss alone for one
   module (naive dense reference vs lean with stacked-factor history vs lean with cached tanh(αH)), and one training
   step of a synthetic LLaMA-7B-sized layer pair (q, v 4096x4096) with plain LoRA (PEFT) vs PS-LoRA lean vs naive.
   Times from CUDA events (median); memory = torch.cuda.max_memory_allocated during the measured call: above the
   memory allocated before it for the loss alone, all of it (model, optimizer state, history) for the step.
3. The magnitude merge on the device (`pslora merge --device cuda`): the running fold on the device vs the CPU's
   pick_larger fold, bitwise, on random values and on NaN/inf/±0/ties; the merge from the factors (what `pslora
   merge` runs) vs the fold of the dense products on the device, bitwise; then the time of merging 15 rank-8 task
   updates of a 4096x4096 module from their factors on the device vs on the CPU (no file reading).

    python benchmarks/performance/gpu_check.py [--device cuda] [--tokens 2048] [--small]

--device cpu --small runs the same code on the CPU with small sizes (a check of the script itself).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from pslora_cli.core.stability import (  # noqa: E402
    MODULE_MEAN_VARIANTS,
    REDUCTIONS,
    VARIANTS,
    adaptive_alpha,
    lora_delta,
    parameter_stability_loss,
)
from pslora_cli.core.stability_lean import lean_stability_loss, prepare_history, stack_history  # noqa: E402


def table(headers, rows):
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "| " + " | ".join(c.ljust(x) for c, x in zip(r, w)) + " |"  # noqa: E731
    return "\n".join([fmt(cells[0]), "|" + "|".join("-" * (x + 2) for x in w) + "|"] + [fmt(r) for r in cells[1:]])


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def check(device: str) -> tuple[list, float]:
    rows, worst = [], 0.0
    g = torch.Generator().manual_seed(0)
    d_out, d_in, r = 300, 200, 4
    for variant in VARIANTS:
        for reduction in REDUCTIONS:
            if reduction != "mean" and variant in MODULE_MEAN_VARIANTS:  # a mean by construction: no "sum" form
                continue
            a = torch.randn(r, d_in, generator=g, dtype=torch.float64)
            b = torch.randn(d_out, r, generator=g, dtype=torch.float64)
            prev = [(torch.randn(r, d_in, generator=g, dtype=torch.float64),
                     torch.randn(d_out, r, generator=g, dtype=torch.float64), 0.5) for _ in range(3)]
            h = sum(lora_delta(pa, pb, s) for pa, pb, s in prev)
            results = {}
            for where in ("cpu", device):
                aa, bb = a.to(where).requires_grad_(True), b.to(where).requires_grad_(True)
                hh = h.to(where)
                ref = parameter_stability_loss(lora_delta(aa, bb, 2.0), hh, alpha=1.5, reduction=reduction,
                                               variant=variant, lora_A=aa, lora_B=bb)
                results[("ref", where)] = (ref.detach().cpu(), *[x.cpu() for x in torch.autograd.grad(ref, (aa, bb))])
                pv = [(x.to(where), y.to(where), s) for x, y, s in prev]
                forms = [("dense", hh, "fused"), ("factors", stack_history(pv), "fused"),
                         ("prepared", prepare_history(hh, pv, alpha=1.5, variant=variant, store="dense"), "fused")]
                if where == device and triton_here(device) and variant in ("dir+fro", "dir+factor"):
                    forms += [("triton " + f, hist, "triton") for f, hist, _ in forms]
                for form, hist, strategy in forms:
                    loss = lean_stability_loss(aa, bb, 2.0, hist, alpha=1.5, reduction=reduction, variant=variant,
                                               block_rows=37, strategy=strategy)
                    results[(form, where)] = (loss.detach().cpu(),
                                              *[x.cpu() for x in torch.autograd.grad(loss, (aa, bb))])
            base = results[("ref", "cpu")]
            diffs = {k: max(rel(x, y) for x, y in zip(v, base)) for k, v in results.items() if k != ("ref", "cpu")}
            m = max(diffs.values())
            worst = max(worst, m)
            triton_diffs = [v for (f, w), v in diffs.items() if w == device and f.startswith("triton")]
            rows.append([variant, reduction, f"{diffs.get(('ref', device), 0.0):.1e}",
                         f"{max(diffs[(f, device)] for f in ('dense', 'factors', 'prepared')):.1e}",
                         f"{max(triton_diffs):.1e}" if triton_diffs else "-",
                         "ok" if m < 1e-9 else "MISMATCH"])
    return rows, worst


def triton_here(device: str) -> bool:
    """The Triton kernel runs on CUDA, or on the CPU under TRITON_INTERPRET=1 (slow: a check of the code only)."""
    import os

    return device.startswith("cuda") or os.environ.get("TRITON_INTERPRET") == "1"


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(fn, device, reps, absolute=False):
    """(median seconds, peak bytes) of fn(): above the memory allocated before the call, or (absolute) all of it."""
    fn()
    sync(device)
    times = []
    for _ in range(reps):
        if device.startswith("cuda"):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    peak = None
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - (0 if absolute else base)
    return statistics.median(times), peak


def loss_timing(device, sizes, reps):
    rows = []
    for d_out, d_in in sizes:
        g = torch.Generator(device=device).manual_seed(0)
        a = (torch.randn(8, d_in, generator=g, device=device) / d_in ** 0.5).requires_grad_(True)
        b = (torch.randn(d_out, 8, generator=g, device=device) * 1e-3).requires_grad_(True)
        prev = [(torch.randn(8, d_in, generator=g, device=device) / d_in ** 0.5,
                 torch.randn(d_out, 8, generator=g, device=device) * 1e-3, 2.0) for _ in range(3)]
        h = sum(lora_delta(pa, pb, s) for pa, pb, s in prev)
        alpha = adaptive_alpha(h)
        pf = prepare_history(h, prev, alpha=alpha, store="factors")
        pd = prepare_history(h, alpha=alpha, store="dense")

        def naive():
            parameter_stability_loss(lora_delta(a, b, 2.0), h, alpha=alpha, lora_A=a, lora_B=b).backward()

        cases = {"naive (dense reference)": naive,
                 "lean, H as factors": lambda: pf.loss(a, b, 2.0).backward(),
                 "lean, tanh(αH) cached": lambda: pd.loss(a, b, 2.0).backward(),
                 "lean, factors, recompute": lambda: pf.loss(a, b, 2.0, strategy="recompute").backward()}
        if triton_here(device):  # the kernel covers the literal forms (dir+fro, dir+factor), not the default
            tf = prepare_history(h, prev, alpha=alpha, store="factors", variant="dir+fro")
            td = prepare_history(h, alpha=alpha, store="dense", variant="dir+fro")
            cases["lean, H as factors, triton kernel (dir+fro)"] = lambda: tf.loss(a, b, 2.0, strategy="triton").backward()
            cases["lean, tanh(αH) cached, triton kernel (dir+fro)"] = (
                lambda: td.loss(a, b, 2.0, strategy="triton").backward())
        for log2 in (18, 22, 24):  # block size sweep (the default is stability_lean.BLOCK_ELEMENTS)
            rows_per_block = max(1, (1 << log2) // d_in)
            cases[f"lean, factors, blocks of 2^{log2} elements"] = (
                lambda rb=rows_per_block: pf.loss(a, b, 2.0, block_rows=rb).backward())
        res = {k: measure(f, device, reps) for k, f in cases.items()}
        t0 = res["naive (dense reference)"][0]
        for k, (t, peak) in res.items():
            rows.append([f"{d_out}x{d_in}", k, f"{t * 1000:.2f}", f"{t0 / t:.2f}x",
                         "-" if peak is None else f"{peak / 2**20:.1f}"])
    return rows


def step_timing(device, d, tokens, reps):
    from peft import LoraConfig, get_peft_model
    from torch import nn

    from pslora_cli.training.recipe import lora_layers

    rows = []
    res = {}
    impls = ("lora", "ps-lean", "ps-lean-triton", "naive") if triton_here(device) else ("lora", "ps-lean", "naive")
    for impl in impls:  # one at a time, so that the absolute peak is this setup's alone
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(d, d, bias=False), nn.ReLU(), nn.Linear(d, d, bias=False)).to(device)
        for p in model.parameters():
            p.requires_grad_(False)
        pm = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["0", "2"]))
        layers = lora_layers(pm)
        g = torch.Generator(device=device).manual_seed(1)
        hist, dense = {}, {}
        for name, layer in layers.items():
            with torch.no_grad():
                layer.lora_B["default"].weight.normal_(0, 1e-3, generator=g)
            prev = [(torch.randn(8, d, generator=g, device=device) / d ** 0.5,
                     torch.randn(d, 8, generator=g, device=device) * 1e-3, 2.0) for _ in range(3)]
            h = sum(lora_delta(pa, pb, s) for pa, pb, s in prev)
            alpha = adaptive_alpha(h)
            if impl.startswith("ps-lean"):  # the kernel's row: the literal form it covers
                hist[name] = prepare_history(h, prev, alpha=alpha,
                                             **({"variant": "dir+fro"} if impl.endswith("triton") else {}))
            elif impl == "naive":
                dense[name] = (h, alpha)
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-4)
        x = torch.randn(tokens, d, generator=g, device=device)

        def step(pm=pm, layers=layers, hist=hist, dense=dense, opt=opt, x=x, impl=impl):
            opt.zero_grad(set_to_none=True)
            loss = pm(x).pow(2).mean()
            for name, layer in layers.items():
                a, b, s = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]
                if impl.startswith("ps-lean"):
                    loss = loss + hist[name].loss(a, b, s, strategy="triton" if impl.endswith("triton") else "fused")
                elif impl == "naive":
                    h, alpha = dense[name]
                    loss = loss + parameter_stability_loss(lora_delta(a, b, s), h, alpha=alpha, lora_A=a, lora_B=b)
            loss.backward()
            opt.step()

        res[impl] = measure(step, device, reps, absolute=True)
        del step, pm, model, opt, layers, hist, dense, x
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    t0, m0 = res["lora"]
    for k, (t, peak) in res.items():
        rows.append([k, f"{t * 1000:.2f}", f"{t / t0:.3f}x", "-" if peak is None else f"{peak / 2**20:.1f}",
                     "-" if peak is None or not m0 else f"{100 * (peak - m0) / m0:+.1f}%"])
    return rows


def merge_check(device: str, d: int, tasks: int, reps: int) -> tuple[list, bool]:
    """Rows of table 3 and whether the device's fold equals the CPU reference bitwise."""
    from pslora_cli.core.merges.magnitude import magnitude_merge_factors
    from pslora_cli.core.merges.magnitude import pick_larger
    from pslora_cli.core.merges.running import RunningMerge

    g = torch.Generator().manual_seed(0)
    special = torch.tensor([float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 1e-45])
    ok = True
    for dtype in (torch.float32, torch.float64):
        deltas = [torch.randn(64, 96, generator=g, dtype=dtype) for _ in range(6)]
        deltas += [special[torch.randint(0, len(special), (64, 96), generator=g)].to(dtype) for _ in range(6)]
        ref = deltas[0].clone()
        for x in deltas[1:]:
            ref = pick_larger(ref, x)
        m = RunningMerge("magnitude")
        for x in deltas:
            m.add(x.to(device))
        bits = torch.int32 if dtype == torch.float32 else torch.int64
        ok &= torch.equal(m.result.cpu().view(bits), ref.view(bits))
    factors = [(torch.randn(8, d, generator=g) / d ** 0.5, torch.randn(d, 8, generator=g) * 1e-2)
               for _ in range(tasks)]

    def merge_on(dev):
        on = [(2.0 * b.to(dev), a.to(dev)) for a, b in factors]
        return lambda: magnitude_merge_factors(on)  # what `pslora merge --device` runs

    def dense_fold_on(dev):
        m, buf = RunningMerge("magnitude"), None
        for a, b in factors:
            buf = lora_delta(a.to(dev), b.to(dev), 2.0, out=buf)
            m.add(buf)
        return m.result

    t_dev, peak = measure(merge_on(device), device, reps)
    t_cpu, _ = measure(merge_on("cpu"), "cpu", max(1, reps // 5))
    # on one device, the factor merge equals the fold of the dense products bitwise; across devices the products
    # may round differently (another summation order), so only close
    ok &= torch.equal(merge_on(device)(), dense_fold_on(device))
    ok &= torch.allclose(merge_on(device)().cpu(), merge_on("cpu")(), rtol=1e-5, atol=1e-7)
    mb = "-" if peak is None else f"{peak / 2**20:.0f}"
    rows = [[f"{tasks} x {d}x{d}", device, f"{t_dev * 1e3:.1f}", f"{t_cpu / t_dev:.1f}x", mb],
            [f"{tasks} x {d}x{d}", "cpu", f"{t_cpu * 1e3:.1f}", "1.0x", "-"]]
    return rows, ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--small", action="store_true", help="small sizes (for checking the script on a CPU)")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available here; run on a CUDA machine (or --device cpu --small to check the script)")
        return 2
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    print(f"device: {name}; torch {torch.__version__}")
    rows, worst = check(args.device)
    print("\n1. lean vs reference, float64 (max relative difference to the CPU reference, value and gradients)")
    print(table(["variant", "reduction", "reference on device", "lean on device", "triton kernel on device", "status"],
                rows))
    sizes = [(256, 384)] if args.small else [(1024, 1024), (4096, 4096), (11008, 4096)]
    reps = 3 if args.small else 20
    print("\n2a. loss forward+backward, one module, float32, rank 8, 3 earlier tasks (memory: peak above start)")
    print(table(["module", "implementation", "ms", "speed-up vs naive", "peak MB"], loss_timing(args.device, sizes,
                                                                                              reps)))
    d, tokens = (256, 64) if args.small else (4096, args.tokens)
    print(f"\n2b. training step, q+v-like pair of {d}x{d} layers, {tokens} tokens, float32, AdamW")
    print(table(["impl", "step ms", "time / lora", "peak MB (all)", "extra peak vs lora"],
                step_timing(args.device, d, tokens, reps)))
    merge_rows, merge_ok = merge_check(args.device, 256 if args.small else 4096, 15, reps)
    print("\n3. magnitude merge of 15 rank-8 updates (products + fold, float32; fold equal to the CPU's bitwise: "
          f"{'yes' if merge_ok else 'NO'})")
    print(table(["updates", "device", "ms", "speed-up vs cpu", "peak MB"], merge_rows))
    good = worst < 1e-9 and merge_ok
    print(f"\ncorrectness: {'ok' if good else 'MISMATCH'} (worst relative difference {worst:.1e}, merge bitwise "
          f"{'equal' if merge_ok else 'DIFFERENT'})")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
