"""Tests of the counter-based generator (sdekit.brownian.generator): Philox4x32-10 against its
published known answers, the (seed, key, element) -> counter layout, that distinct counters never
share output words, and the law of the normals.

Statistical tests use fixed seeds (deterministic); thresholds are about five standard errors.
"""
import math

import pytest
import scipy.stats
import torch

from sdekit.brownian import counter_normal, counter_words, philox4x32, seed_words
from sdekit.brownian import generator

MASK = 0xFFFFFFFF

# Random123 1.14, examples/kat_vectors, the "philox4x32 10" lines: counter, key, expected output.
PHILOX4x32_10_KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    ((0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff), (0xffffffff, 0xffffffff),
     (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
    ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
]

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def as_int64(high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """Two 32-bit words -> one 64-bit pattern (int64, wrapping)."""
    return (high << 32) | low


# --------------------------------------------------------------------------------------------
# Philox4x32-10
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("counter, key, expected", PHILOX4x32_10_KAT)
def test_philox_known_answers(counter, key, expected, device):
    words = philox4x32([torch.tensor(c, device=device) for c in counter], key)
    assert [int(w) for w in words] == list(expected)


@pytest.mark.parametrize("device", DEVICES)
def test_philox_known_answers_batched_and_broadcast(device):
    """The vectorised path (full-size rounds in place, broadcast operands) gives the same answers."""
    counters = torch.tensor([c for c, _, _ in PHILOX4x32_10_KAT], device=device).T  # (4, 3)
    for index, (_, key, expected) in enumerate(PHILOX4x32_10_KAT):
        words = philox4x32(counters, key)
        assert [int(w[index]) for w in words] == list(expected)
    # counter words of different shapes: a (3, 1) column against a (1, 5) row
    c0 = torch.arange(5, device=device)[None]
    c2 = torch.tensor([[7], [8], [2**32 - 1]], device=device)
    words = philox4x32((c0, 11, c2, 13), (5, 6))
    assert words[0].shape == (3, 5)
    for i in range(3):
        for j in range(5):
            one = philox4x32((j, 11, int(c2[i, 0]), 13), (5, 6))
            assert [int(w) for w in one] == [int(w[i, j]) for w in words]


# --------------------------------------------------------------------------------------------
# The counter layout of counter_normal
# --------------------------------------------------------------------------------------------

def test_counter_words_follow_the_documented_layout():
    """Element e of key k: block (e >> 1, k_hi, k_lo, seed bits 64..95) under the key
    (seed bits 0..31, 32..63); words (w0, w1) for even e, (w2, w3) for odd e."""
    seed = 0x1234_5678_9ABC_DEF0_1357_9BDF + (3 << 96)  # bits above 95 are dropped
    keys = torch.tensor([0, 1, 47764, 2**32 + 7, 2**62 + 11, 2**63 - 1])
    elements = torch.arange(9)
    k0, k1, c3 = seed_words(seed)
    assert (k0, k1, c3) == (0x13579BDF, 0x9ABCDEF0, 0x12345678)
    w = philox4x32((elements[None] >> 1, keys[:, None] >> 32, keys[:, None] & MASK, c3), (k0, k1))
    odd = (elements & 1).bool()
    expected = torch.stack((torch.where(odd, w[2], w[0]), torch.where(odd, w[3], w[1])), dim=1)
    assert torch.equal(counter_words(seed, keys, 9), expected)
    assert torch.equal(counter_words(seed, keys, elements[None]), expected)


def test_seeds_are_taken_modulo_2_to_the_96():
    keys = torch.arange(4)
    base = counter_words(5, keys, 6)
    assert torch.equal(counter_words(5 + (1 << 96), keys, 6), base)
    assert torch.equal(counter_words(-1, keys, 6), counter_words((1 << 96) - 1, keys, 6))
    # every 32-bit word of the seed matters, including the plugin's tag above bit 64
    for other in (6, 5 + (1 << 32), 5 + (1 << 64), 5 + (0xAD5DE << 64)):
        assert not torch.equal(counter_words(other, keys, 6), base)


def test_normals_are_box_muller_of_the_words():
    seed, keys = 77, torch.tensor([3, 2**40 + 1])
    words = counter_words(seed, keys, 10)
    z32 = counter_normal(seed, keys, 10)
    u1 = ((words[:, 0] & 0xFFFFFF).double() + 0.5) * 2.0 ** -24
    angle = (words[:, 1] & 0xFFFFFF).double() * (2 * math.pi * 2.0 ** -24)
    radius = torch.sqrt(-2 * torch.log(u1))
    assert torch.allclose(z32[:, 0].double(), radius * torch.cos(angle), rtol=0, atol=1e-5)
    assert torch.allclose(z32[:, 1].double(), radius * torch.sin(angle), rtol=0, atol=1e-5)
    z64 = counter_normal(seed, keys, 10, dtype=torch.float64)
    u1 = (words[:, 0].double() + 0.5) * 2.0 ** -32
    angle = words[:, 1].double() * (2 * math.pi * 2.0 ** -32)
    radius = torch.sqrt(-2 * torch.log(u1))
    assert torch.allclose(z64[:, 0], radius * torch.cos(angle), rtol=0, atol=1e-13)
    assert torch.allclose(z64[:, 1], radius * torch.sin(angle), rtol=0, atol=1e-13)


@pytest.mark.parametrize("n", [1, 2, 7, 64, 1001])
def test_ranges_and_element_tensors_give_the_same_normals(n, monkeypatch):
    """counter_normal(seed, keys, n) (pairs of elements per block, in pieces) equals the
    elementwise path, for odd counts and across piece boundaries; ranges starting at an odd
    element (the tree's sample offsets) too."""
    monkeypatch.setattr(generator, "_BLOCKS_PER_PIECE", 96)  # many pieces, rows split too
    keys = torch.tensor([[5, 6, 7], [2**33, 9, 10]])
    full = counter_normal(3, keys, n)
    assert full.shape == (2, 3, 2, n)
    assert torch.equal(full, counter_normal(3, keys, torch.arange(n)[None, None]))
    for start in (1, 2, 5):
        part = generator._contiguous_normals(3, keys.reshape(-1), start, n, torch.float32)
        reference = counter_normal(3, keys.reshape(-1), torch.arange(start, start + n)[None])
        assert torch.equal(part, reference)


# --------------------------------------------------------------------------------------------
# Distinct counters never share output words
# --------------------------------------------------------------------------------------------

def test_the_reported_collision_is_gone():
    """Issue 11: with the old key hash, seed 1234, keys 47764 and 158197 shared their streams up to
    e -> e ^ 2033 (Z1^2 + Z2^2 equal element by element, correlation 1). Now no word is shared and
    the radii are uncorrelated under that (and every other xor) permutation."""
    seed, n = 1234, 2048
    words = counter_words(seed, torch.tensor([47764, 158197]), n)  # (2, 2, n)
    pairs = as_int64(words[:, 0], words[:, 1])  # the 64 bits each (key, element) reads
    assert torch.unique(pairs.flatten()).numel() == 2 * n
    assert torch.unique(words.flatten()).numel() > 4 * n - 8  # 32-bit repeats: birthday only
    z = counter_normal(seed, torch.tensor([47764, 158197]), n, dtype=torch.float64)
    r2 = (z ** 2).sum(1)  # (2, n)
    permuted = r2[1, torch.arange(n) ^ 2033]
    assert abs(torch.corrcoef(torch.stack((r2[0], permuted)))[0, 1]) < 5 / math.sqrt(n)
    # no xor permutation relates the two keys' radii
    matches = torch.isin(r2[0], r2[1]).sum()
    assert matches == 0


def test_distinct_key_element_pairs_never_share_output_words():
    """512 keys (among them the reported pair and keys differing only in their high word) x 2048
    elements: the 2**20 64-bit halves they read are all distinct (a bijection of the counter)."""
    keys = torch.cat((torch.arange(500), torch.tensor([47764, 158197]),
                      torch.arange(1, 11) * (1 << 32) + 1))
    words = counter_words(1234, keys, 2048)
    pairs = as_int64(words[:, 0], words[:, 1]).flatten()
    assert torch.unique(pairs).numel() == pairs.numel()


def test_bucket_test_over_2_to_the_20_keys():
    """Element 0 of each of 2**20 keys: the 128-bit blocks are all distinct (bijection), the first
    words repeat only as often as random 32-bit words do (birthday: C(2**20, 2) / 2**32 = 128
    expected pairs, Poisson), and their top 10 bits fill 1024 buckets evenly (chi-square)."""
    n_keys = 1 << 20
    keys = (torch.arange(n_keys, dtype=torch.int64) * 0x5851F42D4C957F2D) & ((1 << 63) - 1)  # over 63 bits
    k0, k1, c3 = seed_words(2024)
    w0, w1, w2, w3 = philox4x32((0, keys >> 32, keys & MASK, c3), (k0, k1))
    # distinct first halves already make the 128-bit blocks distinct
    assert torch.unique(as_int64(w0, w1)).numel() == n_keys
    first = counter_words(2024, keys, 1)[:, 0, 0]
    assert torch.equal(first, w0)
    _, counts = torch.unique(first, return_counts=True)
    repeated_pairs = int((counts * (counts - 1) // 2).sum())
    expected = n_keys * (n_keys - 1) / 2 / 2 ** 32
    assert abs(repeated_pairs - expected) < 6 * math.sqrt(expected)
    buckets = torch.bincount(first >> 22, minlength=1024).numpy()
    assert scipy.stats.chisquare(buckets).pvalue > 1e-4


# --------------------------------------------------------------------------------------------
# The law of the normals
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normals_pass_ks_and_moment_tests(dtype):
    keys = torch.arange(512, dtype=torch.int64) * 104729 + 17
    z = counter_normal(99, keys, 1024, dtype=dtype).double()  # (512, 2, 1024): 2**20 normals
    flat = z.flatten()
    n = flat.numel()
    assert scipy.stats.kstest(flat.numpy(), "norm").pvalue > 1e-3
    assert abs(flat.mean()) < 5 / math.sqrt(n)
    assert abs(flat.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs(scipy.stats.skew(flat.numpy())) < 5 * math.sqrt(6 / n)
    assert abs(scipy.stats.kurtosis(flat.numpy())) < 5 * math.sqrt(24 / n)
    assert flat.abs().max() < (5.9 if dtype == torch.float32 else 6.7)
    # the two normals of a pair, neighbouring keys and neighbouring (paired) elements: uncorrelated
    bound = 5 / math.sqrt(z[:, 0].numel())
    assert abs((z[:, 0] * z[:, 1]).mean()) < bound
    assert abs((z[1:, 0] * z[:-1, 0]).mean()) < bound
    assert abs((z[:, 0, 1:] * z[:, 0, :-1]).mean()) < bound
    assert abs((z[:, 0, 0::2] * z[:, 0, 1::2]).mean()) < 2 * bound
    # radii uncorrelated between the two elements of a block
    r2 = (z ** 2).sum(1)
    assert abs(torch.corrcoef(torch.stack((r2[:, 0::2].flatten(), r2[:, 1::2].flatten())))[0, 1]) < 2 * bound


def test_tail_probabilities():
    """P(|Z| > 3) and P(|Z| > 4) match the normal law (2.7e-3 and 6.3e-5) within 5 standard errors."""
    keys = torch.arange(2048, dtype=torch.int64)
    flat = counter_normal(5, keys, 2048).double().flatten()  # 2**23 normals
    n = flat.numel()
    for threshold in (3.0, 4.0):
        p = 2 * scipy.stats.norm.sf(threshold)
        observed = float((flat.abs() > threshold).double().mean())
        assert abs(observed - p) < 5 * math.sqrt(p * (1 - p) / n)


# --------------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_words_and_normals_on_cuda_as_on_cpu():
    keys = torch.tensor([0, 1, 47764, 158197, 2**32 + 5, 2**62 + 3])
    seed = 31 + (0xAD5DE << 64)
    assert torch.equal(counter_words(seed, keys.cuda(), 777).cpu(), counter_words(seed, keys, 777))
    for dtype, atol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        gpu = counter_normal(seed, keys.cuda(), 777, dtype=dtype).cpu()
        assert torch.allclose(gpu, counter_normal(seed, keys, 777, dtype=dtype), rtol=0, atol=atol)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_brownian_path_on_cuda_as_on_cpu():
    from sdekit.brownian import BrownianTree

    ts = torch.linspace(0.0, 1.0, 65, dtype=torch.float64)
    cpu = BrownianTree(0.0, 1.0, (16, 3), seed=4).increments(ts, levy_area=True)
    gpu = BrownianTree(0.0, 1.0, (16, 3), seed=4, device="cuda").increments(ts.cuda(), levy_area=True)
    assert torch.allclose(gpu[0].cpu(), cpu[0], rtol=0, atol=1e-6)
    assert torch.allclose(gpu[1].cpu(), cpu[1], rtol=0, atol=1e-6)
