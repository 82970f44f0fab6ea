"""Reptile (Nichol, Achiam and Schulman, 2018) on the same functional core as MAML.

Adapt to each task with plain SGD, then move θ towards the adapted weights:
``θ ← θ + outer_lr * mean_τ (φ_τ - θ)`` (batched, the paper's Algorithm 2), or one task after
another (serial, Algorithm 1). No meta-gradient is back-propagated. Introduced in lesson 03
(``notebooks/03_reptile.ipynb``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mlcourse.algorithms.maml import (
    LossFn,
    Params,
    _adapt_batch,
    _adapt_reference,
    _check_inner,
)
from mlcourse.validation import check_model, check_params, check_tasks


def reptile_step(
    model: nn.Module,
    params: Mapping[str, Tensor],
    tasks,
    *,
    loss_fn: LossFn,
    inner_lr: float,
    num_inner_steps: int,
    outer_lr: float,
    serial: bool = False,
) -> Params:
    """One Reptile meta-update over a batch of tasks.

    The inner loop runs ``num_inner_steps`` steps of SGD on each task's support set.

    Args:
        model: any module without running statistics.
        params: θ, ``{name: tensor}``.
        tasks: an object with ``x_support, y_support`` (``x_query, y_query`` are ignored) whose
            leading dimension is the task.
        loss_fn: ``loss_fn(prediction, target) -> scalar``.
        inner_lr: SGD step size of the inner loop.
        num_inner_steps: SGD steps per task.
        outer_lr: the interpolation step ε.
        serial: if True, update θ after each task in turn (Algorithm 1); otherwise average the
            displacements of all tasks, adapted in parallel with ``vmap`` (Algorithm 2).

    Returns:
        The new θ, detached from any graph.

    Example:
        >>> import torch.nn.functional as F
        >>> from mlcourse.models import MLP
        >>> from mlcourse.algorithms.maml import params_of
        >>> from mlcourse.tasks import Sinusoid
        >>> model = MLP()
        >>> new = reptile_step(model, params_of(model), Sinusoid().sample(5, 10, 0),
        ...                    loss_fn=F.mse_loss, inner_lr=0.02, num_inner_steps=5, outer_lr=0.1)
        >>> new["0.weight"].requires_grad
        False
    """
    check_model(model)
    theta = {n: p.detach() for n, p in check_params(model, params).items()}
    _check_inner(theta, inner_lr, num_inner_steps)
    x_support, y_support, _, _ = check_tasks(theta, tasks, allow_ragged=serial)
    if serial:
        for xs, ys in zip(x_support, y_support, strict=True):
            phi = _adapt_reference(model, theta, xs, ys, loss_fn, inner_lr, num_inner_steps, True)
            theta = {n: (t + outer_lr * (phi[n].detach() - t)) for n, t in theta.items()}
        return theta
    with torch.no_grad():
        phi = _adapt_batch(
            model, theta, x_support, y_support, loss_fn, inner_lr, num_inner_steps, True
        )
        return {n: t + outer_lr * (phi[n] - t).mean(0) for n, t in theta.items()}


def reptile_step_loop(
    model: nn.Module,
    params: Mapping[str, Tensor],
    tasks,
    *,
    loss_fn: LossFn,
    inner_lr: float,
    num_inner_steps: int,
    outer_lr: float,
) -> Params:
    """The per-task loop version of the batched :func:`reptile_step` (the reference)."""
    check_model(model)
    theta = {n: p.detach() for n, p in check_params(model, params).items()}
    _check_inner(theta, inner_lr, num_inner_steps)
    x_support, y_support, _, _ = check_tasks(theta, tasks, allow_ragged=True)
    displacement = {n: torch.zeros_like(t) for n, t in theta.items()}
    for xs, ys in zip(x_support, y_support, strict=True):
        phi = _adapt_reference(model, theta, xs, ys, loss_fn, inner_lr, num_inner_steps, True)
        for n in theta:
            displacement[n] += phi[n].detach() - theta[n]
    return {n: t + outer_lr * displacement[n] / len(x_support) for n, t in theta.items()}
