"""Benchmark 1: one training step (forward, loss, backward, AdamW step) of

    lora         plain LoRA (PEFT), task loss only
    ps-lean      PS-LoRA: task loss + λ·Σ_m lean_stability_loss (core/stability_lean.py), history prepared as
                 train.py does (store "auto": the stacked factors of the earlier tasks, here smaller than dense)
    ps-lean-tc   the same with store "dense": tanh(αH) cached densely (faster, H-sized buffer per module)
    naive        PS-LoRA with the dense reference: parameter_stability_loss(lora_delta(A, B, s), H)

on the same model, batch, rank (8) and history (3 earlier tasks of rank 8), at four sizes: the real MiniLM-L6
(query, value: 384x384), the real SmolLM2-135M-Instruct (q_proj, v_proj; the generative track's answer-only loss),
synthetic T5-large-sized layers (1024x1024) and LLaMA-7B-sized layers (4096x4096). The loss is "hinge+ratio", the
costliest of the scaled forms (the default "magnitude-only" is its factored-norm half alone, without the
elementwise pass over H).

Time: median wall time of a step, the implementations interleaved (A B C D A B C D ...) so that load on the
machine hits them alike; "time / lora" is the median of the per-round ratios (each step over the plain LoRA step of
the same round). Memory, on the CPU: "persistent" = bytes of the model's parameters, the optimizer state,
the history buffers and the batch; "step peak" = the peak, above the start of the step, of the bytes torch's CPU
allocator holds during one step, from torch.profiler's memory events (deterministic sizes, not RSS); "saved" =
bytes autograd saves for backward (saved_tensors_hooks). Peak memory = persistent + step peak.
"""

from __future__ import annotations

import copy
import time

from perf_common import synthetic_model, fmt_mb, fmt_ratio, median, profile_peak_bytes, table, tensor_bytes

RANK, LORA_ALPHA, PREV_TASKS, LAMBDA = 8, 16, 3, 1.0
VARIANT = "hinge+ratio"
IMPLS = ("lora", "ps-lean", "ps-lean-tc", "naive")


class Setup:
    """One implementation: its own PEFT-wrapped copy of the model, optimizer and (for PS) history."""

    def __init__(self, impl: str, base, targets: list[str], batch, loss_fn, seed: int = 0):
        import torch
        from peft import LoraConfig, get_peft_model

        from pslora_cli.core.stability import adaptive_alpha, lora_delta
        from pslora_cli.core.stability_lean import prepare_history
        from pslora_cli.training.recipe import lora_layers

        self.impl = impl
        model = copy.deepcopy(base)
        self.model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=LORA_ALPHA, target_modules=targets,
                                                      lora_dropout=0.0, bias="none"))
        self.layers = lora_layers(self.model)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # same factors in every implementation; B != 0 so that D != 0
            for name in sorted(self.layers):
                layer = self.layers[name]
                a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
                a.copy_(torch.randn(a.shape, generator=g) / a.shape[1] ** 0.5)
                b.copy_(torch.randn(b.shape, generator=g) * 1e-3)
        self.batch, self.loss_fn = batch, loss_fn
        self.params = [p for p in self.model.parameters() if p.requires_grad] + list(loss_fn.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=1e-4)
        self.hist, self.dense_h, self.alpha = {}, {}, {}
        if impl != "lora":
            for name in sorted(self.layers):
                layer = self.layers[name]
                a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
                prev = [(torch.randn(a.shape, generator=g) / a.shape[1] ** 0.5,
                         torch.randn(b.shape, generator=g) * 1e-3, LORA_ALPHA / RANK) for _ in range(PREV_TASKS)]
                h = sum(lora_delta(pa, pb, s) for pa, pb, s in prev)
                self.alpha[name] = adaptive_alpha(h)
                if impl == "naive":
                    self.dense_h[name] = h
                else:
                    self.hist[name] = prepare_history(h, prev, alpha=self.alpha[name], variant=VARIANT,
                                                      store="dense" if impl == "ps-lean-tc" else "auto")
                del h
        self.stores = sorted({h.store for h in self.hist.values()})

    def forward_loss(self):
        import torch

        from pslora_cli.core.stability import lora_delta, parameter_stability_loss

        loss = self.loss_fn(self.model, self.batch)
        if self.impl == "lora":
            return loss
        ps = torch.zeros(())
        for name, layer in self.layers.items():
            a, b, s = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]
            if self.impl == "naive":
                d = lora_delta(a, b, s)
                ps = ps + parameter_stability_loss(d, self.dense_h[name].reshape(d.shape), alpha=self.alpha[name],
                                                   variant=VARIANT, lora_A=a, lora_B=b)
            else:
                ps = ps + self.hist[name].loss(a, b, s)
        return loss + LAMBDA * ps

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.forward_loss()
        loss.backward()
        self.opt.step()
        return loss

    def saved_bytes(self) -> int:
        import torch

        sizes = []

        def pack(t):
            sizes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = self.forward_loss()
        del loss
        return sum(sizes)

    def persistent_bytes(self) -> int:
        state = [t for s in self.opt.state.values() for t in s.values() if hasattr(t, "numel")]
        hist = sum(h.nbytes for h in self.hist.values()) + tensor_bytes(self.dense_h.values())
        batch = tensor_bytes(v for v in self.batch.values()) if isinstance(self.batch, dict) else 0
        model = tensor_bytes(list(self.model.parameters()) + list(self.model.buffers())
                             + list(self.loss_fn.parameters()))
        return model + tensor_bytes(state) + hist + batch


