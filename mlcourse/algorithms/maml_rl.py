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
``(G, *shape)`` and run under ``vmap``, as in :mod:`mlcourse.algorithms.maml`. Introduced in lesson
07.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from mlcourse.envs import Navigation2DVectorEnv
from mlcourse.rl.dice import dice_objective, lvc_objective
from mlcourse.rl.policies import gaussian_log_prob, linear_feature_values

Params = dict[str, Tensor]


def gaussian_kl(mean0: Tensor, log_std0: Tensor, mean1: Tensor, log_std1: Tensor) -> Tensor:
    """KL(N(mean0, std0²) ‖ N(mean1, std1²)), summed over the last dimension."""
    var0, var1 = torch.exp(2 * log_std0), torch.exp(2 * log_std1)
    return (log_std1 - log_std0 + (var0 + (mean0 - mean1) ** 2) / (2 * var1) - 0.5).sum(-1)


def pre_update_kl(policy: nn.Module, old: Params, params: Params, pre: Trajectories) -> Tensor:
    """Mean KL(π_old ‖ π_params) over the states of the pre-update trajectories: the trust
    region on the policy *before* adaptation (ProMP's inner KL; Rothfuss et al., 2019)."""
    mean0, log_std0 = functional_call(policy, old, (pre.obs,))
    mean1, log_std1 = functional_call(policy, params, (pre.obs,))
    kl = gaussian_kl(mean0.detach(), log_std0.detach(), mean1, log_std1)
    return (kl * pre.mask).sum() / pre.mask.sum()


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
    action_scale: float = 1.0,
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
        action_scale: the environment receives ``action_scale * a`` (then clips it to ±0.1)
            for the policy's action ``a``, as rllab's ``normalize`` wrapper in the MAML paper's
            code does (0.1: the policy acts in units of the action range). The trajectories
            record ``a`` itself.

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
        obs, reward, terminated, truncated, _ = envs.step(
            (action_scale * actions).reshape(G * M, -1)
        )
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


ESTIMATORS = ("dice", "lvc")


