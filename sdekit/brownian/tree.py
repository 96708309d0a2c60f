r"""The virtual Brownian tree: a replayable Brownian path with its space-time Lévy area."""
from __future__ import annotations

import math
import threading
import warnings
from typing import Sequence

import torch

from ..validation import positive_int
from .generator import _elementwise_normals, _paired_normals
from .source import Increments, accumulation_dtype, as_times, check_shape, serial

# Node normals per piece of generation (float64 after the cast: 32 MiB) and output values (or,
# off the CPU, gathered normals per block of points) per piece (8 MiB): large enough that
# PyTorch's per-op overhead is a few percent of the work, small enough for memory at image-sized
# states. Off the CPU points are contracted in blocks of 32, the chunk of sdekit.solve (a point's
# value does not depend on its block).
_TABLE_PER_PIECE = 1 << 22
_VALUES_PER_PIECE = 1 << 20
_POINTS_PER_BLOCK = 32
# Increments per query of a fixed grid walked in chunks (BrownianTree.grid_block: 8 MiB in float64)
_GRID_BLOCK_VALUES = 1 << 20
# Per-thread buffers for the temporaries of a query (see _buffer), at most 8 MiB each in float64
_SCRATCH_PER_SLOT = 1 << 20
_scratch = threading.local()


def _check_align(align, depth: int) -> int | None:
    """``align`` as a positive int whose power-of-two ceiling the depth resolves (or None)."""
    if align is None:
        return None
    align = positive_int(align, "align (the number of equal steps of a grid to make dyadic)")
    if (align - 1).bit_length() > depth:
        raise ValueError(f"align={align} needs depth >= {(align - 1).bit_length()} (2**depth dyadic "
                         f"steps at least {align}); got depth={depth}")
    return align


