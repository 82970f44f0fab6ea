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

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from mlcourse.envs import Navigation2DVectorEnv
from mlcourse.learner import Learner, Weights
from mlcourse.options import (
    check_config,
    nonnegative_float,
    nonnegative_int,
    option,
    parse_widths,
    positive_int,
)
from mlcourse.rl.dice import dice_objective, lvc_objective
from mlcourse.rl.policies import GaussianMLPPolicy, gaussian_log_prob, linear_feature_values
from mlcourse.training import make_adam, restore_generator

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


ALGORITHMS = ("maml", "fomaml", "reptile", "pretrain")
EVAL_SEED = 20_170_309  # held-out goals: a generator no training run uses


@dataclass
class NavConfig:
    """Hyperparameters of a 2D-navigation meta-RL run (each is a ``mlcourse train`` option)."""

    algorithm: str = option("maml", f"one of {', '.join(ALGORITHMS)}", choices=ALGORITHMS)
    seed: int = option(0, "seed of the initialisation, the goals and the action noise")
    steps: int = option(500, "meta-iterations", min=1)
    meta_batch_size: int = option(20, "goals per meta-iteration", min=1)
    trajectories: int = option(20, "trajectories per goal for each policy-gradient estimate", min=1)
    inner_lr: float = option(0.1, "step size of the inner policy-gradient step", min=0)
    gamma: float = option(0.99, "discount factor", min=0, max=1)
    outer_lr: float = option(
        3e-4, "Adam step size of the outer loop (Reptile: interpolation ε)", above=0
    )
    log_std_lr: float = option(
        0.0,
        "Adam step size of the policy's log σ alone (0: outer_lr, like every other parameter)",
        min=0,
    )
    epochs: int = option(
        5, "PPO epochs per meta-iteration (MAML, first-order MAML, pretraining)", min=1
    )
    clip: float = option(0.2, "PPO clipping ε", above=0)
    max_grad_norm: float = option(1.0, "gradient clipping (global norm)", above=0)
    pre_kl_coef: float = option(
        1.0, "MAML: penalty on KL(old ‖ new) of the pre-update policy (a trust region)", min=0
    )
    estimator: str = option(
        "dice", f"MAML's inner surrogate: one of {', '.join(ESTIMATORS)}", choices=ESTIMATORS
    )
    reptile_inner_steps: int = option(3, "Reptile: policy-gradient steps per goal", min=1)
    num_inner_steps: int = option(
        1,
        "MAML, first-order MAML: policy-gradient steps of the inner loop while meta-training"
        " (the first of inner_lr, the later ones of inner_lr / 2, as at test time)",
        min=1,
    )
    hidden: str = option("100,100", "hidden layer widths, comma separated", widths=True)
    action_scale: float = option(
        1.0,
        "the environment gets action_scale × the policy's action (0.1: the policy acts in units"
        " of the ±0.1 action range, as rllab's normalize() in the MAML paper's code)",
        above=0,
    )
    checkpoint_every: float = option(30.0, "seconds between checkpoints", min=0)
    log_every: int = option(5, "iterations between log lines", min=1)

    def __post_init__(self):
        check_config(self)
        if self.num_inner_steps > 1 and self.algorithm not in ("maml", "fomaml"):
            raise ValueError(
                f"num_inner_steps={self.num_inner_steps} is for MAML and first-order MAML: Reptile "
                "takes reptile_inner_steps, and pretraining has no inner loop"
            )

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return parse_widths(self.hidden)


# New runs act in units of the action range, as the paper's code does (NavConfig's own default,
# 1.0, is what runs saved before the option existed used, so they load unchanged).
EXPERIMENTS: dict[str, dict] = {
    "maml-rl-nav": {"algorithm": "maml", "action_scale": 0.1},
    "fomaml-rl-nav": {"algorithm": "fomaml", "action_scale": 0.1},
    "reptile-rl-nav": {"algorithm": "reptile", "outer_lr": 0.1, "action_scale": 0.1},
    "pretrain-nav": {"algorithm": "pretrain", "action_scale": 0.1},
}
DESCRIPTIONS = {
    "maml-rl-nav": "MAML for RL (DiCE inner step, PPO outer step) on 2D navigation",
    "fomaml-rl-nav": "first-order MAML for RL on 2D navigation",
    "reptile-rl-nav": "Reptile for RL (policy-gradient inner steps) on 2D navigation",
    "pretrain-nav": "baseline: one policy trained on all goals jointly (PPO), adapted at test time",
}


