"""Policies and baselines for continuous-control meta-RL (MAML-RL, lesson 07).

- :class:`GaussianMLPPolicy`: the MAML paper's policy, an MLP (2 × 100 ReLU by default) giving
  the mean of a Gaussian with a learned, state-independent log standard deviation.
- :func:`linear_feature_values`: the linear feature baseline of Duan et al. (2016), fitted by
  ridge regression to the returns of one batch of trajectories and evaluated on them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mlcourse.models import MLP


def gaussian_log_prob(mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
    """log N(actions; mean, exp(log_std)²), summed over the last dimension.

    Example:
        >>> gaussian_log_prob(torch.zeros(2), torch.zeros(2), torch.zeros(2)).item()  # -log 2π
        -1.8378770351409912
    """
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


class GaussianMLPPolicy(nn.Module):
    """π(a | s) = Normal(MLP(s), exp(log_std)²), independently per action dimension.

    Args:
        obs_size: observation size.
        action_size: action size.
        hidden_sizes: widths of the hidden ReLU layers.
        init_std: initial standard deviation.

    Example:
        >>> policy = GaussianMLPPolicy(2, 2)
        >>> obs, actions = torch.zeros(7, 2), torch.zeros(7, 2)
        >>> policy.log_prob(obs, actions).shape
        torch.Size([7])
    """

    def __init__(
        self,
        obs_size: int,
        action_size: int,
        hidden_sizes: tuple[int, ...] = (100, 100),
        init_std: float = 1.0,
    ):
        super().__init__()
        self.mean = MLP(obs_size, action_size, hidden_sizes)
        self.log_std = nn.Parameter(torch.full((action_size,), math.log(init_std)))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """The Gaussian's mean ``(..., action_size)`` and log standard deviation."""
        return self.mean(obs), self.log_std.expand(*obs.shape[:-1], -1)

    def log_prob(self, obs: Tensor, actions: Tensor) -> Tensor:
        """log π(actions | obs), summed over action dimensions: ``(...,)``."""
        return gaussian_log_prob(*self(obs), actions)

    def sample(self, obs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One action per observation, drawn with ``generator``."""
        mean, log_std = self(obs)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + noise * torch.exp(log_std)


def linear_feature_values(
    obs: Tensor, returns: Tensor, mask: Tensor, *, ridge: float = 1e-5
) -> Tensor:
    """Value estimates from the linear feature baseline, fitted to this batch's returns.

    Features per step: ``[obs, obs², t/100, (t/100)², (t/100)³, 1]`` (Duan et al., 2016); the
    weights minimise the squared error to the returns over the steps where ``mask`` is 1, with a
    ridge penalty that grows until the system is well conditioned.

    Args:
        obs: ``(T, N, obs_size)``.
        returns: ``(T, N)`` returns-to-go.
        mask: ``(T, N)`` 1 while the trajectory is alive, 0 after its end.
        ridge: the initial ridge penalty.

    Returns:
        ``(T, N)`` values (0 after a trajectory's end).

    Example:
        >>> obs = torch.randn(5, 3, 2)
        >>> linear_feature_values(obs, torch.zeros(5, 3), torch.ones(5, 3)).abs().max() < 1e-4
        tensor(True)
    """
    T, N = returns.shape
    t = (torch.arange(T, dtype=obs.dtype, device=obs.device) / 100.0)[:, None, None].expand(T, N, 1)
    ones = torch.ones_like(t)
    features = torch.cat([obs, obs**2, t, t**2, t**3, ones], dim=-1) * mask[..., None]
    x = features.reshape(-1, features.shape[-1]).double()
    y = (returns * mask).reshape(-1).double()
    gram, target = x.T @ x, x.T @ y
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    for _ in range(5):
        try:
            weights = torch.linalg.solve(gram + ridge * eye, target)
            if torch.isfinite(weights).all():
                break
        except RuntimeError:  # singular: strengthen the penalty
            pass
        ridge *= 10.0
    else:
        weights = torch.zeros_like(target)
    return (features.double() @ weights).to(returns.dtype) * mask
