import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pslora_cli.core.merges import MERGES, merge_module
from pslora_cli.core.merges.magnitude import _row_blocks, magnitude_merge, magnitude_merge_factors
from pslora_cli.core.merges.running import FOLDS as METHODS
from pslora_cli.core.merges.magnitude import pick_larger
from pslora_cli.core.merges.running import RunningMerge, merge_deltas
from pslora_cli.core.merges.ties import ties_merge, trim_mask


def sum_merge(deltas):
    return merge_deltas(deltas, "sum")


def mean_merge(deltas):
    return merge_deltas(deltas, "mean")


SETTINGS = settings(max_examples=40, deadline=None)


def test_hand_computed_magnitude_merge():
    d1 = torch.tensor([[0.5, -2.0], [0.1, 0.0]])
    d2 = torch.tensor([[-1.0, 1.0], [0.0, 0.3]])
    d3 = torch.tensor([[0.2, 0.5], [-0.4, -0.2]])
    # per element, the value (with sign) of largest |.|: [-1.0, -2.0], [-0.4, 0.3]
    expected = torch.tensor([[-1.0, -2.0], [-0.4, 0.3]])
    assert torch.equal(magnitude_merge([d1, d2, d3]), expected)


def test_ties_go_to_the_earlier_task():
    d1 = torch.tensor([1.0, -2.0, 3.0, 0.0])
    d2 = torch.tensor([-1.0, 2.0, 3.0, -0.0])
    d3 = torch.tensor([0.5, -2.0, -3.0, 0.0])
    assert torch.equal(pick_larger(d1, d2), d1)
    out = magnitude_merge([d1, d2, d3])
    assert torch.equal(out, d1)
    assert torch.equal(torch.signbit(out), torch.signbit(d1))  # even -0.0 vs 0.0 keeps the earlier
    # reversed order: d2 is now the earlier task and wins every tie
    assert torch.equal(magnitude_merge([d2, d1]), d2)


def test_sum_and_mean_hand_computed():
    ds = [torch.tensor([1.0, -2.0]), torch.tensor([3.0, 4.0]), torch.tensor([-1.0, 1.0])]
    assert torch.equal(sum_merge(ds), torch.tensor([3.0, 3.0]))
    assert torch.equal(mean_merge(ds), torch.tensor([1.0, 1.0]))
    assert torch.equal(merge_deltas(ds, "sum"), torch.tensor([3.0, 3.0]))


def test_streams_from_a_generator_and_any_shape():
    def gen():
        for i in range(5):
            yield torch.full((2, 3, 1, 1), float(i) * (-1) ** i)

    out = magnitude_merge(gen())
    assert out.shape == (2, 3, 1, 1) and torch.equal(out, torch.full((2, 3, 1, 1), 4.0))
    assert torch.equal(mean_merge(gen()), torch.full((2, 3, 1, 1), 0.4))  # (0 - 1 + 2 - 3 + 4) / 5
    scalar = magnitude_merge(iter([torch.tensor(1.0), torch.tensor(-3.0)]))
    assert scalar.item() == -3.0


def test_inputs_not_modified():
    ds = [torch.randn(4, 5) for _ in range(3)]
    copies = [d.clone() for d in ds]
    for method in METHODS:
        out = merge_deltas(ds, method)
        out.add_(100.0)  # the result does not alias an input either
        for d, c in zip(ds, copies):
            assert torch.equal(d, c)
        single = merge_deltas([ds[0]], method)
        single.add_(100.0)  # a one-task merge is a copy, not the input itself
        assert torch.equal(ds[0], copies[0])
        # a result handed out earlier is not changed by later adds
        m = RunningMerge(method).add(ds[0])
        earlier = m.result
        m.add(ds[1] * 10)
        assert torch.equal(earlier, copies[0])
        assert not torch.equal(m.result, earlier)


def test_errors():
    for method in METHODS:
        with pytest.raises(ValueError, match="nothing to merge"):
            merge_deltas([], method)
        with pytest.raises(ValueError, match="shape"):
            merge_deltas([torch.zeros(2, 2), torch.zeros(2, 3)], method)
        with pytest.raises(ValueError, match="shape"):
            merge_deltas([torch.zeros(2, 2), torch.zeros(2)], method)  # no broadcasting
    with pytest.raises(ValueError, match="method"):
        merge_deltas([torch.zeros(2)], "ties")
    with pytest.raises(ValueError, match="method"):
        RunningMerge("median")
    with pytest.raises(ValueError):
        pick_larger(torch.zeros(3), torch.zeros(1))
    with pytest.raises(ValueError):
        RunningMerge().result


