"""Score networks: :class:`MLP` for vectors, :class:`UNet` for images.

Both are ``nn.Module``\\ s called as ``net(x, t)`` with ``x`` of shape ``(batch, *dims)`` and ``t`` of
shape ``(batch,)`` (a 0-d ``t`` is broadcast). What the output means (eps, x0, v or the score) is
decided by whoever wraps the network (``as_score(net, sde, prediction)``, :func:`dsm_loss`), not by
the network: the output has the shape of ``x``, or, with ``learn_variance=True``, twice its channels
(axis 1): the prediction in the first ``C`` channels, then ``v``, the interpolation of the learned
reverse variance :math:`\\Sigma = \\exp(v' \\log\\beta_t + (1 - v')\\log\\tilde\\beta_t)`,
:math:`v' = (v + 1)/2` (Nichol & Dhariwal 2021, "Improved DDPM", eq. 15;
:mod:`sdekit_diffusion.variance`). Like the paper (and improved-diffusion, diffusers'
``learned_range``) ``v`` is not constrained; ``v = -1`` means :math:`\\tilde\\beta_t`, ``v = 1``
:math:`\\beta_t`. Its output layer starts at zero too, i.e. at the geometric mean of the two.

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

import inspect
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
    """Base class: keeps ``config`` for rebuilding and checks data shapes before training.

    ``learn_variance``: whether the output carries the variance channels ``v`` after the
    prediction (module docstring); declared by the network, read by the losses, the trainer and
    the samplers."""

    config: dict
    learn_variance: bool = False

    def check_sample_shape(self, shape: tuple[int, ...]) -> None:
        """Raise ``ValueError`` unless one sample of shape ``shape`` (no batch axis) fits this net."""
        raise NotImplementedError


class MLP(ScoreNet):
    """A residual MLP for vector data ``x`` of shape ``(batch, dim)``.

    ``h = W_in x``; ``depth`` blocks ``h <- h + W_2 SiLU(W_1 SiLU(LayerNorm(h)) + E_k(emb(t)))``;
    output ``W_out SiLU(h)`` with ``W_out`` zero-initialised (the untrained net predicts 0), of
    shape ``(batch, dim)``, or ``(batch, 2 dim)`` with ``learn_variance=True`` (module docstring).
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 3, time_embedding: str = "fourier",
                 embedding_dim: int = 64, time_scale: float = 1.0, learn_variance: bool = False):
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 1:
            raise ValueError(f"dim, hidden and depth must be positive, got {dim}, {hidden}, {depth}")
        self.config = dict(dim=dim, hidden=hidden, depth=depth, time_embedding=time_embedding,
                           embedding_dim=embedding_dim, time_scale=time_scale,
                           learn_variance=bool(learn_variance))
        self.dim, self.time_scale, self.learn_variance = dim, time_scale, bool(learn_variance)
        self.embed = nn.Sequential(TimeEmbedding(embedding_dim, time_embedding),
                                   nn.Linear(embedding_dim, hidden), nn.SiLU())
        self.inp = nn.Linear(dim, hidden)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(depth))
        self.first = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.times = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.second = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, 2 * dim if self.learn_variance else dim)
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
    ``num_res_blocks`` residual blocks each on the way down (``num_res_blocks + 1`` on the way up;
    GroupNorm, SiLU, time embedding added per block). Self-attention follows every block at a
    resolution listed in ``attention_resolutions`` (in pixels, e.g. ``(7,)`` for 28x28 images with
    three levels), and sits in the middle. Each attention site has its own weights, as in DDPM (Ho
    et al. 2020, App. B; ``down_attention[block]`` and ``up_attention[block]``). ``H`` and ``W`` must
    be divisible by ``2^(L-1)``: 8x8 with ``(1, 2)``, 28x28 with ``(1, 2, 2)``, 32x32 with
    ``(1, 2, 2, 2)``.

    ``image_size`` (``H`` or ``(H, W)``): the size the network is built for; then only the blocks
    whose resolution is listed get an attention site and other sizes are refused. Without it the
    network cannot know which levels will attend, so every block gets a site of its own and the
    ones at a listed resolution are used (unused sites are never evaluated and get no gradient).

    ``learn_variance=True``: ``2 * channels`` output channels (module docstring).

    Checkpoints of the earlier layout, which shared one ``attention[width]`` module among all sites of
    a width, load into a network built without ``image_size``: the shared weights are copied to
    every site of that width, which computes the same function (:meth:`legacy_parameter_sources`).
    """

    def __init__(self, channels: int, base: int = 32, channel_mults: Sequence[int] = (1, 2),
                 attention_resolutions: Sequence[int] = (4,), num_res_blocks: int = 1, dropout: float = 0.0,
                 time_embedding: str = "fourier", time_scale: float = 1.0, learn_variance: bool = False,
                 image_size: int | Sequence[int] | None = None):
        super().__init__()
        channel_mults, attention_resolutions = tuple(channel_mults), tuple(attention_resolutions)
        if channels < 1 or base < 1 or num_res_blocks < 1 or not channel_mults or min(channel_mults) < 1:
            raise ValueError(f"channels, base, num_res_blocks and every channel multiplier must be positive, "
                             f"got channels={channels}, base={base}, num_res_blocks={num_res_blocks}, "
                             f"channel_mults={list(channel_mults)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        size = None if image_size is None else _image_size(image_size)
        self.config = dict(channels=channels, base=base, channel_mults=list(channel_mults),
                           attention_resolutions=list(attention_resolutions), num_res_blocks=num_res_blocks,
                           dropout=dropout, time_embedding=time_embedding, time_scale=time_scale,
                           learn_variance=bool(learn_variance), image_size=None if size is None else list(size))
        self.channels, self.levels, self.time_scale = channels, len(channel_mults), time_scale
        self.attention_resolutions, self.image_size = attention_resolutions, size
        self.learn_variance = bool(learn_variance)
        if size is not None:
            self.check_sample_shape((channels, *size))
        embedding_dim = 4 * base
        self.embed = nn.Sequential(TimeEmbedding(base, time_embedding), nn.Linear(base, embedding_dim), nn.SiLU(),
                                   nn.Linear(embedding_dim, embedding_dim))
        self.inp = nn.Conv2d(channels, base, 3, padding=1)
        widths = [base * m for m in channel_mults]
        self.down_blocks, self.downsample = nn.ModuleList(), nn.ModuleList()
        self.down_attention, self.up_attention = nn.ModuleDict(), nn.ModuleDict()
        skip_widths, width = [base], base
        for level, level_width in enumerate(widths):
            for _ in range(num_res_blocks):
                if self._has_site(level):
                    self.down_attention[str(len(self.down_blocks))] = SelfAttention(level_width)
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
                if self._has_site(level):
                    self.up_attention[str(len(self.up_blocks))] = SelfAttention(widths[level])
                self.up_blocks.append(ResidualBlock(width + skip_widths.pop(), widths[level], embedding_dim, dropout))
                width = widths[level]
            self.upsample.append(nn.Identity() if level == 0 else nn.Conv2d(width, width, 3, padding=1))
        self.out_norm = _group_norm(width)
        self.out = nn.Conv2d(width, 2 * channels if self.learn_variance else channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.num_res_blocks = num_res_blocks
        self.register_load_state_dict_pre_hook(_upgrade_shared_attention)

    def _has_site(self, level: int) -> bool:
        """Whether the blocks of ``level`` get attention sites (all levels without ``image_size``)."""
        if self.image_size is None:
            return True
        height, width = (n // 2 ** level for n in self.image_size)
        return height in self.attention_resolutions or width in self.attention_resolutions

    def check_sample_shape(self, shape: tuple[int, ...]) -> None:
        factor = 2 ** (self.levels - 1)
        if len(shape) != 3 or shape[0] != self.channels or shape[1] % factor or shape[2] % factor:
            raise ValueError(f"UNet(channels={self.channels}, {self.levels} levels) takes samples of shape "
                             f"({self.channels}, H, W) with H and W divisible by {factor}, got {tuple(shape)}")
        if self.image_size is not None and tuple(shape[1:]) != self.image_size:
            raise ValueError(f"this UNet was built for {self.image_size[0]}x{self.image_size[1]} images "
                             f"(image_size), got samples of shape {tuple(shape)}")

    def _attend(self, sites: nn.ModuleDict, block: int, h: torch.Tensor) -> torch.Tensor:
        # a listed resolution always has a site: every block has one without image_size, and with it
        # forward refuses other sizes first
        if h.shape[-1] in self.attention_resolutions or h.shape[-2] in self.attention_resolutions:
            return sites[str(block)](h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.image_size is not None and tuple(x.shape[-2:]) != self.image_size:
            self.check_sample_shape(tuple(x.shape[1:]))
        emb = self.embed(_batch_times(t, x, self.time_scale))
        h = self.inp(x)
        skips = [h]
        block = 0
        for level in range(self.levels):
            for _ in range(self.num_res_blocks):
                h = self._attend(self.down_attention, block, self.down_blocks[block](h, emb))
                skips.append(h)
                block += 1
            if level < self.levels - 1:
                h = self.downsample[level](h)
                skips.append(h)
        h = self.middle[2](self.middle[1](self.middle[0](h, emb)), emb)
        block = 0
        for index, level in enumerate(reversed(range(self.levels))):
            for _ in range(self.num_res_blocks + 1):
                h = self._attend(self.up_attention, block, self.up_blocks[block](torch.cat([h, skips.pop()], dim=1), emb))
                block += 1
            if level > 0:
                h = self.upsample[index](F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.out(F.silu(self.out_norm(h)))

    def attention_sites(self) -> dict[str, int]:
        """``{"down_attention.3": width, ...}``: every attention site (outside the middle) and its width."""
        return {f"{path}.{key}": module.qkv.in_channels
                for path in ("down_attention", "up_attention") for key, module in getattr(self, path).items()}

    def legacy_parameter_sources(self, state_dict: dict) -> dict[str, str] | None:
        """For a state dict of the earlier shared-attention layout (keys ``attention.<width>.*``):
        the old name each parameter of this network is copied from (identity outside attention);
        ``None`` for a state dict of the current layout. :class:`ValueError` if this network cannot
        hold it (built with ``image_size``, or widths that do not match)."""
        shared = {key for key in state_dict if key.startswith("attention.")}
        if not shared:
            return None
        if self.image_size is not None:
            raise ValueError(
                "this state dict has the earlier UNet layout (one attention module per width, shared by "
                "every site); it loads only into a UNet built without image_size, which has a site at "
                "every block: rebuild the network without image_size (Trainer.load does so)")
        sources = {}
        for name, _ in self.named_parameters():
            path, _, rest = name.partition(".")
            if path in ("down_attention", "up_attention"):
                block, _, parameter = rest.partition(".")
                width = self.attention_sites()[f"{path}.{block}"]
                old = f"attention.{width}.{parameter}"
                if old not in state_dict:
                    raise ValueError(f"the earlier-layout state dict has no {old!r} for the site {path}.{block} "
                                     f"of width {width}; it was written for another network")
                sources[name] = old
            else:
                sources[name] = name
        return sources


def _image_size(image_size) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(n) for n in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be a positive int H or a pair (H, W), got {image_size!r}")
    return size


def _upgrade_shared_attention(module: UNet, state_dict: dict, prefix: str, *_args) -> None:
    """``load_state_dict`` pre-hook: rewrite an earlier-layout state dict (``attention.<width>.*``
    shared by every site) into this layout by copying the shared weights to every site."""
    local = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
    sources = module.legacy_parameter_sources(local)
    if sources is None:
        return
    for name, old in sources.items():
        if old != name:
            state_dict[prefix + name] = local[old].clone()
    for key in [key for key in local if key.startswith("attention.")]:
        del state_dict[prefix + key]


NETWORKS = {"MLP": MLP, "UNet": UNet}


def build_net(kind: str, config: dict) -> ScoreNet:
    """Rebuild a network from its class name and ``config`` (as stored in a checkpoint)."""
    if kind not in NETWORKS:
        raise ValueError(f"unknown network {kind!r}; known: {sorted(NETWORKS)}")
    return NETWORKS[kind](**config)


def full_config(kind: str, config: dict | None) -> dict | None:
    """``config`` with every constructor default filled in, so that a configuration stored before an
    option existed compares equal to the same network built today (``None`` for other networks)."""
    if config is None or kind not in NETWORKS:
        return config
    parameters = inspect.signature(NETWORKS[kind].__init__).parameters
    defaults = {name: p.default for name, p in parameters.items()
                if name != "self" and p.default is not inspect.Parameter.empty}
    merged = {**defaults, **config}
    order = [name for name in parameters if name in merged] + [name for name in merged if name not in parameters]
    return {key: list(merged[key]) if isinstance(merged[key], tuple) else merged[key] for key in order}
