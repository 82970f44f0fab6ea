"""MAML for reinforcement learning on 2D navigation (Finn et al., 2017, section 5.3).

A task is a goal; adaptation is policy-gradient steps on trajectories sampled in that task. The
building blocks, all batched over goals:

- :func:`rollout`: ``M`` trajectories per goal from one policy per goal (shared or adapted
  parameters), all goals at once on :class:`mlcourse.envs.Navigation2DVectorEnv`;
- :func:`adapt`: one inner step per goal, θ'_g = θ + α ∇_θ J_g(θ), where J_g is DiCE's
  surrogate (:func:`mlcourse.rl.dice.dice_objective`) with the linear feature baseline, so that
  the meta-gradient through θ' includes the second-order terms of the policy gradient;
- :func:`outer_loss`: the clipped PPO objective of the adapted policies on trajectories they
  sampled themselves, differentiated through the adaptation;
- :func:`evaluate`: returns after 0, 1, 2, ... adaptation steps on held-out goals.

Parameters are ``dict[str, Tensor]``; per-goal parameters carry a leading goal dimension
``(G, *shape)`` and run under ``vmap``, as in :mod:`mlcourse.maml`. Introduced in lesson 07.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from mlcourse.envs import Navigation2DVectorEnv
from mlcourse.rl.dice import dice_objective
from mlcourse.rl.policies import linear_feature_values

Params = dict[str, Tensor]


def gaussian_log_prob(mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
    """log N(actions; mean, exp(log_std)²), summed over the last dimension."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def log_prob(policy: nn.Module, params: Params, obs: Tensor, actions: Tensor) -> Tensor:
    """log π_params(actions | obs) for one set of parameters; ``(...,)``."""
    mean, log_std = functional_call(policy, params, (obs,))
    return gaussian_log_prob(mean, log_std, actions)


def log_prob_per_goal(policy: nn.Module, params: Params, obs: Tensor, actions: Tensor) -> Tensor:
    """:func:`log_prob` with one parameter set per goal: ``params`` ``(G, *shape)``, ``obs``
    ``(G, ..., obs_size)``; returns ``(G, ...)``."""
    return vmap(lambda p, o, a: log_prob(policy, p, o, a))(params, obs, actions)