def _minilm(batch_size: int, seq: int):
    import torch
    from torch import nn
    from transformers import AutoModel

    from pslora_cli.config import Backbone
    from pslora_cli.models import quiet_transformers as _quiet_transformers, resolve_model_path

    _quiet_transformers()
    path = resolve_model_path(Backbone(source="builtin", name="all-minilm-l6-v2"))
    base = AutoModel.from_pretrained(path)
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(1000, base.config.vocab_size, (batch_size, seq), generator=g),
             "attention_mask": torch.ones(batch_size, seq, dtype=torch.long),
             "labels": torch.randint(0, 4, (batch_size,), generator=g)}

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(base.config.hidden_size, 4)

        def forward(self, model, b):
            hidden = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
            return nn.functional.cross_entropy(self.head(hidden.mean(1)), b["labels"])

    return base, ["query", "value"], batch, Head, f"MiniLM-L6 (12 modules 384x384), batch {batch_size}x{seq} tokens"


def _smollm2(batch_size: int, seq: int):
    """The generative track's real workload: SmolLM2-135M-Instruct (built in), LoRA on every q_proj/v_proj (60
    modules), the answer-only loss as pslora trains it (vocabulary projection at the answer positions only)."""
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM

    from pslora_cli.config import Backbone
    from pslora_cli.models import quiet_transformers as _quiet_transformers, resolve_model_path
    from pslora_cli.models.lm import answer_logits

    _quiet_transformers()
    path = resolve_model_path(Backbone(source="builtin", name="smollm2-135m-instruct"))
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    answer = 2  # answer tokens per example ("yes" + end token)
    rows = torch.arange(batch_size).repeat_interleave(answer)
    cols = torch.arange(seq - answer - 1, seq - 1).repeat(batch_size)
    batch = {"input_ids": torch.randint(1000, base.config.vocab_size, (batch_size, seq), generator=g),
             "attention_mask": torch.ones(batch_size, seq, dtype=torch.long), "rows": rows, "cols": cols}
    batch["targets"] = batch["input_ids"][rows, cols + 1]

    class AnswerLoss(nn.Module):
        def forward(self, model, b):
            return nn.functional.cross_entropy(answer_logits(model.get_base_model(), b), b["targets"])

    return (base, ["q_proj", "v_proj"], batch, AnswerLoss,
            f"SmolLM2-135M-Instruct (60 modules: q_proj 576x576, v_proj 192x576), batch {batch_size}x{seq} tokens")


def _layers(d: int, layers: int, tokens: int, label: str):
    import torch
    from torch import nn

    base = synthetic_model(d, layers)
    g = torch.Generator().manual_seed(1)
    batch = {"x": torch.randn(tokens, d, generator=g), "y": torch.randn(tokens, d, generator=g)}

    class Mse(nn.Module):
        def forward(self, model, b):
            return nn.functional.mse_loss(model(b["x"]), b["y"])

    return base, ["q", "v"], batch, Mse, f"{label}: {2 * layers} modules {d}x{d}, {tokens} tokens"


