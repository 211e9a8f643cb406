import math

import pytest

from pslora_cli.core.metrics import METRIC_DOCS, cl_metrics, paired_interval, prompt_paired_interval

# R[t][i] = matrix[t][i-1]; row 0 = base model
M3 = [
    [0.10, 0.20, 0.30],  # base
    [0.90, 0.90, 0.35],  # after task 1 (R[1][2] = .9 is before task 2 is trained)
    [0.95, 0.85, 0.60],  # after task 2
    [0.70, 0.75, 0.95],  # after task 3
]


def test_three_tasks_hand_computed():
    m = cl_metrics(M3, sample_counts=[1, 2, 1])
    assert m["num_tasks"] == 3
    assert m["acc"] == pytest.approx((0.70 + 0.75 + 0.95) / 3)  # 0.8
    assert m["acc_weighted"] == pytest.approx((0.70 * 1 + 0.75 * 2 + 0.95 * 1) / 4)  # 0.7875
    # stage means: 0.9, (0.95 + 0.85)/2 = 0.9, 0.8
    assert m["avg_incremental_accuracy"] == pytest.approx((0.9 + 0.9 + 0.8) / 3)
    # (0.70 - 0.90) and (0.75 - 0.85)
    assert m["bwt"] == pytest.approx(((0.70 - 0.90) + (0.75 - 0.85)) / 2)  # -0.15
    assert m["forgetting_last"] == pytest.approx(0.15)
    # i=2: R[1][2] - R[0][2] = 0.9 - 0.2; i=3: R[2][3] - R[0][3] = 0.6 - 0.3
    assert m["fwt"] == pytest.approx(((0.9 - 0.2) + (0.6 - 0.3)) / 2)  # 0.5
    # j=1: max(R[1][1], R[2][1]) = 0.95 -> 0.95 - 0.70; j=2: max over l>=2 only = R[2][2] = 0.85 (not R[1][2] = 0.9)
    assert m["forgetting"] == pytest.approx(((0.95 - 0.70) + (0.85 - 0.75)) / 2)  # 0.175
    assert m["learning_accuracy"] == pytest.approx((0.90 + 0.85 + 0.95) / 3)  # 0.9


def test_keys_match_docs_and_acc_weighted_none_without_counts():
    m = cl_metrics(M3)
    assert set(m) == set(METRIC_DOCS)
    assert m["acc_weighted"] is None
    assert all(isinstance(v, str) and v for v in METRIC_DOCS.values())


def test_single_task_undefined_metrics_are_none():
    m = cl_metrics([[0.3], [0.8]])
    assert m["num_tasks"] == 1
    for key in ("bwt", "forgetting", "forgetting_last", "fwt"):
        assert m[key] is None
    assert m["acc"] == pytest.approx(0.8)
    assert m["learning_accuracy"] == pytest.approx(0.8)
    assert m["avg_incremental_accuracy"] == pytest.approx(0.8)


def test_class_incremental_none_entries():
    # unseen tasks cannot be scored: base row and the upper triangle are None
    m = cl_metrics(
        [
            [None, None, None],
            [0.9, None, None],
            [0.8, 0.7, None],
            [0.6, 0.5, 0.9],
        ]
    )
    assert m["fwt"] is None
    assert m["acc"] == pytest.approx((0.6 + 0.5 + 0.9) / 3)
    assert m["avg_incremental_accuracy"] == pytest.approx((0.9 + 0.75 + (0.6 + 0.5 + 0.9) / 3) / 3)
    assert m["bwt"] == pytest.approx(((0.6 - 0.9) + (0.5 - 0.7)) / 2)
    assert m["forgetting"] == pytest.approx(((0.9 - 0.6) + (0.7 - 0.5)) / 2)
    assert m["learning_accuracy"] == pytest.approx((0.9 + 0.7 + 0.9) / 3)


def test_fwt_skips_undefined_pairs():
    m = cl_metrics(
        [
            [0.1, None, 0.3],
            [0.9, 0.4, 0.35],
            [0.8, 0.85, 0.5],
            [0.7, 0.75, 0.95],
        ]
    )
    assert m["fwt"] == pytest.approx(0.5 - 0.3)  # only i=3


def test_forgetting_skips_undefined_intermediate_entries():
    m = cl_metrics(
        [
            [0.1, 0.2, 0.3],
            [0.6, 0.4, 0.35],
            [None, 0.85, 0.5],  # task 1 not evaluated at stage 2
            [0.5, 0.75, 0.95],
        ]
    )
    assert m["forgetting"] == pytest.approx(((0.6 - 0.5) + (0.85 - 0.75)) / 2)
    assert m["avg_incremental_accuracy"] is None  # stage 2 mean needs R[2][1]
    assert m["bwt"] == pytest.approx(((0.5 - 0.6) + (0.75 - 0.85)) / 2)


