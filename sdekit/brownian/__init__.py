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

Modules, one concern each:

* :mod:`~sdekit.brownian.generator` -- the counter-based generator: Philox4x32-10
  (:func:`philox4x32`) and the normals of ``(seed, key, element)`` built on it
  (:func:`counter_normal`, with the package's one Box--Muller transform).
* :mod:`~sdekit.brownian.tree` -- :class:`BrownianTree`, a *virtual* Brownian tree: the path is a
  deterministic function of ``(seed, t)``, so any order, set or resolution of queries sees the same
  path (one path solved at many step sizes), in O(1) memory.
* :mod:`~sdekit.brownian.fresh` -- :class:`GeneratorNoise` (fresh normals from a
  ``torch.Generator`` for fixed grids, no replay) and :class:`PerSampleNoise` (fresh normals where
  sample ``b``'s noise depends only on ``(seed, b + sample_offset, step, element)``, so a sampler
  gives the same sample ``i`` whatever the batch size; no replay either).
* :mod:`~sdekit.brownian.source` -- the :class:`BrownianSource` protocol and the helpers the
  sources share.

All counter-based randomness comes from :func:`counter_normal`.
"""
from .fresh import GeneratorNoise, PerSampleNoise
from .generator import _key_words, counter_normal, counter_words, philox4x32, seed_words
from .source import BrownianSource, Increments
from .tree import BrownianTree

__all__ = ["BrownianSource", "BrownianTree", "GeneratorNoise", "Increments", "PerSampleNoise",
           "counter_normal", "counter_words", "philox4x32", "seed_words"]
