r"""Counter-based random numbers: Philox4x32-10 and the standard normals built on it.

**Philox4x32-R** (Salmon, Moraes, Dror & Shaw 2011, "Parallel random numbers: as easy as 1, 2, 3",
SC'11, section 4.2; the generator behind cuRAND and PyTorch's CUDA generator) maps a 128-bit
counter :math:`c = (c_0, c_1, c_2, c_3)` and a 64-bit key :math:`k = (k_0, k_1)` (32-bit words) to
128 output bits by R rounds of

.. math::
    (c_0, c_1, c_2, c_3) &\leftarrow \big(\mathrm{hi}(M_1 c_2) \oplus c_1 \oplus k_0,\;
        \mathrm{lo}(M_1 c_2),\; \mathrm{hi}(M_0 c_0) \oplus c_3 \oplus k_1,\; \mathrm{lo}(M_0 c_0)\big), \\
    (k_0, k_1) &\leftarrow (k_0 + W_0,\; k_1 + W_1) \bmod 2^{32},

where hi/lo are the upper and lower 32 bits of the 64-bit product, :math:`M_0 = \mathtt{D2511F53}`,
:math:`M_1 = \mathtt{CD9E8D57}` (the paper's multipliers) and :math:`W_0 = \mathtt{9E3779B9}`
(the golden ratio), :math:`W_1 = \mathtt{BB67AE85}` (:math:`\sqrt 3 - 1`) are the Weyl key
increments. Each round is a bijection of the counter for a fixed key (the multipliers are odd, so
:math:`x \mapsto (\mathrm{hi}(Mx), \mathrm{lo}(Mx))` is invertible, and the rest are xors), hence the
whole map is a bijection of the 128-bit counter: **distinct counters never share an output block**.
R = 10 is the authors' recommendation (7 rounds already pass TestU01's BigCrush; 10 leave a safety
margin). :func:`philox4x32` is checked against Random123's known-answer vectors
(``tests/test_rng.py``).

Implementation: vectorised int64 torch ops, identical on CPU and CUDA, no host syncs. A 32 x 32-bit
product fits in 64 bits; as an int64 it wraps modulo :math:`2^{64}` (two's complement), which keeps
exactly the unsigned bits, and the sign extension of the arithmetic right shift is masked off. Words
that only enter the next round through an xor are left unmasked (their upper bits are never read).

**The normals** (:func:`counter_normal`). A ``(seed, key, element)`` triple becomes a Philox input::

    Philox key = (seed bits 0..31, seed bits 32..63)
    counter    = (element >> 1, key bits 32..63, key bits 0..31, seed bits 64..95)

and element ``e`` reads the output words ``(w0, w1)`` if ``e`` is even, ``(w2, w3)`` if odd (two
elements share one block, as cuRAND's ``curand_normal4`` does). The map (seed mod 2**96, key mod
2**64, element in [0, 2**33)) -> (Philox key, counter, half) is injective, so distinct triples read
distinct output words of a bijection: no two ``(key, element)`` streams of a seed are related,
whatever the keys. Seeds are taken modulo :math:`2^{96}` (two's complement for negative seeds):
every seed below :math:`2^{96}` has its own stream, including the plugin's tagged seeds
``seed + (tag << 64)`` (``seed < 2**64``, ``tag < 2**32``). The layout also puts the element on
``c0``/``c3`` and the key on ``c1``/``c2``, so the first round and the products of the second
touch only one side (``n`` or ``|keys|`` values, not ``n * |keys|``).

The two words give two uniforms and Box--Muller (Box & Muller 1958) two independent normals:
:math:`r = \sqrt{-2 \log u_1}`, :math:`Z = (r \cos 2\pi u_2, r \sin 2\pi u_2)` with
:math:`u_1 = (b_1 + \tfrac12) 2^{-B}`, :math:`u_2 = b_2 2^{-B}` from the low B bits of each word:
B = 24 for float32 (so :math:`|Z| \le 5.9`), B = 32 for float64 (:math:`|Z| \le 6.7`).
"""
from __future__ import annotations

import functools
import math
import threading

import torch

__all__ = ["counter_normal", "counter_words", "philox4x32", "seed_words"]