@st.composite
def distinct_tasks(draw, max_tasks=5, numel=6):
    """n tasks of shape (2, 3) whose entries all have distinct absolute values (so no ties anywhere)."""
    n = draw(st.integers(1, max_tasks))
    mags = draw(
        st.lists(st.floats(2.0**-13, 2.0**10, width=32), min_size=n * numel, max_size=n * numel, unique=True)
    )
    signs = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=n * numel, max_size=n * numel))
    flat = torch.tensor([m * s for m, s in zip(mags, signs)], dtype=torch.float32)
    return list(flat.reshape(n, 2, 3).unbind(0))


@SETTINGS
@given(distinct_tasks(max_tasks=1))
def test_merge_of_one_task_is_itself(tasks):
    for method in METHODS:
        assert torch.equal(merge_deltas(tasks, method), tasks[0])


@SETTINGS
@given(distinct_tasks(), st.randoms(use_true_random=False))
def test_magnitude_merge_order_invariant_without_ties(tasks, rnd):
    shuffled = list(tasks)
    rnd.shuffle(shuffled)
    assert torch.equal(magnitude_merge(tasks), magnitude_merge(shuffled))


@SETTINGS
@given(st.lists(st.lists(st.floats(-10, 10, width=32), min_size=6, max_size=6), min_size=1, max_size=5))
def test_result_dominates_and_is_drawn_from_inputs(rows):
    # arbitrary values, ties allowed
    tasks = [torch.tensor(r, dtype=torch.float32).reshape(2, 3) for r in rows]
    out = magnitude_merge(tasks)
    stacked = torch.stack(tasks)  # only the test stacks
    assert (out.abs().unsqueeze(0) >= stacked.abs()).all()
    assert (stacked == out.unsqueeze(0)).any(dim=0).all()
    # and it is the earliest task with the max |.|
    first_max = (stacked.abs() == stacked.abs().amax(0)).int().argmax(0)
    assert torch.equal(out, stacked.gather(0, first_max.unsqueeze(0)).squeeze(0))


@SETTINGS
@given(st.lists(st.lists(st.floats(-10, 10, width=32), min_size=6, max_size=6), min_size=1, max_size=5))
def test_running_merge_equals_merge_deltas_and_reference(rows):
    tasks = [torch.tensor(r, dtype=torch.float64) for r in rows]
    stacked = torch.stack(tasks)
    reference = {"sum": stacked.sum(0), "mean": stacked.mean(0)}
    for method in METHODS:
        m = RunningMerge(method)
        for d in tasks:
            m.add(d)
        assert m.count == len(tasks)
        assert torch.equal(m.result, merge_deltas(iter(tasks), method))
        if method in reference:
            assert torch.allclose(m.result, reference[method], rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_merge_matches_cpu():
    ds = [torch.randn(8, 16) for _ in range(4)]
    for method in METHODS:
        gpu = merge_deltas((d.cuda() for d in ds), method)
        assert gpu.is_cuda
        assert torch.allclose(gpu.cpu(), merge_deltas(ds, method))


# --- TIES, task arithmetic, last ---------------------------------------------------------------------------


def test_trim_mask_keeps_top_fraction():
    d = torch.tensor([[0.1, -0.5], [0.3, -0.05]])
    assert trim_mask(d, 0.5).tolist() == [[False, True], [True, False]]
    assert trim_mask(d, 0.01).sum() == 1 and trim_mask(d, 1.0).all()


def test_ties_hand_computed():
    a = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    b = torch.tensor([[-3.0, -1.0, 0.25, 0.9]])
    # density 1: no trimming. Elected signs: sign(a+b) = [-, -, +, +].
    # Disjoint mean: [-3, (-2-1)/2, (0.5+0.25)/2, (3+0.9)/2].
    out = ties_merge(lambda: [a, b], density=1.0)
    assert torch.allclose(out, torch.tensor([[-3.0, -1.5, 0.375, 1.95]]))
    # density 0.5 keeps the two largest |.| of each: a -> [0,-2,0,3], b -> [-3,-1,0,0];
    # elected signs of the trimmed sum [-3,-3,0,3] = [-,-,0,+]; element 3 has no agreeing entry -> 0.
    out = ties_merge(lambda: [a, b], density=0.5)
    assert torch.allclose(out, torch.tensor([[-3.0, -1.5, 0.0, 3.0]]))


def test_ties_elects_the_sign_of_the_trimmed_sum_not_of_the_largest_entry():
    # 0.5 + 0.5 - 0.9 = +0.1: TIES elects +, and the disjoint mean of the agreeing entries is +0.5.
    tasks = [torch.tensor([0.5]), torch.tensor([0.5]), torch.tensor([-0.9])]
    assert ties_merge(lambda: tasks, density=1.0).tolist() == [0.5]


@pytest.mark.parametrize("density", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("n_tasks", [3, 4, 6])
def test_ties_equals_peft_ties_on_dense_updates(density, n_tasks):
    from peft.utils.merge_utils import ties

    gen = torch.Generator().manual_seed(n_tasks * 10 + int(density * 4))
    tasks = [torch.randn(8, 16, generator=gen, dtype=torch.float64) for _ in range(n_tasks)]
    reference = ties(torch.stack(tasks), torch.ones(n_tasks, dtype=torch.float64), density)
    out = ties_merge(lambda: tasks, density=density)
    assert torch.allclose(out, reference, atol=1e-12)


def test_merge_module_dispatch():
    a, b = torch.tensor([1.0, -4.0]), torch.tensor([-2.0, 1.0])
    assert torch.equal(merge_module(lambda: [a, b], "magnitude"), torch.tensor([-2.0, -4.0]))
    assert torch.equal(merge_module(lambda: [a, b], "task-arithmetic", scale=0.5), torch.tensor([-0.5, -1.5]))
    assert torch.equal(merge_module(lambda: [a, b], "last"), b)
    with pytest.raises(ValueError):
        merge_module(lambda: [a], "median")


SPECIAL = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e-45, -1e-45, 1e-310, 1.0, -1.0, 2.5, -2.5,
           3.4e38, -3.4e38, 1e300]


def _pick_larger_fold(tasks):
    acc = tasks[0].clone()
    for d in tasks[1:]:
        acc = pick_larger(acc, d)
    return acc


def _bits(t):
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int64)


