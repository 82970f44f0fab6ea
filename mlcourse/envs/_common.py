"""Helpers shared by the batched (tensor) environments."""

from __future__ import annotations

import operator

import numpy as np
import torch
from torch import Tensor


def seeded_generator(device: torch.device, seed: int | None) -> torch.Generator:
    """A generator on ``device``, seeded with ``seed`` (or from fresh entropy if None)."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def positive_sizes(**sizes) -> tuple[int, ...]:
    """Each size as a Python ``int``, in the order given: any integral number of at least 1
    (an ``int``, a NumPy integer such as ``np.int64(3)``, a 0-d integer tensor); anything else
    raises a ValueError naming it.

    >>> positive_sizes(num_arms=np.int64(3), num_pulls=10)
    (3, 10)
    """
    out = []
    for name, value in sizes.items():
        try:
            size = None if isinstance(value, bool) else operator.index(value)
        except TypeError:
            size = None
        if size is None or size < 1:
            raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
        out.append(size)
    return tuple(out)


def as_actions(actions, num_envs: int, num_actions: int, device: torch.device) -> Tensor:
    """Checks a batch of discrete actions and returns it as a ``(num_envs,)`` int64 tensor."""
    if isinstance(actions, np.ndarray):
        actions = torch.from_numpy(actions)
    actions = torch.as_tensor(actions, device=device)
    if actions.shape != (num_envs,):
        raise ValueError(
            f"actions has shape {tuple(actions.shape)}; expected ({num_envs},), one action per "
            "environment"
        )
    if actions.is_floating_point() or actions.is_complex() or actions.dtype == torch.bool:
        raise TypeError(f"actions must be integers, got {actions.dtype}")
    actions = actions.long()
    if actions.numel() and (actions.min() < 0 or actions.max() >= num_actions):
        raise ValueError(
            f"actions must lie in 0..{num_actions - 1}, got values from {int(actions.min())} "
            f"to {int(actions.max())}"
        )
    return actions


def as_continuous_actions(
    actions, num_envs: int, size: int, device: torch.device, dtype, what: str = "action"
) -> Tensor:
    """Checks a batch of continuous actions and returns it as a ``(num_envs, size)`` tensor."""
    actions = torch.as_tensor(actions, dtype=dtype, device=device)
    if actions.shape != (num_envs, size):
        raise ValueError(
            f"actions has shape {tuple(actions.shape)}; expected ({num_envs}, {size}), one "
            f"{what} per environment"
        )
    if not torch.isfinite(actions).all():
        raise ValueError(f"actions must be finite (a NaN or inf {what} was given)")
    return actions
