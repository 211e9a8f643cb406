"""Scoring a generative store: the time to answer every test prompt of a stage's tasks, three ways, on the same
folded model and the same prompts:

    loop         one `generate` call per example (batch 1, greedy, at most the longest answer): the baseline
    batched      one `generate` call per batch of eval_batch_size, left-padded (pslora's earlier scorer)
    exact-match  pslora's scorer (models/lm.py exact_match_hits): batches of eval_batch_size, the prompts' common
                 prefix read once per batch (causal LMs)
    rank         pslora's rank scorer (models/lm.py rank_hits): the log-likelihood of every option

and whether the batched scorers give the loop's answers example by example. The stage is the store's last (all trained
tasks merged, as `pslora eval` folds it); the whole accuracy matrix costs about (cells / tasks) times this.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/performance/lm_scoring.py STORE [--threads 1] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="examples per task (default: the whole test set)")
    args = ap.parse_args()
    import torch

    from pslora_cli.evaluation.scoring import Evaluator
    from pslora_cli.models.lm import exact_match_hits, normalise, rank_hits
    from pslora_cli.data.loader import data_loader
    from pslora_cli.session import Session

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    seq, store, _ = Session(store_path=args.store, device_name="cpu", quiet=True).open()
    load = data_loader(seq)
    k = len(store.trained_prefix(seq.task_ids))
    ev = Evaluator(seq, store, cpu, load)
    ev.folder.fold(ev.stage_update(ev.adapters(k)))
    lm, batch = ev.backbone, seq.training.eval_batch_size
    rows, totals = [], {"loop": 0.0, "batched": 0.0, "exact-match": 0.0, "rank": 0.0}
    for i in range(k):
        data = load(i)
        xs, ys = list(data.test_x)[: args.limit], list(data.test_y)[: args.limit]
        longest = max(len(lm.answer_ids(a)) for a in data.answers)
        with torch.inference_mode():
            t0 = time.perf_counter()
            loop = []
            for x in xs:
                enc = lm.collate_prompts([x], longest, cpu)
                out = lm.model.generate(**enc, max_new_tokens=longest, do_sample=False, pad_token_id=lm.pad_id,
                                        eos_token_id=lm.eos_id)
                new = out if lm.kind == "seq2seq-lm" else out[:, enc["input_ids"].shape[1]:]
                loop.append(normalise(lm.tokenizer.decode(new[0], skip_special_tokens=True)) ==
                            normalise(data.answers[ys[len(loop)]]))
            t1 = time.perf_counter()
            batched = []
            for start in range(0, len(xs), batch):
                enc = lm.collate_prompts(xs[start:start + batch], longest, cpu)
                out = lm.model.generate(**enc, max_new_tokens=longest, do_sample=False, pad_token_id=lm.pad_id,
                                        eos_token_id=lm.eos_id)
                new = out if lm.kind == "seq2seq-lm" else out[:, enc["input_ids"].shape[1]:]
                batched += [normalise(t) == normalise(data.answers[ys[start + j]]) for j, t in
                            enumerate(lm.tokenizer.batch_decode(new, skip_special_tokens=True))]
            tb = time.perf_counter()
            em = exact_match_hits(lm, xs, ys, data.answers, cpu, batch).tolist()
            t2 = time.perf_counter()
            rk = rank_hits(lm, xs, ys, data.answers, cpu, batch).tolist()
            t3 = time.perf_counter()
        row = {"task": seq.task_ids[i], "examples": len(xs), "loop_s": t1 - t0, "batched_s": tb - t1,
               "exact_match_s": t2 - tb, "rank_s": t3 - t2, "same_hits": em == loop, "batched_same": batched == loop, "acc_exact_match": sum(em) / len(em),
               "acc_rank": sum(rk) / len(rk)}
        rows.append(row)
        totals["loop"] += row["loop_s"]
        totals["batched"] += row["batched_s"]
        totals["exact-match"] += row["exact_match_s"]
        totals["rank"] += row["rank_s"]
        print(json.dumps(row), flush=True)
    print(f"\nstage {k} of {args.store} ({sum(r['examples'] for r in rows)} prompts, {args.threads} thread(s), "
          f"eval_batch_size {batch})\n")
    print("| scorer | seconds | prompts / s | speed-up over the loop | same hits as the loop |")
    print("| --- | --- | --- | --- | --- |")
    n = sum(r["examples"] for r in rows)
    for name, key in (("loop (generate, batch 1)", "loop"), ("generate, batched", "batched"),
                      ("exact-match (batched, shared prefix)", "exact-match"), ("rank (batched)", "rank")):
        same = {"loop": "—", "rank": "n/a", "batched": all(r["batched_same"] for r in rows),
                "exact-match": all(r["same_hits"] for r in rows)}[key]
        print(f"| {name} | {totals[key]:.1f} | {n / totals[key]:.1f} | {totals['loop'] / totals[key]:.2f}x | {same} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