def sample_goals(num_goals: int, generator: torch.Generator, device=None) -> Tensor:
    """``(num_goals, 2)`` goals U[−0.5, 0.5]², drawn with ``generator``."""
    goals = torch.rand(num_goals, 2, generator=generator) - 0.5
    return goals.to(device) if device is not None else goals


class NavLearner(Learner):
    """Policy, optimizer and generators of one 2D-navigation run (the learner type of
    :mod:`mlcourse.learner`).

    Args:
        config: the run's :class:`NavConfig`.
        device: where the policy and the environments live.
    """

    CONFIG = NavConfig
    FITS = "the same hidden widths"

    def __init__(self, config: NavConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.policy = GaussianMLPPolicy(2, 2, config.hidden_sizes)
        self.policy.to(self.device)
        self.params = dict(self.policy.named_parameters())
        self.optimizer = None if config.algorithm == "reptile" else self._make_optimizer()
        self.goal_generator = torch.Generator().manual_seed(config.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self._stats: dict[str, list[float]] = {}

    def _make_optimizer(self):
        c = self.config
        if not c.log_std_lr:
            return make_adam(self.policy.parameters(), lr=c.outer_lr)
        # Adam moves each parameter by about its step size per update whatever the gradient's
        # size, so log σ, pushed the same way at every iteration, shrinks by at most
        # outer_lr × epochs per meta-iteration; its own step size lifts that limit.
        rest = [p for n, p in self.policy.named_parameters() if n != "log_std"]
        groups = [{"params": rest}, {"params": [self.policy.log_std], "lr": c.log_std_lr}]
        return make_adam(groups, lr=c.outer_lr)

    def parameters(self):
        return self.policy.parameters()

    def _detached(self) -> Params:
        return {n: p.detach() for n, p in self.params.items()}

    def _note(self, **figures: float) -> None:
        for key, value in figures.items():
            self._stats.setdefault(key, []).append(value)

    def step(self, step: int) -> Tensor:
        c = self.config
        goals = sample_goals(c.meta_batch_size, self.goal_generator, self.device)
        if c.algorithm == "reptile":
            return self._reptile_step(goals)
        pretrain = c.algorithm == "pretrain"
        sampled, adapted = adaptation_rollouts(
            self.policy,
            self._detached(),
            goals,
            c.trajectories,
            step_sizes(c.inner_lr, 0 if pretrain else c.num_inner_steps),
            gamma=c.gamma,
            generator=self.generator,
            action_scale=c.action_scale,
        )
        pre, post = sampled[0], sampled[-1]
        params = None if pretrain else self.params
        # First order over several steps: θ_k(θ) = θ + (θ_k − θ) with the displacement held
        # constant, so the gradient of the post-adaptation loss at θ_k is applied to θ.
        shift = (
            {n: (adapted[n] - p.detach()) for n, p in self.params.items()}
            if c.num_inner_steps > 1 and c.algorithm == "fomaml"
            else None
        )
        advantages = normalized_advantages(post, c.gamma)
        old = self._detached()
        for _ in range(c.epochs):
            if params is None:  # joint training: PPO on the shared policy itself
                logp = log_prob(self.policy, self.params, post.obs, post.actions)
                loss = clipped_loss(logp, post, advantages, c.clip)
            elif shift is not None:
                at = {n: p + shift[n] for n, p in self.params.items()}
                logp = log_prob_per_goal(self.policy, at, post.obs, post.actions)
                loss = clipped_loss(logp, post, advantages, c.clip)
            else:
                loss = outer_loss(
                    self.policy,
                    params,
                    pre,
                    post,
                    advantages,
                    inner_lr=c.inner_lr,
                    clip=c.clip,
                    gamma=c.gamma,
                    first_order=c.algorithm == "fomaml",
                    estimator=c.estimator,
                    mid=sampled[1:-1],
                )
            if params is not None and c.pre_kl_coef > 0:
                loss = loss + c.pre_kl_coef * pre_update_kl(self.policy, old, params, pre)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.policy.parameters(), c.max_grad_norm)
            self.optimizer.step()
        self._note(pre_return=pre.returns.mean().item(), post_return=post.returns.mean().item())
        return loss.detach()

    def _reptile_step(self, goals: Tensor) -> Tensor:
        c = self.config
        current, per_goal = self._detached(), False
        first = None
        for _ in range(c.reptile_inner_steps):
            trajectories = rollout(
                self.policy,
                current,
                goals,
                c.trajectories,
                per_goal=per_goal,
                generator=self.generator,
                action_scale=c.action_scale,
            )
            first = trajectories if first is None else first
            with torch.no_grad():
                current = adapt(
                    self.policy,
                    current,
                    trajectories,
                    inner_lr=c.inner_lr,
                    gamma=c.gamma,
                    per_goal=per_goal,
                    first_order=True,
                )
            per_goal = True
        with torch.no_grad():
            distance = 0.0
            for name, p in self.params.items():
                step = (current[name] - p).mean(0)
                p.add_(c.outer_lr * step)
                distance += float(step.pow(2).sum())
        self._note(
            pre_return=first.returns.mean().item(), post_return=trajectories.returns.mean().item()
        )
        return torch.tensor(distance**0.5)

    def metrics(self) -> dict[str, float]:
        out = {k: sum(v) / len(v) for k, v in self._stats.items() if v}
        self._stats = {}
        return out

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "goal_generator": self.goal_generator.get_state(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        restore_generator(self.goal_generator, state["goal_generator"])
        restore_generator(self.generator, state["generator"])

    def weights(self) -> Weights:
        return {"policy": self.policy.state_dict()}

    @classmethod
    def network(cls, config: NavConfig, weights: Weights, device=None) -> GaussianMLPPolicy:
        policy = GaussianMLPPolicy(2, 2, config.hidden_sizes)
        policy.load_state_dict(weights["policy"])
        return policy.to(device).eval() if device is not None else policy.eval()

    @staticmethod
    def add_eval_args(parser: argparse.ArgumentParser, defaults: Mapping) -> None:
        parser.add_argument(
            "--inner-steps", type=nonnegative_int, default=3, help="adaptation steps"
        )
        parser.add_argument(
            "--trajectories", type=positive_int, default=40, help="trajectories per goal"
        )
        parser.add_argument("--goals", type=positive_int, default=40, help="held-out goals")
        parser.add_argument(
            "--untrained",
            action="store_true",
            help="evaluate the run's initial parameters instead (the random-initialisation "
            "baseline)",
        )
        parser.add_argument("--seed", type=int, default=EVAL_SEED, help="seed of the goals")
        parser.add_argument(
            "--later-inner-lr",
            type=nonnegative_float,
            default=None,
            help="step size of the steps after the first (default: half the run's inner_lr, "
            "as in the MAML paper's test script)",
        )

    def evaluate(self, options: argparse.Namespace) -> dict:
        figures = evaluate_learner(
            self,
            inner_steps=options.inner_steps,
            num_trajectories=options.trajectories,
            num_goals=options.goals,
            seed=options.seed,
            untrained=options.untrained,
            later_inner_lr=options.later_inner_lr,
        )
        return {
            "inner_steps": options.inner_steps,
            "trajectories": options.trajectories,
            "goals": options.goals,
            "untrained": options.untrained,
            **figures,
        }


def evaluate_learner(
    learner: NavLearner,
    *,
    inner_steps: int = 3,
    num_trajectories: int = 40,
    num_goals: int = 40,
    seed: int = EVAL_SEED,
    untrained: bool = False,
    later_inner_lr: float | None = None,
) -> dict:
    """The MAML paper's protocol on ``num_goals`` held-out goals: the average return after
    0, 1, ..., ``inner_steps`` policy-gradient steps, the first of size ``config.inner_lr``,
    the later ones of ``later_inner_lr`` (default: half of it, see :func:`evaluate`).

    With ``untrained``, the same protocol from the run's *initial* parameters (the random
    initialisation baseline)."""
    c = learner.config
    policy, params = learner.policy, learner._detached()
    if untrained:
        policy = NavLearner(c, learner.device).policy
        params = {n: p.detach() for n, p in policy.named_parameters()}
    goals = sample_goals(num_goals, torch.Generator().manual_seed(seed), learner.device)
    generator = torch.Generator(device=learner.device).manual_seed(seed + 1)
    returns = evaluate(
        policy,
        params,
        goals,
        inner_steps=inner_steps,
        num_trajectories=num_trajectories,
        inner_lr=c.inner_lr,
        gamma=c.gamma,
        generator=generator,
        action_scale=c.action_scale,
        later_inner_lr=later_inner_lr,
    )
    later = step_sizes(c.inner_lr, 2, later_inner_lr)[1]
    return {"returns": returns, "inner_lr": c.inner_lr, "later_inner_lr": later}
