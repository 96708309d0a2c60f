"""Tests of sdekit.brownian: the virtual Brownian tree, its Lévy area, and the fresh-noise sources.

Statistical tests use fixed seeds, so they are deterministic; thresholds are loose multiples of the
Monte Carlo standard error.
"""
import math

import pytest
import scipy.stats
import torch

from sdekit.brownian import BrownianTree, GeneratorNoise, PerSampleNoise, counter_normal

F64 = torch.float64


def grid(t0, t1, steps):
    return torch.linspace(t0, t1, steps + 1, dtype=F64)


def integral(W, H, h):
    """I = ∫_a^b (W_s - W_a) ds = h (H + W / 2)."""
    return h * (H + W / 2)


# --------------------------------------------------------------------------------------------
# counter_normal
# --------------------------------------------------------------------------------------------

def test_counter_normal_is_a_deterministic_standard_normal():
    keys = torch.arange(100, dtype=torch.int64) * 7919 + 3
    z = counter_normal(5, keys, 256)
    assert z.shape == (100, 2, 256)
    assert torch.equal(z, counter_normal(5, keys, 256))
    assert not torch.equal(z, counter_normal(6, keys, 256))
    assert scipy.stats.kstest(z.flatten().double().numpy(), "norm").pvalue > 1e-3
    z64 = counter_normal(5, keys, 256, dtype=F64)
    assert scipy.stats.kstest(z64.flatten().numpy(), "norm").pvalue > 1e-3
    # the two normals of a pair, and neighbouring keys and elements, are uncorrelated
    n = z[:, 0].numel()
    bound = 5 / math.sqrt(n)
    flat = z.double()
    assert abs((flat[:, 0] * flat[:, 1]).mean()) < bound
    assert abs((flat[1:, 0] * flat[:-1, 0]).mean()) < bound
    assert abs((flat[:, 0, 1:] * flat[:, 0, :-1]).mean()) < bound


def test_counter_normal_broadcasts_element_ids():
    keys = torch.tensor([[11, 12], [13, 14]])
    full = counter_normal(1, keys, 6)  # (2, 2, 2, 6)
    elements = torch.arange(6).reshape(2, 1, 3)
    part = counter_normal(1, keys, elements)  # (2, 2, 2, 3): row r uses elements 3r..3r+2
    assert torch.equal(part[0], full[0, :, :, :3])
    assert torch.equal(part[1], full[1, :, :, 3:])


def test_counter_normal_accepts_large_keys_and_seeds():
    keys = torch.tensor([0, 1, 2**32, 2**32 + 1, 2**62], dtype=torch.int64)
    z = counter_normal(2**70 + 5, keys, 8)
    assert torch.isfinite(z).all()
    assert len({tuple(row.flatten().tolist()) for row in z}) == 5


# --------------------------------------------------------------------------------------------
# BrownianTree: the law of the increments
# --------------------------------------------------------------------------------------------

def test_tree_increments_are_normal_with_variance_dt():
    bm = BrownianTree(0.0, 1.0, (128, 8), seed=3)
    ts = grid(0.0, 1.0, 100)  # not dyadic: snapped to 2**-24
    dW, H = bm.increments(ts, levy_area=True)
    assert dW.shape == (100, 128, 8) and H.shape == (100, 128, 8)
    assert dW.dtype == F64
    dt = 0.01
    assert scipy.stats.kstest((dW / math.sqrt(dt)).flatten().numpy(), "norm").pvalue > 1e-3
    assert scipy.stats.kstest((H / math.sqrt(dt / 12)).flatten().numpy(), "norm").pvalue > 1e-3


def test_tree_increments_are_independent_across_intervals():
    bm = BrownianTree(0.0, 2.0, (4096,), seed=4)
    dW, H = bm.increments(grid(0.0, 2.0, 16), levy_area=True)
    z = torch.cat((dW, H), dim=0) / dW.std(dim=1, keepdim=True).repeat(2, 1)
    correlation = torch.corrcoef(z)
    off_diagonal = correlation - torch.eye(32, dtype=F64)
    assert off_diagonal.abs().max() < 5 / math.sqrt(4096)


