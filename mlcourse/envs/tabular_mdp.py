"""Random tabular MDPs, the second task family of RL² (Duan et al., 2016, section 3.2).

A *task* is an MDP with ``num_states`` states and ``num_actions`` actions: each reward
distribution is Gaussian with unit variance and a mean drawn Normal(1, 1), each transition
distribution is drawn from a flat Dirichlet. A *trial* is ``num_episodes`` episodes of
``episode_length`` steps in the same MDP, each starting in state 0; the score is the total
reward of the trial. Introduced in lesson 05 (``notebooks/05_meta_rl_problem.ipynb``).

- :class:`TabularMDPEnv`: a Gymnasium environment (NumPy, one MDP), registered as
  ``mlcourse/TabularMDP-v0``;
- :class:`TabularMDPVectorEnv`: ``num_envs`` trials as tensor operations on any device,
  following Gymnasium's vector API (next-step autoreset).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from torch import Tensor

from mlcourse.envs._common import as_actions, positive_sizes, seeded_generator

REWARD_MEAN_PRIOR = (1.0, 1.0)  # mean and standard deviation of the Normal over reward means
REWARD_NOISE = 1.0  # standard deviation of each reward around its mean


def _check_mdp(reward_means, transitions, shape: tuple[int, ...]) -> None:
    s_a = shape
    if tuple(reward_means.shape) != s_a:
        raise ValueError(
            f"options['reward_means'] has shape {tuple(reward_means.shape)}; expected {s_a}"
        )
    if tuple(transitions.shape) != (*s_a, s_a[-2]):
        raise ValueError(
            f"options['transitions'] has shape {tuple(transitions.shape)}; expected "
            f"{(*s_a, s_a[-2])}, a distribution over next states for every (state, action)"
        )
    sums = transitions.sum(-1)
    if (transitions < 0).any() or (abs(sums - 1) > 1e-5).any():
        raise ValueError(
            "options['transitions'] must be probabilities summing to 1 over the last axis"
        )


class TabularMDPEnv(gym.Env):
    """One trial (several episodes) in a random tabular MDP.

    ## Action space
    ``Discrete(num_actions)``.

    ## Observation space
    ``Discrete(num_states)``: the current state.

    ## Rewards
    Normal(mean[s, a], 1) for taking action a in state s; the means are drawn Normal(1, 1)
    when the MDP is drawn.

    ## Starting state
    :meth:`reset` draws a new MDP (reward means Normal(1, 1), each row of transition
    probabilities from a flat Dirichlet) from the seeded generator, unless
    ``options={"reward_means": ..., "transitions": ...}`` fixes one; ``info`` holds it. Every
    episode starts in state 0.

    ## Episode end
    After ``episode_length`` steps an episode ends: ``info["episode_end"]`` is true and the
    returned observation is state 0, the start of the next episode of the same MDP. The
    Gymnasium episode is the whole trial: it terminates after ``num_episodes`` episodes.

    Args:
        num_states, num_actions: sizes of the MDP (10 and 5 in RL²).
        episode_length: steps per episode (10 in RL²).
        num_episodes: episodes per trial (n).

    Example:
        >>> env = TabularMDPEnv(num_episodes=2)
        >>> obs, info = env.reset(seed=0)
        >>> info["transitions"].shape
        (10, 5, 10)
        >>> steps = [env.step(0) for _ in range(20)]
        >>> [s[4]["episode_end"] for s in steps].count(True), steps[-1][2]
        (2, True)
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        num_states: int = 10,
        num_actions: int = 5,
        episode_length: int = 10,
        num_episodes: int = 10,
    ):
        num_states, num_actions, episode_length, num_episodes = positive_sizes(
            num_states=num_states,
            num_actions=num_actions,
            episode_length=episode_length,
            num_episodes=num_episodes,
        )
        self.num_states, self.num_actions = num_states, num_actions
        self.episode_length, self.num_episodes = episode_length, num_episodes
        self.observation_space = spaces.Discrete(num_states)
        self.action_space = spaces.Discrete(num_actions)
        self._means: np.ndarray | None = None
        self._transitions: np.ndarray | None = None
        self._state, self._t = 0, 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        s, a = self.num_states, self.num_actions
        if (options.get("reward_means") is None) != (options.get("transitions") is None):
            raise ValueError("options must give both 'reward_means' and 'transitions', or neither")
        if options.get("reward_means") is None:
            means = self.np_random.normal(*REWARD_MEAN_PRIOR, size=(s, a))
            transitions = self.np_random.dirichlet(np.ones(s), size=(s, a))
        else:
            means = np.asarray(options["reward_means"], dtype=np.float64)
            transitions = np.asarray(options["transitions"], dtype=np.float64)
            _check_mdp(means, transitions, (s, a))
        self._means, self._transitions = means, transitions
        self._state, self._t = 0, 0
        info = {"reward_means": means.copy(), "transitions": transitions.copy()}
        return np.int64(0), info

    def step(self, action):
        if self._means is None:
            raise RuntimeError("call reset() before step()")
        if self._t >= self.episode_length * self.num_episodes:
            raise RuntimeError("the trial is over: call reset() to start a new one")
        if not self.action_space.contains(action):
            raise ValueError(f"action must be in 0..{self.num_actions - 1}, got {action!r}")
        s, a = self._state, int(action)
        reward = float(self._means[s, a] + REWARD_NOISE * self.np_random.standard_normal())
        self._state = int(self.np_random.choice(self.num_states, p=self._transitions[s, a]))
        self._t += 1
        episode_end = self._t % self.episode_length == 0
        if episode_end:
            self._state = 0
        terminated = self._t == self.episode_length * self.num_episodes
        return np.int64(self._state), reward, terminated, False, {"episode_end": episode_end}


