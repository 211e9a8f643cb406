"""Continual-learning metrics from one accuracy matrix (METHOD.md §5).

R[t][i] = accuracy on task i (1-based) after training task t; row 0 is the base model, so the matrix has T+1 rows
of T entries and R[t][i] is matrix[t][i-1]. An entry is a float in [0, 1], or None when not evaluated / undefined.
A metric that is undefined is None, never 0: with T = 1, bwt, fwt, forgetting and forgetting_last are None. If an
entry a metric needs is None the metric is None, except that fwt skips undefined pairs and forgetting's max skips
undefined R[l][j].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

METRIC_DOCS: dict[str, str] = {
    "acc": "ACC = mean_i R[T][i]: mean accuracy over all tasks after the last task (higher is better).",
    "acc_weighted": "ACC weighted by each task's test-sample count: sum_i n_i R[T][i] / sum_i n_i "
    "(null without sample counts).",
    "avg_incremental_accuracy": "mean over t=1..T of mean_{i<=t} R[t][i]: average accuracy on the tasks seen "
    "so far, over all stages (higher is better).",
    "bwt": "BWT = mean_{i<T} (R[T][i] - R[i][i]): negative = forgetting, positive = backward transfer "
    "(null for T=1).",
    "fwt": "FWT = mean_{i>=2} (R[i-1][i] - R[0][i]), over pairs where both are defined: positive = earlier tasks "
    "help task i before it is trained (null if no pair is defined, e.g. T=1 or class-incremental; null in a store's "
    "matrix where tasks are scored with heads, whose zero-shot cell is not zero-shot).",
    "forgetting": "mean_{j<T} (max_{j<=l<T} R[l][j] - R[T][j]) (Chaudhry; row 0 excluded, undefined R[l][j] "
    "skipped): >= 0 usually, larger = more forgetting (null for T=1).",
    "forgetting_last": "mean_{j<T} (R[j][j] - R[T][j]) = -BWT: larger = more forgetting (null for T=1).",
    "learning_accuracy": "mean_i R[i][i]: accuracy on each task right after training it (plasticity).",
    "num_tasks": "T, the number of tasks (the matrix has T+1 rows, row 0 = base model).",
}


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _validate(matrix: Sequence[Sequence[float | None]]) -> int:
    """Check shape and values; return T."""
    if isinstance(matrix, (str, bytes)) or not isinstance(matrix, Sequence) or len(matrix) == 0:
        raise ValueError("accuracy matrix must be a non-empty list of rows")
    for t, row in enumerate(matrix):
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
            raise ValueError(f"accuracy matrix row {t} is not a list")
    width = len(matrix[0])
    for t, row in enumerate(matrix):
        if len(row) != width:
            raise ValueError(f"ragged accuracy matrix: row {t} has {len(row)} entries, row 0 has {width}")
    if width == 0:
        raise ValueError("accuracy matrix rows are empty: need at least one task")
    if len(matrix) != width + 1:
        raise ValueError(
            f"accuracy matrix has {len(matrix)} rows of {width} entries; expected T+1 = {width + 1} rows "
            f"(row 0 = base model) for T = {width} tasks"
        )
    for t, row in enumerate(matrix):
        for i, v in enumerate(row, start=1):
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, Real):
                raise ValueError(f"R[{t}][{i}] = {v!r} is not a number or None")
            if not (0.0 <= v <= 1.0):  # also rejects NaN
                raise ValueError(f"R[{t}][{i}] = {v!r} is outside [0, 1]")
    return width


def _validate_counts(sample_counts: Sequence[float], T: int) -> list[float]:
    if isinstance(sample_counts, (str, bytes)) or not isinstance(sample_counts, Sequence):
        raise ValueError("sample_counts must be a list of numbers")
    if len(sample_counts) != T:
        raise ValueError(f"sample_counts has {len(sample_counts)} entries, expected one per task ({T})")
    for i, n in enumerate(sample_counts, start=1):
        if isinstance(n, bool) or not isinstance(n, Real) or not math.isfinite(n) or n < 0:
            raise ValueError(f"sample_counts[{i}] = {n!r} must be a finite number >= 0")
    if math.fsum(sample_counts) <= 0:
        raise ValueError("sample_counts sum to 0")
    return [float(n) for n in sample_counts]


def cl_metrics(
    matrix: Sequence[Sequence[float | None]], sample_counts: Sequence[float] | None = None
) -> dict[str, float | int | None]:
    """All metrics of METRIC_DOCS (same keys) from the (T+1) x T accuracy matrix; ValueError on a malformed matrix.

    sample_counts: optional test-set size per task (length T), for acc_weighted.
    """
    T = _validate(matrix)
    counts = None if sample_counts is None else _validate_counts(sample_counts, T)

    def R(t: int, i: int) -> float | None:
        v = matrix[t][i - 1]
        return None if v is None else float(v)

    def all_defined(values: list[float | None]) -> bool:
        return all(v is not None for v in values)

    last = [R(T, i) for i in range(1, T + 1)]
    diag = [R(i, i) for i in range(1, T + 1)]

    acc = _mean(last) if all_defined(last) else None

    acc_weighted = None
    if counts is not None and all_defined(last):
        acc_weighted = math.fsum(n * r for n, r in zip(counts, last)) / math.fsum(counts)

    stage_means = []
    for t in range(1, T + 1):
        seen = [R(t, i) for i in range(1, t + 1)]
        stage_means.append(_mean(seen) if all_defined(seen) else None)
    avg_inc = _mean(stage_means) if all_defined(stage_means) else None

    learning_accuracy = _mean(diag) if all_defined(diag) else None

    bwt = forgetting_last = forgetting = fwt = None
    if T >= 2:
        old_last, old_diag = last[:-1], diag[:-1]
        if all_defined(old_last) and all_defined(old_diag):
            bwt = _mean([r_T - r_i for r_T, r_i in zip(old_last, old_diag)])
            forgetting_last = _mean([r_i - r_T for r_T, r_i in zip(old_last, old_diag)])

        drops: list[float | None] = []
        for j in range(1, T):
            seen = [v for v in (R(l, j) for l in range(j, T)) if v is not None]
            drops.append(max(seen) - last[j - 1] if seen and last[j - 1] is not None else None)
        forgetting = _mean(drops) if all_defined(drops) else None

        pairs = [(R(i - 1, i), R(0, i)) for i in range(2, T + 1)]
        gains = [a - b for a, b in pairs if a is not None and b is not None]
        fwt = _mean(gains) if gains else None

    return {
        "acc": acc,
        "acc_weighted": acc_weighted,
        "avg_incremental_accuracy": avg_inc,
        "bwt": bwt,
        "fwt": fwt,
        "forgetting": forgetting,
        "forgetting_last": forgetting_last,
        "learning_accuracy": learning_accuracy,
        "num_tasks": T,
    }


def forgetting_split(agnostic: dict, aware: dict) -> dict[str, float | str | None]:
    """Where class-incremental forgetting sits, from the metrics of the two matrices of one store.

    bwt_backbone: BWT of the task-aware matrix (each task still scored with its own head: what the adapted weights
    forgot). bwt_heads: the rest of the task-agnostic BWT (later tasks' heads winning the argmax over every class
    seen, which no loss on the weights can prevent). mostly: the larger of the two parts (None when undefined).
    """
    total, backbone = agnostic.get("bwt"), aware.get("bwt")
    if total is None or backbone is None:
        return {"bwt_backbone": None, "bwt_heads": None, "mostly": None}
    heads = total - backbone
    return {"bwt_backbone": backbone, "bwt_heads": heads,
            "mostly": "heads" if abs(heads) > abs(backbone) else "backbone"}


# Two-sided 95 % quantiles of Student's t by degrees of freedom; a df between tabled values takes the next smaller
# one (a slightly wider interval, never a narrower one).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
         29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def paired_interval(differences: Sequence[float]) -> dict[str, float | int | None]:
    """Mean of paired differences (A − B on the same seed and order) with its two-sided 95 % t interval
    (n − 1 degrees of freedom); low/high are None with fewer than two pairs. Pairs with a None are skipped."""
    diffs = [float(d) for d in differences if d is not None]
    if not diffs:
        return {"n": 0, "mean": None, "low": None, "high": None}
    mean = _mean(diffs)
    if len(diffs) < 2:
        return {"n": 1, "mean": mean, "low": None, "high": None}
    std = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    df = len(diffs) - 1
    t = _T975[max(k for k in _T975 if k <= df)]
    half = t * std / math.sqrt(len(diffs))
    return {"n": len(diffs), "mean": mean, "low": mean - half, "high": mean + half}


def prompt_paired_interval(hits_a: Sequence[str], hits_b: Sequence[str]) -> dict[str, float | int | None]:
    """ACC of A minus ACC of B from the per-prompt records of their last rows (one "0"/"1" string per task, both
    stores scoring the same prompts in the same order), with a two-sided 95 % normal interval.

    ACC weights tasks equally, so the difference is mean_i d_i with d_i task i's mean of a_ij − b_ij, and its
    variance sum_i s_i² / n_i / T², s_i² the sample variance of a_ij − b_ij over task i's n_i prompts. It measures
    how much the test prompts alone could move the difference between these two trained models: it says nothing
    of another seed's training. a_only / b_only count the prompts only A / only B got right (McNemar's discordant
    pairs). The interval is None where a task has fewer than two prompts. pooled_*: the difference of the accuracy that
    counts every prompt once (`acc_weighted`), (a_only − b_only) / n, with the sample variance over all prompts
    (ignoring the grouping by task, which makes it conservative): where the two differences disagree, the gap comes
    from weighting tasks of different sizes equally."""
    if len(hits_a) != len(hits_b) or not hits_a:
        raise ValueError(f"per-prompt records of {len(hits_a)} and {len(hits_b)} tasks: expected the same, at least 1")
    diffs = []
    for i, (a, b) in enumerate(zip(hits_a, hits_b)):
        if len(a) != len(b) or set(a + b) - {"0", "1"}:
            raise ValueError(f"task {i + 1}: per-prompt records of {len(a)} and {len(b)} prompts, or not 0/1")
        diffs.append([int(x) - int(y) for x, y in zip(a, b)])
    out = {"n": sum(map(len, diffs)), "mean": None, "low": None, "high": None,
           "a_only": sum(d.count(1) for d in diffs), "b_only": sum(d.count(-1) for d in diffs),
           "pooled_mean": None, "pooled_low": None, "pooled_high": None}
    pooled = [x for d in diffs for x in d]
    if pooled:
        out["pooled_mean"] = m = _mean(pooled)
        if len(pooled) > 1:
            half = 1.959964 * math.sqrt(math.fsum((x - m) ** 2 for x in pooled) / (len(pooled) - 1) / len(pooled))
            out["pooled_low"], out["pooled_high"] = m - half, m + half
    if min(map(len, diffs)) < 1:
        return out
    means = [_mean(d) for d in diffs]
    out["mean"] = _mean(means)
    if min(map(len, diffs)) < 2:
        return out
    variance = math.fsum(math.fsum((x - m) ** 2 for x in d) / (len(d) - 1) / len(d) for d, m in zip(diffs, means))
    half = 1.959964 * math.sqrt(variance) / len(diffs)
    out["low"], out["high"] = out["mean"] - half, out["mean"] + half
    return out
