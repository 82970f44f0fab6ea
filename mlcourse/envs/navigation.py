"""2D navigation to a random goal, the MAML paper's meta-RL benchmark (Finn et al., 2017, 5.3).

A *task* is a goal drawn U[−0.5, 0.5]². A point starts at (0, 0); each action is a velocity,
clipped to [−0.1, 0.1] per axis; the reward is minus the distance to the goal after the move.
The episode terminates once the point is within 0.01 of the goal in both coordinates, and is
truncated after 100 steps. These follow the paper's code (``PointEnvRandGoal``). Introduced in
lesson 07 (``notebooks/07_maml_rl.ipynb``).

- :class:`Navigation2DEnv`: a Gymnasium environment (NumPy, one goal), registered as
  ``mlcourse/Navigation2D-v0``;
- :class:`Navigation2DVectorEnv`: ``num_envs`` of them as tensor operations on any device,
  following Gymnasium's vector API (next-step autoreset). Its dynamics are deterministic, so it
  agrees with the single environment step for step.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from torch import Tensor

from mlcourse.envs._common import as_continuous_actions, positive_sizes, seeded_generator

GOAL_LOW, GOAL_HIGH = -0.5, 0.5
MAX_SPEED = 0.1
GOAL_TOLERANCE = 0.01
MAX_STEPS = 100


def _spaces(max_steps: int):
    reach = max_steps * MAX_SPEED  # the farthest the point can get from the origin per axis
    observation = spaces.Box(-reach, reach, shape=(2,), dtype=np.float32)
    action = spaces.Box(-MAX_SPEED, MAX_SPEED, shape=(2,), dtype=np.float32)
    return observation, action


def _check_goal(goal, shape: tuple[int, ...]) -> None:
    if tuple(goal.shape) != shape:
        raise ValueError(f"options['goal'] has shape {tuple(goal.shape)}; expected {shape}")


class Navigation2DEnv(gym.Env):
    """Move a point from the origin to a goal drawn at random.

    ## Action space
    ``Box(-0.1, 0.1, (2,))``: a velocity. Larger values are clipped to [−0.1, 0.1] per axis, so
    a Gaussian policy's unbounded samples can be passed as they are (as in the paper's code).

    ## Observation space
    ``Box(-10, 10, (2,))`` (``max_steps`` × 0.1): the point's position. The goal is not
    observed: the agent must find it from the rewards.

    ## Rewards
    Minus the Euclidean distance from the new position to the goal.

    ## Starting state
    The point at (0, 0). :meth:`reset` draws a goal U[−0.5, 0.5]² from the seeded generator,
    unless ``options={"goal": (x, y)}`` fixes one; ``info["goal"]`` holds it.

    ## Episode end
    Terminated when the point is within 0.01 of the goal in both coordinates; truncated after
    ``max_steps`` (100) steps.

    Example:
        >>> env = Navigation2DEnv()
        >>> obs, info = env.reset(seed=0, options={"goal": (0.3, 0.0)})
        >>> obs, reward, terminated, truncated, info = env.step([1.0, 0.0])  # clipped to 0.1
        >>> obs.tolist(), round(reward, 6)
        ([0.10000000149011612, 0.0], -0.2)
    """

    metadata = {"render_modes": []}

    def __init__(self, max_steps: int = MAX_STEPS):
        (max_steps,) = positive_sizes(max_steps=max_steps)
        self.max_steps = max_steps
        self.observation_space, self.action_space = _spaces(max_steps)
        self._goal: np.ndarray | None = None
        self._position = np.zeros(2, dtype=np.float32)
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        goal = (options or {}).get("goal")
        if goal is None:
            goal = self.np_random.uniform(GOAL_LOW, GOAL_HIGH, size=2)
        goal = np.asarray(goal, dtype=np.float32)
        _check_goal(goal, (2,))
        self._goal, self._steps = goal, 0
        self._position = np.zeros(2, dtype=np.float32)
        return self._position.copy(), {"goal": goal.copy()}

    def step(self, action):
        if self._goal is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (2,):
            raise ValueError(f"action must be a velocity of shape (2,), got {action.shape}")
        if not np.isfinite(action).all():
            raise ValueError(f"action must be finite, got {action}")
        self._position = self._position + np.clip(action, -MAX_SPEED, MAX_SPEED)
        offset = self._position - self._goal
        reward = -float(np.sqrt((offset**2).sum()))
        self._steps += 1
        terminated = bool((np.abs(offset) < GOAL_TOLERANCE).all())
        truncated = self._steps >= self.max_steps and not terminated
        return self._position.copy(), reward, terminated, truncated, {}


class Navigation2DVectorEnv(VectorEnv):
    """``num_envs`` :class:`Navigation2DEnv` episodes as tensor operations.

    ``step(actions)`` takes ``(num_envs, 2)`` velocities and returns ``obs`` ``(num_envs, 2)``,
    ``reward`` ``(num_envs,)``, ``terminated`` and ``truncated`` ``(num_envs,)`` bool, on
    ``device``. ``reset`` returns ``info["goal"]`` ``(num_envs, 2)``. Next-step autoreset: the
    step after an episode ends ignores that env's action, draws a new goal, and returns the
    origin with reward 0. Arithmetic is float32 like the single environment's, so the two agree
    step for step on the same goals and actions.

    Example:
        >>> envs = Navigation2DVectorEnv(3)
        >>> obs, info = envs.reset(seed=0)
        >>> obs, reward, terminated, truncated, info = envs.step(torch.zeros(3, 2))
        >>> obs.shape, reward.shape
        (torch.Size([3, 2]), torch.Size([3]))
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self, num_envs: int, max_steps: int = MAX_STEPS, device: torch.device | str | None = None
    ):
        num_envs, max_steps = positive_sizes(num_envs=num_envs, max_steps=max_steps)
        self.num_envs, self.max_steps = num_envs, max_steps
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.single_observation_space, self.single_action_space = _spaces(max_steps)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.generator = seeded_generator(self.device, None)
        self.goal: Tensor | None = None
        self.position = torch.zeros(num_envs, 2, device=self.device)
        self.steps = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self._ended = torch.zeros(num_envs, dtype=torch.bool, device=self.device)

    def _draw(self, count: int) -> Tensor:
        u = torch.rand(count, 2, generator=self.generator, device=self.device)
        return GOAL_LOW + (GOAL_HIGH - GOAL_LOW) * u

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.generator = seeded_generator(self.device, seed)
        goal = (options or {}).get("goal")
        if goal is None:
            goal = self._draw(self.num_envs)
        else:
            goal = torch.as_tensor(goal, dtype=torch.float32, device=self.device)
            _check_goal(goal, (self.num_envs, 2))
        self.goal = goal.clone()
        self.position.zero_()
        self.steps.zero_()
        self._ended.zero_()
        return self.position.clone(), {"goal": self.goal.clone()}

    def step(self, actions):
        if self.goal is None:
            raise RuntimeError("call reset() before step()")
        actions = as_continuous_actions(
            actions, self.num_envs, 2, self.device, torch.float32, "velocity"
        )
        restart = self._ended
        if restart.any():  # next-step autoreset: these envs start a new episode now
            self.goal[restart] = self._draw(int(restart.sum()))
            self.position[restart] = 0.0
            self.steps[restart] = 0
        moved = self.position + actions.clamp(-MAX_SPEED, MAX_SPEED)
        self.position = torch.where(restart[:, None], self.position, moved)
        offset = self.position - self.goal
        reward = torch.where(restart, 0.0, -offset.pow(2).sum(-1).sqrt())
        self.steps += (~restart).long()
        terminated = (offset.abs() < GOAL_TOLERANCE).all(-1) & ~restart
        truncated = (self.steps >= self.max_steps) & ~terminated & ~restart
        self._ended = terminated | truncated
        return self.position.clone(), reward, terminated, truncated, {}
