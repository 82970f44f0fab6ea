"""Bernoulli multi-armed bandits, the first task family of RL² (Duan et al., 2016, section 3.1).

A *task* is a bandit: ``num_arms`` arms whose success probabilities are drawn U[0, 1]. A
*trial* is ``num_pulls`` pulls of one such bandit; the agent's score is the number of successes
in the trial. Introduced in lesson 05 (``notebooks/05_meta_rl_problem.ipynb``).

Two implementations share these semantics:

- :class:`BernoulliBanditEnv`, a Gymnasium environment (NumPy, one bandit), registered as
  ``mlcourse/BernoulliBandit-v0``;
- :class:`BernoulliBanditVectorEnv`, ``num_envs`` bandits at once as tensor operations on any
  device, following Gymnasium's vector API (next-step autoreset).
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


def draw_bandits(count: int, num_arms: int, generator=None, device=None) -> Tensor:
    """``(count, num_arms)`` success probabilities, each U[0, 1]: ``count`` bandits of the task
    family. Drawn from ``generator`` on its own device, then moved to ``device``, so a seeded
    CPU generator gives the same bandits on every device. The one sampler of the family: the
    vector environment and lesson 09's :class:`mlcourse.algorithms.unified.BanditFamily` both use
    it.

    Example:
        >>> draw_bandits(2, 3, torch.Generator().manual_seed(0)).shape
        torch.Size([2, 3])
    """
    draw_device = generator.device if generator is not None else device
    probs = torch.rand(count, num_arms, generator=generator, device=draw_device)
    return probs.to(device) if device is not None else probs


def bernoulli_rewards(p: Tensor, generator=None) -> Tensor:
    """Rewards of pulls whose arms succeed with probabilities ``p`` (any shape): 1 with
    probability ``p``, else 0, in ``p``'s dtype and on its device. The uniform numbers come
    from ``generator`` on its own device.

    Example:
        >>> bernoulli_rewards(torch.tensor([0.0, 1.0])).tolist()
        [0.0, 1.0]
    """
    draw_device = generator.device if generator is not None else p.device
    u = torch.rand(p.shape, generator=generator, device=draw_device, dtype=p.dtype)
    return (u.to(p.device) < p).to(p.dtype)


def _check_probs(probs, shape: tuple[int, ...]) -> None:
    if tuple(probs.shape) != shape:
        raise ValueError(
            f"options['probs'] has shape {tuple(probs.shape)}; expected {shape} "
            "(one success probability per arm)"
        )
    if not ((probs >= 0) & (probs <= 1)).all():
        raise ValueError("options['probs'] must lie in [0, 1]")


class BernoulliBanditEnv(gym.Env):
    """One trial of a Bernoulli bandit drawn at random.

    ## Action space
    ``Discrete(num_arms)``: the arm to pull.

    ## Observation space
    ``Discrete(1)``: a bandit has a single state, so the observation is always 0. Everything
    the agent learns comes from its rewards (RL² feeds it the previous action and reward).

    ## Rewards
    1 with the pulled arm's success probability, else 0.

    ## Starting state
    :meth:`reset` draws a new bandit, each arm's probability U[0, 1] from the seeded
    generator, unless ``options={"probs": [...]}`` fixes one. ``info["probs"]`` holds it.

    ## Episode end
    The episode is the trial: it terminates after ``num_pulls`` pulls (the horizon is part of
    the problem, so ``terminated`` is true and nothing is truncated).

    Args:
        num_arms: k, the number of arms.
        num_pulls: n, the pulls per trial.

    Example:
        >>> env = BernoulliBanditEnv(num_arms=3, num_pulls=2)
        >>> obs, info = env.reset(seed=0, options={"probs": [0.0, 1.0, 0.5]})
        >>> env.step(1)[1:3]
        (1.0, False)
        >>> env.step(0)[1:3]
        (0.0, True)
    """

    metadata = {"render_modes": []}

    def __init__(self, num_arms: int = 5, num_pulls: int = 10):
        num_arms, num_pulls = positive_sizes(num_arms=num_arms, num_pulls=num_pulls)
        self.num_arms, self.num_pulls = num_arms, num_pulls
        self.observation_space = spaces.Discrete(1)
        self.action_space = spaces.Discrete(num_arms)
        self._probs: np.ndarray | None = None
        self._pulls = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        probs = (options or {}).get("probs")
        if probs is None:
            probs = self.np_random.uniform(size=self.num_arms)
        probs = np.asarray(probs, dtype=np.float64)
        _check_probs(probs, (self.num_arms,))
        self._probs, self._pulls = probs, 0
        return np.int64(0), {"probs": probs.copy()}

    def step(self, action):
        if self._probs is None:
            raise RuntimeError("call reset() before step()")
        if self._pulls >= self.num_pulls:
            raise RuntimeError("the trial is over: call reset() to start a new one")
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an arm in 0..{self.num_arms - 1}, got {action!r}")
        reward = float(self.np_random.random() < self._probs[int(action)])
        self._pulls += 1
        return np.int64(0), reward, self._pulls == self.num_pulls, False, {}


class BernoulliBanditVectorEnv(VectorEnv):
    """``num_envs`` independent :class:`BernoulliBanditEnv` trials as tensor operations.

    Follows Gymnasium's vector API with tensors in place of arrays: ``step(actions)`` takes a
    ``(num_envs,)`` integer tensor (or array) and returns ``obs`` ``(num_envs,)`` int64,
    ``reward`` ``(num_envs,)`` float32, ``terminated`` and ``truncated`` ``(num_envs,)`` bool,
    all on ``device``. Autoreset is Gymnasium's default *next-step* mode: the step after a
    trial ends ignores that env's action, draws a new bandit and returns reward 0.

    Randomness comes from one ``torch.Generator`` on ``device``, seeded by
    ``reset(seed=...)``.

    Args:
        num_envs: trials run side by side.
        num_arms: k.
        num_pulls: n.
        device: where the tensors live (default CPU).

    Example:
        >>> envs = BernoulliBanditVectorEnv(4, num_arms=3, num_pulls=10)
        >>> obs, info = envs.reset(seed=0)
        >>> info["probs"].shape
        torch.Size([4, 3])
        >>> obs, reward, terminated, truncated, info = envs.step(torch.tensor([0, 1, 2, 0]))
        >>> reward.shape, terminated.dtype
        (torch.Size([4]), torch.bool)
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int,
        num_arms: int = 5,
        num_pulls: int = 10,
        device: torch.device | str | None = None,
    ):
        num_envs, num_arms, num_pulls = positive_sizes(
            num_envs=num_envs, num_arms=num_arms, num_pulls=num_pulls
        )
        self.num_envs, self.num_arms, self.num_pulls = num_envs, num_arms, num_pulls
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.single_observation_space = spaces.Discrete(1)
        self.single_action_space = spaces.Discrete(num_arms)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.generator = seeded_generator(self.device, None)
        self.probs: Tensor | None = None
        self.pulls = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self._ended = torch.zeros(num_envs, dtype=torch.bool, device=self.device)

    def _draw(self, count: int) -> Tensor:
        return draw_bandits(count, self.num_arms, self.generator, self.device)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.generator = seeded_generator(self.device, seed)
        probs = (options or {}).get("probs")
        if probs is None:
            probs = self._draw(self.num_envs)
        else:
            probs = torch.as_tensor(probs, dtype=torch.float32, device=self.device)
            _check_probs(probs, (self.num_envs, self.num_arms))
        self.probs = probs.clone()
        self.pulls.zero_()
        self._ended.zero_()
        obs = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        return obs, {"probs": self.probs.clone()}

    def step(self, actions):
        if self.probs is None:
            raise RuntimeError("call reset() before step()")
        actions = as_actions(actions, self.num_envs, self.num_arms, self.device)
        restart = self._ended
        if restart.any():  # next-step autoreset: these envs start a new trial now
            self.probs[restart] = self._draw(int(restart.sum()))
            self.pulls[restart] = 0
        p = self.probs.gather(1, actions[:, None]).squeeze(1)
        reward = torch.where(restart, 0.0, bernoulli_rewards(p, self.generator))
        self.pulls += (~restart).long()
        terminated = (self.pulls == self.num_pulls) & ~restart
        self._ended = terminated
        obs = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        truncated = torch.zeros_like(terminated)
        return obs, reward, terminated, truncated, {}
