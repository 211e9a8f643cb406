"""Parameter-shift statistics for `analyze-shifts` (METHOD.md §4), for one module or pooled over modules.

Notation: D = ΔW_t (task t's update), H = Σ_{i<t} ΔW_i (the history), C = H + D. Inputs are tensors of any
shape and are flattened; the pooled statistics of a stage are the same functions applied to the concatenation of
its modules' flattened tensors. Sums are taken in float64; sorting is exact (on integer keys that order like the
floats).
Nothing here reads or writes files.

Definitions (n = number of entries):
- quantiles of |D|, |H|, |C|: linear interpolation between order statistics (numpy's default "linear" method):
  q-quantile = s[⌊p⌋] + (p − ⌊p⌋)(s[⌈p⌉] − s[⌊p⌋]), p = q·(n − 1), s = sorted values.
- histograms on shared bins: `bins` equal bins over [−m, m], m = max(|D|, |H|, |C|) (m = 1 when all are 0); bin j
  holds edges[j] <= x < edges[j+1], the last bin also holds x = m. The same edges for D, H and C.
- relative norm: ‖D‖_F / ‖H‖_F (null when H = 0).
- Wasserstein-1 and Kolmogorov–Smirnov distance between the empirical value distributions of H and C, exact on
  the samples: W1 = ∫ |F_H(x) − F_C(x)| dx, KS = sup_x |F_H(x) − F_C(x)| (F = empirical CDF). When n exceeds
  `max_samples`, both use (and the quantiles too) the values at the same `max_samples` positions drawn uniformly
  with replacement by a generator seeded with `seed` (deterministic); the result says so ("subsampled").
- sign agreement, over the entries where D ≠ 0 and H ≠ 0: same_fraction = share with sign D = sign H,
  opposite_fraction = share with sign D = −sign H (the two add up to 1; null when there is no such entry).
  conflict_ratio = Σ_{DH<0} |DH| / Σ |DH| (null when Σ |DH| = 0).
  flip_rate = share of the entries with H ≠ 0 where sign C ≠ sign H (C = 0 counts as a flip; null when H = 0).
- subsets: the entries ranked by a key, |D| ("delta", default), |H| ("history") or |C| ("combined"); the top-k%
  (largest keys) and bottom-k% (smallest keys) hold m = ⌈k·n/100⌉ entries (at least 1); among equal keys the
  top ranking takes the lower position first (a stable sort) and the bottom ranking is its exact reverse. Each
  subset is split by the sign relation of D and H: "same" (DH > 0), "opposite" (DH < 0), "zero" (D = 0 or
  H = 0), giving each group's count, its fraction of the subset and its share of ‖D‖_1 (the group's Σ|D| over
  the whole Σ|D|; null when D = 0).
- Pearson and Spearman correlation (Spearman = Pearson on average ranks); null for fewer than 3 points or when
  either variable is constant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)
SUBSET_KS = (1, 5, 10, 20, 50)
RANK_KEYS = ("delta", "history", "combined")
PARTS = ("top", "bottom")
SIGNS = ("same", "opposite")
DEFAULT_BINS = 61
DEFAULT_MAX_SAMPLES = 1 << 21

SAME, OPPOSITE, ZERO = 1, -1, 0


def _flat(x: Tensor) -> Tensor:
    return x.detach().reshape(-1)


def _check_pair(delta: Tensor, history: Tensor) -> tuple[Tensor, Tensor]:
    if delta.shape != history.shape:
        raise ValueError(f"shape mismatch: delta {tuple(delta.shape)} vs history {tuple(history.shape)}")
    if delta.numel() == 0:
        raise ValueError("empty tensors: nothing to analyse")
    return _flat(delta), _flat(history)


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else num / den


def _sum64(x: Tensor) -> float:
    return float(x.sum(dtype=torch.float64))


_INT_VIEW = {torch.float32: (torch.int32, 0x7FFFFFFF), torch.float64: (torch.int64, 0x7FFFFFFFFFFFFFFF)}


def _order_keys(x: Tensor) -> Tensor:
    """Integers that sort like the floats `x` (IEEE bits, negatives' magnitude bits flipped; −0 just below +0).

    Sorting these is about twice as fast on the CPU as sorting the floats, with exactly the same order. The map
    is its own inverse. Other dtypes are returned unchanged.
    """
    if x.dtype not in _INT_VIEW:
        return x
    itype, mask = _INT_VIEW[x.dtype]
    bits = x.contiguous().view(itype)
    return bits ^ ((bits >> (bits.element_size() * 8 - 1)) & mask)


def sort_values(x: Tensor) -> Tensor:
    """torch.sort(x).values for a 1-D tensor (through integer keys for float32/float64; NaN is not supported)."""
    keys = _order_keys(x)
    if keys is x:
        return torch.sort(x).values
    return _order_keys_inverse(torch.sort(keys).values, x.dtype)


def _order_keys_inverse(keys: Tensor, dtype) -> Tensor:
    itype, mask = _INT_VIEW[dtype]
    return (keys ^ ((keys >> (keys.element_size() * 8 - 1)) & mask)).view(dtype)


def _quantiles_sorted(s: Tensor, levels: Sequence[float]) -> list[float]:
    n = s.numel()
    if n == 0:
        raise ValueError("quantiles of an empty tensor")
    out = []
    for q in levels:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile level {q} is outside [0, 1]")
        p = q * (n - 1)
        lo, hi = math.floor(p), math.ceil(p)
        a, b = float(s[lo]), float(s[hi])
        out.append(a + (p - lo) * (b - a))
    return out


def quantiles(x: Tensor, levels: Sequence[float] = QUANTILES) -> list[float]:
    """Quantiles of the values of `x` at `levels` (each in [0, 1]), linear interpolation (numpy's default)."""
    return _quantiles_sorted(sort_values(_flat(x)), levels)


def shared_histograms(tensors: dict[str, Tensor], bins: int = DEFAULT_BINS) -> tuple[list[float], dict[str, list[int]]]:
    """Counts of each tensor's values on the same `bins` equal bins over [−m, m], m = the largest |value|."""
    if bins < 1:
        raise ValueError("bins must be >= 1")
    flats = {name: _flat(t) for name, t in tensors.items()}
    m = max((float(t.abs().max()) for t in flats.values() if t.numel()), default=0.0)
    m = m if m > 0 else 1.0
    edges = torch.linspace(-m, m, bins + 1, dtype=torch.float64)
    counts = {}
    for name, t in flats.items():
        idx = torch.floor((t.double() + m) * (bins / (2 * m))).long().clamp_(0, bins - 1)
        counts[name] = torch.bincount(idx, minlength=bins).tolist()
    return edges.tolist(), counts


def ecdf_distances(a: Tensor, b: Tensor) -> tuple[float, float]:
    """(Wasserstein-1, Kolmogorov–Smirnov) between the empirical distributions of the values of a and b, exact."""
    return _ecdf_sorted(sort_values(_flat(a)), sort_values(_flat(b)))


def _ecdf_sorted(a: Tensor, b: Tensor) -> tuple[float, float]:
    na, nb = a.numel(), b.numel()
    if na == 0 or nb == 0:
        raise ValueError("distances between empty samples")
    # F_a − F_b only rises at points of a and only falls at points of b (both CDFs are right-continuous steps), so
    # KS = max(max_i F_a(a_i) − F_b(a_i), max_j F_b(b_j) − F_a(b_j)). At the i-th smallest point of a, (i+1)/n_a
    # is F_a(a_i) for the last of equal values and below it for the others, so the maxima are exact.
    ks = 0.0
    for x, y in ((a, b), (b, a)):
        fx = torch.arange(1, x.numel() + 1, device=x.device, dtype=torch.float64) / x.numel()
        fy = torch.searchsorted(y, x, right=True).double() / y.numel()
        ks = max(ks, float((fx - fy).max()))
    if na == nb:  # W1 between equal-size samples: the mean distance between matching order statistics
        w1 = _sum64((a.double() - b.double()).abs()) / na
    else:  # ∫ |F_a − F_b| dx: both CDFs are constant between consecutive points of the pooled sample
        points = torch.sort(torch.cat([a, b])).values.double()
        fa = torch.searchsorted(a.double(), points, right=True).double() / na
        fb = torch.searchsorted(b.double(), points, right=True).double() / nb
        w1 = _sum64((fa - fb).abs()[:-1] * (points[1:] - points[:-1]))
    return w1, ks


def subsample_positions(n: int, max_samples: int, seed: int, device=None) -> Tensor | None:
    """None when n <= max_samples; else `max_samples` positions in [0, n) drawn uniformly with replacement."""
    if n <= max_samples:
        return None
    g = torch.Generator().manual_seed(int(seed))
    return torch.randint(n, (max_samples,), generator=g).to(device or "cpu")


def norms(delta: Tensor, history: Tensor) -> dict:
    d, h = _check_pair(delta, history)
    dn = float(torch.linalg.vector_norm(d, dtype=torch.float64))
    hn = float(torch.linalg.vector_norm(h, dtype=torch.float64))
    cn = float(torch.linalg.vector_norm(h.double() + d.double()))
    return {"delta_fro": dn, "history_fro": hn, "combined_fro": cn, "relative": _ratio(dn, hn),
            "delta_l1": _sum64(d.abs()), "history_l1": _sum64(h.abs())}


def sign_relation(delta: Tensor, history: Tensor) -> Tensor:
    """Per entry: SAME (1) where DH > 0, OPPOSITE (−1) where DH < 0, ZERO (0) where D = 0 or H = 0."""
    return (torch.sign(_flat(delta)) * torch.sign(_flat(history))).to(torch.int8)


def sign_agreement(delta: Tensor, history: Tensor, rel: Tensor | None = None) -> dict:
    d, h = _check_pair(delta, history)
    rel = sign_relation(d, h) if rel is None else rel
    same, opposite = int((rel == SAME).sum()), int((rel == OPPOSITE).sum())
    both = same + opposite
    p = d * h
    total = _sum64(p.abs())
    conflict = -_sum64(p.clamp(max=0))
    sh = torch.sign(h)
    n_h = int(sh.count_nonzero())
    flips = int(((torch.sign(h + d) != sh) & (sh != 0)).sum())
    return {"both_nonzero": both, "same": same, "opposite": opposite,
            "same_fraction": _ratio(same, both), "opposite_fraction": _ratio(opposite, both),
            "conflict_ratio": _ratio(conflict, total), "history_nonzero": n_h, "flips": flips,
            "flip_rate": _ratio(flips, n_h)}


def rank_key(delta: Tensor, history: Tensor, rank_by: str = "delta") -> Tensor:
    if rank_by not in RANK_KEYS:
        raise ValueError(f"unknown ranking key {rank_by!r}; expected one of {RANK_KEYS}")
    d, h = _flat(delta), _flat(history)
    return {"delta": d, "history": h, "combined": h + d}[rank_by].abs()


def subset_size(n: int, k: float) -> int:
    """m = ⌈k·n/100⌉, at least 1 and at most n (k in (0, 100])."""
    if not 0 < k <= 100:
        raise ValueError(f"subset percentage {k} is outside (0, 100]")
    return min(n, max(1, math.ceil(round(k * n / 100, 9))))


def ranking(key: Tensor, part: str) -> Tensor:
    """Entry positions from the largest key down ("top") or from the smallest up ("bottom"); ties: lower position
    first in the top ranking, and the bottom ranking is its exact reverse."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; expected one of {PARTS}")
    order = torch.sort(_order_keys(key), descending=True, stable=True).indices
    return order if part == "top" else order.flip(0)


def subsets(delta: Tensor, history: Tensor, ks: Sequence[float] = SUBSET_KS, rank_by: str = "delta",
            rel: Tensor | None = None) -> dict:
    """{"rank_by", "top"|"bottom": {str(k): {"count", "l1_share", "same"|"opposite"|"zero": {"count", "fraction",
    "l1_share"}}}}."""
    d, h = _check_pair(delta, history)
    n = d.numel()
    rel = sign_relation(d, h) if rel is None else rel
    absd = d.abs()
    total_l1 = _sum64(absd)
    top = ranking(rank_key(d, h, rank_by), "top")
    r, a = rel[top], absd[top].double()
    is_same, is_opp = r == SAME, r == OPPOSITE
    # Prefix sums along the top ranking; a bottom-m subset is the complement of the top-(n−m) prefix.
    prefix = {"same": (torch.cumsum(is_same, 0), torch.cumsum(torch.where(is_same, a, 0.0), 0)),
              "opposite": (torch.cumsum(is_opp, 0), torch.cumsum(torch.where(is_opp, a, 0.0), 0)),
              "all": (None, torch.cumsum(a, 0))}

    def head(name: str, m: int) -> tuple[int, float]:
        """(count, Σ|D|) of group `name` among the first m entries of the top ranking."""
        if m == 0:
            return 0, 0.0
        counts, l1 = prefix[name]
        return (m if counts is None else int(counts[m - 1])), float(l1[m - 1])

    out: dict = {"rank_by": rank_by}
    for part in PARTS:
        groups = {}
        for k in ks:
            m = subset_size(n, k)
            vals = {}
            for name in ("same", "opposite", "all"):
                if part == "top":
                    vals[name] = head(name, m)
                else:
                    whole, rest = head(name, n), head(name, n - m)
                    vals[name] = (whole[0] - rest[0], whole[1] - rest[1])
            vals["zero"] = (m - vals["same"][0] - vals["opposite"][0],
                            max(0.0, vals["all"][1] - vals["same"][1] - vals["opposite"][1]))
            entry: dict = {"count": m}
            for name in ("same", "opposite", "zero"):
                c, l1 = vals[name]
                entry[name] = {"count": c, "fraction": c / m, "l1_share": _ratio(l1, total_l1)}
            entry["l1_share"] = _ratio(vals["all"][1], total_l1)
            groups[_k_name(k)] = entry
        out[part] = groups
    return out


def _k_name(k: float) -> str:
    return str(int(k)) if float(k).is_integer() else str(k)


def shift_stats(delta: Tensor, history: Tensor, *, ks: Sequence[float] = SUBSET_KS, rank_by: str = "delta",
                bins: int = DEFAULT_BINS, quantile_levels: Sequence[float] = QUANTILES,
                max_samples: int = DEFAULT_MAX_SAMPLES, seed: int = 0, histogram: bool = True) -> dict:
    """Every statistic of the module docstring for one (D, H) pair; a JSON-ready dict of plain numbers."""
    d, h = _check_pair(delta, history)
    c = h + d
    n = d.numel()
    pos = subsample_positions(n, max_samples, seed, d.device)
    ds, hs, cs = (d, h, c) if pos is None else (d[pos], h[pos], c[pos])
    w1, ks_stat = _ecdf_sorted(sort_values(hs), sort_values(cs))
    rel = sign_relation(d, h)
    stats = {
        "numel": n,
        "norms": norms(d, h),
        "quantiles": {"levels": list(quantile_levels), "delta": quantiles(ds.abs(), quantile_levels),
                      "history": quantiles(hs.abs(), quantile_levels),
                      "combined": quantiles(cs.abs(), quantile_levels)},
        "shift": {"wasserstein1": w1, "ks": ks_stat, "samples": int(hs.numel()), "subsampled": pos is not None},
        "sign": sign_agreement(d, h, rel),
        "subsets": subsets(d, h, ks, rank_by, rel),
    }
    if histogram:
        edges, counts = shared_histograms({"delta": d, "history": h, "combined": c}, bins)
        stats["histogram"] = {"edges": edges, **counts}
    return stats


# -- entry selection for the intervention (Figure 2) -----------------------------------------------------------

def select_subset(delta: Tensor, history: Tensor, *, sign: str, part: str = "top", k: float = 10,
                  rank_by: str = "delta") -> Tensor:
    """Boolean mask (flat) of the entries in the part-k% subset by the key whose sign relation is `sign`."""
    d, h = _check_pair(delta, history)
    if sign not in SIGNS:
        raise ValueError(f"unknown sign relation {sign!r}; expected one of {SIGNS}")
    order = ranking(rank_key(d, h, rank_by), part)[:subset_size(d.numel(), k)]
    mask = torch.zeros(d.numel(), dtype=torch.bool, device=d.device)
    mask[order] = True
    return mask & (sign_relation(d, h) == (SAME if sign == "same" else OPPOSITE))


def extreme_of_sign(delta: Tensor, history: Tensor, *, sign: str, count: int, part: str = "top",
                    rank_by: str = "delta") -> Tensor:
    """Boolean mask of the `count` entries with sign relation `sign` and the largest (top) or smallest (bottom)
    key (fewer when fewer such entries exist)."""
    d, h = _check_pair(delta, history)
    if sign not in SIGNS:
        raise ValueError(f"unknown sign relation {sign!r}; expected one of {SIGNS}")
    candidates = (sign_relation(d, h) == (SAME if sign == "same" else OPPOSITE)).nonzero().reshape(-1)
    key = rank_key(d, h, rank_by)[candidates]
    chosen = candidates[ranking(key, part)[:max(0, count)]]
    mask = torch.zeros(d.numel(), dtype=torch.bool, device=d.device)
    mask[chosen] = True
    return mask


def random_entries(numel: int, count: int, seed: int, device=None) -> Tensor:
    """Boolean mask of `count` distinct positions out of `numel`, drawn by a generator seeded with `seed`."""
    if not 0 <= count <= numel:
        raise ValueError(f"cannot draw {count} of {numel} entries")
    g = torch.Generator().manual_seed(int(seed))
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[torch.randperm(numel, generator=g)[:count]] = True
    return mask.to(device or "cpu")


# -- correlation across stages -------------------------------------------------------------------------------

def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    if len(x) != len(y):
        raise ValueError(f"pearson: {len(x)} vs {len(y)} values")
    n = len(x)
    if n < 3:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx <= 0 or syy <= 0:
        return None
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def average_ranks(x: Sequence[float]) -> list[float]:
    """Ranks 1..n, ties sharing the mean of their ranks."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for p in range(i, j + 1):
            ranks[order[p]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} vs {len(y)} values")
    if len(x) < 3:
        return None
    return pearson(average_ranks(x), average_ranks(y))
