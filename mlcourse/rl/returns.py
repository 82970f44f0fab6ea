"""Returns and advantages over whole trials. Introduced in lesson 06 (``notebooks/06_rl2.ipynb``).

Time is the leading dimension: ``(T, num_trials)``. In RL² the unit of optimisation is the
trial, so advantages run across the episodes of a trial and stop only where the trial ends.
"""

from __future__ import annotations

import torch
from torch import Tensor


def discounted_returns(rewards: Tensor, gamma: float) -> Tensor:
    """``G_t = r_t + γ r_{t+1} + ... + γ^{T-1-t} r_{T-1}``, for a trial that ends at ``T``.

    Args:
        rewards: ``(T, num_trials)``.
        gamma: discount factor.

    Returns:
        ``(T, num_trials)``.

    Example:
        >>> discounted_returns(torch.tensor([[1.0], [1.0], [1.0]]), 0.5).squeeze(1).tolist()
        [1.75, 1.5, 1.0]
    """
    out = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


def gae(rewards: Tensor, values: Tensor, *, gamma: float, lam: float) -> Tensor:
    """Generalized advantage estimation (Schulman et al., 2016) over whole trials.

    ``δ_t = r_t + γ V(s_{t+1}) − V(s_t)`` with ``V = 0`` after the trial's last step, and
    ``A_t = δ_t + γλ A_{t+1}``. ``lam = 1`` gives ``G_t − V(s_t)``; ``lam = 0`` gives ``δ_t``.

    Args:
        rewards: ``(T, num_trials)``.
        values: ``(T, num_trials)`` value estimates of the states the actions were taken in.
        gamma: discount factor.
        lam: GAE's λ.

    Returns:
        ``(T, num_trials)`` advantages (add ``values`` for the value targets).

    Example:
        >>> r, v = torch.tensor([[1.0], [1.0]]), torch.tensor([[0.5], [0.5]])
        >>> gae(r, v, gamma=1.0, lam=1.0).squeeze(1).tolist()
        [1.5, 0.5]
    """
    if rewards.shape != values.shape:
        raise ValueError(
            f"rewards {tuple(rewards.shape)} and values {tuple(values.shape)} must have the same "
            "(T, num_trials) shape"
        )
    advantages = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[0])
    next_value = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
        next_value = values[t]
    return advantages
