"""The clipped surrogate objective of PPO (Schulman et al., 2017). Introduced in lesson 06."""

from __future__ import annotations

import torch
from torch import Tensor


def ppo_clip_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, clip: float) -> Tensor:
    """``−mean(min(ρ A, clip(ρ, 1 − ε, 1 + ε) A))`` with ``ρ = exp(logp − old_logp)``.

    Args:
        logp: log-probabilities of the taken actions under the policy being trained (any shape).
        old_logp: the same under the policy that collected the data (same shape; a constant:
            no gradient flows into it).
        advantages: advantage estimates (same shape; constants, e.g. a critic's output, that
            no gradient flows into).
        clip: ε.

    Returns:
        A scalar to minimise.

    Example:
        >>> lp = torch.zeros(3, requires_grad=True)
        >>> ppo_clip_loss(lp, torch.zeros(3), torch.ones(3), 0.2).item()
        -1.0
    """
    advantages = advantages.detach()
    ratio = torch.exp(logp - old_logp.detach())
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip)
    return -torch.minimum(ratio * advantages, clipped * advantages).mean()