def test_tree_bridge_formulas_on_a_dyadic_grid():
    """The (W, H) midpoint split: increments over a dyadic grid have covariance h I, the Lévy areas
    variance h/12, and all of them are mutually uncorrelated; the bridge midpoint has variance T/4
    and covariance T/8 with the root's H."""
    T, n = 2.0, 16000
    bm = BrownianTree(0.0, T, (n,), seed=8, depth=8)
    dW, H = bm.increments(grid(0.0, T, 8), levy_area=True)
    h = T / 8
    z = torch.cat((dW / math.sqrt(h), H / math.sqrt(h / 12)))
    cov = z @ z.T / n
    assert (cov - torch.eye(16, dtype=F64)).abs().max() < 6 / math.sqrt(n)
    W_root, H_root = bm.increments(torch.tensor([0.0, T], dtype=F64), levy_area=True)
    W_mid = bm(0.0, T / 2)
    bridge = W_mid - W_root[0] / 2
    assert abs(bridge.var() / (T / 4) - 1) < 0.05
    assert abs((bridge * H_root[0]).mean() / (T / 8) - 1) < 0.08
    assert abs(H_root.var() / (T / 12) - 1) < 0.05


def descend(seed, T, depth, n, index):
    """The literal L-level descent of the (W, H) bridge (the recursion in BrownianTree's
    docstring), one level at a time, with the tree's node normals: returns (W(t), K(t))."""
    def normals(key):
        return counter_normal(seed, torch.tensor([key]), n)[0].double()
    z = normals(0)
    W, H = math.sqrt(T) * z[0], math.sqrt(T / 12) * z[1]
    if index == 2 ** depth:
        return W, T * (W / 2 + H)
    W_abs, K, h = torch.zeros(n, dtype=F64), torch.zeros(n, dtype=F64), T
    for level in range(depth):
        z = normals((1 << level) + (index >> (depth - level)))
        W_left = W / 2 + 1.5 * H + math.sqrt(h) / 4 * z[0]
        H_left = H / 4 - math.sqrt(h) / 8 * z[0] + math.sqrt(h / 48) * z[1]
        if (index >> (depth - level - 1)) & 1:
            W, H = W - W_left, 2 * H + W / 2 - W_left - H_left
            K = K + h / 2 * W_abs + h / 2 * (H_left + W_left / 2)
            W_abs = W_abs + W_left
        else:
            W, H = W_left, H_left
        h /= 2
    return W_abs, K


def test_tree_equals_the_level_by_level_descent():
    """The tree evaluates all levels at once; it must equal the recursion done level by level."""
    T, depth, n = 3.0, 10, 5
    bm = BrownianTree(1.0, 1.0 + T, (n,), seed=12, depth=depth)
    for index in (0, 1, 2, 3, 341, 512, 777, 1000, 1023, 1024):
        t = 1.0 + T * index / 2 ** depth
        W_ref, K_ref = descend(12, T, depth, n, index)
        dW, H = bm.increments(torch.tensor([1.0, t], dtype=F64), levy_area=True)
        h = t - 1.0
        assert torch.allclose(dW[0], W_ref, rtol=0, atol=1e-12)
        assert torch.allclose(integral(dW[0], H[0], h), K_ref, rtol=0, atol=1e-12)


def test_tree_variance_of_a_non_dyadic_interval():
    bm = BrownianTree(-1.0, 3.0, (16000,), seed=9)
    ta, tb = 0.123, 0.987
    dW, H = bm.increments(torch.tensor([ta, tb], dtype=F64), levy_area=True)
    h = tb - ta
    assert abs(dW.var() / h - 1) < 0.05
    assert abs(H.var() / (h / 12) - 1) < 0.05
    assert abs((dW * H).mean()) < 5 * math.sqrt(h * h / 12 / 16000)


