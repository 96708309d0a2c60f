"""Score networks: :class:`MLP` for vectors, :class:`UNet` for images.

Both are ``nn.Module``\\ s called as ``net(x, t)`` with ``x`` of shape ``(batch, *dims)`` and ``t`` of
shape ``(batch,)`` (a 0-d ``t`` is broadcast). What the output means (eps, x0, v or the score) is
decided by whoever wraps the network (``as_score(net, sde, prediction)``, :func:`dsm_loss`), not by
the network: the output always has the shape of ``x``.

Time input. The networks receive the SDE's own time ``t`` (every preset uses ``t`` in ``[0, 1]``),
because that is what ``as_score`` and the samplers pass. ``time_scale`` multiplies ``t`` first: leave
it at 1 for SDEs on ``[0, 1]``; for an SDE on ``[0, T]`` use ``1 / T``. The embedding is either
Gaussian random Fourier features of ``t`` (``"fourier"``, scale 16 as in Song et al. 2021,
score_sde ``ddpm++``/``ncsn++``) or the Transformer sinusoidal embedding of ``1000 t``
(``"sinusoidal"``, Ho et al. 2020, who feed the integer step ``0..999``).

Every network keeps ``config`` (its constructor arguments), so a checkpoint can rebuild it with
:func:`build_net`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

TIME_EMBEDDINGS = ("fourier", "sinusoidal")


class TimeEmbedding(nn.Module):
    """Map times ``t`` of shape ``(batch,)`` to features of shape ``(batch, dim)``.

    ``"fourier"``: ``[sin(2 pi W t), cos(2 pi W t)]`` with fixed ``W ~ N(0, scale^2)`` (Tancik et al.
    2020; scale 16 from score_sde). ``"sinusoidal"``: ``[sin(1000 t w_k), cos(1000 t w_k)]`` with
    ``w_k = 10000^{-k/(dim/2)}`` (Vaswani et al. 2017, as used by DDPM).
    """

    def __init__(self, dim: int, kind: str = "fourier", scale: float = 16.0, seed: int = 0):
        super().__init__()
        if kind not in TIME_EMBEDDINGS:
            raise ValueError(f"time_embedding must be one of {TIME_EMBEDDINGS}, got {kind!r}")
        if dim % 2:
            raise ValueError(f"the time-embedding size must be even, got {dim}")
        self.kind = kind
        half = dim // 2
        if kind == "fourier":
            generator = torch.Generator().manual_seed(seed)
            frequencies = torch.randn(half, generator=generator) * scale * 2 * math.pi
        else:
            frequencies = 1000.0 * torch.exp(-math.log(10000.0) * torch.arange(half) / half)
        self.register_buffer("frequencies", frequencies)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t[:, None].to(self.frequencies.dtype) * self.frequencies[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)


def _batch_times(t, x: torch.Tensor, time_scale: float) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must have shape (batch,) = ({x.shape[0]},) or be 0-d, got {tuple(t.shape)}")
    return t * time_scale


class ScoreNet(nn.Module):
    """Base class: keeps ``config`` for rebuilding and checks data shapes before training."""

    config: dict

    def check_sample_shape(self, shape: tuple[int, ...]) -> None:
        """Raise ``ValueError`` unless one sample of shape ``shape`` (no batch axis) fits this net."""
        raise NotImplementedError


class MLP(ScoreNet):
    """A residual MLP for vector data ``x`` of shape ``(batch, dim)``.

    ``h = W_in x``; ``depth`` blocks ``h <- h + W_2 SiLU(W_1 SiLU(LayerNorm(h)) + E_k(emb(t)))``;
    output ``W_out SiLU(h)`` with ``W_out`` zero-initialised (the untrained net predicts 0).
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 3, time_embedding: str = "fourier",
                 embedding_dim: int = 64, time_scale: float = 1.0):
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 1:
            raise ValueError(f"dim, hidden and depth must be positive, got {dim}, {hidden}, {depth}")
        self.config = dict(dim=dim, hidden=hidden, depth=depth, time_embedding=time_embedding,
                           embedding_dim=embedding_dim, time_scale=time_scale)
        self.dim, self.time_scale = dim, time_scale
        self.embed = nn.Sequential(TimeEmbedding(embedding_dim, time_embedding),
                                   nn.Linear(embedding_dim, hidden), nn.SiLU())
        self.inp = nn.Linear(dim, hidden)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(depth))
        self.first = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.times = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.second = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def check_sample_shape(self, shape: tuple[int, ...]) -> None:
        if tuple(shape) != (self.dim,):
            raise ValueError(f"MLP(dim={self.dim}) takes samples of shape ({self.dim},), got {tuple(shape)}; "
                             f"flatten images or use UNet")

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.embed(_batch_times(t, x, self.time_scale))
        h = self.inp(x)
        for norm, first, time, second in zip(self.norms, self.first, self.times, self.second):
            h = h + second(F.silu(first(F.silu(norm(h))) + time(emb)))
        return self.out(F.silu(h))


def _group_norm(channels: int) -> nn.GroupNorm:
    groups = math.gcd(32, channels)
    return nn.GroupNorm(groups, channels)


