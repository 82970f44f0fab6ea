"""CAVIA (Zintgraf et al., 2019): adapt a few context inputs, not the network's weights.

The network takes the task's inputs together with a *context vector* ``φ`` of a few numbers.
For each task, φ starts at zero and takes gradient steps on the support loss, while the
network's weights θ stay shared:

    φ_τ = 0 − α ∇_φ L_support(θ, φ)     (and so on for more steps)
    θ ← θ − β ∇_θ mean_τ L_query(θ, φ_τ)

The meta-gradient reaches θ directly and through φ_τ (second order, as in MAML; with
``first_order=True`` only directly). The inner loop is as cheap as the context is small, and
what the tasks share cannot be overwritten at test time. The authors' sinusoid setting: five
context inputs beside x, a 40-40 ReLU network, one inner step of size 1.0.

Same functional core as :mod:`mlcourse.algorithms.maml`: parameters are ``{name: tensor}`` fed to
the model through ``torch.func.functional_call``; :func:`meta_loss` runs all tasks at once with
``vmap``, :func:`meta_loss_loop` task by task (the reference it is tested against).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from mlcourse.algorithms.maml import LossFn
from mlcourse.validation import check_model, check_params, check_task, check_tasks

Params = dict[str, Tensor]

__all__ = ["adapt_context", "context_step", "meta_loss", "meta_loss_loop", "with_context"]


def with_context(x: Tensor, context: Tensor) -> Tensor:
    """``x`` ``(..., d)`` with the context ``(c,)`` appended to every row: ``(..., d + c)``.

    Example:
        >>> with_context(torch.ones(2, 1), torch.tensor([0.5, -1.0]))
        tensor([[ 1.0000,  0.5000, -1.0000],
                [ 1.0000,  0.5000, -1.0000]])
    """
    return torch.cat([x, context.expand(*x.shape[:-1], context.shape[-1])], dim=-1)


def adapt_context(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x_support: Tensor,
    y_support: Tensor,
    *,
    loss_fn: LossFn,
    inner_lr: float,
    num_context: int,
    num_inner_steps: int = 1,
    first_order: bool = False,
) -> Tensor:
    """One task's context after ``num_inner_steps`` gradient steps from zero.

    Args:
        model: takes ``(k, d + num_context)`` inputs (e.g. ``MLP(1 + num_context, 1)``).
        params: θ, ``{name: tensor}``; they are not changed.
        x_support: ``(k, d)`` inputs of one task.
        y_support: ``(k, ...)`` targets.
        loss_fn: ``loss_fn(prediction, target) -> scalar``.
        inner_lr: the context's step size α.
        num_context: the context's size c.
        num_inner_steps: gradient steps; 0 returns the zero context.
        first_order: the result does not depend on θ (no second-order meta-gradient).

    Returns:
        The adapted context ``(num_context,)``, differentiable with respect to ``params``
        unless ``first_order``.

    Example:
        >>> import torch.nn.functional as F
        >>> from mlcourse.algorithms.maml import params_of
        >>> from mlcourse.models import MLP
        >>> model = MLP(1 + 5, 1)
        >>> x, y = torch.randn(10, 1), torch.randn(10, 1)
        >>> context = adapt_context(
        ...     model, params_of(model), x, y, loss_fn=F.mse_loss, inner_lr=1.0, num_context=5
        ... )
        >>> context.shape, context.requires_grad
        (torch.Size([5]), True)
    """
    check_model(model)
    params = check_params(model, params)
    _check_inner(inner_lr, num_context, num_inner_steps)
    check_task(params, x_support, y_support)
    _check_input_size(model, params, x_support, num_context)
    return _adapt(
        model, params, x_support, y_support, loss_fn, inner_lr, num_context, num_inner_steps,
        first_order,
    )  # fmt: skip


def meta_loss(
    model: nn.Module,
    params: Mapping[str, Tensor],
    tasks,
    *,
    loss_fn: LossFn,
    inner_lr: float,
    num_context: int,
    num_inner_steps: int = 1,
    first_order: bool = False,
) -> Tensor:
    """The CAVIA objective, all tasks at once: mean over tasks of the query loss with the
    task's adapted context. ``.backward()`` gives the meta-gradient of θ.

    Args:
        model, params, loss_fn, inner_lr, num_context, num_inner_steps, first_order: as in
            :func:`adapt_context`.
        tasks: tensors ``x_support, y_support, x_query, y_query`` whose leading dimension is the
            task (e.g. :class:`mlcourse.tasks.TaskBatch`).

    Example:
        >>> import torch.nn.functional as F
        >>> from mlcourse.algorithms.maml import params_of
        >>> from mlcourse.models import MLP
        >>> from mlcourse.tasks import Sinusoid
        >>> model, tasks = MLP(1 + 5, 1), Sinusoid().sample(25, 10, 10)
        >>> loss = meta_loss(
        ...     model, params_of(model), tasks, loss_fn=F.mse_loss, inner_lr=1.0, num_context=5
        ... )
        >>> loss.backward(); model[0].weight.grad.shape
        torch.Size([40, 6])
    """
    check_model(model)
    params = check_params(model, params)
    _check_inner(inner_lr, num_context, num_inner_steps)
    x_support, y_support, x_query, y_query = check_tasks(params, tasks)
    _check_input_size(model, params, x_support, num_context)

    def task_loss(xs, ys, xq, yq):
        context = _adapt(
            model, params, xs, ys, loss_fn, inner_lr, num_context, num_inner_steps, first_order
        )
        return loss_fn(functional_call(model, params, (with_context(xq, context),)), yq)

    return vmap(task_loss)(x_support, y_support, x_query, y_query).mean()


def meta_loss_loop(
    model: nn.Module,
    params: Mapping[str, Tensor],
    tasks,
    *,
    loss_fn: LossFn,
    inner_lr: float,
    num_context: int,
    num_inner_steps: int = 1,
    first_order: bool = False,
) -> Tensor:
    """:func:`meta_loss` task by task with ``torch.autograd.grad`` (the reference); ``tasks``
    may hold per-task tensors of different sizes."""
    check_model(model)
    params = check_params(model, params)
    _check_inner(inner_lr, num_context, num_inner_steps)
    x_support, y_support, x_query, y_query = check_tasks(params, tasks, allow_ragged=True)
    _check_input_size(model, params, x_support[0], num_context)
    losses = []
    for xs, ys, xq, yq in zip(x_support, y_support, x_query, y_query, strict=True):
        context = xs.new_zeros(num_context, requires_grad=True)
        for _ in range(num_inner_steps):
            prediction = functional_call(model, params, (with_context(xs, context),))
            # first order: the step is a constant, so the context depends on θ through nothing
            (g,) = torch.autograd.grad(
                loss_fn(prediction, ys), context, create_graph=not first_order
            )
            context = context - inner_lr * g
        losses.append(loss_fn(functional_call(model, params, (with_context(xq, context),)), yq))
    return torch.stack(losses).mean()


def _check_input_size(model: nn.Module, params: Params, x: Tensor, num_context: int) -> None:
    """A clear error when the model was not built for the inputs and the context together."""
    row = x.reshape(-1, x.shape[-1])[:1]
    try:
        with torch.no_grad():
            functional_call(model, params, (with_context(row, row.new_zeros(num_context)),))
    except RuntimeError as err:
        size = x.shape[-1] + num_context
        raise ValueError(
            f"the model cannot take the task's {x.shape[-1]} input feature(s) with the "
            f"{num_context} context inputs: build it for {size} inputs, e.g. MLP({size}, 1)"
        ) from err


def _check_inner(inner_lr: float, num_context: int, num_inner_steps: int) -> None:
    if not isinstance(num_context, int) or num_context < 1:
        raise ValueError(f"num_context must be an int of at least 1, got {num_context!r}")
    if not isinstance(num_inner_steps, int) or num_inner_steps < 0:
        raise ValueError(f"num_inner_steps must be a non-negative int, got {num_inner_steps!r}")
    if not isinstance(inner_lr, (int, float)) or not inner_lr >= 0:
        raise ValueError(f"inner_lr must be a number of at least 0, got {inner_lr!r}")


def context_step(
    model: nn.Module,
    params: Mapping[str, Tensor],
    context: Tensor,
    x_support: Tensor,
    y_support: Tensor,
    *,
    loss_fn: LossFn,
    inner_lr: float,
) -> Tensor:
    """One inner step, ``context − inner_lr · ∇_context L_support(θ, context)``, without input
    checks (it runs inside ``vmap``; :func:`adapt_context` checks and loops over it).
    Differentiable with respect to ``params`` and ``context``."""

    def support_loss(c: Tensor) -> Tensor:
        prediction = functional_call(model, params, (with_context(x_support, c),))
        return loss_fn(prediction, y_support)

    return context - inner_lr * grad(support_loss)(context)


def _adapt(
    model, params, x_support, y_support, loss_fn, inner_lr, num_context, num_inner_steps,
    first_order,
) -> Tensor:  # fmt: skip
    """The inner loop without validation (works inside ``vmap``). First order: the steps are
    taken with θ detached, so the context depends on θ through nothing."""
    inner = {n: p.detach() for n, p in params.items()} if first_order else params
    context = x_support.new_zeros(num_context)
    for _ in range(num_inner_steps):
        context = context_step(
            model, inner, context, x_support, y_support, loss_fn=loss_fn, inner_lr=inner_lr
        )
    return context