def test_levy_area_matches_the_sra_moment():
    """E[ΔW ΔZ] = h²/2 with ΔZ = ∫_a^b (W_s - W_a) ds (the moment SRA schemes rely on)."""
    bm = BrownianTree(0.0, 1.0, (16000,), seed=10)
    a, b = 0.25, 0.65
    h = b - a
    dW, H = bm.increments(torch.tensor([a, b], dtype=F64), levy_area=True)
    dZ = integral(dW, H, h)
    assert abs((dW * dZ).mean() / (h * h / 2) - 1) < 0.05
    assert abs(dZ.var() / (h ** 3 / 3) - 1) < 0.05  # E[ΔZ²] = h³/3


# --------------------------------------------------------------------------------------------
# BrownianTree: one path, whatever the queries
# --------------------------------------------------------------------------------------------

def test_tree_sub_increments_sum_to_the_whole():
    bm = BrownianTree(0.0, 1.0, (16, 3), seed=1)
    fine, _ = bm.increments(grid(0.1, 0.9, 1000))
    whole = bm(0.1, 0.9)
    assert torch.allclose(fine.sum(0), whole, rtol=0, atol=1e-12)
    dyadic, _ = bm.increments(grid(0.0, 1.0, 1024))
    assert torch.allclose(dyadic.sum(0), bm(0.0, 1.0), rtol=0, atol=1e-12)


