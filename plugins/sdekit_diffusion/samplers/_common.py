r"""What every sampler shares: the counted, checked score; predictions; per-sample noise; reporting.

Notation (all samplers): the grid ``ts`` runs :math:`t_0 = t_{max} > t_1 > \dots > t_N = t_{min}`;
:math:`\alpha_i, \sigma_i, \lambda_i = \log(\alpha_i/\sigma_i)` at :math:`t_i`. From the score
:math:`s`: noise prediction :math:`\hat\epsilon = -\sigma s`, data prediction
:math:`\hat x_0 = (x + \sigma^2 s)/\alpha`. One step from :math:`t` down to :math:`s < t` has the
exact forward transition :math:`x_t \mid x_s \sim \mathcal N(\alpha_{t|s} x_s, \sigma_{t|s}^2 I)`
with :math:`\alpha_{t|s} = \alpha_t/\alpha_s`, :math:`\sigma_{t|s}^2 = \sigma_t^2 - \alpha_{t|s}^2
\sigma_s^2 = \sigma_t^2 (1 - e^{2(\lambda_t - \lambda_s)})`.
"""
from __future__ import annotations

from typing import Callable

import torch

import sdekit
from sdekit.problems import function_time_dtype

from ..sde import DiffusionSDE, append_dims, batch_time


