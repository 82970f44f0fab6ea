"""Meta-SGD (Li et al., 2017): learn a step size for every parameter entry, alongside θ.

The adaptation itself is :func:`mlcourse.algorithms.maml.adapt` with ``inner_lr`` given as a dict of
tensors; the step sizes are meta-learned by back-propagating the meta-loss into them.
Introduced in lesson 02 (``notebooks/02_maml.ipynb``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


def init_inner_lrs(
    params: Mapping[str, Tensor],
    low: float = 0.005,
    high: float = 0.1,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Per-entry step sizes drawn from ``U[low, high]`` (the Meta-SGD paper's initialisation).

    Args:
        params: the parameters the step sizes will go with.
        low, high: bounds of the uniform initialisation.
        generator: optional seeded generator (on the CPU).

    Returns:
        ``{name: tensor}`` shaped like ``params``, on the same devices, with ``requires_grad``.

    Example:
        >>> lrs = init_inner_lrs({"w": torch.zeros(3, 2)})
        >>> lrs["w"].shape, bool(((lrs["w"] >= 0.005) & (lrs["w"] <= 0.1)).all())
        (torch.Size([3, 2]), True)
    """
    if not 0 <= low <= high:
        raise ValueError(f"need 0 <= low <= high, got low={low}, high={high}")
    lrs = {}
    for name, p in params.items():
        u = torch.rand(p.shape, generator=generator, dtype=p.dtype)
        lrs[name] = (low + (high - low) * u).to(p.device).requires_grad_()
    return lrs
