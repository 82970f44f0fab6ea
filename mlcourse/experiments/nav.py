"""The 2D-navigation experiments (``mlcourse train maml-rl-nav``, ``fomaml-rl-nav``,
``reptile-rl-nav``, ``pretrain-nav``): their config, the learner that meta-trains
:class:`mlcourse.rl.policies.GaussianMLPPolicy` with the estimators of
:mod:`mlcourse.algorithms.maml_rl`, and the MAML paper's evaluation protocol."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mlcourse.algorithms.maml_rl import (
    ESTIMATORS,
    EVAL_SEED,
    Params,
    adapt,
    adaptation_rollouts,
    clipped_loss,
    evaluate,
    log_prob,
    log_prob_per_goal,
    normalized_advantages,
    outer_loss,
    pre_update_kl,
    rollout,
    sample_goals,
    step_sizes,
)
from mlcourse.experiments.learner import Learner, Weights, loaded
from mlcourse.options import (
    check_config,
    nonnegative_float,
    nonnegative_int,
    option,
    parse_widths,
    positive_int,
)
from mlcourse.rl.policies import GaussianMLPPolicy
from mlcourse.runtime import make_adam, restore_generator

ALGORITHMS = ("maml", "fomaml", "reptile", "pretrain")


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


class NavLearner(Learner):
    """Policy, optimizer and generators of one 2D-navigation run (the learner type of
    :mod:`mlcourse.experiments.learner`).

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
        return loaded(policy, weights["policy"], device)

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
    the later ones of ``later_inner_lr`` (default: half of it, see
    :func:`mlcourse.algorithms.maml_rl.evaluate`).

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
