"""Gymnasium's continuous classic-control tasks as batched tensor environments, with their
physics as per-environment parameters so that each can be a *family* of tasks.

- :class:`PendulumVectorEnv`: ``Pendulum-v1`` (swing up and balance; 200 steps). Family
  parameters: ``gravity``, ``mass``, ``length``.
- :class:`MountainCarContinuousVectorEnv`: ``MountainCarContinuous-v0`` (drive up the hill;
  999 steps). Family parameter: ``power``.

With the default parameters each follows Gymnasium's single environment step for step (tested
against it, to float32 rounding): the same clipping, rewards, terminations and time limit.
Like the course's other batched environments they use next-step autoreset: the step after an
episode ends ignores that environment's action, starts a new episode, and returns its first
observation with reward 0.
"""

from __future__ import annotations

import math

import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from torch import Tensor

from mlcourse.envs._common import as_continuous_actions, positive_sizes, seeded_generator


def angle_normalize(x: Tensor) -> Tensor:
    """Angles wrapped into [−π, π)."""
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


def _parameter(value, num_envs: int, name: str, device, dtype) -> Tensor:
    """A physics parameter as a ``(num_envs,)`` tensor (a number applies to every env)."""
    tensor = torch.as_tensor(value, dtype=dtype, device=device)
    if tensor.dim() == 0:
        tensor = tensor.expand(num_envs)
    if tensor.shape != (num_envs,):
        raise ValueError(
            f"{name} must be a number or have shape ({num_envs},), got {tuple(tensor.shape)}"
        )
    if not torch.isfinite(tensor).all() or (tensor <= 0).any():
        raise ValueError(f"{name} must be positive and finite")
    return tensor.clone()


