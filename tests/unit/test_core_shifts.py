"""Hand-computed cases for every statistic of core/shifts.py (METHOD.md §4)."""

import math

import pytest
import torch

from pslora_cli.core import shifts as S

# A 2x4 example used throughout. Entry by entry (D, H, D·H, relation, C = H + D):
#   0: ( 3,  1,   3, same,      4)      4: ( 4, -1,  -4, opposite,  3)
#   1: (-1,  2,  -2, opposite,  1)      5: ( 0,  3,   0, zero,      3)
#   2: ( 2, -2,  -4, opposite,  0)      6: (-3, -1,   3, same,     -4)
#   3: ( 1,  0,   0, zero,      1)      7: (-2,  1,  -2, opposite, -1)
D = torch.tensor([[3.0, -1.0, 2.0, 1.0], [4.0, 0.0, -3.0, -2.0]])
H = torch.tensor([[1.0, 2.0, -2.0, 0.0], [-1.0, 3.0, -1.0, 1.0]])


def test_quantiles_interpolate_linearly_between_order_statistics():
    x = torch.tensor([4.0, 1.0, 3.0, 2.0])   # sorted 1 2 3 4; p = q·3
    assert S.quantiles(x, [0.0, 0.5, 1.0, 0.25]) == pytest.approx([1.0, 2.5, 4.0, 1.75])
    assert S.quantiles(torch.tensor([7.0]), [0.0, 0.9]) == [7.0, 7.0]
    with pytest.raises(ValueError):
        S.quantiles(x, [1.5])


def test_shared_histograms_use_the_same_bins_for_every_tensor():
    # m = 4, 4 bins over [-4, 4]: [-4,-2) [-2,0) [0,2) [2,4]
    edges, counts = S.shared_histograms({"a": torch.tensor([-4.0, -1.0, 0.0, 1.9]), "b": torch.tensor([2.0, 4.0])},
                                        bins=4)
    assert edges == [-4.0, -2.0, 0.0, 2.0, 4.0]
    assert counts["a"] == [1, 1, 2, 0]
    assert counts["b"] == [0, 0, 0, 2]   # the largest value falls in the last bin
    edges, counts = S.shared_histograms({"z": torch.zeros(3)}, bins=2)
    assert edges == [-1.0, 0.0, 1.0] and counts["z"] == [0, 3]


def test_wasserstein_and_ks_on_small_samples():
    # F_a, F_b: a = {0, 1}, b = {1, 2}; |F_a - F_b| = 1/2 on [0, 2): W1 = 1, KS = 1/2.
    assert S.ecdf_distances(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 1.0])) == pytest.approx((1.0, 0.5))
    # unequal sizes: a = {0}, b = {0, 2}: |F_a - F_b| = 1/2 on [0, 2): W1 = 1, KS = 1/2
    assert S.ecdf_distances(torch.tensor([0.0]), torch.tensor([0.0, 2.0])) == pytest.approx((1.0, 0.5))
    # identical samples: both 0; disjoint ones: KS = 1
    x = torch.tensor([0.3, -1.0, 2.0])
    assert S.ecdf_distances(x, x.flip(0)) == (0.0, 0.0)
    w1, ks = S.ecdf_distances(torch.tensor([0.0, 0.0, 1.0]), torch.tensor([5.0, 6.0, 7.0]))
    assert ks == 1.0 and w1 == pytest.approx((5 + 6 + 6) / 3)
    # ties: a = {1, 1, 3}, b = {1, 2, 3}: F_a - F_b = 2/3-1/3 on [1, 2), 2/3-2/3 on [2, 3): KS = 1/3, W1 = 1/3
    assert S.ecdf_distances(torch.tensor([1.0, 1.0, 3.0]), torch.tensor([1.0, 2.0, 3.0])) == \
        pytest.approx((1 / 3, 1 / 3))


