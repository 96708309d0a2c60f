"""What a trainer minimises: one of the losses of :mod:`sdekit_diffusion.losses`, with its options
checked together once, and the state it carries between steps (the importance sampler's history).

``loss``:

- ``"dsm"`` (default): continuous-time denoising score matching, :func:`~sdekit_diffusion.dsm_loss`
  with ``prediction``, ``weighting`` and ``importance_sampling`` (t drawn from :math:`g^2/\\sigma^2`);
- ``"simple"``: Ho et al.'s :math:`L_{simple}` on the discrete chain (:func:`~sdekit_diffusion.losses.simple_loss`);
- ``"hybrid"``: Improved DDPM's :math:`L_{simple} + \\lambda L_{vlb}` (:func:`~sdekit_diffusion.hybrid_loss`),
  for a network with ``learn_variance=True``;
- ``"vlb"``: the variational bound :math:`L_{vlb}` (:func:`~sdekit_diffusion.vlb_loss`), learned or
  fixed variance.

The chain losses use the SDE's discrete chain (:class:`~sdekit_diffusion.chain.DiscreteChain`:
a table's own timesteps, or ``chain_steps`` equal steps of a continuous schedule, default 1000)
and ``bits``-bit data (the decoder :math:`L_0`); with them ``importance_sampling`` means Improved
DDPM's eq. 18 sampler (:class:`~sdekit_diffusion.losses.LossSecondMomentSampler`).
"""
from __future__ import annotations

import torch

from ..chain import DiscreteChain
from ..losses import (HYBRID_WEIGHT, PREDICTIONS, WEIGHTINGS, LossSecondMomentSampler, dsm_loss, hybrid_loss,
                      simple_loss, vlb_loss)
from ..vlb import check_quantized
from .batches import item_tensor
from .options import check_choice, check_flag, check_number

LOSSES = ("dsm", "simple", "hybrid", "vlb")
CHAIN_LOSSES = ("simple", "hybrid", "vlb")


class Objective:
    """The loss ``objective(net, x0, generator)`` of a trainer (module docstring); options are checked
    when it is built. ``options()``: what defines the objective (recorded in checkpoints)."""

    def __init__(self, sde, *, loss: str = "dsm", prediction: str = "eps", weighting: str = "sigma2",
                 importance_sampling: bool = False, learn_variance: bool = False,
                 vlb_weight: float = HYBRID_WEIGHT, chain_steps: int | None = None, bits: int | None = 8,
                 device: torch.device | None = None):
        check_choice("loss", loss, LOSSES)
        check_choice("prediction", prediction, PREDICTIONS)
        check_choice("weighting", weighting, WEIGHTINGS)
        check_flag("importance_sampling", importance_sampling)
        self.vlb_weight = check_number("vlb_weight", vlb_weight, minimum=0)
        self.chain_steps = check_number("chain_steps", chain_steps, integer=True, minimum=2, optional=True)
        self.bits = check_number("bits", bits, integer=True, minimum=1, maximum=16, optional=True)
        if learn_variance and loss in ("dsm", "simple"):
            raise ValueError(f"loss={loss!r} does not train the variance channels of a learn_variance network; "
                             "use loss='hybrid' (L_simple + 0.001 L_vlb) or loss='vlb'")
        if loss == "hybrid" and not learn_variance:
            raise ValueError("loss='hybrid' trains a learned variance (the L_vlb part has the mean's gradient "
                             "stopped); build the network with learn_variance=True, or use loss='simple'")
        if loss in ("simple", "hybrid") and prediction not in ("eps", "x0", "v"):
            raise ValueError(f"loss={loss!r} compares an 'eps', 'x0' or 'v' prediction with its target, got "
                             f"prediction={prediction!r}")
        if loss in CHAIN_LOSSES and weighting != "sigma2":
            raise ValueError(f"weighting={weighting!r} applies to loss='dsm'; the chain losses have their own "
                             "weights (keep weighting='sigma2')")
        if loss == "simple" and importance_sampling:
            raise ValueError("importance_sampling with loss='simple' has no L_vlb terms to learn its weights "
                             "from; use it with loss='vlb' (or 'hybrid'), or with loss='dsm'")
        if loss == "dsm" and chain_steps is not None:
            raise ValueError("chain_steps applies to the chain losses ('simple', 'hybrid', 'vlb'), not to 'dsm'")
        self.sde, self.loss, self.prediction, self.weighting = sde, loss, prediction, weighting
        self.importance_sampling, self.learn_variance = importance_sampling, bool(learn_variance)
        self.chain = DiscreteChain.from_sde(sde, self.chain_steps) if loss in CHAIN_LOSSES else None
        self.importance_sampler = None
        if loss in ("hybrid", "vlb") and importance_sampling:
            self.importance_sampler = LossSecondMomentSampler(self.chain.T, device=device)

    def options(self) -> dict:
        return {"loss": self.loss, "prediction": self.prediction, "weighting": self.weighting,
                "importance_sampling": self.importance_sampling, "vlb_weight": self.vlb_weight,
                "chain_steps": self.chain_steps, "bits": self.bits}

    def check_data(self, data) -> None:
        """The chain losses' decoder needs ``bits``-bit data: checked once (a tensor; for a Dataset, its
        first item)."""
        if self.loss in ("hybrid", "vlb") and self.bits is not None:
            check_quantized(data if isinstance(data, torch.Tensor) else item_tensor(data[0])[None], self.bits)

    def __call__(self, net, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.loss == "dsm":
            return dsm_loss(self.sde, net, x0, prediction=self.prediction, weighting=self.weighting,
                            importance_sampling=self.importance_sampling, generator=generator)
        if self.loss == "simple":
            return simple_loss(self.chain, net, x0, prediction=self.prediction, learn_variance=False,
                               generator=generator)
        if self.loss == "hybrid":
            return hybrid_loss(self.chain, net, x0, vlb_weight=self.vlb_weight, bits=self.bits,
                               prediction=self.prediction, learn_variance=True,
                               importance_sampler=self.importance_sampler,
                               generator=generator)
        return vlb_loss(self.chain, net, x0, bits=self.bits, prediction=self.prediction,
                        learn_variance=self.learn_variance, importance_sampler=self.importance_sampler,
                        generator=generator)

    def state_dict(self) -> dict:
        return {} if self.importance_sampler is None else {"importance_sampler": self.importance_sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.importance_sampler is not None and "importance_sampler" in state:
            self.importance_sampler.load_state_dict(state["importance_sampler"])