class ResidualBlock(nn.Module):
    """GroupNorm-SiLU-Conv, add the projected time embedding, GroupNorm-SiLU-Dropout-Conv, plus a
    (1x1-projected) skip connection (Ho et al. 2020, appendix B)."""

    def __init__(self, in_channels: int, out_channels: int, embedding_dim: int, dropout: float):
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time = nn.Linear(embedding_dim, out_channels)
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the ``H*W`` positions, residual, output projection zero-initialised."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(batch, 3, channels, height * width).unbind(1)
        h = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return x + self.proj(h.transpose(1, 2).reshape(batch, channels, height, width))


class UNet(ScoreNet):
    """A small DDPM-style U-Net for images ``x`` of shape ``(batch, channels, H, W)``.

    Levels ``i = 0..L-1`` work at resolution ``H / 2^i`` with ``base * channel_mults[i]`` channels and
    ``num_res_blocks`` residual blocks each (GroupNorm, SiLU, time embedding added per block); self-
    attention follows the blocks at every resolution listed in ``attention_resolutions`` (in pixels,
    e.g. ``(7,)`` for 28x28 images with three levels) and in the middle. ``H`` and ``W`` must be
    divisible by ``2^(L-1)``: 8x8 with ``(1, 2)``, 28x28 with ``(1, 2, 2)``, 32x32 with ``(1, 2, 2, 2)``.
    """

    def __init__(self, channels: int, base: int = 32, channel_mults: Sequence[int] = (1, 2),
                 attention_resolutions: Sequence[int] = (4,), num_res_blocks: int = 1, dropout: float = 0.0,
                 time_embedding: str = "fourier", time_scale: float = 1.0):
        super().__init__()
        channel_mults, attention_resolutions = tuple(channel_mults), tuple(attention_resolutions)
        self.config = dict(channels=channels, base=base, channel_mults=list(channel_mults),
                           attention_resolutions=list(attention_resolutions), num_res_blocks=num_res_blocks,
                           dropout=dropout, time_embedding=time_embedding, time_scale=time_scale)
        self.channels, self.levels, self.time_scale = channels, len(channel_mults), time_scale
        self.attention_resolutions = attention_resolutions
        embedding_dim = 4 * base
        self.embed = nn.Sequential(TimeEmbedding(base, time_embedding), nn.Linear(base, embedding_dim), nn.SiLU(),
                                   nn.Linear(embedding_dim, embedding_dim))
        self.inp = nn.Conv2d(channels, base, 3, padding=1)
        widths = [base * m for m in channel_mults]
        self.down_blocks, self.down_attention, self.downsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        skip_widths, width = [base], base
        for level, level_width in enumerate(widths):
            for _ in range(num_res_blocks):
                self.down_blocks.append(ResidualBlock(width, level_width, embedding_dim, dropout))
                width = level_width
                skip_widths.append(width)
            last = level == self.levels - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(width, width, 3, stride=2, padding=1))
            if not last:
                skip_widths.append(width)
        self.middle = nn.ModuleList([ResidualBlock(width, width, embedding_dim, dropout), SelfAttention(width),
                                     ResidualBlock(width, width, embedding_dim, dropout)])
        self.up_blocks, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(self.levels)):
            for _ in range(num_res_blocks + 1):
                self.up_blocks.append(ResidualBlock(width + skip_widths.pop(), widths[level], embedding_dim, dropout))
                width = widths[level]
            self.upsample.append(nn.Identity() if level == 0 else nn.Conv2d(width, width, 3, padding=1))
        self.attention = nn.ModuleDict({str(w): SelfAttention(w) for w in set(widths)})
        self.out_norm = _group_norm(width)
        self.out = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.num_res_blocks = num_res_blocks

    def check_sample_shape(self, shape: tuple[int, ...]) -> None:
        factor = 2 ** (self.levels - 1)
        if len(shape) != 3 or shape[0] != self.channels or shape[1] % factor or shape[2] % factor:
            raise ValueError(f"UNet(channels={self.channels}, {self.levels} levels) takes samples of shape "
                             f"({self.channels}, H, W) with H and W divisible by {factor}, got {tuple(shape)}")

    def _attend(self, h: torch.Tensor) -> torch.Tensor:
        if h.shape[-1] in self.attention_resolutions or h.shape[-2] in self.attention_resolutions:
            return self.attention[str(h.shape[1])](h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.embed(_batch_times(t, x, self.time_scale))
        h = self.inp(x)
        skips = [h]
        blocks = iter(self.down_blocks)
        for level in range(self.levels):
            for _ in range(self.num_res_blocks):
                h = self._attend(next(blocks)(h, emb))
                skips.append(h)
            if level < self.levels - 1:
                h = self.downsample[level](h)
                skips.append(h)
        h = self.middle[2](self.middle[1](self.middle[0](h, emb)), emb)
        blocks = iter(self.up_blocks)
        for index, level in enumerate(reversed(range(self.levels))):
            for _ in range(self.num_res_blocks + 1):
                h = self._attend(next(blocks)(torch.cat([h, skips.pop()], dim=1), emb))
            if level > 0:
                h = self.upsample[index](F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.out(F.silu(self.out_norm(h)))


NETWORKS = {"MLP": MLP, "UNet": UNet}


def build_net(kind: str, config: dict) -> ScoreNet:
    """Rebuild a network from its class name and ``config`` (as stored in a checkpoint)."""
    if kind not in NETWORKS:
        raise ValueError(f"unknown network {kind!r}; known: {sorted(NETWORKS)}")
    return NETWORKS[kind](**config)
