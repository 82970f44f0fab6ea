"""The RL² experiments (``mlcourse train rl2-bandit`` / ``rl2-mdp``): the learner that trains
:class:`mlcourse.algorithms.rl2.RL2Policy` with :func:`mlcourse.algorithms.rl2.ppo_update`, and its
recipes."""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping

import torch
from torch import Tensor

from mlcourse.algorithms.rl2 import (
    EVAL_SEED,
    RL2Config,
    RL2Policy,
    evaluate,
    make_envs,
    ppo_update,
    run_trials,
)
from mlcourse.experiments.learner import Learner, Weights, loaded
from mlcourse.experiments.training import TrainingDiverged
from mlcourse.options import positive_int
from mlcourse.runtime import make_adam, restore_generator

EXPERIMENTS: dict[str, dict] = {
    "rl2-bandit": {"task": "bandit"},
    # MDPs: a larger entropy bonus than the bandits' default keeps the policy exploring long
    # enough to learn to plan, and a larger step size learns faster (docs/reproductions.md).
    "rl2-mdp": {
        "task": "mdp",
        "steps": 3000,
        "lr": 2e-3,
        "entropy_coef": 0.05,
        "entropy_decay_steps": 3000,
        "anneal_lr": True,
    },
}
DESCRIPTIONS = {
    "rl2-bandit": "RL² (GRU + PPO over trials) on Bernoulli bandits",
    "rl2-mdp": "RL² (GRU + PPO over trials) on random tabular MDPs",
}


class RL2Learner(Learner):
    """Policy, optimizer, environments and generators of one RL² run (the learner type of
    :mod:`mlcourse.experiments.learner`).

    Args:
        config: the run's :class:`mlcourse.algorithms.rl2.RL2Config`.
        device: where the policy and the environments live.
    """

    CONFIG = RL2Config
    FITS = "the same hidden size, number of states and number of actions"

    def __init__(self, config: RL2Config, device: torch.device | str = "cpu"):
        self.config = config
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.policy = RL2Policy(
                config.obs_size, config.action_size, config.hidden_size, config.task_size
            )
        self.policy.to(self.device)
        self.policy.bf16 = config.bf16
        self.optimizer = make_adam(self.policy.parameters(), lr=config.lr)
        self.envs = make_envs(config, config.trials_per_step, self.device)
        self.envs.reset(seed=config.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self._returns: list[float] = []
        self.last_stats: dict[str, float] = {}

    def parameters(self):
        return self.policy.parameters()

    def entropy_coef(self, step: int) -> float:
        decay = self.config.entropy_decay_steps
        return self.config.entropy_coef * max(0.0, 1.0 - step / decay)

    def lr(self, step: int) -> float:
        if not self.config.anneal_lr:
            return self.config.lr
        progress = min(1.0, step / self.config.entropy_decay_steps)
        return self.config.lr * (1.0 - 0.9 * progress)

    def step(self, step: int) -> Tensor:
        """One PPO iteration: a batch of fresh trials, then the update. Returns the loss."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr(step)
        self.policy.eval()
        try:
            trials = run_trials(self.policy, self.envs, generator=self.generator)
        except RuntimeError as err:  # sampling from NaN probabilities, after a bad update
            if all(bool(torch.isfinite(p).all()) for p in self.policy.parameters()):
                raise
            raise TrainingDiverged("the policy's parameters are not finite") from err
        self.policy.train()
        stats = ppo_update(
            self.policy,
            self.optimizer,
            trials,
            self.config,
            entropy_coef=self.entropy_coef(step),
            generator=self.generator,
        )
        if not math.isfinite(stats["loss"]):
            raise TrainingDiverged("the PPO loss is not finite")
        self._returns.append(trials.returns.mean().item())
        self.last_stats = stats
        return torch.tensor(stats["loss"])

    def metrics(self) -> dict[str, float]:
        """Mean trial return of the training batches since the last call, and the last
        update's statistics (logged by :func:`mlcourse.experiments.training.train`)."""
        out = {"trial_return": sum(self._returns) / max(len(self._returns), 1)}
        self._returns = []
        out.update({k: round(v, 5) for k, v in self.last_stats.items() if k != "loss"})
        return out

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "env_generator": self.envs.generator.get_state(),
            "generator": self.generator.get_state(),
        }

    def weights(self) -> Weights:
        return {"policy": self.policy.state_dict()}

    def _incoming_weights(self, own: Weights, weights: Mapping) -> Mapping[str, Mapping]:
        """The tasks may differ in trial length (e.g. ``num_episodes``) but not in the
        policy's shapes. When only one of the two runs has a privileged critic, the agent (GRU
        and policy head) and the value scale are taken and this run's value head starts
        afresh."""
        mine, theirs = own["policy"], dict(weights["policy"])
        if ("critic.out.weight" in theirs) != bool(self.policy.task_size):
            critic = ("critic.", "value_head.")
            theirs = {k: v for k, v in theirs.items() if not k.startswith(critic)}
            theirs.update({k: v for k, v in mine.items() if k.startswith(critic)})
        return {"policy": theirs}

    @classmethod
    def network(cls, config: RL2Config, weights: Weights, device=None) -> RL2Policy:
        policy = RL2Policy(
            config.obs_size, config.action_size, config.hidden_size, config.task_size
        )
        return loaded(policy, weights["policy"], device)

    @staticmethod
    def add_eval_args(parser: argparse.ArgumentParser, defaults: Mapping) -> None:
        if defaults.get("task", RL2Config.task) == "bandit":
            parser.add_argument(
                "--arms", type=positive_int, default=None, help="k (default: the run's)"
            )
            parser.add_argument(
                "--pulls", type=positive_int, default=None, help="n (default: the run's)"
            )
            parser.add_argument(
                "--episodes", type=positive_int, default=1000, help="held-out bandits (trials)"
            )
        else:
            parser.add_argument(
                "--episodes-per-trial",
                type=positive_int,
                default=None,
                help="n (default: the run's)",
            )
            parser.add_argument(
                "--trials", type=positive_int, default=1000, help="held-out MDPs (trials)"
            )
        parser.add_argument("--greedy", action="store_true", help="most likely action, no sampling")
        parser.add_argument("--seed", type=int, default=EVAL_SEED, help="seed of the tasks")

    def evaluate(self, options: argparse.Namespace) -> dict:
        c = self.config
        if c.task == "bandit":
            sizes = {
                "num_arms": c.num_arms if options.arms is None else options.arms,
                "num_pulls": c.num_pulls if options.pulls is None else options.pulls,
            }
            trials = options.episodes
        else:
            n = options.episodes_per_trial
            sizes = {"num_episodes": c.num_episodes if n is None else n}
            trials = options.trials
        config = dataclasses.replace(c, **sizes)
        figures = evaluate(
            self.policy, config, num_trials=trials, seed=options.seed, greedy=options.greedy
        )
        return {**sizes, "trials": trials, "greedy": options.greedy, **figures}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        restore_generator(self.envs.generator, state["env_generator"])
        restore_generator(self.generator, state["generator"])