@SETTINGS
@given(st.sampled_from([torch.float32, torch.float64]),
       st.lists(st.lists(st.one_of(st.sampled_from(SPECIAL), st.floats(allow_nan=True, allow_infinity=True)),
                         min_size=8, max_size=8), min_size=1, max_size=6))
def test_bit_pattern_fold_equals_pick_larger_bitwise(dtype, rows):
    # NaN, ±inf, ±0, denormals, equal magnitudes of opposite sign: the fold on bit patterns must give exactly
    # the bits of the reference fold (pick_larger), including which NaN/which zero is kept.
    tasks = [torch.tensor(r, dtype=torch.float64).to(dtype) for r in rows]
    m = RunningMerge("magnitude")
    for d in tasks:
        m.add(d)
    assert torch.equal(_bits(m.result), _bits(_pick_larger_fold(tasks)))


def test_bit_pattern_fold_on_non_contiguous_and_mixed_inputs():
    g = torch.Generator().manual_seed(0)
    tasks = [torch.randn(5, 7, generator=g) for _ in range(4)]
    transposed = [t.t().contiguous().t() for t in tasks]  # same values, column-major strides
    assert torch.equal(magnitude_merge(transposed), _pick_larger_fold(tasks))
    mixed = [tasks[0], tasks[1].double(), tasks[2]]  # type promotion goes through pick_larger
    assert torch.equal(magnitude_merge(mixed), _pick_larger_fold(mixed))
    halves = [t.half() for t in tasks]  # no bit path for float16
    assert torch.equal(magnitude_merge(halves), _pick_larger_fold(halves))


def test_merge_of_a_reused_buffer_equals_merge_of_copies():
    # merged_deltas writes every task's delta into one buffer; the merges must consume each before the next
    g = torch.Generator().manual_seed(1)
    tasks = [torch.randn(6, 3, generator=g) for _ in range(5)]

    def one_buffer():
        buffer = torch.empty(6, 3)
        for t in tasks:
            buffer.copy_(t)
            yield buffer

    for method in MERGES:
        assert torch.equal(merge_module(one_buffer, method), merge_module(lambda: iter(tasks), method)), method


# --- magnitude merge from the LoRA factors, block by block ------------------------------------------------