def _buffer(slot: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor for a query's temporaries. On the CPU, up to
    ``_SCRATCH_PER_SLOT`` elements, a view of a per-thread buffer kept between queries (valid until
    the slot's next use): a few MiB of fresh memory are page-faulted in at every call otherwise
    (the allocator returns freed blocks of that size to the system), which at (64, 2) cost a third
    of a whole-grid query. Else a fresh tensor."""
    numel = math.prod(shape)
    if device.type != "cpu" or numel > _SCRATCH_PER_SLOT:
        return torch.empty(shape, dtype=dtype, device=device)
    buffers = _scratch.__dict__
    buffer = buffers.get(slot)
    if buffer is None or buffer.dtype != dtype or buffer.numel() < numel:
        with torch.inference_mode(False):   # a normal tensor: writable in and out of inference mode
            buffer = buffers[slot] = torch.empty(numel, dtype=dtype)
    return buffer[:numel].view(shape)


def _range_normals(seed: int, keys: torch.Tensor, start: int, count: int, dtype: torch.dtype) -> torch.Tensor:
    """The node normals of the elements ``start .. start + count - 1`` in the planar layout:
    ``keys`` (U,) -> (U, 2, 2 Q) (Q pairs from the pair of ``start``), indexed
    ``[node, normal, parity * Q + j]``, element ``2 (start // 2 + j) + parity``; see
    :func:`_interleave_into`. Generated in float32, returned in ``dtype``, in the ``"table"``
    buffer (valid until the next call in the thread)."""
    first_pair = start >> 1
    n_pairs = ((start & 1) + count + 1) // 2
    pairs = torch.arange(first_pair, first_pair + n_pairs, dtype=torch.int64, device=keys.device)[None]
    # Box--Muller in float32, its products cast on writing into the table
    table = _buffer("table", (keys.shape[0], 2, 2, n_pairs), dtype, keys.device)
    _paired_normals(seed, keys, pairs, torch.float32, planar=True, out=table)
    return table.view(keys.shape[0], 2, 2 * n_pairs)


def _interleave_into(dest: torch.Tensor, values: torch.Tensor, start: int) -> None:
    """Planar element order (as :func:`_range_normals`) on the last axis of ``values`` -> the
    elements ``start .. start + count - 1`` in order, written into ``dest`` (last axis ``count``)."""
    count, n_pairs = dest.shape[-1], values.shape[-1] // 2
    planar = values.unflatten(-1, (2, n_pairs)).transpose(-1, -2)  # (..., pair, parity)
    if start & 1 == 0 and count == 2 * n_pairs:
        dest.unflatten(-1, (n_pairs, 2)).copy_(planar)
    else:
        skip = start & 1
        dest.copy_(planar.flatten(-2)[..., skip:skip + count])


class BrownianTree:
    r"""A virtual Brownian tree on ``[t0, t1]`` carrying the space-time Lévy area.

    The path is a deterministic function of ``(seed, t)``: querying a fine grid and then a coarse
    one gives the same values as the reverse order, so one path can be solved at many step sizes.
    Memory is O(1) between queries, but for the point values of the last per-sample query (see
    :meth:`increments_per_sample`).

    Args:
        t0, t1: the interval (``t1 < t0`` is allowed; the tree lives on the sorted interval and
            ``W`` is 0 at its left end).
        shape: the shape of ``W`` (a non-empty tuple of positive ints); ``shape[0]`` is the batch
            for :meth:`increments_per_sample`.
        seed: any Python int (see :func:`sdekit.brownian.counter_normal`).
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
        align: a number of steps ``m`` (default: none): the tree's dyadic grid is laid over
            ``[lo, lo + T 2**ceil(log2 m) / m]`` (``lo = min(t0, t1)``), past the interval's upper
            end, so that the uniform grid of ``m`` steps on ``[t0, t1]`` (and those of ``m 2**j``
            steps, and of ``m / 2**j`` when that divides) are dyadic points of it: a whole-grid
            query of such a grid costs about one node per step instead of ``L - log2(m)`` (see
            "Grid queries"). The path on ``[t0, t1]`` is still a Brownian motion with its Lévy
            area, a deterministic function of ``(seed, align, t)``, but another path than the
            unaligned tree's of the same seed; queries stay inside ``[t0, t1]``. The time
            tolerance becomes ``T 2**ceil(log2 m) / (m 2**(L+1))``. Needs ``2**ceil(log2 m) <=
            2**L``.

    Construction (Foster, Lyons & Oberhauser 2020, the (W, H) bridge). The root carries
    :math:`W_{t_0,t_1} = \sqrt{T} Z` and :math:`H = \sqrt{T/12} Z'`. A node ``[s, u]`` of length
    ``h`` with known :math:`(W_{s,u}, H_{s,u})` splits at its midpoint ``m`` with two fresh normals
    (Var of the bridge midpoint h/4, Cov(midpoint, H) = h/8, Var H = h/12):

    .. math::
        W_{s,m} &= \tfrac12 W_{s,u} + \tfrac32 H_{s,u} + \tfrac{\sqrt h}{4} Z_1, \qquad
        H_{s,m} = \tfrac14 H_{s,u} - \tfrac{\sqrt h}{8} Z_1 + \sqrt{h/48}\, Z_2, \\
        W_{m,u} &= W_{s,u} - W_{s,m}, \qquad
        H_{m,u} = 2 H_{s,u} + \tfrac12 W_{s,u} - W_{s,m} - H_{s,m}.

    The normals of a node are :func:`~sdekit.brownian.counter_normal` of ``(seed, node id,
    element)`` (heap ids: level ``l``, position ``j`` -> ``2**l + j``; the root's own pair has id 0).

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

    Grid queries. Only the nodes with ``t`` strictly inside move ``W(t)``: for the grid index
    ``j`` of ``t`` those are the top ``L - tz(j)`` levels (``tz``: trailing zero bits), so a query
    evaluates levels down to the deepest one any of its points needs, and, on the CPU, generates
    each node that several points share once (the points of a monotone grid are monotone within a
    level, so the repeats are consecutive). A whole grid queried in one call thus costs the nodes
    of the tree it spans: about one node per step on a dyadic grid of ``2**k`` steps (one per step
    at the levels above the step, none below), and ``L - log2(k)`` per step on other grids,
    whose points need every level (their grid indices are odd), unless the tree is built with
    ``align`` for that grid. Each point then sums its own
    nodes in a fixed order, so a point's value does not depend on the other points of the query:
    on the CPU as one row of a sparse matrix (the points' coefficients) times the table of node
    normals, elsewhere as one small matrix product per point.

    Precision and speed: the node normals are generated in float32 (24-bit uniforms, so
    ``|Z| <= 5.9``: the law is Brownian to float32 resolution, for every ``dtype``), while ``W`` and
    ``K`` are accumulated in float64 (float32 on MPS) and cast to ``dtype`` at the end, so ``H``
    keeps its accuracy (it is a difference of ``K`` values divided by ``h``) even for float32
    trees. On CUDA the query skips the sharing (which needs data-dependent shapes) and evaluates
    all ``L + 1`` levels; validation of the query times needs one host sync per call there.
    """

    def __init__(self, t0: float, t1: float, shape: Sequence[int], seed: int = 0,
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None,
                 levy_area: bool = False, depth: int | None = None, sample_offset: int = 0,
                 align: int | None = None):
        self.shape = check_shape(shape)
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
        # the span of the dyadic grid: the interval itself, or stretched so that ``align`` equal
        # steps of the interval are 2**ceil(log2 align) equal dyadic steps of the span
        self.align = _check_align(align, self.depth)
        self._span = self._length if self.align is None else (
            self._length * (1 << (self.align - 1).bit_length()) / self.align)
        self._n_elements = math.prod(self.shape)
        self.sample_offset = int(sample_offset)
        self._per_sample = self._n_elements // self.shape[0]
        self._first_element = self.sample_offset * self._per_sample
        if self.sample_offset < 0:
            raise ValueError(f"sample_offset must be >= 0, got {self.sample_offset}")
        if self._first_element + self._n_elements > 1 << 31:
            raise ValueError(
                f"sample_offset={self.sample_offset} with shape {self.shape} needs global element "
                f"indices up to {self._first_element + self._n_elements - 1}, beyond 2**31 - 1; "
                "use a smaller sample_offset (or another seed for far-away batches)")
        self._acc_dtype = accumulation_dtype(self.device)
        self._tolerance = 1e-9 * self._length + 1e-12 * max(abs(t0), abs(t1))
        self._level_cache: dict[torch.device, tuple] = {}
        self._last_per_sample = None   # (index, values) of the last per-sample query (CPU)

    def __repr__(self) -> str:
        align = "" if self.align is None else f", align={self.align}"
        return (f"BrownianTree(t0={self.t0}, t1={self.t1}, shape={self.shape}, seed={self.seed}, "
                f"dtype={self.dtype}, depth={self.depth}, sample_offset={self.sample_offset}{align})")

    # -- public API ----------------------------------------------------------------------------

    def grid_block(self, chunk: int) -> int:
        """Grid steps worth querying in one call when a solver walks a fixed grid ``chunk`` steps
        at a time: the largest multiple of ``chunk`` whose increments take at most
        ``_GRID_BLOCK_VALUES`` values (2**20, 8 MiB in float64; at least ``chunk`` steps). One
        query of many chunks generates the nodes they share once (see "Grid queries"), and the
        values do not depend on how a grid is split into queries."""
        chunk = positive_int(chunk, "chunk (grid steps a solver takes between noise checks)")
        return chunk * max(1, _GRID_BLOCK_VALUES // (chunk * self._n_elements))

    def __call__(self, ta, tb) -> torch.Tensor:
        """``W(tb) - W(ta)`` for scalar times (floats or 0-d tensors), shape ``self.shape``."""
        ts = torch.stack([torch.as_tensor(ta, dtype=torch.float64).reshape(()),
                          torch.as_tensor(tb, dtype=torch.float64).reshape(())])
        return self.increments(ts)[0][0]

    def increments(self, ts: torch.Tensor, levy_area: bool = False) -> Increments:
        """Increments (and Lévy areas) over consecutive intervals of ``ts``; see the module doc.

        ``ts``: 1-D, ``k + 1`` monotone times in ``[t0, t1]``. Returns ``dW`` of shape
        ``(k, *shape)`` and ``H`` of the same shape (or None). One call with a whole grid costs
        less per step than the same grid in several calls (shared nodes are generated once).
        """
        index = self._snap(as_times(ts, self.device))  # (P,)
        with serial(self.device, self._n_elements):
            values = self._path(index, levy_area)  # (R, P, n)
        return self._finish(values, index, levy_area, self.shape)

    def increments_per_sample(self, ta: torch.Tensor, tb: torch.Tensor) -> Increments:
        """One interval per sample: sample ``b`` gets its increment over ``[ta[b], tb[b]]``.

        ``ta``, ``tb``: shape ``(batch,)`` with ``batch == shape[0]``. Returns ``(dW, H)`` of shape
        ``self.shape``; each sample's values equal those a full-batch :meth:`increments` query over
        the same interval gives for that sample (element indices are global). ``H`` is always
        returned (computing it is cheap here).

        On the CPU the tree keeps the point values of the last such query (two per sample): a
        point that repeats one of them (an adaptive step starting where the last one ended, or
        where it began, after a rejection) is not computed again, so an adaptive loop pays for
        about one new point per sample and step. The values are the same either way.
        """
        batch = self.shape[0]
        ta = torch.as_tensor(ta, device=self.device).reshape(-1)
        tb = torch.as_tensor(tb, device=self.device).reshape(-1)
        if ta.shape[0] != batch or tb.shape[0] != batch:
            raise ValueError(f"ta and tb must have shape ({batch},) (shape[0] of the tree), got "
                             f"{tuple(ta.shape)} and {tuple(tb.shape)}")
        index = self._snap(torch.stack((ta, tb), dim=1).reshape(-1)).reshape(batch, 2)
        m = self._per_sample
        values = torch.empty((batch, 2, 2, m), dtype=self._acc_dtype, device=self.device)  # [b, point, W/K]
        last = self._last_per_sample
        if last is None:   # every point (no host sync)
            samples = torch.arange(batch, device=self.device).repeat_interleave(2)
            points = torch.arange(2, device=self.device).repeat(batch)
        else:   # an adaptive loop's steps start where the last query ended (or began, if rejected)
            last_index, last_values = last
            need = torch.ones((batch, 2), dtype=torch.bool)
            for q in (1, 0):
                for p in (0, 1):
                    match = need[:, p] & (index[:, p] == last_index[:, q])
                    values[:, p][match] = last_values[:, q][match]
                    need[:, p] &= ~match
            samples, points = need.nonzero(as_tuple=True)
        with serial(self.device, self._n_elements):
            values[samples, points] = self._points_per_sample(samples, index[samples, points])
        if self.device.type == "cpu":
            self._last_per_sample = (index, values)
        dW, H = self._finish(values.permute(2, 1, 0, 3), index.T, True, (batch, m))
        return dW[0].reshape(self.shape), H[0].reshape(self.shape)

    # -- internals -----------------------------------------------------------------------------

    def _snap(self, ts: torch.Tensor) -> torch.Tensor:
        """Times -> int64 indices on the dyadic grid of depth L (validated against the interval)."""
        position = (ts.to(torch.float64) - self._low) / self._span
        slack, top = self._tolerance / self._span, self._length / self._span
        outside = (position < -slack) | (position > top + slack) | position.isnan()
        if bool(outside.any()):
            bad = ts[outside]
            raise ValueError(f"query times {bad.tolist()[:5]} lie outside the BrownianTree interval "
                             f"[{self._low}, {self._high}]")
        scale = float(1 << self.depth)
        return torch.round(position.clamp(0.0, top) * scale).to(torch.int64)

    def _levels(self):
        """Per-level constants (cached per device): shifts, half node lengths and heap ids of the
        first node (in grid units), the scale from grid units to a position in a half node, and
        sqrt(h), h*sqrt(h)."""
        cached = self._level_cache.get(self.device)
        if cached is None:
            level = torch.arange(self.depth, device=self.device, dtype=torch.int64)
            shift = self.depth - level
            one = torch.ones_like(shift)
            h = self._span * torch.pow(2.0, -level.to(torch.float64)).to(self._acc_dtype)
            scale = torch.pow(2.0, (1 - shift).to(torch.float64)).to(self._acc_dtype)
            cached = (shift, one << (shift - 1), one << level, scale, h.sqrt(), h * h.sqrt())
            self._level_cache[self.device] = cached
        return cached

    def _width(self, index: torch.Tensor) -> int:
        """The number of levels the points ``index`` need: ``L - min tz(j)`` over ``j != 0`` (the
        full depth on CUDA, where reading it back would cost a host sync)."""
        if self.device.type != "cpu":
            return self.depth
        nonzero = index[index != 0]
        if nonzero.numel() == 0:
            return 0
        lowest_bit = int(torch.bitwise_and(nonzero, -nonzero).min())  # 2**tz of the least aligned
        return self.depth - (lowest_bit.bit_length() - 1)

    def _coefficients(self, index: torch.Tensor, width: int, with_integral: bool):
        """Node ids and coefficients of ``W(t)`` (and ``K(t)``) at the grid indices ``index`` (S).

        Returns ``keys`` (*S, width + 1) (the root, id 0, then levels ``0..width-1``) and ``coef``
        (*S, R, 2 (width + 1)) in float64, node-major (index ``2 * node + normal``). The nodes that
        move a point are a prefix (the root and its top levels): the others have coefficient 0
        (a point at a node's left end), so a wider query only appends zeros to its coefficients.
        """
        shift, half, first, scale, sqrt_h, h_sqrt_h = (constant[:width] for constant in self._levels())
        acc = self._acc_dtype
        rows = 2 if with_integral else 1
        idx = index[..., None]  # (*S, 1)
        keys = torch.zeros((*index.shape, width + 1), dtype=torch.int64, device=index.device)
        torch.add(idx >> shift, first, out=keys[..., 1:])
        offset = idx & (2 * half - 1)  # position of t inside its level-l node, in grid units
        left = offset < half
        x = (offset & (half - 1)).to(acc).mul_(scale)  # position in its half, in [0, 1) (exact)
        one_minus_x = 1.0 - x
        x1 = x * one_minus_x
        half_root3 = 0.5 * math.sqrt(3.0)
        coef = torch.empty((*index.shape, rows, width + 1, 2), dtype=acc, device=index.device)
        g1 = torch.where(left, x, one_minus_x).mul_(0.25).sub_(x1 * 0.75)
        g2 = torch.where(left, x1, -x1).mul_(half_root3)
        root_x = index.to(acc) / float(1 << self.depth)  # (*S,)
        root_T = self._span
        torch.mul(root_x, math.sqrt(root_T), out=coef[..., 0, 0, 0])
        torch.mul(6.0 * root_x * (1.0 - root_x), math.sqrt(root_T / 12.0), out=coef[..., 0, 0, 1])
        torch.mul(g1, sqrt_h, out=coef[..., 0, 1:, 0])
        torch.mul(g2, sqrt_h, out=coef[..., 0, 1:, 1])
        if with_integral:
            x2 = x * x
            f1 = torch.where(left, -x * x1, one_minus_x * x1) * 0.125
            f2 = torch.where(left, x2 / 2.0 - x2 * x / 3.0, 1.0 / 6.0 - x2 / 2.0 + x2 * x / 3.0)
            f2 = f2 * (0.5 * half_root3)
            rx2 = root_x * root_x
            torch.mul(rx2 / 2.0 * root_T, math.sqrt(root_T), out=coef[..., 1, 0, 0])
            torch.mul((3.0 * rx2 - 2.0 * rx2 * root_x) * root_T, math.sqrt(root_T / 12.0),
                      out=coef[..., 1, 0, 1])
            torch.mul(f1, h_sqrt_h, out=coef[..., 1, 1:, 0])
            torch.mul(f2, h_sqrt_h, out=coef[..., 1, 1:, 1])
        return keys, coef.flatten(-2)

    def _path(self, index: torch.Tensor, with_integral: bool) -> torch.Tensor:
        """``W(t)`` (and ``K(t)``) at the grid indices ``index`` (P,) for all elements: (R, P, n)."""
        width = self._width(index)
        keys, coef = self._coefficients(index, width, with_integral)  # (P, w+1), (P, R, 2w+2)
        if self.device.type != "cpu":
            return self._path_dense(keys, coef)
        points, nodes = keys.shape
        rows = coef.shape[1]
        n, acc = self._n_elements, self._acc_dtype
        if not bool(index.any()):  # every point at t0
            return torch.zeros((rows, points, n), dtype=acc)
        # The nodes that move each point (level-major, a prefix of each column): those of
        # monotone points are monotone within a level, so unique_consecutive (no sort) finds the
        # nodes they share, numbered level by level. A point's other entries (coefficient 0)
        # repeat its deepest node, so that its nodes stay in increasing order.
        _, half, *_ = self._levels()
        active = torch.empty((nodes, points), dtype=torch.bool)
        torch.ne(index, 0, out=active[0])
        torch.ne(index & (2 * half[:width, None] - 1), 0, out=active[1:])
        unique, inverse = torch.unique_consecutive(keys.T[active], return_inverse=True)
        node_of = torch.zeros((nodes, points), dtype=torch.int64)
        node_of[active] = inverse
        node_of = node_of.cummax(0).values
        # The sparse (R P, 2 U) matrix of the points' coefficients: row r P + p holds point p's
        # nodes in level order (column 2 u + normal of unique node u), so each row is the
        # per-point sum in a fixed order whatever the other points of the query are.
        columns = (2 * node_of.T[:, :, None] + torch.arange(2)).reshape(-1)
        per_row = 2 * nodes
        crow = torch.arange(0, rows * points * per_row + 1, per_row, dtype=torch.int64)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            matrix = torch.sparse_csr_tensor(crow, columns.repeat(rows), coef.transpose(0, 1).reshape(-1),
                                             size=(rows * points, 2 * unique.numel()),
                                             check_invariants=False)
        out = _buffer("values", (rows, points, n), acc, self.device)
        # Elements per piece: the node table (U, 2, e) and the piece's output (R P, e) bounded.
        per_piece = max(2, min(_TABLE_PER_PIECE // (2 * unique.numel()),
                               _VALUES_PER_PIECE // (rows * points)) // 2 * 2)
        for start in range(0, n, per_piece):
            count = min(per_piece, n - start)
            table = _range_normals(self.seed, unique, self._first_element + start, count, acc)
            table = table.view(2 * unique.numel(), -1)
            piece = _buffer("product", (rows * points, table.shape[1]), acc, self.device)
            torch.mm(matrix, table, out=piece)
            _interleave_into(out[:, :, start:start + count], piece.view(rows, points, -1),
                             self._first_element + start)
        return out

    def _path_dense(self, keys: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """:meth:`_path` off the CPU: every node of every point (no sharing, which needs
        data-dependent shapes), one small matrix product per point: (R, P, n)."""
        points, nodes = keys.shape
        n, acc = self._n_elements, self._acc_dtype
        out = torch.empty((points, coef.shape[1], n), dtype=acc, device=self.device)
        # Elements per piece: the node table (U, 2, e) and one block's normals bounded.
        block = min(points, _POINTS_PER_BLOCK)
        unique = keys.reshape(-1)
        per_piece = max(2, min(_TABLE_PER_PIECE // (2 * unique.numel()),
                               _VALUES_PER_PIECE // (2 * block * nodes)) // 2 * 2)
        for start in range(0, n, per_piece):
            count = min(per_piece, n - start)
            table = _range_normals(self.seed, unique, self._first_element + start, count, acc)
            for p0 in range(0, points, block):
                p1 = min(points, p0 + block)
                normals = table[p0 * nodes:p1 * nodes]
                values = torch.bmm(coef[p0:p1], normals.view(p1 - p0, 2 * nodes, -1))
                _interleave_into(out[p0:p1, :, start:start + count], values, self._first_element + start)
        return out.movedim(1, 0)

    def _points_per_sample(self, samples: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``W`` and ``K`` at the grid indices ``index`` (K,), each on the elements of its sample
        ``samples`` (K,) only: (K, 2, per_sample) (rows W, K)."""
        width = self._width(index)
        keys, coef = self._coefficients(index, width, True)  # (K, w+1), (K, 2, 2w+2)
        count, m, nodes = index.shape[0], self._per_sample, width + 1
        acc = self._acc_dtype
        first = self._first_element
        out = torch.empty((count, 2, m), dtype=acc, device=self.device)
        # Points per piece: their (w + 1) nodes' normals stay in cache (the work per point is
        # O(depth) arrays; unchunked, large batches run at memory speed).
        per_piece = max(1, _VALUES_PER_PIECE // (4 * nodes * m))
        aligned = m % 2 == 0 and first % 2 == 0  # every sample's elements start a Philox pair
        for k0 in range(0, count, per_piece):
            k1 = min(count, k0 + per_piece)
            owners = samples[k0:k1, None]
            node_keys = keys[k0:k1].reshape(-1)  # (k (w+1),)
            if aligned:  # pairs of each sample's elements, planar: (rows, 2, 2, m/2)
                pairs = (first // 2 + owners * (m // 2)
                         + torch.arange(m // 2, dtype=torch.int64, device=self.device))
                normals = _paired_normals(self.seed, node_keys, pairs.repeat_interleave(nodes, dim=0),
                                          torch.float32, planar=True)
            else:
                elements = first + owners * m + torch.arange(m, dtype=torch.int64, device=self.device)
                normals = _elementwise_normals(self.seed, node_keys, elements.repeat_interleave(nodes, dim=0),
                                               torch.float32)
            normals = normals.to(acc).view(k1 - k0, 2 * nodes, m)
            values = torch.bmm(coef[k0:k1], normals)  # (k, 2, m)
            if aligned:
                values = values.view(-1, 2, 2, m // 2).transpose(-1, -2).reshape(-1, 2, m)
            out[k0:k1] = values
        return out

    def _finish(self, values: torch.Tensor, index: torch.Tensor, levy_area: bool,
                shape: tuple[int, ...]) -> Increments:
        """Point values -> interval increments. ``values``: (R, P, *rest, n), ``index``: (P, *rest).

        With ``dw = W(t_{i+1}) - W(t_i)``, ``dk = K(t_{i+1}) - K(t_i)``, ``h = |t_{i+1} - t_i|`` and
        ``s = sign(t_{i+1} - t_i)``, the interval's left end ``a`` is ``t_i`` (``s = 1``) or
        ``t_{i+1}`` (``s = -1``), and both cases of
        :math:`H = (K_{a,b} - h W_a) / h - W_{a,b} / 2` reduce to ``H = s dk / h - W(t_i) - dw / 2``
        (0 on empty intervals): three full-size temporaries, as large states are memory-bound.
        """
        w = values[0]
        dw = w[1:] - w[:-1]
        dW = dw.to(self.dtype).reshape(-1, *shape)
        if not levy_area:
            return dW, None
        k = values[1]
        steps = index[1:] - index[:-1]
        h = steps.abs().to(w.dtype) * (self._span / float(1 << self.depth))
        scale = torch.where(steps == 0, 0.0, torch.sign(steps).to(w.dtype) / torch.where(steps == 0, 1.0, h))
        H = (k[1:] - k[:-1]).mul_(scale[..., None]).sub_(w[:-1]).sub_(dw, alpha=0.5)
        H.masked_fill_((steps == 0)[..., None], 0.0)
        return dW, H.to(self.dtype).reshape(-1, *shape)