@dataclass
class Trajectories:
    """``M`` trajectories in each of ``G`` goals, goal first, then time.

    Attributes:
        obs: ``(G, T, M, 2)`` observations the actions were taken in.
        actions: ``(G, T, M, 2)`` (unclipped samples; the environment clips them).
        rewards: ``(G, T, M)``, zero after a trajectory's end.
        mask: ``(G, T, M)``, 1 while the trajectory is alive.
        logp: ``(G, T, M)`` log-probabilities of the actions when they were sampled.
        goals: ``(G, 2)``.
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    logp: Tensor
    goals: Tensor

    @property
    def returns(self) -> Tensor:
        """``(G, M)`` undiscounted return of each trajectory."""
        return self.rewards.sum(1)

    def returns_to_go(self, gamma: float) -> Tensor:
        """``(G, T, M)`` discounted returns-to-go."""
        out = torch.zeros_like(self.rewards)
        running = torch.zeros_like(self.rewards[:, 0])
        for t in range(self.rewards.shape[1] - 1, -1, -1):
            running = self.rewards[:, t] + gamma * running
            out[:, t] = running
        return out

    def baseline(self, gamma: float) -> Tensor:
        """``(G, T, M)`` linear-feature-baseline values, fitted per goal to these returns."""
        returns = self.returns_to_go(gamma)
        return torch.stack(
            [
                linear_feature_values(self.obs[g], returns[g], self.mask[g])
                for g in range(self.obs.shape[0])
            ]
        )


@torch.no_grad()
def rollout(
    policy: nn.Module,
    params: Params,
    goals: Tensor,
    num_trajectories: int,
    *,
    per_goal: bool = False,
    generator: torch.Generator | None = None,
    max_steps: int = 100,
) -> Trajectories:
    """Samples ``num_trajectories`` trajectories in each goal, all goals at once.

    Args:
        policy: a :class:`mlcourse.rl.policies.GaussianMLPPolicy` (its structure is used).
        params: shared parameters, or with ``per_goal`` one set per goal ``(G, *shape)``.
        goals: ``(G, 2)``.
        num_trajectories: M, trajectories per goal.
        per_goal: whether ``params`` has a leading goal dimension.
        generator: for the action noise (on the goals' device).
        max_steps: the episode limit.

    Returns:
        :class:`Trajectories` (time cut at the last step any trajectory was alive).
    """
    G, M, device = goals.shape[0], num_trajectories, goals.device
    envs = Navigation2DVectorEnv(G * M, max_steps=max_steps, device=device)
    obs, _ = envs.reset(options={"goal": goals.repeat_interleave(M, dim=0)})
    alive = torch.ones(G * M, dtype=torch.bool, device=device)
    record: dict[str, list[Tensor]] = {k: [] for k in ("obs", "actions", "rewards", "mask")}
    record["logp"] = []

    def mean_and_log_std(o):
        if per_goal:
            return vmap(lambda p, x: functional_call(policy, p, (x,)))(params, o)
        return functional_call(policy, params, (o,))

    for _ in range(max_steps):
        o = obs.view(G, M, -1).to(goals.dtype)
        mean, log_std = mean_and_log_std(o)
        noise = torch.randn(mean.shape, generator=generator, device=device)
        actions = mean + noise * torch.exp(log_std)
        obs, reward, terminated, truncated, _ = envs.step(actions.reshape(G * M, -1))
        mask = alive.view(G, M).to(goals.dtype)
        record["obs"].append(o)
        record["actions"].append(actions)
        record["rewards"].append(reward.view(G, M).to(goals.dtype) * mask)
        record["mask"].append(mask)
        record["logp"].append(gaussian_log_prob(mean, log_std, actions) * mask)
        alive = alive & ~(terminated | truncated)
        if not alive.any():
            break
    stacked = {k: torch.stack(v, dim=1) for k, v in record.items()}
    return Trajectories(**stacked, goals=goals)


def inner_objective(
    policy: nn.Module, params: Params, trajectories: Trajectories, *, gamma: float, per_goal: bool
) -> Tensor:
    """Σ_g J_g, where J_g is DiCE's surrogate for goal g's policy-gradient objective.

    As in the MAML paper's code, the inner step follows the *normalised* policy gradient: per
    goal, the advantages G_t − b_t are centred and scaled to unit variance over the valid steps,
    and the objective is averaged over steps. Both are constant rescalings (a shifted baseline,
    a scaled return), so DiCE's derivatives keep their meaning: ∇J_g is the normalised
    REINFORCE gradient and ∇²J_g the matching second-order term.
    """
    t = trajectories
    if per_goal:
        logp = log_prob_per_goal(policy, params, t.obs, t.actions)
    else:
        logp = log_prob(policy, params, t.obs, t.actions)
    logp = logp * t.mask
    baseline = t.baseline(gamma)
    raw = (t.returns_to_go(gamma) - baseline) * t.mask
    steps = t.mask.sum((1, 2))  # (G,)
    mean = raw.sum((1, 2)) / steps
    var = ((raw - mean[:, None, None]) ** 2 * t.mask).sum((1, 2)) / steps.clamp(min=2)
    scale = 1.0 / (var.sqrt() + 1e-8)  # (G,)
    rewards = t.rewards * scale[:, None, None]
    shifted = (baseline + mean[:, None, None]) * scale[:, None, None] * t.mask
    per_trajectory_steps = steps / t.mask.shape[2]  # average trajectory length per goal
    total = logp.new_zeros(())
    for g in range(t.mask.shape[0]):
        objective = dice_objective(logp[g], rewards[g], gamma=gamma, baseline=shifted[g])
        total = total + objective / per_trajectory_steps[g]
    return total


def adapt(
    policy: nn.Module,
    params: Params,
    trajectories: Trajectories,
    *,
    inner_lr: float,
    gamma: float = 0.99,
    per_goal: bool = False,
    first_order: bool = False,
) -> Params:
    """One policy-gradient step per goal: θ'_g = θ_g + inner_lr ∇ J_g(θ_g).

    Args:
        policy: the policy module (structure only).
        params: shared θ, or per-goal θ_g ``(G, *shape)`` with ``per_goal``.
        trajectories: sampled with these parameters in these goals.
        inner_lr: the step size α.
        gamma: discount of the surrogate and of the baseline's returns.
        per_goal: whether ``params`` is per goal.
        first_order: treat the inner gradient as a constant (first-order MAML).

    Returns:
        Per-goal parameters ``{name: (G, *shape)}``, differentiable with respect to ``params``
        (to second order unless ``first_order``).
    """
    G = trajectories.goals.shape[0]
    batched = params if per_goal else {n: p.expand(G, *p.shape) for n, p in params.items()}
    differentiable = torch.is_grad_enabled() and not first_order
    with torch.enable_grad():
        at = {
            n: p if differentiable and p.requires_grad else p.detach().requires_grad_()
            for n, p in batched.items()
        }
        objective = inner_objective(policy, at, trajectories, gamma=gamma, per_goal=True)
        grads = torch.autograd.grad(objective, list(at.values()), create_graph=differentiable)
    return {n: p + inner_lr * g for (n, p), g in zip(batched.items(), grads, strict=True)}


def normalized_advantages(trajectories: Trajectories, gamma: float) -> Tensor:
    """Returns-to-go minus the linear baseline, normalised over the valid steps of the batch."""
    t = trajectories
    advantages = (t.returns_to_go(gamma) - t.baseline(gamma)) * t.mask
    valid = t.mask.bool()
    mean, std = advantages[valid].mean(), advantages[valid].std()
    return (advantages - mean) / (std + 1e-8) * t.mask


def outer_loss(
    policy: nn.Module,
    params: Params,
    pre: Trajectories,
    post: Trajectories,
    advantages: Tensor,
    *,
    inner_lr: float,
    clip: float,
    gamma: float = 0.99,
    first_order: bool = False,
) -> Tensor:
    """PPO's clipped objective (negated, to minimise) of the adapted policies on ``post``.

    θ'(θ) is recomputed from ``pre`` with :func:`adapt`, so the loss is differentiable in θ
    through the adaptation; the probability ratio compares π_θ'(θ) with the adapted policy
    that sampled ``post`` (``post.logp``).
    """
    adapted = adapt(policy, params, pre, inner_lr=inner_lr, gamma=gamma, first_order=first_order)
    logp = log_prob_per_goal(policy, adapted, post.obs, post.actions)
    ratio = torch.exp((logp - post.logp) * post.mask)
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip)
    surrogate = torch.minimum(ratio * advantages, clipped * advantages) * post.mask
    return -surrogate.sum() / post.mask.sum()


@torch.no_grad()
def evaluate(
    policy: nn.Module,
    params: Params,
    goals: Tensor,
    *,
    inner_steps: int = 3,
    num_trajectories: int = 40,
    inner_lr: float = 0.1,
    gamma: float = 0.99,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Average return per trajectory after 0, 1, ..., ``inner_steps`` adaptation steps.

    Step k samples ``num_trajectories`` trajectories per goal with the current (per-goal)
    parameters, records their mean return, then adapts on them.
    """
    returns = []
    current, per_goal = params, False
    for step in range(inner_steps + 1):
        trajectories = rollout(
            policy, current, goals, num_trajectories, per_goal=per_goal, generator=generator
        )
        returns.append(trajectories.returns.mean().item())
        if step < inner_steps:
            current = adapt(
                policy, current, trajectories, inner_lr=inner_lr, gamma=gamma, per_goal=per_goal
            )
            per_goal = True
    return returns