def test_needed_none_makes_metric_none():
    m = cl_metrics([[0.1, 0.2], [0.9, 0.3], [None, 0.8]], sample_counts=[10, 10])
    for key in ("acc", "acc_weighted", "avg_incremental_accuracy", "bwt", "forgetting", "forgetting_last"):
        assert m[key] is None, key
    assert m["learning_accuracy"] == pytest.approx((0.9 + 0.8) / 2)
    assert m["fwt"] == pytest.approx(0.3 - 0.2)
    m = cl_metrics([[0.1, 0.2], [None, 0.3], [0.5, 0.8]])
    assert m["learning_accuracy"] is None and m["bwt"] is None and m["forgetting"] is None
    assert m["acc"] == pytest.approx(0.65)


def test_perfect_retention_gives_zero_not_none():
    m = cl_metrics([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    assert m["bwt"] == 0.0 and m["forgetting"] == 0.0 and m["forgetting_last"] == 0.0
    assert m["fwt"] == 0.0 and m["acc"] == 1.0


@pytest.mark.parametrize(
    "matrix,match",
    [
        ([], "non-empty"),
        ([[0.1, 0.2], [0.5], [0.5, 0.6]], "ragged"),
        ([[0.1, 0.2], [0.5, 0.6]], "rows"),  # T=2 needs 3 rows
        ([[0.1, 0.2], [0.5, 0.6], [0.5, 0.6], [0.5, 0.6]], "rows"),
        ([[], []], "empty"),
        ([[0.1], [1.5]], "outside"),
        ([[0.1], [-0.01]], "outside"),
        ([[0.1], [math.nan]], "outside"),
        ([[0.1], ["0.5"]], "not a number"),
        ([[0.1], [True]], "not a number"),
        ([[0.1], 0.5], "not a list"),
    ],
)
def test_validation_errors(matrix, match):
    with pytest.raises(ValueError, match=match):
        cl_metrics(matrix)


@pytest.mark.parametrize("counts", [[1], [1, -1], [0, 0], [1, math.inf], "ab"])
def test_sample_count_errors(counts):
    with pytest.raises(ValueError, match="sample_counts"):
        cl_metrics([[0.1, 0.2], [0.9, 0.3], [0.5, 0.8]], sample_counts=counts)


def test_forgetting_split_hand_computed():
    from pslora_cli.core.metrics import cl_metrics, forgetting_split

    # two tasks; task 1: 0.9 -> 0.5 task-agnostic (later head wins), 0.95 -> 0.9 task-aware (backbone)
    agnostic = cl_metrics([[None, None], [0.9, None], [0.5, 0.8]])
    aware = cl_metrics([[0.5, 0.5], [0.95, 0.6], [0.9, 0.85]])
    split = forgetting_split(agnostic, aware)
    assert split["bwt_backbone"] == pytest.approx(-0.05)
    assert split["bwt_heads"] == pytest.approx(-0.4 + 0.05)
    assert split["mostly"] == "heads"
    assert forgetting_split(cl_metrics([[None], [0.9]]), cl_metrics([[0.5], [0.9]]))["mostly"] is None  # one task
    mostly_backbone = forgetting_split(agnostic, cl_metrics([[0.5, 0.5], [0.95, 0.6], [0.6, 0.85]]))
    assert mostly_backbone["mostly"] == "backbone"


def test_paired_interval_hand_computed():
    # diffs 1, 2, 3: mean 2, sample std 1, t(0.975, 2) = 4.303, half-width 4.303 / sqrt(3)
    d = paired_interval([0.01, 0.02, 0.03])
    assert d["n"] == 3 and d["mean"] == pytest.approx(0.02)
    assert d["high"] - d["mean"] == pytest.approx(0.01 * 4.303 / math.sqrt(3))
    assert d["mean"] - d["low"] == pytest.approx(0.01 * 4.303 / math.sqrt(3))
    # a df between tabled values takes the next smaller df's (wider) quantile: 35 pairs -> df 34 -> t(30)
    many = paired_interval([0.0, 1.0] * 17 + [0.5])
    std = math.sqrt(sum((x - 0.5) ** 2 for x in [0.0, 1.0] * 17 + [0.5]) / 34)
    assert many["high"] - 0.5 == pytest.approx(2.042 * std / math.sqrt(35))
    assert paired_interval([0.05, None]) == {"n": 1, "mean": 0.05, "low": None, "high": None}
    assert paired_interval([]) == {"n": 0, "mean": None, "low": None, "high": None}
    same = paired_interval([0.1, 0.1, 0.1])
    assert same["low"] == pytest.approx(0.1) and same["high"] == pytest.approx(0.1)


def test_forgetting_is_the_drop_from_the_best_stage_since_the_task_was_learned_as_documented():
    """forgetting = mean_{j<T} (max_{j<=l<T} R[l][j] - R[T][j]): stages before task j was trained do not count (a
    task that scored well zero-shot and was then learned badly has not forgotten that), and the documents say so."""
    from pathlib import Path

    from pslora_cli.cli.work import METRICS_HELP

    three = [[0.5, 0.9, 0.1], [0.8, 0.9, 0.1], [0.7, 0.6, 0.1], [0.7, 0.5, 0.4]]
    # j = 2: max over l in {2} (0.6) - 0.5, not over {1, 2} (0.9) - 0.5
    assert cl_metrics(three)["forgetting"] == pytest.approx(((0.8 - 0.7) + (0.6 - 0.5)) / 2)
    method = (Path(__file__).resolve().parents[2] / "METHOD.md").read_text()  # the metrics' one definition
    assert "max_{j≤l<T}" in method and "max_{1≤l<T}" not in method
    assert "max_{j<=l<T}" in METRICS_HELP.replace("\n", " ") and "1<=l<T" not in METRICS_HELP
    assert "max_{j<=l<T}" in METRIC_DOCS["forgetting"]


def test_prompt_paired_interval_hand_computed():
    # task 1: d = [0, 1, -1, 0], mean 0, sample variance 2/3, over 4 prompts 1/6; task 2: d = [1, 1], variance 0.
    # ACC difference (0 + 1) / 2 = 0.5; standard error sqrt(1/6) / 2.
    # Every prompt once: d = [0, 1, -1, 0, 1, 1], mean 1/3, sample variance 2/3, standard error sqrt(2/3 / 6) = 1/3.
    d = prompt_paired_interval(["1100", "11"], ["1010", "00"])
    half, pooled = 1.959964 * math.sqrt(1 / 6) / 2, 1.959964 / 3
    assert d == pytest.approx({"n": 6, "mean": 0.5, "low": 0.5 - half, "high": 0.5 + half, "a_only": 3, "b_only": 1,
                               "pooled_mean": 1 / 3, "pooled_low": 1 / 3 - pooled, "pooled_high": 1 / 3 + pooled})


def test_pooled_difference_is_zero_where_the_discordant_prompts_balance():
    # A wins two prompts of a big task, B one prompt of each small task: equal counts, an ACC gap for B.
    d = prompt_paired_interval(["1100000000", "0", "0"], ["0000000000", "1", "1"])
    assert d["pooled_mean"] == 0 and d["a_only"] == d["b_only"] == 2
    assert d["mean"] == pytest.approx((0.2 - 1 - 1) / 3)


def test_prompt_paired_difference_is_the_difference_of_the_accuracies():
    import random

    rng = random.Random(3)
    a = ["".join(rng.choice("01") for _ in range(n)) for n in (5, 40, 17)]
    b = ["".join(rng.choice("01") for _ in range(len(x))) for x in a]
    acc = lambda hits: sum(h.count("1") / len(h) for h in hits) / len(hits)  # noqa: E731
    d = prompt_paired_interval(a, b)
    assert d["mean"] == pytest.approx(acc(a) - acc(b)) and d["low"] < d["mean"] < d["high"]
    same = prompt_paired_interval(a, a)
    assert same["mean"] == same["low"] == same["high"] == 0 and same["a_only"] == same["b_only"] == 0


@pytest.mark.parametrize("a, b", [(["10"], ["10", "1"]), (["10"], ["1"]), (["1x"], ["10"]), ([], [])])
def test_prompt_paired_interval_refuses_records_that_do_not_pair(a, b):
    with pytest.raises(ValueError):
        prompt_paired_interval(a, b)


def test_prompt_paired_interval_of_a_one_prompt_task_has_no_interval():
    d = prompt_paired_interval(["1", "10"], ["0", "11"])
    assert d["mean"] == pytest.approx((1 - 0.5) / 2) and d["low"] is None and d["high"] is None
    assert prompt_paired_interval(["", "10"], ["", "11"])["mean"] is None  # a task without prompts