def run(quick: bool, log=print, sizes: list[str] | None = None) -> list[dict]:
    import torch

    if quick:
        plan = [("minilm", lambda: _minilm(8, 32), 2),
                ("smollm2", lambda: _smollm2(2, 64), 2),
                ("t5-large", lambda: _layers(1024, 1, 256, "T5-large-sized layers"), 2),
                ("llama-7b", lambda: _layers(4096, 1, 256, "LLaMA-7B-sized layers"), 1)]
        impls = ("lora", "ps-lean", "naive")
    else:
        plan = [("minilm", lambda: _minilm(16, 48), 5),
                ("smollm2", lambda: _smollm2(8, 128), 7),
                ("t5-large", lambda: _layers(1024, 4, 1024, "T5-large-sized layers"), 5),
                ("llama-7b", lambda: _layers(4096, 1, 2048, "LLaMA-7B-sized layers"), 5)]
        impls = IMPLS
    plan = [p for p in plan if sizes is None or p[0] in sizes]
    results = []
    for size, make, reps in plan:
        base, targets, batch, loss_cls, label = make()
        setups = {}
        for impl in impls:
            torch.manual_seed(0)
            setups[impl] = Setup(impl, base, targets, batch, loss_cls())
        del base
        for s in setups.values():  # warm-up (allocates the optimizer state)
            s.step()
        times = {impl: [] for impl in impls}
        for _ in range(reps):
            for impl, s in setups.items():
                t0 = time.perf_counter()
                s.step()
                times[impl].append(time.perf_counter() - t0)
        row = {"size": size, "label": label, "reps": reps, "impls": {},
               "tokens": batch["x"].shape[0] if "x" in batch else batch["input_ids"].numel()}
        for impl, s in setups.items():
            step_peak = profile_peak_bytes(s.step)
            row["impls"][impl] = {"step_s": median(times[impl]), "times": times[impl],
                                  "persistent": s.persistent_bytes(), "step_peak": step_peak,
                                  "saved": s.saved_bytes(), "history_store": ",".join(s.stores) or "-"}
        results.append(row)
        log(f"  train {size}: " + ", ".join(f"{k} {v['step_s'] * 1000:.0f} ms" for k, v in row["impls"].items()))
        del setups
    return results


def report(results: list[dict]) -> str:
    lines = []
    for row in results:
        lora = row["impls"]["lora"]
        lora_total = lora["persistent"] + lora["step_peak"]
        rows = []
        for impl, r in row["impls"].items():
            total = r["persistent"] + r["step_peak"]
            r["paired_ratio"] = median([t / t0 for t, t0 in zip(r["times"], lora["times"])])
            spread = f"{min(r['times']) * 1000:.0f}-{max(r['times']) * 1000:.0f}"
            rows.append([impl, r["history_store"], f"{r['step_s'] * 1000:.0f} ({spread})", fmt_ratio(r["paired_ratio"]),
                         f"{(r['step_s'] - lora['step_s']) * 1000:+.0f}", fmt_mb(r["saved"]), fmt_mb(r["persistent"]),
                         fmt_mb(r["step_peak"]), fmt_mb(total),
                         f"{100 * (total - lora_total) / lora_total:+.1f}%"])
        lines.append(f"\n{row['label']} (median of {row['reps']} interleaved steps)")
        lines.append(table(["impl", "H store", "step ms (min-max)", "time / lora", "extra ms", "saved MB", "persistent MB",
                            "step peak MB", "peak MB", "extra peak vs lora"], rows))
        ps = row["impls"].get("ps-lean")
        tokens = row.get("tokens")
        if ps and tokens and ps["paired_ratio"] > 1.05:
            extra = (ps["paired_ratio"] - 1) * lora["step_s"]
            lines.append(f"ps-lean adds about {extra * 1000:.0f} ms per step whatever the batch; plain LoRA's step "
                         f"grows about linearly with the tokens, so 1.05x would be reached near "
                         f"{tokens * (ps['paired_ratio'] - 1) / 0.05:.0f} tokens per step (extrapolated, not measured)")
    return "\n".join(lines)