def test_norms_and_relative_norm():
    n = S.norms(D, H)
    assert n["delta_fro"] == pytest.approx(math.sqrt(9 + 1 + 4 + 1 + 16 + 0 + 9 + 4))
    assert n["history_fro"] == pytest.approx(math.sqrt(1 + 4 + 4 + 0 + 1 + 9 + 1 + 1))
    assert n["combined_fro"] == pytest.approx(math.sqrt(16 + 1 + 0 + 1 + 9 + 9 + 16 + 1))
    assert n["relative"] == pytest.approx(math.sqrt(44 / 21))
    assert n["delta_l1"] == 16.0 and n["history_l1"] == 11.0
    assert S.norms(D, torch.zeros_like(D))["relative"] is None


def test_sign_agreement():
    s = S.sign_agreement(D, H)
    assert (s["both_nonzero"], s["same"], s["opposite"]) == (6, 2, 4)
    assert s["same_fraction"] == pytest.approx(2 / 6) and s["opposite_fraction"] == pytest.approx(4 / 6)
    # Σ|DH| = 3+2+4+0+4+0+3+2 = 18; opposite part 2+4+4+2 = 12
    assert s["conflict_ratio"] == pytest.approx(12 / 18)
    # H ≠ 0 at 7 entries; sign C vs sign H: 0 ok, 1 ok, 2 (0 vs -) flip, 4 (+ vs -) flip, 5 ok, 6 ok, 7 (- vs +) flip
    assert (s["history_nonzero"], s["flips"]) == (7, 3) and s["flip_rate"] == pytest.approx(3 / 7)
    z = S.sign_agreement(torch.zeros(3), torch.ones(3))
    assert z["same_fraction"] is None and z["conflict_ratio"] is None and z["flip_rate"] == 0.0


def test_subset_size_rounds_up_and_keeps_one():
    assert [S.subset_size(8, k) for k in (1, 5, 10, 20, 50, 100)] == [1, 1, 1, 2, 4, 8]
    assert S.subset_size(1000, 1) == 10 and S.subset_size(1000, 0.15) == 2
    with pytest.raises(ValueError):
        S.subset_size(10, 0)


def test_subsets_by_delta():
    # |D| ranking, largest first: 4 (4, opp), 0 (3, same), 6 (3, same; tie: lower position first),
    # 2 (2, opp), 7 (2, opp), 1 (1, opp), 3 (1, zero), 5 (0, zero). ‖D‖_1 = 16.
    sub = S.subsets(D, H, ks=[20, 50], rank_by="delta")
    top20, top50 = sub["top"]["20"], sub["top"]["50"]
    assert top20["count"] == 2                                    # ⌈1.6⌉ entries: 4 and 0
    assert top20["opposite"] == {"count": 1, "fraction": 0.5, "l1_share": 4 / 16}
    assert top20["same"] == {"count": 1, "fraction": 0.5, "l1_share": 3 / 16}
    assert top20["zero"]["count"] == 0 and top20["l1_share"] == pytest.approx(7 / 16)
    assert top50["count"] == 4                                    # 4, 0, 6, 2
    assert (top50["same"]["count"], top50["opposite"]["count"]) == (2, 2)
    assert top50["opposite"]["l1_share"] == pytest.approx(6 / 16)
    assert top50["same"]["l1_share"] == pytest.approx(6 / 16)
    bottom50 = sub["bottom"]["50"]                                # 5, 3, 1, 7 (reverse of the top ranking)
    assert bottom50["count"] == 4
    assert (bottom50["zero"]["count"], bottom50["opposite"]["count"], bottom50["same"]["count"]) == (2, 2, 0)
    assert bottom50["opposite"]["l1_share"] == pytest.approx(3 / 16)
    assert bottom50["zero"]["l1_share"] == pytest.approx(1 / 16)
    assert bottom50["l1_share"] == pytest.approx(4 / 16)