class _ClassicVectorEnv(VectorEnv):
    """Shared bookkeeping: spaces, actions, step counts and next-step autoreset."""

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}
    max_action = 1.0
    state_size = 2

    def __init__(self, num_envs: int, max_steps: int, device, dtype):
        num_envs, max_steps = positive_sizes(num_envs=num_envs, max_steps=max_steps)
        self.num_envs, self.max_steps = num_envs, max_steps
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self.single_action_space = spaces.Box(
            -self.max_action, self.max_action, shape=(1,), dtype="float32"
        )
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.generator = seeded_generator(self.device, None)
        self.state: Tensor | None = None
        self.steps = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self._ended = torch.zeros(num_envs, dtype=torch.bool, device=self.device)

    def _initial(self, count: int) -> Tensor:
        raise NotImplementedError

    def _observe(self, state: Tensor) -> Tensor:
        raise NotImplementedError

    def _dynamics(self, state: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(new_state, reward, terminated)`` of every environment."""
        raise NotImplementedError

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.generator = seeded_generator(self.device, seed)
        state = (options or {}).get("state")
        if state is None:
            state = self._initial(self.num_envs)
        else:
            state = torch.as_tensor(state, dtype=self.dtype, device=self.device)
            if state.shape != (self.num_envs, self.state_size):
                raise ValueError(
                    f"options['state'] has shape {tuple(state.shape)}; expected "
                    f"({self.num_envs}, {self.state_size})"
                )
        self.state = state.clone()
        self.steps.zero_()
        self._ended.zero_()
        return self._observe(self.state), {}

    def step(self, actions):
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        actions = as_continuous_actions(actions, self.num_envs, 1, self.device, self.dtype)
        restart = self._ended
        new_state, reward, terminated = self._dynamics(self.state, actions[:, 0])
        if restart.any():
            fresh = self._initial(self.num_envs)
            new_state = torch.where(restart[:, None], fresh, new_state)
            self.steps[restart] = 0
        self.state = new_state
        reward = torch.where(restart, 0.0, reward)
        self.steps += (~restart).long()
        terminated = terminated & ~restart
        truncated = (self.steps >= self.max_steps) & ~terminated & ~restart
        self._ended = terminated | truncated
        return self._observe(self.state), reward, terminated, truncated, {}


class PendulumVectorEnv(_ClassicVectorEnv):
    """``num_envs`` pendulums (Gymnasium's ``Pendulum-v1``) as tensor operations.

    Observation ``(num_envs, 3)``: cos θ, sin θ, angular velocity. Action ``(num_envs, 1)``:
    torque, clipped to [−2, 2]. Reward: −(θ² + 0.1 θ̇² + 0.001 u²) with θ wrapped to [−π, π);
    never terminates; truncated after ``max_steps`` (200). Reset: θ ~ U[−π, π],
    θ̇ ~ U[−1, 1].

    Args:
        num_envs: pendulums.
        gravity, mass, length: physics, numbers or ``(num_envs,)`` tensors (a task family).
        max_steps: the time limit.
        device, dtype: where and in what precision the state lives.

    Example:
        >>> envs = PendulumVectorEnv(4, mass=torch.tensor([0.5, 1.0, 1.5, 2.0]))
        >>> obs, _ = envs.reset(seed=0)
        >>> obs, reward, terminated, truncated, _ = envs.step(torch.zeros(4, 1))
        >>> obs.shape, reward.shape
        (torch.Size([4, 3]), torch.Size([4]))
    """

    max_action = 2.0
    max_speed = 8.0
    dt = 0.05

    def __init__(
        self,
        num_envs: int,
        *,
        gravity=10.0,
        mass=1.0,
        length=1.0,
        max_steps: int = 200,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        high = torch.tensor([1.0, 1.0, self.max_speed]).numpy()
        self.single_observation_space = spaces.Box(-high, high, dtype="float32")
        super().__init__(num_envs, max_steps, device, dtype)
        self.gravity = _parameter(gravity, num_envs, "gravity", self.device, dtype)
        self.mass = _parameter(mass, num_envs, "mass", self.device, dtype)
        self.length = _parameter(length, num_envs, "length", self.device, dtype)

    def _initial(self, count: int) -> Tensor:
        u = torch.rand(count, 2, generator=self.generator, device=self.device, dtype=self.dtype)
        high = torch.tensor([math.pi, 1.0], device=self.device, dtype=self.dtype)
        return (2 * u - 1) * high

    def _observe(self, state: Tensor) -> Tensor:
        theta, speed = state[:, 0], state[:, 1]
        return torch.stack([theta.cos(), theta.sin(), speed], dim=-1).float()

    def _dynamics(self, state, actions):
        theta, speed = state[:, 0], state[:, 1]
        u = actions.clamp(-self.max_action, self.max_action)
        cost = angle_normalize(theta) ** 2 + 0.1 * speed**2 + 0.001 * u**2
        g, m, length = self.gravity, self.mass, self.length
        accel = 3 * g / (2 * length) * theta.sin() + 3.0 / (m * length**2) * u
        speed = (speed + accel * self.dt).clamp(-self.max_speed, self.max_speed)
        theta = theta + speed * self.dt
        terminated = torch.zeros_like(theta, dtype=torch.bool)
        return torch.stack([theta, speed], dim=-1), -cost, terminated


class MountainCarContinuousVectorEnv(_ClassicVectorEnv):
    """``num_envs`` cars (Gymnasium's ``MountainCarContinuous-v0``) as tensor operations.

    Observation ``(num_envs, 2)``: position, velocity. Action ``(num_envs, 1)``: force, clipped
    to [−1, 1]. Reward: 100 on reaching position 0.45, minus 0.1 × action² (of the action as
    given, as in Gymnasium) every step; terminated at the goal, truncated after ``max_steps``
    (999). Reset: position ~ U[−0.6, −0.4], velocity 0. The state is stored in float32 after
    every step, as Gymnasium stores it.

    Args:
        num_envs: cars.
        power: engine power (0.0015), a number or a ``(num_envs,)`` tensor.
        max_steps: the time limit.
        device, dtype: where and in what precision the arithmetic runs.
    """

    min_position, max_position = -1.2, 0.6
    max_speed = 0.07
    goal_position = 0.45

    def __init__(
        self,
        num_envs: int,
        *,
        power=0.0015,
        max_steps: int = 999,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        low = torch.tensor([self.min_position, -self.max_speed]).numpy()
        high = torch.tensor([self.max_position, self.max_speed]).numpy()
        self.single_observation_space = spaces.Box(low, high, dtype="float32")
        super().__init__(num_envs, max_steps, device, dtype)
        self.power = _parameter(power, num_envs, "power", self.device, dtype)

    def _initial(self, count: int) -> Tensor:
        u = torch.rand(count, generator=self.generator, device=self.device, dtype=self.dtype)
        position = -0.6 + 0.2 * u
        return torch.stack([position, torch.zeros_like(position)], dim=-1)

    def _observe(self, state: Tensor) -> Tensor:
        return state.float()

    def _dynamics(self, state, actions):
        position, velocity = state[:, 0], state[:, 1]
        force = actions.clamp(-self.max_action, self.max_action)
        velocity = velocity + force * self.power - 0.0025 * torch.cos(3 * position)
        velocity = velocity.clamp(-self.max_speed, self.max_speed)
        position = (position + velocity).clamp(self.min_position, self.max_position)
        velocity = torch.where((position == self.min_position) & (velocity < 0), 0.0, velocity)
        terminated = (position >= self.goal_position) & (velocity >= 0)
        reward = torch.where(terminated, 100.0, 0.0) - 0.1 * actions**2
        new_state = torch.stack([position, velocity], dim=-1)
        return new_state.float().to(self.dtype), reward, terminated
