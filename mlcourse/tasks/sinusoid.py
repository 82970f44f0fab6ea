"""Sinusoid regression, the task family of Finn et al. (2017), section 5.1.

Introduced in lesson 01 (``notebooks/01_meta_learning_problem.ipynb``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mlcourse.tasks.base import TaskBatch


@dataclass(frozen=True)
class Sinusoid:
    """Regress ``y = amplitude * sin(x - phase)`` from a few points.

    Each task draws ``amplitude ~ U[amplitude_range]`` and ``phase ~ U[phase_range]``; its
    inputs are ``x ~ U[x_range]``. The defaults are the MAML paper's.

    Args:
        amplitude_range: bounds of the uniform amplitude distribution.
        phase_range: bounds of the uniform phase distribution.
        x_range: bounds of the uniform input distribution.

    Example:
        >>> batch = Sinusoid().sample(25, 10, 10, generator=torch.Generator().manual_seed(0))
        >>> tuple(batch.x_support.shape), tuple(batch.y_query.shape)
        ((25, 10, 1), (25, 10, 1))
    """

    amplitude_range: tuple[float, float] = (0.1, 5.0)
    phase_range: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    def sample(
        self,
        num_tasks: int,
        k_support: int,
        k_query: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> TaskBatch:
        """Samples ``num_tasks`` tasks at once (no Python loop over tasks).

        Random numbers come from ``generator`` on its own device, so a seeded CPU generator
        gives the same tasks on every device; without a generator they are drawn directly
        on ``device``.

        Args:
            num_tasks: how many tasks.
            k_support: points per task in the support set.
            k_query: points per task in the query set.
            generator: optional seeded ``torch.Generator``.
            device: where the returned tensors live (default: the generator's device, or CPU).
            dtype: floating dtype of the returned tensors.

        Returns:
            A :class:`TaskBatch` with tensors ``(num_tasks, k, 1)`` and ``info`` holding the
            ``amplitude`` and ``phase`` of each task, shaped ``(num_tasks,)``.
        """
        for name, value in (("num_tasks", num_tasks), ("k_support", k_support)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if k_query < 0:
            raise ValueError(f"k_query must be non-negative, got {k_query}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        draw_device = generator.device if generator is not None else device
        k = k_support + k_query
        u = torch.rand(num_tasks, 2 + k, generator=generator, device=draw_device, dtype=dtype)
        if device is not None:
            u = u.to(device)
        amplitude = _scale(u[:, 0], self.amplitude_range)
        phase = _scale(u[:, 1], self.phase_range)
        x = _scale(u[:, 2:], self.x_range).unsqueeze(-1)
        y = self.function(x, amplitude, phase)
        return TaskBatch(
            x_support=x[:, :k_support],
            y_support=y[:, :k_support],
            x_query=x[:, k_support:],
            y_query=y[:, k_support:],
            info={"amplitude": amplitude, "phase": phase},
        )

    @staticmethod
    def function(x: torch.Tensor, amplitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """Evaluates each task's sinusoid.

        Args:
            x: ``(num_tasks, k, 1)`` inputs.
            amplitude: ``(num_tasks,)``.
            phase: ``(num_tasks,)``.

        Returns:
            ``(num_tasks, k, 1)`` targets.
        """
        return amplitude[:, None, None] * torch.sin(x - phase[:, None, None])


def _scale(u: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    low, high = bounds
    return low + (high - low) * u
