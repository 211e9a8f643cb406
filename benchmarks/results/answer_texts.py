"""What a generative store's model writes: the distinct answers (normalised as exact match compares them) to each
task's test (or validation) prompts at one stage, with their counts, and how many are not one of the task's answer
texts, and each task's accuracy under the whole-answer exact match and under the earlier prefix match (generation
cut at the longest answer's tokens): they differ where the model runs on past a gold label.

    .venv/bin/python benchmarks/results/answer_texts.py STORE [--stage T] [--split test|validation] [--threads N]
        (stage 0 = the base model; default: the last trained stage)
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("--stage", type=int, default=None)
    ap.add_argument("--split", default="test", choices=("test", "validation"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from pslora_cli.evaluation.matrix import trained_prefix
    from pslora_cli.evaluation.scoring import Evaluator
    from pslora_cli.models.lm import generated_answers, generation_budget, normalise
    from pslora_cli.data.loader import data_loader
    from pslora_cli.session import Session

    torch.set_num_threads(args.threads)
    session = Session(store_path=args.store, device_name="cpu", quiet=True)
    seq, store, _ = session.open()
    if not seq.generative:
        raise SystemExit(f"{args.store}: not a generative store")
    load = data_loader(seq)
    k = trained_prefix(seq, store)
    stage = k if args.stage is None else args.stage
    ev = Evaluator(seq, store, torch.device("cpu"), load, args.split)
    ev.folder.fold(ev.stage_update(ev.adapters(stage)))
    report = {"store": str(args.store), "stage": stage, "split": args.split, "tasks": {}}
    with torch.inference_mode():
        for i, task in enumerate(seq.task_ids[:k]):
            data = load(i)
            xs, ys = data.split(args.split)
            budget = generation_budget(data.answers, ev.backbone, seq.evaluation.max_new_tokens)
            longest = max(len(ev.backbone.answer_ids(a)) for a in data.answers)  # the earlier prefix match's budget
            written, prefixes = [], []
            for start in range(0, len(xs), seq.training.eval_batch_size):
                chunk = xs[start:start + seq.training.eval_batch_size]
                written += [normalise(t) for t in generated_answers(ev.backbone, chunk, budget, ev.device, longest)]
                prefixes += [normalise(t) for t in generated_answers(ev.backbone, chunk, longest, ev.device, longest)]
            counts = collections.Counter(written)
            labels = {normalise(a) for a in data.answers}
            gold = [normalise(data.answers[y]) for y in ys]
            report["tasks"][task] = {
                "answers": dict(counts.most_common()),
                "not_an_answer_text": sum(n for a, n in counts.items() if a not in labels),
                "accuracy_whole_answer": sum(w == g for w, g in zip(written, gold)) / len(gold),
                "accuracy_prefix_match": sum(p == g for p, g in zip(prefixes, gold)) / len(gold),
                "run_on_with_gold_prefix": sum(w != g and p == g for w, p, g in zip(written, prefixes, gold))}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
