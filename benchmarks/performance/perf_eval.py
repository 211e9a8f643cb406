"""Benchmark 3: evaluation throughput on the real MiniLM-L6 (query, value adapted, rank 8), 5 task adapters:

    folded          what `pslora` does: W = W0 + magnitude-merge(ΔW_1..ΔW_5) folded into the weights once
                    (adapters.WeightFolder), then plain forward passes, batched, under torch.inference_mode
    peft-1          PEFT model, one adapter active, unmerged (the LoRA branch runs in every forward)
    peft-5          PEFT model, the 5 adapters all active, unmerged (what serving 5 tasks' updates without
                    merging costs; PEFT sums the branches)

Throughput = sequences per second over the same token batches (random ids, no tokenizer), the implementations
interleaved; the fold/merge time is reported separately (paid once per stage, not per batch).
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import time
from pathlib import Path

from perf_common import median, table

RANK, LORA_ALPHA, TASKS = 8, 16, 5


def run(quick: bool, log=print) -> dict:
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModel

    from pslora_cli.models.adapters import WeightFolder, merged_deltas, open_adapters
    from pslora_cli.config import Backbone
    from pslora_cli.models import quiet_transformers as _quiet_transformers, resolve_model_path, target_parameters

    _quiet_transformers()
    n_seq, seq_len, batch_size, reps = (64, 48, 64, 2) if quick else (512, 48, 128, 5)
    path = resolve_model_path(Backbone(source="builtin", name="all-minilm-l6-v2"))
    base = AutoModel.from_pretrained(path).eval()
    for p in base.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, base.config.vocab_size, (n_seq, seq_len), generator=g)
    mask = torch.ones_like(ids)

    tmp = Path(tempfile.mkdtemp(prefix="pslora-bench-eval-"))
    try:
        dirs = []
        pm = get_peft_model(copy.deepcopy(base), LoraConfig(r=RANK, lora_alpha=LORA_ALPHA,
                                                            target_modules=["query", "value"]))
        for t in range(TASKS):  # PEFT-format adapters, B != 0
            with torch.no_grad():
                for name, p in pm.named_parameters():
                    if "lora_" in name:
                        p.copy_(torch.randn(p.shape, generator=g) * (0.05 if "lora_B" in name else 0.1))
            pm.save_pretrained(str(tmp / f"t{t}"))
            dirs.append(tmp / f"t{t}")
        del pm

        folded = copy.deepcopy(base)
        t0 = time.perf_counter()
        adapters = open_adapters(dirs)
        WeightFolder(target_parameters(folded, ["query", "value"])).fold(dict(merged_deltas(adapters, "magnitude")))
        fold_s = time.perf_counter() - t0

        peft1 = PeftModel.from_pretrained(copy.deepcopy(base), str(dirs[0]), adapter_name="t0").eval()
        peft5 = PeftModel.from_pretrained(copy.deepcopy(base), str(dirs[0]), adapter_name="t0").eval()
        for t in range(1, TASKS):
            peft5.load_adapter(str(dirs[t]), adapter_name=f"t{t}")
        peft5.base_model.set_adapter([f"t{t}" for t in range(TASKS)])

        models = {"folded": folded, "peft-1": peft1, "peft-5": peft5}

        @torch.inference_mode()
        def evaluate(model):
            out = []
            for s in range(0, n_seq, batch_size):
                hidden = model(input_ids=ids[s:s + batch_size], attention_mask=mask[s:s + batch_size]).last_hidden_state
                out.append(hidden.mean(1))
            return torch.cat(out)

        for m in models.values():
            evaluate(m)  # warm-up
        times = {k: [] for k in models}
        for _ in range(reps):
            for k, m in models.items():
                t0 = time.perf_counter()
                evaluate(m)
                times[k].append(time.perf_counter() - t0)
        res = {"n_seq": n_seq, "seq_len": seq_len, "batch_size": batch_size, "reps": reps, "fold_s": fold_s,
               "throughput": {k: n_seq / median(v) for k, v in times.items()}}
        log("  eval: " + ", ".join(f"{k} {v:.0f} seq/s" for k, v in res["throughput"].items()))
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(res: dict) -> str:
    thr = res["throughput"]
    rows = [[k, f"{v:.1f}", f"{thr['folded'] / v:.2f}x"] for k, v in thr.items()]
    return (f"\nMiniLM-L6, {res['n_seq']} sequences x {res['seq_len']} tokens, batch {res['batch_size']}, "
            f"{TASKS} adapters (median of {res['reps']} interleaved passes); folding the merge took "
            f"{res['fold_s']:.2f} s once\n"
            + table(["model", "sequences/s", "folded speed-up"], rows))