class TabularMDPVectorEnv(VectorEnv):
    """``num_envs`` independent :class:`TabularMDPEnv` trials as tensor operations.

    Tensors in place of arrays: ``step(actions)`` takes ``(num_envs,)`` integers and returns
    ``obs`` ``(num_envs,)`` int64 states, ``reward`` ``(num_envs,)`` float32, ``terminated``,
    ``truncated`` ``(num_envs,)`` bool, and ``info["episode_end"]`` ``(num_envs,)`` bool, all
    on ``device``. ``reset`` returns ``info["reward_means"]`` ``(num_envs, S, A)`` and
    ``info["transitions"]`` ``(num_envs, S, A, S)``. Next-step autoreset, as in Gymnasium.

    Args:
        num_envs: trials run side by side.
        num_states, num_actions, episode_length, num_episodes: as in :class:`TabularMDPEnv`.
        device: where the tensors live (default CPU).

    Example:
        >>> envs = TabularMDPVectorEnv(3, num_episodes=1)
        >>> obs, info = envs.reset(seed=0)
        >>> obs, reward, terminated, truncated, info = envs.step(torch.zeros(3, dtype=torch.long))
        >>> obs.shape, info["episode_end"].tolist()
        (torch.Size([3]), [False, False, False])
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int,
        num_states: int = 10,
        num_actions: int = 5,
        episode_length: int = 10,
        num_episodes: int = 10,
        device: torch.device | str | None = None,
    ):
        num_envs, num_states, num_actions, episode_length, num_episodes = positive_sizes(
            num_envs=num_envs,
            num_states=num_states,
            num_actions=num_actions,
            episode_length=episode_length,
            num_episodes=num_episodes,
        )
        self.num_envs, self.num_states, self.num_actions = num_envs, num_states, num_actions
        self.episode_length, self.num_episodes = episode_length, num_episodes
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.single_observation_space = spaces.Discrete(num_states)
        self.single_action_space = spaces.Discrete(num_actions)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.generator = seeded_generator(self.device, None)
        self.reward_means: Tensor | None = None
        self.transitions: Tensor | None = None
        self.state = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self.t = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self._ended = torch.zeros(num_envs, dtype=torch.bool, device=self.device)

    def _draw(self, count: int) -> tuple[Tensor, Tensor]:
        s, a, g, dev = self.num_states, self.num_actions, self.generator, self.device
        mean, std = REWARD_MEAN_PRIOR
        means = mean + std * torch.randn(count, s, a, generator=g, device=dev)
        # A flat Dirichlet is normalised independent Exponential(1) draws.
        e = -torch.log1p(-torch.rand(count, s, a, s, generator=g, device=dev))
        return means, e / e.sum(-1, keepdim=True)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.generator = seeded_generator(self.device, seed)
        options = options or {}
        if (options.get("reward_means") is None) != (options.get("transitions") is None):
            raise ValueError("options must give both 'reward_means' and 'transitions', or neither")
        if options.get("reward_means") is None:
            means, transitions = self._draw(self.num_envs)
        else:
            means = torch.as_tensor(
                options["reward_means"], dtype=torch.float32, device=self.device
            )
            transitions = torch.as_tensor(
                options["transitions"], dtype=torch.float32, device=self.device
            )
            _check_mdp(means, transitions, (self.num_envs, self.num_states, self.num_actions))
        self.reward_means, self.transitions = means.clone(), transitions.clone()
        self.state.zero_()
        self.t.zero_()
        self._ended.zero_()
        info = {"reward_means": self.reward_means.clone(), "transitions": self.transitions.clone()}
        return self.state.clone(), info

    def step(self, actions):
        if self.reward_means is None:
            raise RuntimeError("call reset() before step()")
        actions = as_actions(actions, self.num_envs, self.num_actions, self.device)
        restart = self._ended
        if restart.any():  # next-step autoreset: these envs start a new trial now
            means, transitions = self._draw(int(restart.sum()))
            self.reward_means[restart], self.transitions[restart] = means, transitions
            self.state[restart] = 0
            self.t[restart] = 0
        rows = torch.arange(self.num_envs, device=self.device)
        mean = self.reward_means[rows, self.state, actions]
        noise = torch.randn(self.num_envs, generator=self.generator, device=self.device)
        reward = torch.where(restart, 0.0, mean + REWARD_NOISE * noise)
        probs = self.transitions[rows, self.state, actions]
        u = torch.rand(self.num_envs, 1, generator=self.generator, device=self.device)
        next_state = (probs.cumsum(-1) < u).sum(-1).clamp(max=self.num_states - 1)
        self.t += (~restart).long()
        episode_end = (self.t % self.episode_length == 0) & ~restart
        self.state = torch.where(restart | episode_end, 0, next_state)
        terminated = (self.t == self.episode_length * self.num_episodes) & ~restart
        self._ended = terminated
        truncated = torch.zeros_like(terminated)
        return self.state.clone(), reward, terminated, truncated, {"episode_end": episode_end}