def test_tree_same_seed_same_path_and_different_seed_different_path():
    ts = grid(0.0, 1.0, 50)
    a = BrownianTree(0.0, 1.0, (8, 2), seed=7).increments(ts, levy_area=True)
    b = BrownianTree(0.0, 1.0, (8, 2), seed=7).increments(ts, levy_area=True)
    c = BrownianTree(0.0, 1.0, (8, 2), seed=8).increments(ts, levy_area=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.allclose(a[0], c[0])


def test_tree_is_independent_of_query_order_and_resolution():
    fine_ts, coarse_ts = grid(0.0, 1.0, 999), grid(0.0, 1.0, 27)
    first = BrownianTree(0.0, 1.0, (8, 2), seed=2)
    fine_1 = first.increments(fine_ts, levy_area=True)
    coarse_1 = first.increments(coarse_ts, levy_area=True)
    second = BrownianTree(0.0, 1.0, (8, 2), seed=2)
    coarse_2 = second.increments(coarse_ts, levy_area=True)
    fine_2 = second.increments(fine_ts, levy_area=True)
    for x, y in zip(fine_1 + coarse_1, fine_2 + coarse_2):
        assert torch.equal(x, y)
    # chunked queries (as the solve loop makes) see the same values as one big query
    chunks = [first.increments(fine_ts[i:i + 33])[0] for i in range(0, 999, 32)]
    assert torch.equal(torch.cat(chunks), fine_1[0])
    # a coarse increment is the sum of the fine ones it covers (37 fine steps per coarse step)
    assert torch.allclose(fine_1[0][:37].sum(0), coarse_1[0][0], rtol=0, atol=1e-12)


@pytest.fixture
def generated(monkeypatch):
    """The number of tree nodes of each normal-generation call (a spy on ``_range_normals``)."""
    from sdekit.brownian import tree as tree_module

    counts = []
    original = tree_module._range_normals

    def counting(seed, keys, start, count, dtype):
        counts.append(keys.numel())
        return original(seed, keys, start, count, dtype)

    monkeypatch.setattr(tree_module, "_range_normals", counting)
    return counts


def test_whole_grid_queries_generate_each_node_once(generated):
    """A dyadic grid of 2**k steps in one call needs the 2**k - 1 nodes above its points and the
    root: one node per step. A non-dyadic grid needs its points' own nodes down to the depth."""
    bm = BrownianTree(0.0, 1.0, (4, 3), seed=5)
    dyadic = bm.increments(grid(0.0, 1.0, 256), levy_area=True)
    assert generated == [256]
    generated.clear()
    bm.increments(grid(0.0, 1.0, 100))
    assert generated[0] <= 127 + 100 * (24 - 6)
    # a point that needs more levels widens the query without changing the others' values
    ts = grid(0.0, 1.0, 256)
    mixed = bm.increments(torch.cat((ts[:-1], torch.tensor([1.0 - 1e-3, 1.0], dtype=F64))), levy_area=True)
    assert torch.allclose(mixed[0][:255], dyadic[0][:255], rtol=0, atol=1e-14)
    assert torch.allclose(mixed[1][:255], dyadic[1][:255], rtol=0, atol=1e-12)
    assert torch.allclose(mixed[0][255:].sum(0), dyadic[0][255], rtol=0, atol=1e-14)


def test_sparse_contraction_equals_the_products_per_point():
    """On the CPU a query contracts the shared nodes' normals with a sparse matrix of the points'
    coefficients; it gives the bits of the per-point products (the path off the CPU), for grids
    that share nodes, grids that need every level, reversed grids and several element pieces."""
    from sdekit.brownian import tree as tree_module

    cases = [(BrownianTree(0.0, 1.0, (4, 3), seed=1), grid(0.0, 1.0, 64)),
             (BrownianTree(0.0, 1.0, (5,), seed=2), grid(1.0, 0.0, 37)),
             (BrownianTree(0.5, 2.5, (3, 3), seed=3, align=100), grid(0.5, 2.5, 100)),
             (BrownianTree(0.0, 1.0, (2, 9), seed=4, sample_offset=3), grid(0.0, 1.0, 7))]
    for bm, ts in cases:
        index = bm._snap(ts)
        keys, coef = bm._coefficients(index, bm._width(index), True)
        assert torch.equal(bm._path(index, True), bm._path_dense(keys, coef))
    bm, ts = cases[0]
    index = bm._snap(ts)
    whole = bm._path(index, True).clone()
    tree_module._TABLE_PER_PIECE = 2 * 65 * 4   # 4 elements per piece: 3 pieces of 12 elements
    try:
        assert torch.equal(bm._path(index, True), whole)
    finally:
        tree_module._TABLE_PER_PIECE = 1 << 22


def test_query_results_are_not_overwritten_by_later_queries():
    """A query computes in per-thread scratch buffers; what it returns is its own."""
    bm = BrownianTree(0.0, 1.0, (8, 2), seed=3)
    first = bm.increments(grid(0.0, 1.0, 32), levy_area=True)
    kept = tuple(x.clone() for x in first)
    bm.increments(grid(0.0, 1.0, 32).flip(0), levy_area=True)
    BrownianTree(0.0, 1.0, (8, 2), seed=4).increments(grid(0.0, 1.0, 32))
    assert all(torch.equal(x, y) for x, y in zip(first, kept))


def test_aligned_tree_makes_a_uniform_grid_dyadic(generated):
    """align=m lays the dyadic grid over a stretched span: the uniform grids of m, m/2, 2m steps
    need log2(2**ceil(log2 m)) levels (about one node per step), and the path keeps its law."""
    bm = BrownianTree(0.5, 2.5, (4000, 2), seed=6, align=1000)
    ts = grid(0.5, 2.5, 1000)
    assert bm._width(bm._snap(ts)) == 10 and bm._width(bm._snap(grid(0.5, 2.5, 125))) == 7
    dW, H = bm.increments(ts, levy_area=True)
    assert max(generated) <= 1024    # about one node per step (unaligned: 14 per step)
    h = 2.0 / 1000
    assert abs(dW.var() / h - 1) < 0.01 and abs(H.var() / (h / 12) - 1) < 0.01
    assert scipy.stats.kstest((dW[:, :50] / math.sqrt(h)).flatten().numpy(), "norm").pvalue > 1e-3
    # one path at every resolution and in every query form
    coarse = bm.increments(grid(0.5, 2.5, 500), levy_area=True)
    assert torch.allclose(coarse[0], dW.view(500, 2, 4000, 2).sum(1), rtol=0, atol=1e-12)
    fine = bm.increments(grid(0.5, 2.5, 2000))[0]
    assert torch.allclose(fine.view(1000, 2, 4000, 2).sum(1), dW, rtol=0, atol=1e-12)
    small = BrownianTree(2.5, 0.5, (3, 2), seed=6, align=1000)   # reversed, a prefix of the batch
    assert torch.allclose(small.increments(ts[:4])[0], dW[:3, :3], rtol=0, atol=1e-15)
    per_sample = small.increments_per_sample(ts[[1, 2, 3]], ts[[2, 3, 4]])
    assert torch.allclose(per_sample[0], dW[[1, 2, 3], [0, 1, 2]], rtol=0, atol=1e-12)
    assert torch.allclose(per_sample[1], H[[1, 2, 3], [0, 1, 2]], rtol=0, atol=1e-10)
    # another path than the unaligned tree of the same seed; the stretched span is not queryable
    assert not torch.allclose(BrownianTree(0.5, 2.5, (4000, 2), seed=6).increments(ts[:3])[0], dW[:2])
    with pytest.raises(ValueError, match="outside the BrownianTree interval"):
        bm.increments(torch.tensor([2.0, 2.51], dtype=F64))


@pytest.mark.parametrize("align, message", [(0, "align"), (2.5, "align"), (True, "align"),
                                            (1 << 25, "needs depth >= 25")])
def test_tree_rejects_a_bad_align(align, message):
    with pytest.raises(ValueError, match=message):
        BrownianTree(0.0, 1.0, (2,), align=align)


def test_tree_call_is_antisymmetric():
    bm = BrownianTree(0.0, 1.0, (5,), seed=3)
    assert torch.equal(bm(0.2, 0.7), -bm(0.7, 0.2))
    assert torch.equal(bm(torch.tensor(0.2), torch.tensor(0.7)), bm(0.2, 0.7))
    assert torch.equal(bm(0.4, 0.4), torch.zeros(5, dtype=F64))


def test_tree_decreasing_times():
    bm = BrownianTree(0.0, 1.0, (6, 2), seed=4)
    ts = grid(0.0, 1.0, 40)
    dW, H = bm.increments(ts, levy_area=True)
    dW_back, H_back = bm.increments(ts.flip(0), levy_area=True)
    assert torch.allclose(dW_back, -dW.flip(0), rtol=0, atol=1e-15)
    assert torch.allclose(H_back, H.flip(0), rtol=0, atol=1e-12)  # H is symmetric


def test_tree_with_reversed_interval_and_float32():
    bm = BrownianTree(1.0, 0.0, (4,), seed=5, dtype=torch.float32)
    dW, H = bm.increments(torch.linspace(1.0, 0.0, 11), levy_area=True)
    assert dW.dtype == torch.float32 and H.dtype == torch.float32 and dW.shape == (10, 4)
    reference = BrownianTree(0.0, 1.0, (4,), seed=5).increments(grid(1.0, 0.0, 10), levy_area=True)
    assert torch.allclose(dW.double(), reference[0], atol=1e-6)
    assert torch.allclose(H.double(), reference[1], atol=1e-6)


def test_levy_area_additivity():
    """I_{a,c} = I_{a,b} + I_{b,c} + (c - b) W_{a,b}, with I = h (H + W/2)."""
    bm = BrownianTree(0.0, 1.0, (32, 2), seed=6)
    a, b, c = (round(t * 2**24) / 2**24 for t in (0.1, 0.37, 0.83))  # on the tree's time grid
    parts = bm.increments(torch.tensor([a, b, c], dtype=F64), levy_area=True)
    whole = bm.increments(torch.tensor([a, c], dtype=F64), levy_area=True)
    I_ab = integral(parts[0][0], parts[1][0], b - a)
    I_bc = integral(parts[0][1], parts[1][1], c - b)
    I_ac = integral(whole[0][0], whole[1][0], c - a)
    assert torch.allclose(I_ac, I_ab + I_bc + (c - b) * parts[0][0], rtol=0, atol=1e-12)
    # and over many dyadic pieces
    ts = grid(0.0, 1.0, 64)
    dW, H = bm.increments(ts, levy_area=True)
    W_before = torch.cumsum(dW, 0) - dW
    total = (integral(dW, H, 1 / 64) + (1 - ts[1:, None, None]) * dW).sum(0)
    W_all, H_all = bm.increments(ts[[0, -1]], levy_area=True)
    assert torch.allclose(total, integral(W_all[0], H_all[0], 1.0), rtol=0, atol=1e-12)
    assert W_before.shape == dW.shape


def test_zero_length_interval_gives_zero():
    bm = BrownianTree(0.0, 1.0, (3,), seed=0)
    dW, H = bm.increments(torch.tensor([0.5, 0.5, 0.75], dtype=F64), levy_area=True)
    assert torch.equal(dW[0], torch.zeros(3, dtype=F64)) and torch.equal(H[0], torch.zeros(3, dtype=F64))


def test_per_sample_queries_equal_full_batch_queries():
    bm = BrownianTree(0.0, 1.0, (6, 2, 3), seed=11)
    generator = torch.Generator().manual_seed(0)
    ta = torch.rand(6, generator=generator, dtype=F64) * 0.5
    tb = ta + torch.rand(6, generator=generator, dtype=F64) * 0.5
    dW, H = bm.increments_per_sample(ta, tb)
    assert dW.shape == (6, 2, 3) and H.shape == (6, 2, 3)
    for sample in range(6):
        full_dW, full_H = bm.increments(torch.stack((ta[sample], tb[sample])), levy_area=True)
        assert torch.allclose(dW[sample], full_dW[0, sample], rtol=0, atol=1e-14)
        assert torch.allclose(H[sample], full_H[0, sample], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        bm.increments_per_sample(ta[:3], tb[:3])


def test_sample_offset_places_a_batch_inside_a_larger_tree():
    """Sample b of a tree with sample_offset=k follows sample k + b of the offset-0 tree."""
    ts = grid(1.0, 0.0, 13)  # reverse time, as the diffusion samplers query it
    large = BrownianTree(0.0, 1.0, (7, 2, 3), seed=9)
    head = BrownianTree(0.0, 1.0, (3, 2, 3), seed=9)
    tail = BrownianTree(0.0, 1.0, (4, 2, 3), seed=9, sample_offset=3)
    dW, H = large.increments(ts, levy_area=True)
    dW_head, H_head = head.increments(ts, levy_area=True)
    dW_tail, H_tail = tail.increments(ts, levy_area=True)
    assert torch.equal(dW_head, dW[:, :3]) and torch.equal(H_head, H[:, :3])
    assert torch.equal(dW_tail, dW[:, 3:]) and torch.equal(H_tail, H[:, 3:])
    # per-sample queries: each sample over its own interval
    generator = torch.Generator().manual_seed(1)
    ta = torch.rand(7, generator=generator, dtype=F64)
    tb = ta * torch.rand(7, generator=generator, dtype=F64)
    dW, H = large.increments_per_sample(ta, tb)
    dW_tail, H_tail = tail.increments_per_sample(ta[3:], tb[3:])
    assert torch.equal(dW_tail, dW[3:]) and torch.equal(H_tail, H[3:])
    one = BrownianTree(0.0, 1.0, (1, 2, 3), seed=9, sample_offset=5)
    assert torch.equal(one.increments_per_sample(ta[5:6], tb[5:6])[0], dW[5:6])
    assert torch.allclose(one(ta[5], tb[5]), dW[5], rtol=0, atol=1e-14)
    assert not torch.allclose(dW_tail, dW[:4])  # an offset is not a copy of the first samples
    with pytest.raises(ValueError, match="sample_offset"):
        BrownianTree(0.0, 1.0, (2, 3), sample_offset=-1)
    with pytest.raises(ValueError, match="2\\*\\*31"):
        BrownianTree(0.0, 1.0, (2, 1 << 20), sample_offset=1 << 11)


def test_per_sample_queries_at_many_sizes_equal_full_batch_queries():
    """The blocked per-sample path: batches over several blocks, and samples of many elements."""
    for shape in ((700, 2), (3, 40000)):
        bm = BrownianTree(1.0, 0.0, shape, seed=3, sample_offset=2)
        generator = torch.Generator().manual_seed(2)
        ta = torch.rand(shape[0], generator=generator, dtype=F64)
        tb = ta * torch.rand(shape[0], generator=generator, dtype=F64)
        dW, H = bm.increments_per_sample(ta, tb)
        for sample in (0, shape[0] // 2, shape[0] - 1):
            full_dW, full_H = bm.increments(torch.stack((ta[sample], tb[sample])), levy_area=True)
            assert torch.allclose(dW[sample], full_dW[0, sample], rtol=0, atol=1e-14)
            assert torch.allclose(H[sample], full_H[0, sample], rtol=0, atol=1e-12)


def test_tree_rejects_times_outside_the_interval():
    bm = BrownianTree(0.0, 1.0, (3,))
    with pytest.raises(ValueError, match=r"\[0.0, 1.0\]"):
        bm.increments(torch.tensor([0.5, 1.1], dtype=F64))
    with pytest.raises(ValueError, match="outside"):
        bm(-0.2, 0.3)
    with pytest.raises(ValueError, match="outside"):
        bm.increments_per_sample(torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0.5, 2.0, 0.5]))
    bm.increments(torch.tensor([0.0, 1.0 + 1e-12], dtype=F64))  # within the tolerance


@pytest.mark.parametrize("shape", [(), (0,), (3, -1), (2.5,), "ab"])
def test_sources_reject_bad_shapes(shape):
    for make in (lambda: BrownianTree(0.0, 1.0, shape), lambda: GeneratorNoise(shape),
                 lambda: PerSampleNoise(shape)):
        with pytest.raises(ValueError, match="shape"):
            make()


def test_tree_rejects_an_empty_interval():
    with pytest.raises(ValueError, match="interval"):
        BrownianTree(1.0, 1.0, (2,))


# --------------------------------------------------------------------------------------------
# Fresh-noise sources
# --------------------------------------------------------------------------------------------

def test_generator_noise_is_reproducible_and_scaled():
    ts = grid(0.0, 1.0, 50)
    a = GeneratorNoise((200, 4), generator=torch.Generator().manual_seed(3))
    b = GeneratorNoise((200, 4), generator=torch.Generator().manual_seed(3))
    dW_a, H_a = a.increments(ts, levy_area=True)
    dW_b, H_b = b.increments(ts, levy_area=True)
    assert torch.equal(dW_a, dW_b) and torch.equal(H_a, H_b)
    assert dW_a.shape == (50, 200, 4) and a.increments(ts)[1] is None
    assert abs(dW_a.var() / 0.02 - 1) < 0.05
    assert abs(H_a.var() / (0.02 / 12) - 1) < 0.05
    assert abs((dW_a * H_a).mean()) < 5 * math.sqrt(0.02 * 0.02 / 12 / dW_a.numel())


def test_per_sample_noise_does_not_depend_on_the_batch():
    ts = grid(1.0, 0.0, 12)  # a reverse-time grid
    small = PerSampleNoise((3, 5), seed=4)
    large = PerSampleNoise((7, 5), seed=4)
    offset = PerSampleNoise((4, 5), seed=4, sample_offset=3)
    for chunk in (ts[:5], ts[4:]):  # the step counter carries across calls
        dW_s, H_s = small.increments(chunk, levy_area=True)
        dW_l, H_l = large.increments(chunk, levy_area=True)
        dW_o, _ = offset.increments(chunk)
        assert torch.equal(dW_s, dW_l[:, :3]) and torch.equal(H_s, H_l[:, :3])
        assert torch.equal(dW_o, dW_l[:, 3:])
    assert small.step == 12
    first = PerSampleNoise((3, 5), seed=4).increments(ts[:5])[0]
    small.reset()
    assert torch.equal(small.increments(ts[:5])[0], first)
    assert not torch.equal(PerSampleNoise((3, 5), seed=5).increments(ts[:5])[0], first)


def test_per_sample_noise_statistics():
    noise = PerSampleNoise((500, 20), seed=1)
    dW, H = noise.increments(grid(0.0, 1.0, 10), levy_area=True)
    assert scipy.stats.kstest((dW / math.sqrt(0.1)).flatten().numpy(), "norm").pvalue > 1e-3
    assert scipy.stats.kstest((H / math.sqrt(0.1 / 12)).flatten().numpy(), "norm").pvalue > 1e-3


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tree_on_cuda_matches_cpu():
    ts = grid(0.0, 1.0, 33)
    cpu = BrownianTree(0.0, 1.0, (8, 2), seed=1).increments(ts, levy_area=True)
    gpu = BrownianTree(0.0, 1.0, (8, 2), seed=1, device="cuda").increments(ts.cuda(), levy_area=True)
    assert torch.allclose(gpu[0].cpu(), cpu[0], atol=1e-5)
    assert torch.allclose(gpu[1].cpu(), cpu[1], atol=1e-5)


def test_sources_work_in_and_out_of_inference_mode(monkeypatch):
    """The per-thread scratch buffers are normal tensors even when made under
    torch.inference_mode: a query there and one outside it (on the same tree, in either order)
    give the same values."""
    import threading

    from sdekit.brownian import generator, tree as tree_module

    monkeypatch.setattr(tree_module, "_scratch", threading.local())   # buffers made below
    monkeypatch.setattr(generator._Workspace, "_cpu", threading.local())
    ts = grid(0.0, 1.0, 40)
    bm = BrownianTree(0.0, 1.0, (6, 3), seed=11)
    with torch.inference_mode():
        inside = bm.increments(ts, levy_area=True)
        fresh_inside = PerSampleNoise((6, 3), seed=2).increments(ts, levy_area=True)
    outside = bm.increments(ts, levy_area=True)
    fresh_outside = PerSampleNoise((6, 3), seed=2).increments(ts, levy_area=True)
    with torch.inference_mode():
        again = bm.increments(ts, levy_area=True)
    for a, b, c in zip(inside, outside, again):
        assert torch.equal(a, b) and torch.equal(b, c)
    assert all(torch.equal(a, b) for a, b in zip(fresh_inside, fresh_outside))


def test_per_sample_queries_reuse_the_points_of_the_last_one(monkeypatch):
    """An adaptive loop's per-sample queries start where the last one ended (accepted) or began
    (rejected): those points come from the last query, the values are a fresh tree's, bit for
    bit, and only the new points are computed."""
    computed = []
    original = BrownianTree._points_per_sample

    def counting(self, samples, index):
        computed.append(index.numel())
        return original(self, samples, index)

    monkeypatch.setattr(BrownianTree, "_points_per_sample", counting)
    generator = torch.Generator().manual_seed(4)
    for shape, offset in (((9, 2), 0), ((7, 3), 2)):      # paired and elementwise normals
        batch = shape[0]
        bm = BrownianTree(1.0, 0.0, shape, seed=8, sample_offset=offset)
        ta = torch.ones(batch, dtype=F64)
        computed.clear()
        for step in range(5):
            tb = (ta - 0.1 * torch.rand(batch, generator=generator, dtype=F64)).clamp(min=0.0)
            reused = bm.increments_per_sample(ta, tb)
            fresh = BrownianTree(1.0, 0.0, shape, seed=8, sample_offset=offset).increments_per_sample(ta, tb)
            assert torch.equal(reused[0], fresh[0]) and torch.equal(reused[1], fresh[1])
            accepted = torch.rand(batch, generator=generator) < 0.6
            ta = torch.where(accepted, tb, ta)
        assert computed[::2] == [2 * batch] + [batch] * 4     # the fresh trees' calls between
