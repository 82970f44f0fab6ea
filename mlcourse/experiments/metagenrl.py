"""The MetaGenRL experiment (``mlcourse train metagenrl``): its config, and the learner that
meta-trains a :class:`mlcourse.algorithms.metagenrl.LearnedObjective` with a population of TD3
agents."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from mlcourse.algorithms.metagenrl import (
    ENVS,
    Agent,
    LearnedObjective,
    TD3Settings,
    meta_test,
    objective_meta_loss,
    value_scale,
)
from mlcourse.experiments.learner import Learner, Weights, loaded
from mlcourse.options import check_config, option, parse_widths, positive_int
from mlcourse.runtime import make_adam

EXPERIMENTS: dict[str, dict] = {"metagenrl": {}}
DESCRIPTIONS = {
    "metagenrl": "MetaGenRL: a learned policy objective, meta-trained by a population",
}


@dataclass
class MetaGenRLConfig:
    """Hyperparameters of a MetaGenRL run (each is a ``mlcourse train metagenrl`` option)."""

    envs: str = option("navigation,mountaincar", "environment families meta-trained on")
    agents_per_env: int = option(2, "agents per environment family in the population", min=1)
    seed: int = option(0, "seed of the tasks, networks, exploration and sampling")
    steps: int = option(20_000, "environment steps per agent", min=1)
    warmup: int = option(1000, "steps of random actions before any update", min=0)
    batch_size: int = option(128, "transitions per update", min=1)
    policy_delay: int = option(
        2, "critic updates per actor (and objective) update, as in TD3", min=1
    )
    actor_lr: float = option(1e-3, "actor's Adam step size", above=0)
    critic_lr: float = option(1e-3, "critics' Adam step size", above=0)
    objective_lr: float = option(1e-3, "learned objective's Adam step size", above=0)
    meta_step_size: float = option(
        1e-2, "η of the differentiated actor step θ' = θ − η g/‖g‖, g = ∇L_α", min=0
    )
    exploration: float = option(0.1, "action noise, as a fraction of the action range", min=0)
    hidden: str = option("64,64", "actor and critic hidden widths, comma separated", widths=True)
    objective_hidden: str = option("32,32", "learned objective hidden widths", widths=True)
    buffer_size: int = option(100_000, "transitions kept per agent", min=1)
    checkpoint_every: float = option(30.0, "seconds between checkpoints", min=0)
    log_every: int = option(500, "steps between log lines", min=1)

    def __post_init__(self):
        check_config(self)
        names = self.env_names
        if not names or any(n not in ENVS for n in names):
            raise ValueError(
                f"envs (--envs) must be a comma-separated list from {', '.join(ENVS)}; "
                f"got {self.envs!r}"
            )

    @property
    def env_names(self) -> list[str]:
        return [n.strip() for n in str(self.envs).split(",") if n.strip()]


class MetaGenRLLearner(Learner):
    """The population and the learned objective (the learner type of
    :mod:`mlcourse.experiments.learner`: one ``step`` is one environment step of every agent,
    with the updates TD3 makes after it and, every ``policy_delay`` steps, an objective
    update)."""

    CONFIG = MetaGenRLConfig
    FITS = "the same --objective-hidden widths"

    def __init__(self, config: MetaGenRLConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.device = torch.device(device)
        hidden = parse_widths(config.hidden)
        self.agents = [
            Agent(
                name,
                config.seed * 1000 + 10 * i + j,
                hidden=hidden,
                actor_lr=config.actor_lr,
                critic_lr=config.critic_lr,
                buffer_size=config.buffer_size,
                exploration=config.exploration,
                device=self.device,
            )
            for i, name in enumerate(config.env_names)
            for j in range(config.agents_per_env)
        ]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.objective = LearnedObjective(parse_widths(config.objective_hidden))
        self.objective.to(self.device)
        self.optimizer = make_adam(self.objective.parameters(), lr=config.objective_lr)
        self.settings = TD3Settings()
        self._meta_losses: list[float] = []

    def parameters(self):
        return self.objective.parameters()

    def step(self, step: int) -> Tensor:
        c = self.config
        learning = step >= c.warmup
        for agent in self.agents:
            agent.collect(random=not learning)
        if not learning:
            return torch.zeros(())
        update_policy = step % c.policy_delay == 0
        meta_loss = torch.zeros((), device=self.device)
        for agent in self.agents:
            batch = agent.sample(c.batch_size)
            agent.update_critic(batch, self.settings)
            if update_policy:
                scale = value_scale(batch, agent.critic)
                meta_loss = meta_loss + objective_meta_loss(
                    self.objective,
                    agent.actor,
                    agent.actor_params,
                    agent.critic,
                    batch,
                    step_size=c.meta_step_size,
                    value_scale=scale,
                )
                agent.update_actor(batch, self.objective, self.settings)
        if update_policy:
            meta_loss = meta_loss / len(self.agents)
            self.optimizer.zero_grad(set_to_none=True)
            meta_loss.backward()
            for agent in self.agents:  # the meta-loss also reached critics and actors
                agent.critic.zero_grad(set_to_none=True)
                agent.actor.zero_grad(set_to_none=True)
            self.optimizer.step()
            self._meta_losses.append(meta_loss.item())
        return meta_loss.detach()

    def metrics(self) -> dict[str, float]:
        """Per family, ``episodes_NAME``: episodes its agents have finished, and
        ``return_NAME``: the mean over those agents of their last finished episodes' return
        (left out until one has finished an episode: a car episode lasts up to 999 steps);
        and ``meta_loss`` averaged since the last call."""
        out = {}
        for name in self.config.env_names:
            agents = [a for a in self.agents if a.env_name == name]
            returns = [a.recent_return() for a in agents if a.returns]
            out[f"episodes_{name}"] = sum(len(a.returns) for a in agents)
            if returns:
                out[f"return_{name}"] = round(sum(returns) / len(returns), 3)
        if self._meta_losses:
            out["meta_loss"] = round(sum(self._meta_losses) / len(self._meta_losses), 5)
            self._meta_losses.clear()
        return out

    def state_dict(self) -> dict:
        return {
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "agents": [a.state_dict() for a in self.agents],
        }

    def load_state_dict(self, state: dict) -> None:
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        for agent, saved in zip(self.agents, state["agents"], strict=True):
            agent.load_state_dict(saved)

    def weights(self) -> Weights:
        return {"objective": self.objective.state_dict()}

    @classmethod
    def network(cls, config: MetaGenRLConfig, weights: Weights, device=None) -> LearnedObjective:
        """The learned objective, frozen (no parameter requires grad)."""
        objective = LearnedObjective(parse_widths(config.objective_hidden))
        return loaded(objective, weights["objective"], device).requires_grad_(False)

    @staticmethod
    def add_eval_args(parser: argparse.ArgumentParser, defaults: Mapping) -> None:
        parser.add_argument(
            "--env",
            default="pendulum",
            choices=ENVS,
            help=f"environment family to train fresh agents on: one of {', '.join(ENVS)}",
        )
        parser.add_argument("--seeds", type=positive_int, default=3, help="agents per objective")
        parser.add_argument(
            "--steps", type=positive_int, default=20_000, help="environment steps per agent"
        )

    def evaluate(self, options: argparse.Namespace) -> dict:
        o = options
        figures = meta_test(self.objective, o.env, seeds=o.seeds, steps=o.steps, device=self.device)
        return {"meta_trained_on": self.config.env_names, **figures}