def _blockwise_reference(pairs, block_elements):
    """pick_larger folded over the row blocks B_i[rows] @ A_i, block by block, as plainly as possible."""
    d_out, d_in = pairs[0][0].shape[0], pairs[0][1].shape[1]
    return torch.cat([_pick_larger_fold([b[r0:r1] @ a for b, a in pairs])
                      for r0, r1 in _row_blocks(d_out, d_in, block_elements, "cpu")])


@st.composite
def factor_tasks(draw):
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    d_out, d_in, r = draw(st.integers(1, 40)), draw(st.integers(1, 9)), draw(st.integers(1, 3))
    big = 1e30 if dtype == torch.float32 else 1e300  # products of these overflow to ±inf, sums of those to NaN
    value = st.one_of(st.floats(-10, 10), st.sampled_from([big, -big, 0.0, -0.0, float("nan"), float("inf")]))
    pairs = []
    for _ in range(draw(st.integers(1, 6))):
        b = draw(st.lists(value, min_size=d_out * r, max_size=d_out * r))
        a = draw(st.lists(value, min_size=r * d_in, max_size=r * d_in))
        pairs.append((torch.tensor(b, dtype=dtype).reshape(d_out, r), torch.tensor(a, dtype=dtype).reshape(r, d_in)))
    return pairs


@SETTINGS
@given(factor_tasks(), st.integers(1, 3), st.sampled_from([1, 64, 1 << 18]))
def test_factor_merge_equals_blockwise_pick_larger_bitwise(pairs, chunk_tasks, block_elements):
    # overflow, NaN, ±0 and ties included; several row blocks and task chunks: exactly the reference's bits
    copies = [(b.clone(), a.clone()) for b, a in pairs]
    got = magnitude_merge_factors(iter(pairs), chunk_tasks=chunk_tasks, block_elements=block_elements)
    assert torch.equal(_bits(got), _bits(_blockwise_reference(pairs, block_elements)))
    assert all(torch.equal(_bits(b), _bits(c)) and torch.equal(_bits(a), _bits(d))  # inputs untouched
               for (b, a), (c, d) in zip(pairs, copies))


@pytest.mark.parametrize("d_out,d_in,r,tasks", [(1024, 1024, 8, 6), (768, 3072, 16, 3), (1000, 333, 5, 4),
                                                 (4096, 64, 8, 3)])
def test_factor_merge_equals_the_merge_of_the_dense_products(d_out, d_in, r, tasks):
    # rows come in blocks of multiples of 16: for float32 those BLAS products equal the rows of the full product,
    # so the merge file is the magnitude merge of exactly the updates `delta` gives (chunks of 2 tasks, to cross
    # chunk boundaries as well)
    g = torch.Generator().manual_seed(d_out + d_in)
    pairs = [(torch.randn(d_out, r, generator=g) * 0.1, torch.randn(r, d_in, generator=g)) for _ in range(tasks)]
    dense = magnitude_merge([b @ a for b, a in pairs])
    assert torch.equal(magnitude_merge_factors(pairs, chunk_tasks=2), dense)
    assert torch.equal(magnitude_merge_factors(pairs, block_elements=1), dense)  # blocks of 16 rows


def test_factor_merge_mixed_and_half_dtypes_and_errors():
    g = torch.Generator().manual_seed(3)
    pairs = [(torch.randn(20, 2, generator=g), torch.randn(2, 5, generator=g)) for _ in range(3)]
    halves = [(b.half(), a.half()) for b, a in pairs]
    assert torch.equal(magnitude_merge_factors(halves, block_elements=1), _blockwise_reference(halves, 1))
    # each product in its own dtype, then promoted (as RunningMerge folds mixed deltas), whatever the chunks
    mixed = [pairs[0], (pairs[1][0].double(), pairs[1][1].double()), pairs[2]]
    for chunk_tasks in (1, 2, 16):
        got = magnitude_merge_factors(mixed, chunk_tasks=chunk_tasks)
        assert got.dtype == torch.float64 and torch.equal(got, _blockwise_reference(mixed, 1 << 18))
    with pytest.raises(ValueError, match="nothing to merge"):
        magnitude_merge_factors([])
    with pytest.raises(ValueError, match="shape mismatch: product #2 is 20x4"):
        magnitude_merge_factors([pairs[0], (pairs[1][0], torch.zeros(2, 4))])
    with pytest.raises(ValueError, match="expected factors"):
        magnitude_merge_factors([(torch.zeros(3, 2), torch.zeros(3, 5))])