MASK32 = 0xFFFFFFFF
# Salmon et al. (2011), section 4.2 and Random123's philox.h
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10

_TWO_PI = 2.0 * math.pi
# Philox blocks per piece of work (6 MiB of int64 buffers at most): a piece runs about 70 torch ops,
# whose fixed cost (~4 us each on a small VM) is then a few percent of the arithmetic.
_BLOCKS_PER_PIECE = 1 << 17


def seed_words(seed: int) -> tuple[int, int, int]:
    """``(k0, k1, c3)``: the Philox key words and the counter word a seed provides (its bits 0..31,
    32..63 and 64..95; the seed is taken modulo 2**96, negative seeds in two's complement)."""
    seed = int(seed)
    return seed & MASK32, (seed >> 32) & MASK32, (seed >> 64) & MASK32


def _shape(word) -> tuple[int, ...]:
    return tuple(word.shape) if isinstance(word, torch.Tensor) else ()


def _broadcast(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """NumPy broadcasting of shapes (``torch.broadcast_shapes`` costs ~0.1 ms a call, which a
    generation call of a few thousand blocks notices)."""
    ndim = max(len(shape) for shape in shapes)
    out = [1] * ndim
    for shape in shapes:
        for axis, size in enumerate(shape, start=ndim - len(shape)):
            if size != 1:
                if out[axis] not in (1, size):
                    raise ValueError(f"shapes {shapes} do not broadcast")
                out[axis] = size
    return tuple(out)


def _xor_key(a: torch.Tensor, b, key: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """``a ^ b ^ key`` (``b`` a tensor or an int), the key xored into the smaller operand
    (broadcasting keeps it small)."""
    if not isinstance(b, torch.Tensor):
        return torch.bitwise_xor(a, b ^ key, out=out)
    small, big = (a, b) if a.numel() <= b.numel() else (b, a)
    return torch.bitwise_xor(big, small ^ key, out=out)


@functools.lru_cache(maxsize=64)
def _round_keys(k0: int, k1: int, rounds: int, device: torch.device) -> torch.Tensor:
    """The ``(rounds, 2)`` int64 tensor of every round's key ``(k0, k1)``, built once per key and
    device: on CUDA a fresh one would be a host-to-device copy at every draw (the tensor is only
    read, never written)."""
    return torch.tensor([[(k0 + i * PHILOX_W0) & MASK32, (k1 + i * PHILOX_W1) & MASK32]
                         for i in range(rounds)], dtype=torch.int64, device=device)


def _philox_rounds(c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor | int,
                   k0: int, k1: int, rounds: int = PHILOX_ROUNDS,
                   workspace: tuple[torch.Tensor, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Philox4x32-``rounds`` on broadcastable int64 word tensors (``c0``, ``c2`` in [0, 2**32);
    only the low 32 bits of ``c1``, ``c3`` are read).

    Returns ``(x, low)``, two ``(2, *shape)`` int64 tensors: ``x = (w0, w2)`` and ``low = (w1, w3)``,
    the output words in their low 32 bits (the upper bits are unspecified: mask with ``MASK32``).
    ``workspace``: three flat int64 tensors of at least ``2 * prod(shape)`` elements to compute in
    (the outputs are views of two of them); fresh ones if None.

    Rounds run on the operands' own shapes while these are smaller than the broadcast shape (the
    first round of :func:`counter_normal`'s layout), then in place on ``(2, *shape)`` buffers: the
    products are written in swapped rows, so that ``hi`` of row 0 is the ``M1 c2`` product that
    meets ``c1``, and one op serves both words.
    """
    shape = _broadcast(*(_shape(word) for word in (c0, c1, c2, c3)))
    size = 2 * math.prod(shape)
    if workspace is None:
        workspace = tuple(torch.empty(size, dtype=torch.int64, device=c0.device) for _ in range(3))
    x, new, spare = (buffer[:size].view(2, *shape) for buffer in workspace)
    x0, x1 = x.unbind(0)
    full = False
    low0, low1 = c1, c3  # the low words c1, c3: small tensors, then the previous product's rows
    product = None  # the previous round's products, once full: their low halves are (c1, c3)
    round_keys = None
    for r in range(rounds):
        key0, key1 = (k0 + r * PHILOX_W0) & MASK32, (k1 + r * PHILOX_W1) & MASK32
        keep_clean = r < rounds - 1  # the last round's words may keep their upper garbage
        if not full:
            p0, p1 = c0 * PHILOX_M0, c2 * PHILOX_M1
            hi1, hi0 = p1 >> 32, p0 >> 32
            if (_broadcast(_shape(hi1), _shape(low0)) == shape
                    and _broadcast(_shape(hi0), _shape(low1)) == shape):
                full = True
                _xor_key(hi1, low0, key0, out=x0)
                _xor_key(hi0, low1, key1, out=x1)
                if keep_clean:
                    x.bitwise_and_(MASK32)
            else:
                c0 = _xor_key(hi1, low0, key0).bitwise_and_(MASK32)
                c2 = _xor_key(hi0, low1, key1).bitwise_and_(MASK32)
            low0, low1 = p1, p0
            continue
        torch.mul(x0, PHILOX_M0, out=new[1])
        torch.mul(x1, PHILOX_M1, out=new[0])  # new = (M1 c2, M0 c0)
        torch.bitwise_right_shift(new, 32, out=x)  # x = (hi(M1 c2), hi(M0 c0))
        if product is not None:
            if round_keys is None:  # (k0, k1) of every round, as a (rounds, 2, 1, ...) tensor
                round_keys = _round_keys(k0, k1, rounds, x.device).view(rounds, 2, *([1] * len(shape)))
            x.bitwise_xor_(product).bitwise_xor_(round_keys[r])  # ^ (c1, c3) ^ (k0, k1)
        else:
            x0.bitwise_xor_(low0 ^ key0)
            x1.bitwise_xor_(low1 ^ key1)
        if keep_clean:
            x.bitwise_and_(MASK32)
        if product is None:
            product, new = new, spare
        else:
            product, new = new, product
    if not full:  # too few rounds to reach the full shape
        x0.copy_(c0)
        x1.copy_(c2)
    if product is None:
        product = new
        product[0].copy_(torch.as_tensor(low0))
        product[1].copy_(torch.as_tensor(low1))
    return x, product


def philox4x32(counter, key: tuple[int, int], rounds: int = PHILOX_ROUNDS) -> tuple[torch.Tensor, ...]:
    """Philox4x32-``rounds`` of a counter (four 32-bit words) under a key (two 32-bit words).

    Args:
        counter: four integer tensors (or ints) ``(c0, c1, c2, c3)`` with values in [0, 2**32),
            broadcastable against each other (all on one device).
        key: ``(k0, k1)``, Python ints in [0, 2**32).
        rounds: 10 for Philox4x32-10 (the standard; Random123's known answers are for 7 and 10).
    Returns:
        the four output words ``(w0, w1, w2, w3)``, int64 tensors of the broadcast shape with values
        in [0, 2**32).
    """
    words = [torch.as_tensor(word) for word in counter]
    device = next((word.device for word in words if word.dim() > 0), words[0].device)
    words = [word.to(device=device, dtype=torch.int64) & MASK32 for word in words]
    x, low = _philox_rounds(*words, int(key[0]) & MASK32, int(key[1]) & MASK32, rounds)
    x, low = x & MASK32, low & MASK32
    return x[0], low[0], x[1], low[1]


# ---------------------------------------------------------------------------------------------
# From (seed, key, element) to words and normals
# ---------------------------------------------------------------------------------------------

def _pieces(rows: int, columns: int):
    """Split a (rows, columns) grid of Philox blocks into pieces of at most _BLOCKS_PER_PIECE
    (whole rows where they fit, else parts of one row)."""
    if columns >= _BLOCKS_PER_PIECE:
        for row in range(rows):
            for start in range(0, columns, _BLOCKS_PER_PIECE):
                yield slice(row, row + 1), slice(start, min(columns, start + _BLOCKS_PER_PIECE))
        return
    per_piece = _BLOCKS_PER_PIECE // columns
    for start in range(0, rows, per_piece):
        yield slice(start, min(rows, start + per_piece)), slice(0, columns)


class _Workspace:
    """Flat buffers for the pieces of a generation call: three int64 ones for Philox and three for
    Box--Muller in the generation dtype.

    On the CPU they are kept per thread and grown on demand (at most ``_BLOCKS_PER_PIECE`` blocks:
    9 MiB in float32, 12 MiB in float64): a few MiB of fresh memory per call would otherwise be
    page-faulted in at every call (the allocator returns a freed block of that size to the
    system), which on a small VM costs as much as the arithmetic. They are normal tensors even when
    made under ``torch.inference_mode`` (an inference tensor cannot be written outside it).
    """

    _cpu = threading.local()

    def __init__(self, blocks: int, dtype: torch.dtype, device: torch.device):
        cached = getattr(self._cpu, "buffers", {}) if device.type == "cpu" else {}
        words, floats = cached.get(torch.int64), cached.get(dtype)
        with torch.inference_mode(False):
            if words is None or words[0].numel() < 2 * blocks:
                words = tuple(torch.empty(2 * blocks, dtype=torch.int64, device=device) for _ in range(3))
            if floats is None or floats[0].numel() < 2 * blocks:
                floats = tuple(torch.empty(2 * blocks, dtype=dtype, device=device) for _ in range(3))
        if device.type == "cpu":
            self._cpu.buffers = {**cached, torch.int64: words, dtype: floats}
        self.words, self.floats = words, floats


def _piece_words(seed: int, keys: torch.Tensor, pairs: torch.Tensor, workspace: _Workspace | None = None):
    """Philox words of the blocks ``(seed, key, pair)``: ``keys`` (R, 1) and ``pairs`` (1 or R, Q)
    int64 -> ``(x, low)``, each (2, R, Q): rows (w0, w2) and (w1, w3), upper bits unspecified."""
    k0, k1, c3 = seed_words(seed)
    return _philox_rounds(pairs, (keys >> 32) & MASK32, keys & MASK32, c3, k0, k1,
                          workspace=None if workspace is None else workspace.words)


def _box_muller(radius_words: torch.Tensor, angle_words: torch.Tensor, dtype: torch.dtype,
                workspace: _Workspace | None = None, z1: torch.Tensor | None = None,
                z2: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The package's one Box--Muller transform, from the low bits of two int64 word tensors (any
    upper bits; both are overwritten) to ``z1 = r cos(2 pi u2)`` and ``z2 = r sin(2 pi u2)`` in
    ``dtype`` (float32 or float64: 24 or 32 bits per uniform; see the module docstring).

    Written into ``z1``, ``z2`` (any strides) when given, else into the workspace (then valid until
    its next use); returns them.
    """
    bits = 32 if dtype == torch.float64 else 24
    scale = 2.0 ** -bits
    shape = radius_words.shape
    if workspace is None or workspace.floats[0].dtype != dtype:
        radius, angle, cosine = (torch.empty(shape, dtype=dtype, device=radius_words.device)
                                 for _ in range(3))
    else:
        size = radius_words.numel()
        radius, angle, cosine = (buffer[:size].view(shape) for buffer in workspace.floats)
    radius.copy_(radius_words.bitwise_and_((1 << bits) - 1))
    radius.add_(0.5).mul_(scale).log_().mul_(-2.0).sqrt_()
    angle.copy_(angle_words.bitwise_and_((1 << bits) - 1)).mul_(_TWO_PI * scale)
    torch.cos(angle, out=cosine)
    z1 = cosine.mul_(radius) if z1 is None else torch.mul(cosine, radius, out=z1)
    z2 = angle.sin_().mul_(radius) if z2 is None else torch.mul(angle.sin_(), radius, out=z2)
    return z1, z2


def _generation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _paired_normals(seed: int, keys: torch.Tensor, pairs: torch.Tensor, dtype: torch.dtype,
                    planar: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
    """Normals of the elements ``2 q`` and ``2 q + 1`` for every pair index ``q`` in ``pairs``.

    ``keys`` (R,) and ``pairs`` (1 or R, Q) int64 -> (R, 2, 2 Q) (float32 or float64), element
    ``2 q + parity`` of ``pairs[..., j]`` at position ``2 j + parity``; with ``planar=True``
    (R, 2, 2, Q) instead, indexed ``[row, normal, parity, j]`` (no interleaving: the layout the
    vectorised kernels write fastest). ``out``: a contiguous tensor of that shape to write into,
    of ``dtype`` or a wider one (the normals are computed in ``dtype`` and cast on writing).
    """
    rows, columns = keys.shape[0], pairs.shape[-1]
    if out is None:
        out = torch.empty((rows, 2, 2, columns) if planar else (rows, 2, columns, 2), dtype=dtype,
                          device=keys.device)
    keys = keys[:, None]
    workspace = _Workspace(min(rows * columns, _BLOCKS_PER_PIECE), dtype, keys.device)
    for row, column in _pieces(rows, columns):
        x, low = _piece_words(seed, keys[row], pairs[row if pairs.shape[0] > 1 else slice(None), column],
                              workspace)
        if planar:
            piece = out[row, :, :, column].permute(1, 2, 0, 3)  # (normal, parity, rows, columns)
            _box_muller(x, low, dtype, workspace, piece[0], piece[1])
        else:
            # planar in the workspace, then each normal's (even, odd) pairs interleaved in one op
            # as the real and imaginary parts of a complex view (a strided write costs 4x more)
            piece = out[row, :, column]  # (rows, normal, columns, parity)
            for normal, z in enumerate(_box_muller(x, low, dtype, workspace)):
                torch.complex(z[0], z[1], out=torch.view_as_complex(piece[:, normal]))
    return out if planar else out.view(rows, 2, 2 * columns)


def _elementwise_normals(seed: int, keys: torch.Tensor, elements: torch.Tensor,
                         dtype: torch.dtype) -> torch.Tensor:
    """Normals of arbitrary elements: ``keys`` (R,), ``elements`` (1 or R, n) int64 -> (R, 2, n).

    One Philox block per element (its pair's block; the element's parity picks the half).
    """
    rows, columns = keys.shape[0], elements.shape[-1]
    out = torch.empty((rows, 2, columns), dtype=dtype, device=keys.device)
    keys = keys[:, None]
    workspace = _Workspace(min(rows * columns, _BLOCKS_PER_PIECE), dtype, keys.device)
    for row, column in _pieces(rows, columns):
        chosen = elements[row if elements.shape[0] > 1 else slice(None), column]
        x, low = _piece_words(seed, keys[row], chosen >> 1, workspace)
        odd = (chosen & 1).bool()
        _box_muller(torch.where(odd, x[1], x[0]), torch.where(odd, low[1], low[0]), dtype,
                    workspace, out[row, 0, column], out[row, 1, column])
    return out


def _contiguous_normals(seed: int, keys: torch.Tensor, start: int, count: int,
                        dtype: torch.dtype) -> torch.Tensor:
    """Normals of the elements ``start .. start + count - 1``: ``keys`` (R,) -> (R, 2, count)."""
    first_pair, skip = start >> 1, start & 1
    n_pairs = (skip + count + 1) // 2
    pairs = torch.arange(first_pair, first_pair + n_pairs, dtype=torch.int64, device=keys.device)[None]
    normals = _paired_normals(seed, keys, pairs, dtype)
    if skip == 0 and 2 * n_pairs == count:
        return normals
    return normals[..., skip:skip + count].contiguous()


def _as_keys(keys) -> torch.Tensor:
    keys = torch.as_tensor(keys)
    if keys.dtype.is_floating_point or keys.dtype.is_complex or keys.dtype == torch.bool:
        raise TypeError(f"keys must be an integer tensor, got {keys.dtype}")
    return keys.to(torch.int64)


def _element_rows(keys: torch.Tensor, elements: torch.Tensor):
    """Broadcast ``keys`` (S) against ``elements`` (..., n): (R,) keys, (1 or R, n) elements, and
    the leading shape ``broadcast(S, elements.shape[:-1])``."""
    elements = elements.to(device=keys.device, dtype=torch.int64)
    if elements.dim() == 0:
        raise ValueError("elements must be an int or a tensor of shape (..., n)")
    lead = torch.broadcast_shapes(keys.shape, elements.shape[:-1])
    n = elements.shape[-1]
    key_rows = keys.expand(lead).reshape(-1)
    if math.prod(elements.shape[:-1]) == 1:
        element_rows = elements.reshape(1, n)
    else:
        element_rows = elements.expand(*lead, n).reshape(-1, n)
    return key_rows, element_rows, lead


def counter_normal(seed: int, keys: torch.Tensor, elements: int | torch.Tensor,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    r"""Two independent standard normals per ``(key, element)``, a pure function of
    ``(seed, key, element)``: a counter-based generator (Philox4x32-10), vectorised, on ``keys``'
    device, with the same values on every device.

    Args:
        seed: any Python int (taken modulo 2**96; see the module docstring).
        keys: integer tensor of shape ``S`` (e.g. node ids, or ``step * 2**32 + sample``), read
            modulo 2**64.
        elements: ``n`` (the element indices ``0..n-1``) or an integer tensor of element indices
            in ``[0, 2**33)`` of shape ``(..., n)`` whose leading dimensions broadcast against ``S``.
        dtype: float32 (24-bit uniforms, so ``|Z| <= 5.9``; the fast path) or float64 (32-bit
            uniforms, ``|Z| <= 6.7``); other floating dtypes are generated in float32 and cast.
    Returns:
        a tensor of shape ``(*broadcast(S, elements.shape[:-1]), 2, n)`` and dtype ``dtype``.

    Element ``e`` of key ``k`` reads two words of the Philox block with counter
    ``(e >> 1, k_hi, k_lo, seed_2)`` under the key ``(seed_0, seed_1)`` (the seed's 32-bit words),
    so distinct ``(key, element)`` pairs read distinct output words of a bijection of the counter;
    Box--Muller turns the two words into the two normals.
    """
    keys = _as_keys(keys)
    work_dtype = _generation_dtype(dtype)
    if isinstance(elements, int) and not isinstance(elements, bool):
        if elements < 1:
            raise ValueError(f"elements must be a positive int or a tensor, got {elements}")
        normals = _contiguous_normals(seed, keys.reshape(-1), 0, elements, work_dtype)
        normals = normals.view(*keys.shape, 2, elements)
    else:
        key_rows, element_rows, lead = _element_rows(keys, torch.as_tensor(elements))
        normals = _elementwise_normals(seed, key_rows, element_rows, work_dtype)
        normals = normals.view(*lead, 2, element_rows.shape[-1])
    return normals if normals.dtype == dtype else normals.to(dtype)


def counter_words(seed: int, keys: torch.Tensor, elements: int | torch.Tensor) -> torch.Tensor:
    """The two 32-bit words :func:`counter_normal` turns into the normals of each
    ``(key, element)``, as int64 in [0, 2**32): shape ``(*broadcast(S, elements.shape[:-1]), 2, n)``.

    Same arguments as :func:`counter_normal`; word 0 gives the radius, word 1 the angle. For tests
    and for streaming raw bits to statistical batteries (``benchmarks/rng_quality.py``).
    """
    keys = _as_keys(keys)
    if isinstance(elements, int) and not isinstance(elements, bool):
        n_pairs = (elements + 1) // 2
        pairs = torch.arange(n_pairs, dtype=torch.int64, device=keys.device)[None]
        x, low = _piece_words(seed, keys.reshape(-1, 1), pairs)  # (2 parities, R, Q) each
        words = torch.stack((x, low), dim=2).permute(1, 2, 3, 0).reshape(-1, 2, 2 * n_pairs)
        return (words[..., :elements] & MASK32).reshape(*keys.shape, 2, elements)
    key_rows, element_rows, lead = _element_rows(keys, torch.as_tensor(elements))
    x, low = _piece_words(seed, key_rows[:, None], element_rows >> 1)
    odd = (element_rows & 1).bool()
    words = torch.stack((torch.where(odd, x[1], x[0]), torch.where(odd, low[1], low[0])), dim=1)
    return (words & MASK32).view(*lead, 2, element_rows.shape[-1])


def _key_words(seed: int, keys: torch.Tensor) -> torch.Tensor:
    """The integer stage of :func:`counter_normal` for the elements 0 and 1 of each key:
    ``counter_words(seed, keys, 2)``, shape ``(*keys.shape, 2, 2)``. Kept under the name the
    device checks (``tests/test_devices.py``, ``benchmarks/gpu_check.py``) import, which compare it
    bit for bit between devices; new code should call :func:`counter_words`."""
    return counter_words(seed, keys, 2)
