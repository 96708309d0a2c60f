r"""Brownian noise sources for :func:`sdekit.solve`.

Every source implements one method (the solve loop calls it once per chunk of about 32 steps, and
once per step for adaptive solvers)::

    increments(ts, levy_area=False) -> (dW, H or None)

``ts`` is a 1-D tensor of ``k + 1`` monotone times (increasing *or* decreasing). ``dW`` has shape
``(k, *shape)`` with ``dW[i] = W(ts[i+1]) - W(ts[i])``; with ``levy_area=True`` the second output ``H``
(same shape) holds the space-time Lévy area of each interval :math:`[a, b]`, :math:`h = |b - a|`,

.. math::  H_{a,b} = \frac{1}{h} \int_a^b \Big(W_s - W_a - \frac{s - a}{h} W_{a,b}\Big)\, ds,

which is symmetric: the same value whichever direction the interval is queried in. Outputs follow
the source's dtype and device.

Sources:

* :class:`BrownianTree` -- a *virtual* Brownian tree: the path is a deterministic function of
  ``(seed, t)``, so any order, set or resolution of queries sees the same path (one path solved at
  many step sizes), in O(1) memory.
* :class:`GeneratorNoise` -- fresh normals from a ``torch.Generator`` for fixed grids (no replay).
* :class:`PerSampleNoise` -- fresh normals where sample ``b``'s noise depends only on
  ``(seed, b + sample_offset, step, element)``, so a sampler gives the same sample ``i`` whatever
  the batch size (no replay either).

All counter-based randomness comes from :func:`counter_normal`.
"""
from __future__ import annotations

import math
from typing import Protocol, Sequence

import torch

__all__ = ["BrownianSource", "BrownianTree", "GeneratorNoise", "PerSampleNoise", "counter_normal"]

Increments = tuple[torch.Tensor, "torch.Tensor | None"]