def test_subsets_by_history_and_combined():
    # |H|: 5 (3, zero), then 1 (2, opp), 2 (2, opp), then the |H| = 1 entries 0, 4, 6, 7 ...
    top = S.subsets(D, H, ks=[25], rank_by="history")["top"]["25"]   # 2 entries: 5, 1
    assert (top["zero"]["count"], top["opposite"]["count"]) == (1, 1)
    assert top["opposite"]["l1_share"] == pytest.approx(1 / 16)
    # |C| = 4 1 0 1 3 3 4 1: top 25% = entries 0 (same) and 6 (same)
    top = S.subsets(D, H, ks=[25], rank_by="combined")["top"]["25"]
    assert top["same"]["count"] == 2 and top["same"]["l1_share"] == pytest.approx(6 / 16)
    with pytest.raises(ValueError):
        S.subsets(D, H, rank_by="sideways")


def test_shift_stats_collects_everything_and_subsamples_deterministically():
    stats = S.shift_stats(D, H, ks=[50], bins=4, quantile_levels=[0.5, 1.0])
    assert stats["numel"] == 8 and stats["shift"]["subsampled"] is False and stats["shift"]["samples"] == 8
    assert stats["quantiles"]["delta"] == pytest.approx([2.0, 4.0])        # |D| sorted 0 1 1 2 2 3 3 4
    assert stats["quantiles"]["combined"] == pytest.approx([2.0, 4.0])     # |C| sorted 0 1 1 1 3 3 4 4
    # H sorted: -2 -1 -1 0 1 1 2 3; C sorted: -4 -1 0 1 1 3 3 4; W1 = mean |diff| = (2+0+1+1+0+2+1+1)/8
    assert stats["shift"]["wasserstein1"] == pytest.approx(1.0)
    assert stats["sign"]["conflict_ratio"] == pytest.approx(12 / 18)
    assert sum(stats["histogram"]["delta"]) == 8 and len(stats["histogram"]["edges"]) == 5
    torch.manual_seed(1)
    d, h = torch.randn(1000), torch.randn(1000)
    a = S.shift_stats(d, h, max_samples=100, seed=3)
    b = S.shift_stats(d, h, max_samples=100, seed=3)
    c = S.shift_stats(d, h, max_samples=100, seed=4)
    assert a["shift"]["subsampled"] and a["shift"]["samples"] == 100
    assert a["shift"] == b["shift"] and a["quantiles"] == b["quantiles"]
    assert a["shift"]["wasserstein1"] != c["shift"]["wasserstein1"]
    assert a["sign"] == S.sign_agreement(d, h)                              # sign statistics stay exact


def test_selection_masks_for_the_intervention():
    opp = S.select_subset(D, H, sign="opposite", part="top", k=50)            # top 4: 4, 0, 6, 2
    assert opp.nonzero().reshape(-1).tolist() == [2, 4]
    same = S.select_subset(D, H, sign="same", part="top", k=50)
    assert same.nonzero().reshape(-1).tolist() == [0, 6]
    # the 3 same-sign entries with the largest |D|: only 2 exist
    assert S.extreme_of_sign(D, H, sign="same", count=3).nonzero().reshape(-1).tolist() == [0, 6]
    assert S.extreme_of_sign(D, H, sign="opposite", count=2, part="bottom").nonzero().reshape(-1).tolist() == [1, 7]
    r1, r2 = S.random_entries(8, 3, seed=5), S.random_entries(8, 3, seed=5)
    assert torch.equal(r1, r2) and int(r1.sum()) == 3
    with pytest.raises(ValueError):
        S.random_entries(8, 9, seed=0)


def test_correlations():
    assert S.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert S.pearson([1, 2, 3], [3, 1, 2]) == pytest.approx(-0.5)
    assert S.pearson([1, 2], [1, 2]) is None and S.pearson([1, 1, 1], [1, 2, 3]) is None
    assert S.average_ranks([10, 20, 20, 5]) == [2.0, 3.5, 3.5, 1.0]
    # monotone but not linear: Spearman 1, Pearson < 1
    assert S.spearman([1, 2, 3, 4], [1, 10, 100, 1000]) == pytest.approx(1.0)
    assert S.pearson([1, 2, 3, 4], [1, 10, 100, 1000]) < 0.9
    assert S.spearman([1, 2], [2, 1]) is None