def inner_objective(
    policy: nn.Module,
    params: Params,
    trajectories: Trajectories,
    *,
    gamma: float,
    per_goal: bool,
    estimator: str = "dice",
) -> Tensor:
    """Σ_g J_g, where J_g is DiCE's surrogate for goal g's policy-gradient objective.

    As in the MAML paper's code, the inner step follows the *normalised* policy gradient: per
    goal, the advantages G_t − b_t are centred and scaled to unit variance over the valid steps,
    and the objective is averaged over steps. Both are constant rescalings (a shifted baseline,
    a scaled return), so DiCE's derivatives keep their meaning: ∇J_g is the normalised
    REINFORCE gradient and ∇²J_g the matching second-order term. ``estimator="lvc"`` uses
    ProMP's low-variance curvature surrogate instead (same gradient, a biased but far less
    noisy second derivative; :func:`mlcourse.rl.dice.lvc_objective`).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
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
    advantages = (raw - mean[:, None, None]) * scale[:, None, None] * t.mask
    discount = gamma ** torch.arange(t.mask.shape[1]).to(logp)  # (T,), logp's dtype and device
    total = logp.new_zeros(())
    for g in range(t.mask.shape[0]):
        if estimator == "dice":
            objective = dice_objective(logp[g], rewards[g], gamma=gamma, baseline=shifted[g])
        else:
            objective = lvc_objective(logp[g], advantages[g] * discount[:, None])
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
    estimator: str = "dice",
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
        estimator: the surrogate whose gradient is taken, ``"dice"`` or ``"lvc"``.

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
        objective = inner_objective(
            policy, at, trajectories, gamma=gamma, per_goal=True, estimator=estimator
        )
        grads = torch.autograd.grad(objective, list(at.values()), create_graph=differentiable)
    return {n: p + inner_lr * g for (n, p), g in zip(batched.items(), grads, strict=True)}


def step_sizes(inner_lr: float, num_steps: int, later_inner_lr: float | None = None) -> list:
    """The step size of each of ``num_steps`` inner steps: ``inner_lr`` for the first,
    ``later_inner_lr`` (default ``inner_lr / 2``, the MAML paper's test protocol) after it."""
    later = inner_lr / 2 if later_inner_lr is None else later_inner_lr
    return [inner_lr if k == 0 else later for k in range(num_steps)]


@torch.no_grad()
def adaptation_rollouts(
    policy: nn.Module,
    params: Params,
    goals: Tensor,
    num_trajectories: int,
    sizes: Sequence[float],
    *,
    gamma: float = 0.99,
    generator: torch.Generator | None = None,
    action_scale: float = 1.0,
) -> tuple[list[Trajectories], Params]:
    """Samples, adapts, samples again: the trajectories before adaptation and after each
    policy-gradient step of size ``sizes[k]`` (``len(sizes) + 1`` batches), and the final
    parameters (per goal after the first step; ``params`` itself if ``sizes`` is empty)."""
    sampled, current, per_goal = [], params, False
    for k in range(len(sizes) + 1):
        trajectories = rollout(
            policy,
            current,
            goals,
            num_trajectories,
            per_goal=per_goal,
            generator=generator,
            action_scale=action_scale,
        )
        sampled.append(trajectories)
        if k < len(sizes):
            current = adapt(
                policy, current, trajectories, inner_lr=sizes[k], gamma=gamma, per_goal=per_goal
            )
            per_goal = True
    return sampled, current


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
    estimator: str = "dice",
    mid: Sequence[Trajectories] = (),
) -> Tensor:
    """PPO's clipped objective (negated, to minimise) of the adapted policies on ``post``.

    θ'(θ) is recomputed from ``pre`` with :func:`adapt`, so the loss is differentiable in θ
    through the adaptation; the probability ratio compares π_θ'(θ) with the adapted policy
    that sampled ``post`` (``post.logp``).

    With ``mid`` (the trajectories sampled after each inner step but the last), the
    adaptation takes ``1 + len(mid)`` steps, the later ones of ``inner_lr / 2``:
    θ_{j+1} = θ_j + α_j ∇J(θ_j; τ_j), each recomputed from θ so that the meta-gradient runs
    through every step, (I + α_j H_j) per step with H_j the surrogate's Hessian estimate at
    θ_j from τ_j (MAML's usual form, which, as in the one-step case, leaves out how the
    sampling of τ_j itself depends on θ).
    """
    adapted, per_goal = params, False
    batches = (pre, *mid)
    for trajectories, size in zip(batches, step_sizes(inner_lr, len(batches)), strict=True):
        adapted = adapt(
            policy,
            adapted,
            trajectories,
            inner_lr=size,
            gamma=gamma,
            per_goal=per_goal,
            first_order=first_order,
            estimator=estimator,
        )
        per_goal = True
    logp = log_prob_per_goal(policy, adapted, post.obs, post.actions)
    return clipped_loss(logp, post, advantages, clip)


def clipped_loss(logp: Tensor, post: Trajectories, advantages: Tensor, clip: float) -> Tensor:
    """PPO's clipped objective, negated and averaged over the valid steps of ``post``, for
    the log-probabilities ``logp`` that the current parameters give its actions. The
    advantages are constants: no gradient flows into them."""
    advantages = advantages.detach()
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
    action_scale: float = 1.0,
    later_inner_lr: float | None = None,
) -> list[float]:
    """Average return per trajectory after 0, 1, ..., ``inner_steps`` adaptation steps.

    Step k samples ``num_trajectories`` trajectories per goal with the current (per-goal)
    parameters, records their mean return, then adapts on them: the first step with
    ``inner_lr``, the later ones with ``later_inner_lr`` (default ``inner_lr / 2``, the MAML
    paper's test protocol: its script runs rllab's VPG with ``init_learning_rate`` for the
    first step and half of it afterwards, 4000 steps = 40 trajectories per step).
    ``action_scale`` as in :func:`rollout` (the one the policy was trained with).
    """
    sampled, _ = adaptation_rollouts(
        policy,
        params,
        goals,
        num_trajectories,
        step_sizes(inner_lr, inner_steps, later_inner_lr),
        gamma=gamma,
        generator=generator,
        action_scale=action_scale,
    )
    return [trajectories.returns.mean().item() for trajectories in sampled]


# ---------------------------------------------------------------------------------------------
# Training: MAML, first-order MAML, Reptile, and joint pretraining


EVAL_SEED = 20_170_309  # held-out goals: a generator no training run uses


def sample_goals(num_goals: int, generator: torch.Generator, device=None) -> Tensor:
    """``(num_goals, 2)`` goals U[−0.5, 0.5]², drawn with ``generator``."""
    goals = torch.rand(num_goals, 2, generator=generator) - 0.5
    return goals.to(device) if device is not None else goals
