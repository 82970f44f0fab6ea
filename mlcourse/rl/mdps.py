"""Classic strategies for random tabular MDPs, the baseline columns of RL²'s Table 2.

Each strategy keeps, per trial, the posterior over the MDP that the task prior implies:

- reward means: prior Normal(1, 1), unit-variance Gaussian rewards, so after ``n`` visits of
  ``(s, a)`` with reward sum ``Σr`` the posterior is Normal((1 + Σr) / (1 + n), 1 / (1 + n));
- transitions: a flat Dirichlet prior, so the posterior of row ``(s, a)`` is
  Dirichlet(1 + counts).

Plans are finite-horizon value iteration over the steps left in the current episode (every
episode restarts in state 0). Everything is batched over trials as tensors; the random draws
(posterior samples, exploration) come from a NumPy generator. Introduced in lesson 05.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mlcourse.envs import TabularMDPVectorEnv
from mlcourse.envs.tabular_mdp import REWARD_MEAN_PRIOR, REWARD_NOISE
from mlcourse.rl.bandits import random_argmax
from mlcourse.stats import mean_and_stderr


@dataclass
class Posterior:
    """Sufficient statistics of each trial's posterior over its MDP.

    Attributes:
        visits: ``(num_trials, S, A)`` times each action was taken in each state.
        reward_sums: ``(num_trials, S, A)`` total reward received there.
        transition_counts: ``(num_trials, S, A, S)`` observed next states.
    """

    visits: Tensor
    reward_sums: Tensor
    transition_counts: Tensor

    @classmethod
    def empty(cls, num_trials: int, num_states: int, num_actions: int, device=None) -> Posterior:
        visits = torch.zeros(num_trials, num_states, num_actions, device=device)
        return cls(
            visits,
            torch.zeros_like(visits),
            torch.zeros(num_trials, num_states, num_actions, num_states, device=device),
        )

    def update(self, state: Tensor, action: Tensor, reward: Tensor, next_state: Tensor | None):
        """Adds one step of every trial; ``next_state`` None: the transition was not seen."""
        rows = torch.arange(state.shape[0], device=state.device)
        self.visits[rows, state, action] += 1.0
        self.reward_sums[rows, state, action] += reward
        if next_state is not None:
            self.transition_counts[rows, state, action, next_state] += 1.0

    def reward_mean(self) -> Tensor:
        """Posterior mean of every reward mean, ``(num_trials, S, A)``."""
        mu0, sd0 = REWARD_MEAN_PRIOR
        precision = 1.0 / sd0**2 + self.visits / REWARD_NOISE**2
        return (mu0 / sd0**2 + self.reward_sums / REWARD_NOISE**2) / precision

    def reward_std(self) -> Tensor:
        mu0, sd0 = REWARD_MEAN_PRIOR
        return (1.0 / sd0**2 + self.visits / REWARD_NOISE**2).rsqrt()

    def transition_mean(self) -> Tensor:
        """Posterior mean transition probabilities, ``(num_trials, S, A, S)``."""
        alpha = self.transition_counts + 1.0
        return alpha / alpha.sum(-1, keepdim=True)

    def sample(self, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        """One MDP per trial drawn from the posterior: reward means and transitions."""
        device = self.visits.device
        z = torch.as_tensor(rng.standard_normal(tuple(self.visits.shape)), dtype=torch.float32)
        means = self.reward_mean() + self.reward_std() * z.to(device)
        alpha = (self.transition_counts + 1.0).cpu().numpy()
        gamma = torch.as_tensor(rng.gamma(alpha), dtype=torch.float32).to(device)
        return means, gamma / gamma.sum(-1, keepdim=True)


def plan(reward_means: Tensor, transitions: Tensor, horizon: int) -> Tensor:
    """Finite-horizon value iteration: ``Q[h]`` for ``h = 1..horizon`` steps to go.

    Args:
        reward_means: ``(num_trials, S, A)``.
        transitions: ``(num_trials, S, A, S)``.
        horizon: steps to plan for.

    Returns:
        ``(horizon + 1, num_trials, S, A)``; ``Q[h]`` is the value of taking each action with
        ``h`` steps left (``Q[0]`` is zero).

    Example:
        >>> r = torch.tensor([[[1.0, 0.0]]])  # one state, two actions
        >>> p = torch.ones(1, 1, 2, 1)
        >>> plan(r, p, 3)[3].tolist()
        [[[3.0, 2.0]]]
    """
    q = [torch.zeros_like(reward_means)]
    for _ in range(horizon):
        v = q[-1].max(-1).values  # (num_trials, S)
        q.append(reward_means + (transitions * v[:, None, None, :]).sum(-1))
    return torch.stack(q)


class MDPStrategy:
    """Base class: ``begin_episode`` at every episode start, then ``act`` every step."""

    def reset(self, num_trials: int, num_states: int, num_actions: int, device) -> None:
        self.posterior = Posterior.empty(num_trials, num_states, num_actions, device)

    def begin_episode(self, episode_length: int, rng: np.random.Generator) -> None:
        pass

    def act(self, state: Tensor, steps_left: int, rng: np.random.Generator) -> Tensor:
        raise NotImplementedError

    def observe(self, state, action, reward, next_state) -> None:
        self.posterior.update(state, action, reward, next_state)


class RandomMDP(MDPStrategy):
    """Uniformly random actions."""

    def act(self, state, steps_left, rng):
        num_actions = self.posterior.visits.shape[-1]
        return torch.as_tensor(rng.integers(num_actions, size=state.shape[0]), device=state.device)


class GreedyMDP(MDPStrategy):
    """Replans every step on the posterior-mean MDP and acts greedily; with ``epsilon`` > 0,
    a uniformly random action instead with that probability (ε-greedy)."""

    def __init__(self, epsilon: float = 0.0):
        if not 0 <= epsilon <= 1:
            raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
        self.epsilon = epsilon

    def values(self, state: Tensor, steps_left: int) -> Tensor:
        q = plan(self.posterior.reward_mean(), self.posterior.transition_mean(), steps_left)
        return q[steps_left][torch.arange(state.shape[0], device=state.device), state]

    def act(self, state, steps_left, rng):
        greedy = random_argmax(self.values(state, steps_left), rng)
        if self.epsilon == 0:
            return greedy
        explore = torch.as_tensor(rng.random(state.shape[0]) < self.epsilon, device=state.device)
        random = RandomMDP.act(self, state, steps_left, rng)
        return torch.where(explore, random, greedy)


class BEB(GreedyMDP):
    """Bayesian Exploration Bonus (Kolter and Ng, 2009): the posterior-mean MDP with reward
    ``mean + beta / (1 + visits)``, replanned every step."""

    def __init__(self, beta: float = 1.0):
        super().__init__(0.0)
        self.beta = beta

    def values(self, state, steps_left):
        bonus = self.beta / (1.0 + self.posterior.visits)
        r = self.posterior.reward_mean() + bonus
        q = plan(r, self.posterior.transition_mean(), steps_left)
        return q[steps_left][torch.arange(state.shape[0], device=state.device), state]


class PSRL(MDPStrategy):
    """Posterior sampling for RL (Strens, 2000; Osband et al., 2013): at each episode start,
    draw one MDP from the posterior, plan for the whole episode, follow that plan."""

    def begin_episode(self, episode_length, rng):
        means, transitions = self.posterior.sample(rng)
        self.q = plan(means, transitions, episode_length)

    def act(self, state, steps_left, rng):
        rows = torch.arange(state.shape[0], device=state.device)
        return random_argmax(self.q[steps_left][rows, state], rng)


def mdp_returns(
    strategy: MDPStrategy,
    *,
    num_episodes: int,
    num_trials: int,
    num_states: int = 10,
    num_actions: int = 5,
    episode_length: int = 10,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Runs ``strategy`` for one trial of ``num_episodes`` episodes in each of ``num_trials``
    freshly drawn MDPs; returns each trial's total reward, ``(num_trials,)``.

    Example:
        >>> r = mdp_returns(PSRL(), num_episodes=2, num_trials=8, seed=0)
        >>> r.shape
        torch.Size([8])
    """
    envs = TabularMDPVectorEnv(
        num_trials, num_states, num_actions, episode_length, num_episodes, device=device
    )
    state, _ = envs.reset(seed=seed)
    rng = np.random.default_rng(seed)
    strategy.reset(num_trials, num_states, num_actions, envs.device)
    total = torch.zeros(num_trials, device=envs.device)
    for _ in range(num_episodes):
        strategy.begin_episode(episode_length, rng)
        for t in range(episode_length):
            action = strategy.act(state, episode_length - t, rng).to(envs.device)
            next_state, reward, _, _, info = envs.step(action)
            # At an episode's end the env returns the next episode's start state: the
            # transition of the last step is not observed.
            seen = next_state if t < episode_length - 1 else None
            strategy.observe(state, action, reward, seen)
            total += reward
            state = next_state
    return total


def mdp_baselines(
    num_episodes: int = 10,
    num_trials: int = 1000,
    *,
    num_states: int = 10,
    num_actions: int = 5,
    episode_length: int = 10,
    seed: int = 0,
    epsilon: float = 0.1,
    beb_beta: float = 1.0,
    device: torch.device | str | None = None,
) -> dict[str, dict]:
    """Every MDP baseline on the same ``num_trials`` MDPs; ``{policy: {"mean", "stderr"}}``."""
    strategies = {
        "random": RandomMDP(),
        "greedy": GreedyMDP(),
        "epsilon_greedy": GreedyMDP(epsilon),
        "psrl": PSRL(),
        "beb": BEB(beb_beta),
    }
    extra = {"epsilon_greedy": {"epsilon": epsilon}, "beb": {"beta": beb_beta}}
    results = {}
    for name, strategy in strategies.items():
        returns = mdp_returns(
            strategy,
            num_episodes=num_episodes,
            num_trials=num_trials,
            num_states=num_states,
            num_actions=num_actions,
            episode_length=episode_length,
            seed=seed,
            device=device,
        )
        results[name] = {**mean_and_stderr(returns), **extra.get(name, {})}
    return results
