"""Score-function surrogates whose derivatives estimate the policy gradient, to any order.

Introduced in lesson 07 (``notebooks/07_maml_rl.ipynb``).

The expected return J(θ) = E_{τ∼π_θ}[R(τ)] has gradient E[R(τ) ∇ log π_θ(τ)] (the score
function, or REINFORCE, estimator). The usual *surrogate* ``mean(log π(a|s) · R)`` has that
gradient, but its second derivative misses the term that comes from the sampling distribution
itself, so MAML-RL built on it gets the wrong meta-gradient. DiCE (Foerster et al., 2018) fixes
this with the "magic box" ☐(x) = exp(x − stop_gradient(x)): ☐ evaluates to 1, yet
∇☐(x) = ☐(x)∇x, so every derivative of ``☐(Σ log π) · R`` is an unbiased estimate of the
same derivative of J.
"""

from __future__ import annotations

import torch
from torch import Tensor


def magic_box(x: Tensor) -> Tensor:
    """DiCE's ☐(x) = exp(x − x.detach()): equal to 1, with ∇☐(x) = ☐(x) ∇x.

    Example:
        >>> x = torch.tensor(0.7, requires_grad=True)
        >>> y = magic_box(x)
        >>> y.item(), torch.autograd.grad(y, x)[0].item()
        (1.0, 1.0)
    """
    return torch.exp(x - x.detach())


def reinforce_surrogate(logp: Tensor, returns: Tensor) -> Tensor:
    """The plain REINFORCE surrogate ``−mean(Σ_t log π(a_t|s_t) · G_t)``, to minimise.

    Its gradient is (minus) the score-function estimate of ∇J; its second derivative is *not*
    an estimate of ∇²J (use :func:`dice_objective` for that).

    Args:
        logp: ``(T, N)`` log-probabilities of the actions taken (N trajectories).
        returns: ``(T, N)`` returns-to-go G_t (or advantages), treated as constants.

    Returns:
        A scalar.
    """
    return -(logp * returns.detach()).sum(0).mean()


def dice_objective(
    logp: Tensor, rewards: Tensor, *, gamma: float = 1.0, baseline: Tensor | None = None
) -> Tensor:
    """DiCE's surrogate for the expected discounted return, to *maximise*.

    ``Σ_t γ^t ☐(Σ_{t'≤t} log π(a_t'|s_t')) r_t``, each reward weighted by the magic box of the
    log-probabilities of the actions that caused it, and with a ``baseline`` the
    variance-reducing term ``Σ_t γ^t (1 − ☐(log π(a_t|s_t))) b_t`` (Mao et al., 2019), which
    changes no expectation. It evaluates to the sampled discounted return; its derivatives of
    every order are unbiased estimates of those of the expected return.

    Args:
        logp: ``(T, N)`` log-probabilities of the actions taken, differentiable in θ.
        rewards: ``(T, N)``; zero after a trajectory's end.
        gamma: discount factor.
        baseline: optional ``(T, N)`` state-value estimates (constants: no gradient flows
            into them, even from a critic's output).

    Returns:
        The mean over the N trajectories, a scalar.

    Example:
        >>> logp = torch.log(torch.tensor([[0.5], [0.25]])).requires_grad_()
        >>> dice_objective(logp, torch.tensor([[1.0], [2.0]])).item()
        3.0
    """
    if logp.shape != rewards.shape:
        raise ValueError(
            f"logp {tuple(logp.shape)} and rewards {tuple(rewards.shape)} must both be (T, N)"
        )
    discount = gamma ** torch.arange(rewards.shape[0]).to(rewards)[:, None]  # (T, 1)
    cumulative = torch.cumsum(logp, dim=0)
    objective = (magic_box(cumulative) * rewards * discount).sum(0)
    if baseline is not None:
        objective = objective + ((1.0 - magic_box(logp)) * baseline.detach() * discount).sum(0)
    return objective.mean()


def lvc_objective(logp: Tensor, advantages: Tensor) -> Tensor:
    """The low-variance curvature surrogate of ProMP (Rothfuss et al., 2019), to maximise.

    ``Σ_t ☐(log π(a_t|s_t)) A_t``: each step's magic box holds only that step's
    log-probability. Its gradient is the REINFORCE gradient with advantages ``A_t``, like
    DiCE's; its second derivative keeps each step's own curvature but drops the cross terms
    between steps, trading DiCE's unbiased but high-variance Hessian estimate for a biased,
    much less noisy one.

    Args:
        logp: ``(T, N)`` log-probabilities of the actions taken.
        advantages: ``(T, N)`` advantage estimates (constants: no gradient flows into them).

    Returns:
        The mean over trajectories, a scalar.
    """
    if logp.shape != advantages.shape:
        raise ValueError(
            f"logp {tuple(logp.shape)} and advantages {tuple(advantages.shape)} must both be (T, N)"
        )
    return (magic_box(logp) * advantages.detach()).sum(0).mean()