class CountedScore:
    """``score_fn`` with every call counted (``calls``), called with ``t`` of shape ``(batch,)`` in
    ``x``'s dtype, float32 for a half-precision ``x`` (``sdekit.problems.function_time_dtype``; the
    samplers' grids and coefficients are in ``sdekit.problems.time_dtype``), its output shape checked
    (:class:`sdekit.ShapeError`) and cast to the state's dtype, non-finite outputs recorded without
    a host sync (:meth:`check_finite` raises :class:`sdekit.NonFiniteError` naming the first bad
    call)."""

    def __init__(self, score_fn: Callable, sde: DiffusionSDE):
        if not callable(score_fn):
            raise TypeError("score_fn must be a callable score_fn(t, x) with t of shape (batch,)")
        self.score_fn = score_fn
        self.sde = sde
        self.calls = 0
        self._first_bad: torch.Tensor | None = None   # index of the first non-finite call (or -1)
        self._bad_time: torch.Tensor | None = None

    def __call__(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # times in x's dtype, float32 for a half-precision x (whose dtype cannot tell a fine grid's
        # times apart); the score in x's dtype
        t = batch_time(torch.as_tensor(t, dtype=function_time_dtype(x.dtype), device=x.device), x)
        s = self.score_fn(t, x)
        self.calls += 1
        if not isinstance(s, torch.Tensor) or s.shape != x.shape:
            got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise sdekit.ShapeError(
                f"score_fn returned {got} for a state of shape {tuple(x.shape)} (call {self.calls}); "
                f"expected shape {tuple(x.shape)}: one score value per state element")
        if s.dtype != x.dtype:
            s = s.to(x.dtype)
        bad = ~torch.isfinite(s).all()
        index = torch.where(bad, self.calls, -1)
        if self._first_bad is None:
            self._first_bad, self._bad_time = index, t.max()
        else:
            fresh = (self._first_bad < 0) & bad
            self._first_bad = torch.where(fresh, index, self._first_bad)
            self._bad_time = torch.where(fresh, t.max(), self._bad_time)
        return s

    def check_finite(self) -> None:
        """Raise :class:`sdekit.NonFiniteError` if some call returned NaN or inf (one host sync)."""
        if self._first_bad is not None and int(self._first_bad) >= 0:
            raise sdekit.NonFiniteError(
                f"score_fn returned NaN or infinite values at call {int(self._first_bad)} of "
                f"{self.calls} (t = {float(self._bad_time):.6g}); check the model at this noise level "
                "(or the input state for overflow)")


class NormalStream:
    """Standard normals of a state's shape, sample ``b``'s values a function of
    ``(seed, b + sample_offset, draw index, element)`` only (``sdekit.brownian.PerSampleNoise``):
    the same sample index gets the same noise whatever the batch size."""

    def __init__(self, shape, seed: int, sample_offset: int, dtype, device):
        from sdekit.brownian import PerSampleNoise

        self.noise = PerSampleNoise(tuple(shape), seed=seed, sample_offset=sample_offset,
                                    dtype=dtype, device=device)
        self._unit = torch.tensor([0.0, 1.0], dtype=dtype, device=device)

    def __call__(self) -> torch.Tensor:
        """One draw: a tensor of shape ``shape`` (advances the stream)."""
        return self.noise.increments(self._unit)[0][0]


NOISE_CHUNK = 32   # the chunk of a Brownian-tree query's block, as the core's fixed-step solve loop
PATH_SEED_TAG = 0xAD5DE  # seed of a sampler's own Brownian path: seed + 2**64 * PATH_SEED_TAG
NOISES = ("path", "fresh")   # noise= of samplers that draw from a Brownian path by default


def check_brownian(brownian, x: torch.Tensor, ts: torch.Tensor, name: str, stochastic: bool):
    """``brownian`` (``sample(..., brownian=)``) checked against the sampler and its state: a
    :class:`sdekit.BrownianTree` of ``x``'s shape (:class:`sdekit.ShapeError`), dtype and device
    whose interval holds the grid ``ts`` (one host sync), for a sampler that draws noise with its
    options (``stochastic``)."""
    if not stochastic:
        raise ValueError(f"sampler {name!r} is deterministic with these options (it draws no noise), so "
                         "brownian= has nothing to drive; drop brownian=, or use a stochastic sampler "
                         "(e.g. euler_maruyama, reverse_diffusion, ancestral, pc, ddim with eta > 0, "
                         "edm_heun with S_churn > 0, dpm_solver++_2m_sde, adaptive_sde)")
    if not isinstance(brownian, sdekit.BrownianTree):
        raise TypeError(f"brownian must be a sdekit.BrownianTree (a replayable Brownian path), got "
                        f"{type(brownian).__name__}")
    if tuple(brownian.shape) != tuple(x.shape):
        raise sdekit.ShapeError(f"brownian has shape {tuple(brownian.shape)} but the samples have shape "
                                f"{tuple(x.shape)}; build the tree with the samples' shape (batch, *dims)")
    same_device = brownian.device.type == x.device.type and (
        brownian.device.index is None or x.device.index is None or brownian.device.index == x.device.index)
    if brownian.dtype != x.dtype or not same_device:
        raise ValueError(f"brownian gives {brownian.dtype} on {brownian.device} but the samples are "
                         f"{x.dtype} on {x.device}; build the tree with the samples' dtype= and device=")
    t_start, t_end = torch.stack([ts[0], ts[-1]]).tolist()
    low, high = min(brownian.t0, brownian.t1), max(brownian.t0, brownian.t1)
    tolerance = 1e-9 * (high - low)
    if low > min(t_start, t_end) + tolerance or high < max(t_start, t_end) - tolerance:
        raise ValueError(f"brownian lives on [{low}, {high}] but {name} runs over "
                         f"[{min(t_start, t_end):.6g}, {max(t_start, t_end):.6g}]; build the tree over "
                         "[t_min, t_max] of the sampling (e.g. [sde.t_min, sde.t_max])")
    return brownian


def sampler_path(ctx: "Context", x: torch.Tensor, noise: str, low: float, high: float, name: str,
                 per: str):
    """The Brownian tree of a sampler with ``noise=`` :data:`NOISES`: the one given as
    ``sample(..., brownian=)`` (checked there), or, for ``noise="path"``, the sampler's own on
    ``[low, high]`` seeded ``seed + 2**64 * PATH_SEED_TAG`` (``adaptive_sde`` and the DPM-Solver++
    SDEs share it, so one seed gives them one path); None for ``noise="fresh"`` (fresh normals
    per ``per``)."""
    if ctx.brownian is not None:
        if noise != "path":
            raise ValueError(f"brownian= drives {name} by a Brownian path, noise={noise!r} draws fresh "
                             f"normals per {per}: drop one of them")
        return ctx.brownian
    if noise != "path":
        return None
    return sdekit.BrownianTree(low, high, tuple(x.shape), seed=ctx.seed + (PATH_SEED_TAG << 64),
                               sample_offset=ctx.sample_offset, dtype=x.dtype, device=x.device)


class PathNoise:
    r"""The standard normals of the grid steps from one Brownian path:
    :math:`z_i = (W(t_{i+1}) - W(t_i))/\sqrt{|t_{i+1} - t_i|}` for step ``i`` of ``ts``, from
    ``tree`` (a :class:`sdekit.BrownianTree`), queried ``tree.grid_block(NOISE_CHUNK)`` steps at a
    time (the values do not depend on it).

    With ``splits = n``, :meth:`split` gives ``n`` more normals per step, independent of every
    :math:`z_i` and of each other: :math:`\sqrt{12/h_k}\, H_k` with :math:`H_k` the space-time
    Lévy area of the ``k``-th of ``n`` equal parts of the step (length :math:`h_k`). A Brownian
    path's :math:`H_{a,b} \sim \mathcal N(0, (b-a)/12)` is independent of :math:`W_{a,b}` and of
    the path outside :math:`[a, b]` (Foster, Lyons & Oberhauser 2020), so these are functions of
    the path that no grid increment sees.
    """

    def __init__(self, tree, ts: torch.Tensor, splits: int = 0):
        self.tree, self.ts, self.splits = tree, ts, splits
        self.block = tree.grid_block(NOISE_CHUNK)   # grid steps per query
        self.scale = torch.rsqrt((ts[:-1] - ts[1:]).abs()).to(tree.dtype)
        self.start, self.chunk = 0, None
        if splits:
            fractions = torch.arange(splits, dtype=ts.dtype, device=ts.device) / splits
            points = ts[:-1, None] + (ts[1:] - ts[:-1])[:, None] * fractions   # (N, n)
            self.points = torch.cat([points.reshape(-1), ts[-1:]])
            self.split_scale = torch.sqrt(12.0 / (self.points[:-1] - self.points[1:]).abs()).to(tree.dtype)
            self.split_start, self.split_chunk = 0, None

    def __call__(self, i: int) -> torch.Tensor:
        """:math:`z_i` (shape ``tree.shape``)."""
        if self.chunk is None or not self.start <= i < self.start + self.block:
            self.start = i
            self.chunk = self.tree.increments(self.ts[i:i + self.block + 1])[0]
        return self.chunk[i - self.start] * self.scale[i]

    def split(self, i: int, k: int) -> torch.Tensor:
        """The ``k``-th Lévy-area normal of step ``i`` (``0 <= k < splits``)."""
        j = i * self.splits + k
        block = self.block * self.splits
        if self.split_chunk is None or not self.split_start <= j < self.split_start + block:
            self.split_start = j
            self.split_chunk = self.tree.increments(self.points[j:j + block + 1], levy_area=True)[1]
        return self.split_chunk[j - self.split_start] * self.split_scale[j]


class Context:
    """A sampler's view of the problem: the SDE, the counted score, noise and reporting.

    ``score(t, x)``, ``eps(t, x)``, ``data(t, x)`` take ``t`` 0-d or ``(batch,)``; ``normal()`` draws
    per-sample normals; ``report(i, x, t, denoised)`` runs the callback and advances the progress bar
    (``progress``: whether the caller asked for one, for samplers that run their own loop).

    Noise of a grid step: a sampler that needs a standard normal for step ``i`` of ``ts`` calls
    ``step_normal(i, ts)``: a ``normal()`` draw, or, when ``sample(..., brownian=tree)`` gives a
    :class:`sdekit.BrownianTree` (``brownian``), :math:`(W(t_{i+1}) - W(t_i))/\\sqrt{|t_{i+1} -
    t_i|}` of that path (:class:`PathNoise`), so every stochastic sampler can run on one given
    path. Normals that are not the step's increment (a Langevin corrector's) come from
    ``split_normal(i, ts, k, n)``: from the tree, the Lévy-area normals of :meth:`PathNoise.split`.

    ``final_zero`` (``sample(..., final_step="zero")``, only for samplers registered with
    ``data_prediction=True``): the last step goes from ``ts[-2]`` to :math:`\\sigma = 0` instead of
    to ``ts[-1]``, and is the first-order one, :math:`x = \\hat x_0(t_{N-1}, x)` (diffusers'
    ``final_sigmas_type="zero"``); see :meth:`ends_at_zero`.
    """

    def __init__(self, sde: DiffusionSDE, score: CountedScore, normal: NormalStream,
                 seed: int, sample_offset: int, callback=None, bar=None, progress: bool = False,
                 final_zero: bool = False, brownian=None):
        self.sde, self.score, self.normal = sde, score, normal
        self.seed, self.sample_offset = seed, sample_offset
        self.callback, self.bar, self.progress = callback, bar, progress
        self.final_zero = bool(final_zero)
        self.brownian = brownian
        self._path: PathNoise | None = None

    # noise ------------------------------------------------------------------------------------
    def path_noise(self, ts: torch.Tensor, splits: int = 0) -> PathNoise:
        """The :class:`PathNoise` of ``brownian`` on the grid ``ts`` (built once per grid; one with
        ``splits`` parts per step also serves the steps' own normals)."""
        path = self._path
        if path is None or path.ts is not ts or (splits and path.splits != splits):
            path = self._path = PathNoise(self.brownian, ts, splits)
        return path

    def step_normal(self, i: int, ts: torch.Tensor) -> torch.Tensor:
        r"""The standard normal of step ``i`` of the grid ``ts``: a fresh per-sample draw, or
        :math:`(W(t_{i+1}) - W(t_i))/\sqrt{|t_{i+1} - t_i|}` of ``brownian`` when given."""
        if self.brownian is None:
            return self.normal()
        return self.path_noise(ts)(i)

    def split_normal(self, i: int, ts: torch.Tensor, k: int, n: int) -> torch.Tensor:
        """The ``k``-th of ``n`` normals at step ``i`` independent of the step's own (a fresh draw,
        or the Lévy-area normal :meth:`PathNoise.split` of ``brownian`` when given)."""
        if self.brownian is None:
            return self.normal()
        return self.path_noise(ts, n).split(i, k)

    def ends_at_zero(self, i: int, ts: torch.Tensor) -> bool:
        """Whether step ``i`` of the grid ``ts`` is the step to :math:`\\sigma = 0` (Python ints
        only: no host sync)."""
        return self.final_zero and i == len(ts) - 2

    # coefficients ---------------------------------------------------------------------------
    def alpha_sigma(self, t: torch.Tensor, x: torch.Tensor):
        """:math:`\\alpha(t), \\sigma(t)` broadcastable against ``x``."""
        return (append_dims(self.sde.schedule.alpha(t), x), append_dims(self.sde.schedule.sigma(t), x))

    def eps(self, t: torch.Tensor, x: torch.Tensor, analytic: bool = False) -> torch.Tensor:
        r""":math:`\hat\epsilon = -\sigma(t) s(t, x)` (one score call), or with ``analytic`` the
        score of standard normal data instead of a call (:func:`analytic_score`)."""
        alpha, sigma = self.alpha_sigma(t, x)
        score = analytic_score(alpha, sigma, x) if analytic else self.score(t, x)
        return -sigma * score

    def data(self, t: torch.Tensor, x: torch.Tensor, analytic: bool = False) -> torch.Tensor:
        r""":math:`\hat x_0 = (x + \sigma^2 s)/\alpha` (one score call, none with ``analytic``)."""
        alpha, sigma = self.alpha_sigma(t, x)
        score = analytic_score(alpha, sigma, x) if analytic else self.score(t, x)
        return (x + sigma ** 2 * score) / alpha

    def report(self, i: int, x: torch.Tensor, t: torch.Tensor, denoised: torch.Tensor | None) -> None:
        if self.callback is not None:
            self.callback(i, x, t, denoised)
        if self.bar is not None:
            self.bar.update(1)


def analytic_score(alpha: torch.Tensor, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""The score of :math:`x_t = \alpha x_0 + \sigma \epsilon` for standard normal data,
    :math:`-x/(\alpha^2 + \sigma^2)`: the analytical first step (AFS) of Zhou et al., *Fast
    ODE-based Sampling for Diffusion Models in Around 5 Steps* (CVPR 2024; ``afs`` of zju-pi/
    diff-sampler), where the samplers' ``afs=True`` takes it for the model's output at
    :math:`t_{max}` and saves that score call. For data of any law it is the score of
    :math:`p_{t_{max}}` up to :math:`O(\alpha(t_{max}))` (the data's mean enters at first order in
    :math:`\alpha`, their covariance at second), so it gains at few steps and leaves an error that
    does not vanish with more steps (:math:`\alpha(1) = 0.0066` for ``VPSDE()``; measured in
    ``benchmarks/few_step.py``: it helps on the 8-d mixture at NFE 5 and 10, not on the digits
    U-Net, whose data are far from standard normal)."""
    return -x / (alpha ** 2 + sigma ** 2)


def afs_saved_calls(options: dict) -> int:
    """Score calls a run saves with the sampler option ``afs`` (the registry's ``saved_calls``)."""
    return 1 if options.get("afs", False) is True else 0


def check_afs(name: str, afs) -> bool:
    if not isinstance(afs, bool):
        raise ValueError(f"{name}: afs must be True (the analytical first step: the model's output at "
                         f"t_max taken from standard normal data, one score call fewer) or False, "
                         f"got {afs!r}")
    return bool(afs)


def schedule(sde: DiffusionSDE, ts: torch.Tensor):
    """``(alpha, sigma, lambda)`` on the grid ``ts`` (precomputed once, no host sync in loops)."""
    return sde.schedule.alpha(ts), sde.schedule.sigma(ts), sde.schedule.log_snr(ts)