class BrownianSource(Protocol):
    """The protocol every noise source implements (see the module docstring)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    def increments(self, ts: torch.Tensor, levy_area: bool = False) -> Increments:
        ...


# ---------------------------------------------------------------------------------------------
# Counter-based normals
# ---------------------------------------------------------------------------------------------

_MASK32 = 0xFFFFFFFF
# Multipliers of Chris Wellons' "lowbias32" integer hash (hash-prospector, bias 0.17).
_LOWBIAS_1 = 0x7FEB352D
_LOWBIAS_2 = 0x846CA68B
_TWO_PI = 2.0 * math.pi
_SERIAL_ELEMENTS = 32767  # below PyTorch's intra-op parallel grain (at::internal::GRAIN_SIZE)
_NORMALS_PER_BLOCK = 1 << 16  # per-sample tree queries: float32 blocks of 256 KiB stay in cache


def _hash32_(x: torch.Tensor) -> torch.Tensor:
    """lowbias32, in place, on an int32 tensor read as 32-bit words (a bijection of 32 bits).

    Right shifts are masked so that they act as logical shifts on the two's-complement words, and
    products wrap modulo 2**32 (PyTorch's int32 multiplication, CPU and CUDA); every intermediate is
    an int32, so nothing depends on int64 overflow.
    """
    x.bitwise_xor_((x >> 16).bitwise_and_(0xFFFF))
    x.mul_(_LOWBIAS_1)
    x.bitwise_xor_((x >> 15).bitwise_and_(0x1FFFF))
    x.mul_(_LOWBIAS_2 - (1 << 32))
    x.bitwise_xor_((x >> 16).bitwise_and_(0xFFFF))
    return x


def _hash32_int(x: int) -> int:
    """The same hash on a non-negative Python int (for seeds and key words)."""
    x &= _MASK32
    x ^= x >> 16
    x = (x * _LOWBIAS_1) & _MASK32
    x ^= x >> 15
    x = (x * _LOWBIAS_2) & _MASK32
    x ^= x >> 16
    return x


def _seed_words(seed: int) -> tuple[int, int, int]:
    """Three 32-bit words derived from an arbitrary Python int seed."""
    seed = int(seed)
    folded = 0
    for word in range(4):  # up to 128 bits of seed, sign included
        folded = _hash32_int(folded ^ ((seed >> (32 * word)) & _MASK32) ^ (0x68E31DA4 * word))
    return (_hash32_int(folded ^ 0x9E3779B9), _hash32_int(folded ^ 0x85EBCA6B),
            _hash32_int(folded ^ 0xC2B2AE35))


def _key_words_planar(seed: int, keys: torch.Tensor) -> torch.Tensor:
    """The two key words of :func:`counter_normal` in the layout ``(2, *keys.shape)``."""
    s_a, s_b, s_c = (_as_int32_pattern(word) for word in _seed_words(seed))
    keys = keys.to(torch.int64)
    # int32 words: the hash is the same bijection of 32 bits as on int64 (see _hash32_), at half
    # the memory; each word on its own contiguous tensor (a broadcast pair axis of size 2
    # innermost defeats the vectorised kernels)
    low = keys.to(torch.int32)  # the low 32 bits (the cast wraps modulo 2**32)
    high = (keys >> 32).to(torch.int32)
    words = torch.empty((2, *keys.shape), dtype=torch.int32, device=keys.device)
    torch.bitwise_xor(_hash32_(low ^ s_a), high, out=words[0])
    torch.bitwise_xor(_hash32_(low.bitwise_xor_(s_b)), high.bitwise_xor_(s_c), out=words[1])
    return _hash32_(words)


def _as_int32_pattern(word: int) -> int:
    """A word in [0, 2**32) as the int32 with the same bits."""
    return word - (1 << 32) if word >= 1 << 31 else word


def _key_words(seed: int, keys: torch.Tensor) -> torch.Tensor:
    """Two 32-bit words per key, as int32 bit patterns of shape ``(*keys.shape, 2)``."""
    return _key_words_planar(seed, keys).movedim(0, -1)


def _normals_from_words(words: torch.Tensor, elements: int | torch.Tensor,
                        dtype: torch.dtype) -> torch.Tensor:
    """The element stage of :func:`counter_normal`, from the key words ``(*S, 2)``."""
    if isinstance(elements, int):
        elements = torch.arange(elements, device=words.device, dtype=torch.int32)
    elements = elements.to(device=words.device, dtype=torch.int32)
    bits = _hash32_(words[..., None] ^ elements[..., None, :])  # (*S', 2, n)
    if dtype == torch.float64:
        uniform = bits.to(torch.float64).add_(2.0 ** 31 + 0.5).mul_(2.0 ** -32)
    else:
        uniform = (bits >> 8).bitwise_and_(0xFFFFFF).to(torch.float32).add_(0.5).mul_(2.0 ** -24)
    radius = uniform[..., 0, :].log().mul_(-2.0).sqrt_()
    angle = uniform[..., 1, :].mul_(_TWO_PI)
    normals = torch.stack((angle.cos(), angle.sin_()), dim=-2).mul_(radius[..., None, :])
    return normals if normals.dtype == dtype else normals.to(dtype)


def counter_normal(seed: int, keys: torch.Tensor, elements: int | torch.Tensor,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    r"""Two independent standard normals per ``(key, element)``, a pure function of
    ``(seed, key, element)``: a counter-based generator, vectorised, on ``keys``' device.

    Args:
        seed: any Python int.
        keys: int64 tensor of shape ``S`` with values in ``[0, 2**63)`` (e.g. node ids, or
            ``step * 2**32 + sample``).
        elements: ``n`` (the element indices ``0..n-1``) or an integer tensor of element indices
            in ``[0, 2**31)`` of shape ``(..., n)`` whose leading dimensions broadcast against ``S``.
        dtype: float32 (24-bit uniforms, so |Z| <= 5.9; the fast path) or float64 (32-bit
            uniforms, |Z| <= 6.7).
    Returns:
        a tensor of shape ``(*broadcast(S, elements.shape[:-1]), 2, n)`` and dtype ``dtype``.

    Method: the key's two 32-bit halves and the seed go through two chains of the lowbias32 hash,
    giving two words ``A(key)``, ``B(key)`` (each a bijection of the key's low half for a fixed
    high half, so keys below ``2**32`` never share a word). ``hash(A ^ e)`` and ``hash(B ^ e)``
    give 32 random bits each, turned into uniforms on (0, 1) and into two normals by Box--Muller:
    :math:`r = \sqrt{-2 \log u_1}`, :math:`Z = (r \cos 2\pi u_2, r \sin 2\pi u_2)`.
    """
    return _normals_from_words(_key_words(seed, keys), elements, dtype)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def _check_shape(shape: Sequence[int] | int) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be a non-empty tuple of positive ints, got {shape!r}") from None
    if len(shape) == 0 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                                  for n in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive ints, got {shape!r}")
    return shape


def _as_times(ts, device: torch.device) -> torch.Tensor:
    ts = torch.as_tensor(ts, device=device)
    if ts.dim() != 1 or ts.shape[0] < 2:
        raise ValueError(f"ts must be a 1-D tensor of at least 2 times, got shape {tuple(ts.shape)}")
    return ts


class _SerialOnCPU:
    """Run PyTorch's intra-op work on one thread (CPU only, and only for small work).

    The work is cut into blocks below PyTorch's grain for intra-op parallelism (32768 elements),
    yet the VML-backed ops (log, cos, sin, sqrt) split work across threads from 2048 elements and
    batched matmul uses MKL's threads: at these sizes the thread hand-off costs more than it gives
    (measured 10x slower with 2 threads on a loaded 2-core machine). The thread count is per
    calling thread in the OpenMP backend (setting it costs ~0.1 us) and is restored on exit.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.threads = 0

    def __enter__(self):
        if self.enabled:
            self.threads = torch.get_num_threads()
            if self.threads > 1:
                torch.set_num_threads(1)
        return self

    def __exit__(self, *exc_info):
        if self.enabled and self.threads > 1:
            torch.set_num_threads(self.threads)
        return False


# Elements per time point up to which CPU work runs on one thread: then every block of work above
# is below PyTorch's own grain for intra-op parallelism (at::internal::GRAIN_SIZE = 32768).
_SMALL_STATE = _SERIAL_ELEMENTS // 2


def _serial(device: torch.device, n_elements: int) -> _SerialOnCPU:
    return _SerialOnCPU(device.type == "cpu" and n_elements <= _SMALL_STATE)


def _accumulation_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


# ---------------------------------------------------------------------------------------------
# Virtual Brownian tree
# ---------------------------------------------------------------------------------------------

class BrownianTree:
    r"""A virtual Brownian tree on ``[t0, t1]`` carrying the space-time Lévy area.

    The path is a deterministic function of ``(seed, t)``: querying a fine grid and then a coarse
    one gives the same values as the reverse order, so one path can be solved at many step sizes.
    Memory is O(1); each query costs O(depth) normals per element.

    Args:
        t0, t1: the interval (``t1 < t0`` is allowed; the tree lives on the sorted interval and
            ``W`` is 0 at its left end).
        shape: the shape of ``W`` (a non-empty tuple of positive ints); ``shape[0]`` is the batch
            for :meth:`increments_per_sample`.
        seed: any Python int.
        dtype, device: of the outputs.
        levy_area: accepted for compatibility; the Lévy area ``H`` is always available.
        sample_offset: the index of this tree's first sample (``shape[0]`` is the batch) in a larger
            run: element indices are global, shifted by ``sample_offset * prod(shape[1:])``, so
            sample ``b`` follows exactly the path of sample ``sample_offset + b`` of a tree with
            the same seed and ``sample_offset=0`` (needs ``(sample_offset + shape[0]) *
            prod(shape[1:]) <= 2**31``).
        depth: ``L``, the number of dyadic levels (default 24). Query times are snapped to the
            nearest point of the grid ``t0 + T j / 2**L``, ``T = |t1 - t0|``, so the **time
            tolerance** is ``T / 2**(L+1)`` (about 3e-8 of the interval by default, float32's
            resolution near 1). Dyadic times (uniform grids of ``2**k`` steps, ``k <= L``) are exact.

    Construction (Foster, Lyons & Oberhauser 2020, the (W, H) bridge). The root carries
    :math:`W_{t_0,t_1} = \sqrt{T} Z` and :math:`H = \sqrt{T/12} Z'`. A node ``[s, u]`` of length
    ``h`` with known :math:`(W_{s,u}, H_{s,u})` splits at its midpoint ``m`` with two fresh normals
    (Var of the bridge midpoint h/4, Cov(midpoint, H) = h/8, Var H = h/12):

    .. math::
        W_{s,m} &= \tfrac12 W_{s,u} + \tfrac32 H_{s,u} + \tfrac{\sqrt h}{4} Z_1, \qquad
        H_{s,m} = \tfrac14 H_{s,u} - \tfrac{\sqrt h}{8} Z_1 + \sqrt{h/48}\, Z_2, \\
        W_{m,u} &= W_{s,u} - W_{s,m}, \qquad
        H_{m,u} = 2 H_{s,u} + \tfrac12 W_{s,u} - W_{s,m} - H_{s,m}.

    The normals of a node are :func:`counter_normal` of ``(seed, node id, element)`` (heap ids:
    level ``l``, position ``j`` -> ``2**l + j``; the root's own pair has id 0).

    Evaluation. The recursion is linear in the normals, and the innovation ``(Z_1, Z_2)`` of a
    node leaves that node's own ``(W, H)`` unchanged, so it moves the path only inside the node, by
    ``E[W_r - W_s | W, H] = x W + 6 x (1 - x) H`` (``x = (r - s)/h``) applied to both children.
    Hence, with ``x`` the position of ``t`` in the left (right) half, scaled to [0, 1):

    .. math::
        W(t) &= \sum_{\text{nodes} \ni t} \sqrt h \big[g_1(x) Z_1 + g_2(x) Z_2\big] + \text{root},\\
        g_1 &= \tfrac{x}{4} - \tfrac34 x(1-x) \;\big(\tfrac{1-x}{4} - \tfrac34 x(1-x)\big), \quad
        g_2 = \tfrac{\sqrt3}{2} x (1-x) \;\big(-\tfrac{\sqrt3}{2} x(1-x)\big),

    and :math:`K(t) = \int_{t_0}^t W` is the same sum with the integrals of :math:`g_1, g_2`
    (which vanish over a whole node, so nodes left of ``t`` drop out):
    :math:`\tfrac{h\sqrt h}{8}(x^3 - x^2)` (:math:`\tfrac{h\sqrt h}{8} x(1-x)^2`) and
    :math:`\tfrac{\sqrt3}{4} h\sqrt h (x^2/2 - x^3/3)`
    (:math:`\tfrac{\sqrt3}{4} h\sqrt h (1/6 - x^2/2 + x^3/3)`).
    This is exactly the L-level descent of the recursion above (same normals, same values up to
    rounding; ``tests/test_brownian.py`` checks it level by level), done for all levels at once.
    Then for ``a < b``: :math:`W_{a,b} = W(b) - W(a)`,
    :math:`\int_a^b (W_r - W_a) dr = K(b) - K(a) - (b - a) W(a)` and
    :math:`H_{a,b} = \int_a^b (W_r - W_a) dr / (b - a) - W_{a,b} / 2`.

    Precision and speed: the node normals are generated in float32 (24-bit uniforms, so
    ``|Z| <= 5.9``: the law is Brownian to float32 resolution, for every ``dtype``), while ``W`` and
    ``K`` are accumulated in float64 (float32 on MPS) and cast to ``dtype`` at the end, so ``H``
    keeps its accuracy (it is a difference of ``K`` values divided by ``h``) even for float32
    trees. :meth:`increments_per_sample` on the CPU generates the same normals in a layout and in
    chunks of samples that suit one or a few elements per sample (about 3x a full-batch query of
    two points, for the coefficients of ``2 (L + 1)`` nodes per sample). A query of ``P`` points
    costs about ``P (L + 1)`` node-normal pairs per element (fewer on
    the CPU, where the nodes that nearby points share are generated once); on the CPU, small states
    run on one thread (see ``_SerialOnCPU``). Validation of the query times needs one host sync per
    call on CUDA.
    """

    def __init__(self, t0: float, t1: float, shape: Sequence[int], seed: int = 0,
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None,
                 levy_area: bool = False, depth: int | None = None, sample_offset: int = 0):
        self.shape = _check_shape(shape)
        t0, t1 = float(t0), float(t1)
        if not (math.isfinite(t0) and math.isfinite(t1)) or t0 == t1:
            raise ValueError(f"BrownianTree needs a finite interval with t0 != t1, got [{t0}, {t1}]")
        self.t0, self.t1 = t0, t1
        self._low, self._high = min(t0, t1), max(t0, t1)
        self._length = self._high - self._low
        self.seed = int(seed)
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.levy_area = bool(levy_area)
        self.depth = 24 if depth is None else int(depth)
        if not 1 <= self.depth <= 52:
            raise ValueError(f"depth must be in [1, 52], got {self.depth}")
        self._n_elements = math.prod(self.shape)
        self.sample_offset = int(sample_offset)
        self._first_element = self.sample_offset * (self._n_elements // self.shape[0])
        if self.sample_offset < 0:
            raise ValueError(f"sample_offset must be >= 0, got {self.sample_offset}")
        if self._first_element + self._n_elements > 1 << 31:
            raise ValueError(
                f"sample_offset={self.sample_offset} with shape {self.shape} needs global element "
                f"indices up to {self._first_element + self._n_elements - 1}, beyond 2**31 - 1; "
                "use a smaller sample_offset (or another seed for far-away batches)")
        self._acc_dtype = _accumulation_dtype(self.device)
        self._tolerance = 1e-9 * self._length + 1e-12 * max(abs(t0), abs(t1))
        self._level_cache: dict[torch.device, tuple] = {}
        self._elements: torch.Tensor | None = None

    def __repr__(self) -> str:
        return (f"BrownianTree(t0={self.t0}, t1={self.t1}, shape={self.shape}, seed={self.seed}, "
                f"dtype={self.dtype}, depth={self.depth}, sample_offset={self.sample_offset})")

    # -- public API ----------------------------------------------------------------------------

    def __call__(self, ta, tb) -> torch.Tensor:
        """``W(tb) - W(ta)`` for scalar times (floats or 0-d tensors), shape ``self.shape``."""
        ts = torch.stack([torch.as_tensor(ta, dtype=torch.float64).reshape(()),
                          torch.as_tensor(tb, dtype=torch.float64).reshape(())])
        return self.increments(ts)[0][0]

    def increments(self, ts: torch.Tensor, levy_area: bool = False) -> Increments:
        """Increments (and Lévy areas) over consecutive intervals of ``ts``; see the module doc.

        ``ts``: 1-D, ``k + 1`` monotone times in ``[t0, t1]``. Returns ``dW`` of shape
        ``(k, *shape)`` and ``H`` of the same shape (or None).
        """
        index = self._snap(_as_times(ts, self.device))  # (P,)
        with _serial(self.device, self._n_elements):
            values = self._path(index, self._element_ids(), levy_area)  # (R, P, n)
        return self._finish(values, index, levy_area, self.shape)

    def increments_per_sample(self, ta: torch.Tensor, tb: torch.Tensor) -> Increments:
        """One interval per sample: sample ``b`` gets its increment over ``[ta[b], tb[b]]``.

        ``ta``, ``tb``: shape ``(batch,)`` with ``batch == shape[0]``. Returns ``(dW, H)`` of shape
        ``self.shape``; each sample's values equal those a full-batch :meth:`increments` query over
        the same interval gives for that sample (element indices are global). ``H`` is always
        returned (computing it is cheap here).
        """
        batch = self.shape[0]
        ta = torch.as_tensor(ta, device=self.device).reshape(-1)
        tb = torch.as_tensor(tb, device=self.device).reshape(-1)
        if ta.shape[0] != batch or tb.shape[0] != batch:
            raise ValueError(f"ta and tb must have shape ({batch},) (shape[0] of the tree), got "
                             f"{tuple(ta.shape)} and {tuple(tb.shape)}")
        index = self._snap(torch.stack((ta, tb), dim=1).reshape(-1)).reshape(batch, 2)
        per_sample = self._n_elements // batch
        elements = self._element_ids().reshape(batch, 1, per_sample)
        # On the CPU, chunks of samples whose coefficients and normals stay in cache (the work
        # per sample is O(depth) arrays; unchunked, large batches run at memory speed).
        chunk = batch
        if self.device.type == "cpu":
            chunk = max(1, _NORMALS_PER_BLOCK // (4 * (self.depth + 1) * per_sample))
        with _serial(self.device, self._n_elements):
            if chunk >= batch:
                values = self._path(index, elements, True)  # (2, batch, 2, per_sample)
            else:
                values = torch.empty((2, batch, 2, per_sample), dtype=self._acc_dtype)
                for start in range(0, batch, chunk):
                    values[:, start:start + chunk] = self._path(
                        index[start:start + chunk], elements[start:start + chunk], True)
        dW, H = self._finish(values.permute(0, 2, 1, 3), index.T, True, (batch, per_sample))
        return dW[0].reshape(self.shape), H[0].reshape(self.shape)

    # -- internals -----------------------------------------------------------------------------

    def _element_ids(self) -> torch.Tensor:
        if self._elements is None:
            self._elements = torch.arange(self._first_element, self._first_element + self._n_elements,
                                          device=self.device, dtype=torch.int32)
        return self._elements

    def _snap(self, ts: torch.Tensor) -> torch.Tensor:
        """Times -> int64 indices on the dyadic grid of depth L (validated against the interval)."""
        position = (ts.to(torch.float64) - self._low) / self._length
        slack = self._tolerance / self._length
        if bool(((position < -slack) | (position > 1.0 + slack) | position.isnan()).any()):
            bad = ts[(position < -slack) | (position > 1.0 + slack) | position.isnan()]
            raise ValueError(f"query times {bad.tolist()[:5]} lie outside the BrownianTree interval "
                             f"[{self._low}, {self._high}]")
        scale = float(1 << self.depth)
        return torch.round(position.clamp(0.0, 1.0) * scale).to(torch.int64)

    def _levels(self):
        """Per-level constants (cached per device): shifts, masks, sqrt(h), h*sqrt(h)."""
        cached = self._level_cache.get(self.device)
        if cached is None:
            depth = self.depth
            level = torch.arange(depth, device=self.device, dtype=torch.int64)
            shift = depth - level
            mask = (torch.ones_like(shift) << shift) - 1
            h = self._length * torch.pow(2.0, -level.to(torch.float64)).to(self._acc_dtype)
            cached = (level, shift, mask, h.sqrt(), h * h.sqrt(), float(1 << depth))
            self._level_cache[self.device] = cached
        return cached

    def _path(self, index: torch.Tensor, elements: torch.Tensor, with_integral: bool) -> torch.Tensor:
        """``W(t)`` (and ``K(t)``) at grid indices ``index`` of shape ``S``.

        ``elements`` (global element ids) broadcasts as ``(*S, n)``. Returns ``(R, *S, n)``,
        R = 2 with K else 1.
        """
        level, shift, mask, sqrt_h, h_sqrt_h, scale = self._levels()
        acc = self._acc_dtype
        depth = self.depth
        rows = 2 if with_integral else 1
        idx = index[..., None]  # (*S, 1)
        offset = idx & mask  # position of t inside its level-l node, in grid units
        # Heap id of the node containing t; 0 (the root's id, coefficient 0) where t is the node's
        # left end (the node's innovation does not move W(t) there). Outputs are written into
        # preallocated (*S, L+1) keys and (*S, R, 2, L+1) coefficients (row r, normal, node):
        # with one row per sample (per-sample queries) concatenating and stacking cost more than
        # the arithmetic.
        keys = torch.zeros((*index.shape, depth + 1), dtype=torch.int64, device=index.device)
        keys[..., :depth] = (idx >> shift) + (torch.ones_like(level) << level)
        keys[..., :depth].masked_fill_(offset == 0, 0)
        coef = torch.empty((*index.shape, rows, 2, depth + 1), dtype=acc, device=index.device)
        y = offset.to(acc) / (mask + 1).to(acc)  # in [0, 1)
        left = y < 0.5
        x = torch.where(left, 2.0 * y, 2.0 * y - 1.0)
        x1 = x * (1.0 - x)
        half_root3 = 0.5 * math.sqrt(3.0)
        g1 = torch.where(left, 0.25 * x, 0.25 * (1.0 - x)) - 0.75 * x1
        g2 = torch.where(left, half_root3 * x1, -half_root3 * x1)
        root_x = index.to(acc) / scale  # (*S,)
        root_T = self._length
        torch.mul(g1, sqrt_h, out=coef[..., 0, 0, :depth])
        torch.mul(g2, sqrt_h, out=coef[..., 0, 1, :depth])
        torch.mul(root_x, math.sqrt(root_T), out=coef[..., 0, 0, depth])
        torch.mul(6.0 * root_x * (1.0 - root_x), math.sqrt(root_T / 12.0), out=coef[..., 0, 1, depth])
        if with_integral:
            x2 = x * x
            f1 = torch.where(left, -x * x1, (1.0 - x) * x1) * 0.125
            f2 = torch.where(left, x2 / 2.0 - x2 * x / 3.0, 1.0 / 6.0 - x2 / 2.0 + x2 * x / 3.0)
            f2 = f2 * (0.5 * half_root3)
            rx2 = root_x * root_x
            torch.mul(f1, h_sqrt_h, out=coef[..., 1, 0, :depth])
            torch.mul(f2, h_sqrt_h, out=coef[..., 1, 1, :depth])
            torch.mul(rx2 / 2.0 * root_T, math.sqrt(root_T), out=coef[..., 1, 0, depth])
            torch.mul((3.0 * rx2 - 2.0 * rx2 * root_x) * root_T, math.sqrt(root_T / 12.0),
                      out=coef[..., 1, 1, depth])
        # (*S, R, 2L+2), node-major (index 2 * node + normal) like the normals below
        coef = coef.transpose(-1, -2).flatten(-2)
        return self._contract(coef, keys, elements).movedim(-2, 0)

    def _contract(self, coef: torch.Tensor, keys: torch.Tensor, elements: torch.Tensor) -> torch.Tensor:
        """``sum_j coef[..., r, j] Z_j[e]`` over the nodes' normals: (*S, R, 2L+2) -> (*S, R, n).

        ``keys``: (*S, L+1) node ids; ``elements`` broadcasts as (*S, n).
        """
        acc = self._acc_dtype
        if keys.device.type == "cpu" and elements.dim() == 3:
            return self._contract_per_sample(coef, keys, elements)
        if keys.device.type != "cpu" or elements.dim() != 1:
            normals = counter_normal(self.seed, keys, elements[..., None, :], torch.float32)
            return torch.matmul(coef, normals.to(acc).flatten(-3, -2))
        # CPU, one set of elements for all points (S = (P,)). Nodes shared by several query points
        # (the top levels) are generated once: in level-major order the node ids of monotone
        # points are monotone within a level, so unique_consecutive (no sort) finds the repeats.
        # Work is cut into blocks of < 32768 elements, PyTorch's grain for intra-op parallelism:
        # at this size threads cost more than they give, and much more on a loaded machine.
        n = elements.shape[0]
        level_major = keys.T
        unique, inverse = torch.unique_consecutive(level_major.reshape(-1), return_inverse=True)
        words = _key_words(self.seed, unique)
        table = torch.empty((unique.shape[0], 2, n), dtype=acc)
        per_block = max(1, _SERIAL_ELEMENTS // (2 * n))
        for start in range(0, unique.shape[0], per_block):
            table[start:start + per_block] = _normals_from_words(
                words[start:start + per_block], elements, torch.float32)
        inverse = inverse.reshape(level_major.shape).T  # (P, L+1)
        points, width = coef.shape[0], coef.shape[-1]
        out = torch.empty((points, coef.shape[1], n), dtype=acc)
        per_block = max(1, _SERIAL_ELEMENTS // (width * n))
        for start in range(0, points, per_block):
            block = inverse[start:start + per_block]
            normals = table.index_select(0, block.reshape(-1)).view(block.shape[0], width, n)
            torch.matmul(coef[start:start + per_block], normals, out=out[start:start + per_block])
        return out

    def _contract_per_sample(self, coef: torch.Tensor, keys: torch.Tensor,
                             elements: torch.Tensor) -> torch.Tensor:
        """CPU :meth:`_contract` for per-sample points: ``coef`` (B, P, R, 2L+2), ``keys`` (B, P, L+1),
        ``elements`` (B, 1, n) -> (B, P, R, n).

        The same normals as :func:`counter_normal` (same hash, same float32 Box--Muller), laid out
        with the (sample, point, node) axis innermost: with a few elements per sample the
        ``(..., 2, n)`` layout leaves rows of ``n`` values that the vectorised kernels cannot use
        (measured 8x slower for ``n = 2``). Blocks of about 2**16 normals keep the work in cache.
        """
        batch, points, nodes = keys.shape
        n = elements.shape[-1]
        words = _key_words_planar(self.seed, keys).view(2, batch, 1, points * nodes)  # (2, B, 1, M)
        elements = elements.reshape(batch, n)
        out = torch.empty((batch, points, coef.shape[2], n), dtype=self._acc_dtype)
        per_node = 2 * points * nodes  # normals per element per sample
        if n * per_node >= _NORMALS_PER_BLOCK:
            samples_per_block, elements_per_block = 1, max(1, _NORMALS_PER_BLOCK // per_node)
        else:
            samples_per_block, elements_per_block = _NORMALS_PER_BLOCK // (n * per_node), n
        for b0 in range(0, batch, samples_per_block):
            b1 = min(batch, b0 + samples_per_block)
            block_words = words[:, b0:b1].transpose(1, 2)  # (2, 1, b, M)
            block_coef = coef[b0:b1].flatten(0, 1)  # (b P, R, 2L+2)
            for e0 in range(0, n, elements_per_block):
                e1 = min(n, e0 + elements_per_block)
                ids = elements[b0:b1, e0:e1].T[None, :, :, None]  # (1, e, b, 1)
                bits = _hash32_(block_words ^ ids)  # (2, e, b, M)
                uniform = (bits >> 8).bitwise_and_(0xFFFFFF).to(torch.float32).add_(0.5)
                uniform.mul_(2.0 ** -24)
                radius = uniform[0].log().mul_(-2.0).sqrt_()
                angle = uniform[1].mul_(_TWO_PI)
                normals = torch.stack((angle.cos().mul_(radius), angle.sin_().mul_(radius)))
                # (2, e, b, P, L+1) -> (b P, 2L+2, e), the layout of the generic path
                normals = normals.view(2, e1 - e0, b1 - b0, points, nodes).permute(2, 3, 4, 0, 1)
                normals = normals.to(self._acc_dtype).reshape((b1 - b0) * points, 2 * nodes, e1 - e0)
                out[b0:b1, :, :, e0:e1] = torch.matmul(block_coef, normals).view(
                    b1 - b0, points, -1, e1 - e0)
        return out

    def _finish(self, values: torch.Tensor, index: torch.Tensor, levy_area: bool,
                shape: tuple[int, ...]) -> Increments:
        """Point values -> interval increments. ``values``: (R, P, *rest, n), ``index``: (P, *rest)."""
        w = values[0]
        dW = (w[1:] - w[:-1]).to(self.dtype).reshape(-1, *shape)
        if not levy_area:
            return dW, None
        k = values[1]
        forward = (index[1:] >= index[:-1])[..., None]
        # a = the left end of each interval, b = its right end, whatever the query direction.
        w_a = torch.where(forward, w[:-1], w[1:])
        w_ab = torch.where(forward, w[1:] - w[:-1], w[:-1] - w[1:])
        k_ab = torch.where(forward, k[1:] - k[:-1], k[:-1] - k[1:])
        steps = (index[1:] - index[:-1]).abs()[..., None]
        h = steps.to(w.dtype) * (self._length / float(1 << self.depth))
        safe_h = torch.where(steps == 0, 1.0, h)
        H = torch.where(steps == 0, 0.0, (k_ab - h * w_a) / safe_h - 0.5 * w_ab)
        return dW, H.to(self.dtype).reshape(-1, *shape)


# ---------------------------------------------------------------------------------------------
# Fresh-noise sources (no replay)
# ---------------------------------------------------------------------------------------------

class GeneratorNoise:
    r"""Fresh Gaussian increments from a ``torch.Generator``, for fixed grids (no replay).

    ``increments(ts, levy_area)`` draws, with one ``torch.randn`` call per chunk,
    :math:`dW = \sqrt{|\Delta t|} N` and, if asked, an independent :math:`H = \sqrt{|\Delta t|/12} N'`.
    Querying the same interval twice gives different values: this is not a path.
    """

    def __init__(self, shape: Sequence[int], generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None):
        self.shape = _check_shape(shape)
        self.generator = generator
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else (
            generator.device if generator is not None else torch.device("cpu"))

    def increments(self, ts: torch.Tensor, levy_area: bool = False) -> Increments:
        ts = _as_times(ts, self.device).to(self.dtype)
        dt = (ts[1:] - ts[:-1]).abs().reshape(-1, *([1] * len(self.shape)))
        count = ts.shape[0] - 1
        normals = torch.randn((2 if levy_area else 1, count, *self.shape), generator=self.generator,
                              dtype=self.dtype, device=self.device)
        dW = dt.sqrt() * normals[0]
        return dW, (dt / 12.0).sqrt() * normals[1] if levy_area else None


class PerSampleNoise:
    r"""Fresh Gaussian increments where sample ``b``'s normals depend only on
    ``(seed, b + sample_offset, step, element)`` (via :func:`counter_normal`).

    A diffusion sampler therefore produces the same sample ``i`` whatever the batch size or the
    batch it sits in (``sample_offset`` places a batch inside a larger run). An internal step
    counter advances by ``k`` with each ``increments`` call of ``k`` intervals, so a solve must
    query each step exactly once, in order. Like :class:`GeneratorNoise` it is **not a path** (no
    replay, no consistency between step sizes): it exists for reproducibility only.

    ``dW = sqrt(|dt|) Z_1`` and, if asked, ``H = sqrt(|dt|/12) Z_2`` (independent).
    ``shape[0]`` is the batch.
    """

    def __init__(self, shape: Sequence[int], seed: int = 0, sample_offset: int = 0,
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None):
        self.shape = _check_shape(shape)
        self.seed = int(seed)
        self.sample_offset = int(sample_offset)
        if self.sample_offset < 0:
            raise ValueError(f"sample_offset must be >= 0, got {self.sample_offset}")
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.step = 0
        self._normal_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    def reset(self, step: int = 0) -> None:
        """Set the step counter (``reset()`` replays the noise from the first step)."""
        self.step = int(step)

    def increments(self, ts: torch.Tensor, levy_area: bool = False) -> Increments:
        ts = _as_times(ts, self.device).to(self.dtype)
        count = ts.shape[0] - 1
        batch = self.shape[0]
        per_sample = math.prod(self.shape[1:])
        steps = torch.arange(self.step, self.step + count, device=self.device, dtype=torch.int64)
        samples = torch.arange(batch, device=self.device, dtype=torch.int64) + self.sample_offset
        keys = (steps[:, None] << 32) + samples[None, :]  # (k, batch)
        with _serial(self.device, batch * per_sample):
            normals = counter_normal(self.seed, keys, per_sample, self._normal_dtype).to(self.dtype)
        self.step += count
        dt = (ts[1:] - ts[:-1]).abs().reshape(-1, *([1] * len(self.shape)))
        dW = dt.sqrt() * normals[:, :, 0].reshape(count, *self.shape)
        if not levy_area:
            return dW, None
        return dW, (dt / 12.0).sqrt() * normals[:, :, 1].reshape(count, *self.shape)
