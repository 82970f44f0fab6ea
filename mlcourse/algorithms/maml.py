"""Model-Agnostic Meta-Learning (Finn et al., 2017) as a functional core.

Parameters are ``dict[str, Tensor]`` fed to any ``nn.Module`` through
``torch.func.functional_call``. The vectorized functions (:func:`adapt_batch`,
:func:`meta_loss`) run every task of a batch at once with ``torch.func.vmap``; the
per-task loop (:func:`adapt_reference`, :func:`meta_loss_loop`) is the plain reference they are
tested against. Introduced in lesson 02 (``notebooks/02_maml.ipynb``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from mlcourse.validation import check_model, check_params, check_task, check_tasks

Params = dict[str, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
LearningRate = float | Mapping[str, Tensor]

__all__ = [
    "adapt",
    "adapt_batch",
    "adapt_reference",
    "compile_meta_loss",
    "meta_loss",
    "meta_loss_loop",
    "params_of",
    "query_losses",
]


def params_of(model: nn.Module) -> Params:
    """The model's own parameters as a dict (gradients flow back into the module).

    Example:
        >>> from mlcourse.models import MLP
        >>> sorted(params_of(MLP()))[:2]
        ['0.bias', '0.weight']
    """
    return dict(model.named_parameters())


def adapt(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x_support: Tensor,
    y_support: Tensor,
    *,
    loss_fn: LossFn,
    inner_lr: LearningRate,
    num_inner_steps: int = 1,
    first_order: bool = False,
) -> Params:
    """Adapts ``params`` to one task with ``num_inner_steps`` steps of gradient descent.

    Each step is ``θ ← θ - inner_lr * ∇_θ loss_fn(model(x_support; θ), y_support)``. The result
    stays differentiable with respect to the input ``params``: with ``first_order=False`` the
    meta-gradient includes the second-order terms (MAML); with ``first_order=True`` the inner
    gradients are treated as constants (first-order MAML).

    Args:
        model: any module without running statistics; only its structure is used.
        params: parameters to start from, ``{name: tensor}`` (a subset of the model's names).
        x_support: ``(k_support, *input_shape)`` inputs of one task.
        y_support: ``(k_support, *target_shape)`` targets of that task.
        loss_fn: ``loss_fn(prediction, target) -> scalar``, e.g. ``F.mse_loss``.
        inner_lr: step size, a float or a ``{name: tensor}`` of per-parameter step sizes
            (Meta-SGD), each broadcastable to its parameter.
        num_inner_steps: number of gradient steps; 0 returns ``params`` unchanged.
        first_order: drop the second-order terms of the meta-gradient.

    Returns:
        The adapted parameters, ``{name: tensor}`` with the shapes of ``params``.

    Example:
        >>> import torch.nn.functional as F
        >>> from mlcourse.models import MLP
        >>> model = MLP()
        >>> x, y = torch.randn(10, 1), torch.randn(10, 1)
        >>> fast = adapt(model, params_of(model), x, y, loss_fn=F.mse_loss, inner_lr=0.01)
        >>> fast["0.weight"].shape
        torch.Size([40, 1])
    """
    check_model(model)
    params = check_params(model, params)
    _check_inner(params, inner_lr, num_inner_steps)
    check_task(params, x_support, y_support)
    return _adapt(
        model, params, x_support, y_support, loss_fn, inner_lr, num_inner_steps, first_order
    )


def adapt_batch(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x_support: Tensor,
    y_support: Tensor,
    *,
    loss_fn: LossFn,
    inner_lr: LearningRate,
    num_inner_steps: int = 1,
    first_order: bool = False,
) -> Params:
    """:func:`adapt` on every task of a batch at once (``vmap`` over the leading dimension).

    Args:
        model, params, loss_fn, inner_lr, num_inner_steps, first_order: as in :func:`adapt`.
        x_support: ``(num_tasks, k_support, *input_shape)``.
        y_support: ``(num_tasks, k_support, *target_shape)``.

    Returns:
        ``{name: tensor}`` where each tensor is ``(num_tasks, *param_shape)``.
    """
    check_model(model)
    params = check_params(model, params)
    _check_inner(params, inner_lr, num_inner_steps)
    check_task(params, x_support, y_support, batched=True)
    return _adapt_batch(
        model, params, x_support, y_support, loss_fn, inner_lr, num_inner_steps, first_order
    )


def query_losses(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x_query: Tensor,
    y_query: Tensor,
    *,
    loss_fn: LossFn,
) -> Tensor:
    """Each task's loss on its query set, under its own (adapted) parameters.

    Args:
        model: the module.
        params: ``{name: (num_tasks, *param_shape)}``, e.g. from :func:`adapt_batch`.
        x_query: ``(num_tasks, k_query, *input_shape)``.
        y_query: ``(num_tasks, k_query, *target_shape)``.
        loss_fn: ``loss_fn(prediction, target) -> scalar``.

    Returns:
        ``(num_tasks,)`` losses.
    """

    return _task_losses(model, loss_fn, dict(params), x_query, y_query)


def meta_loss(
    model: nn.Module,
    params: Mapping[str, Tensor],
    tasks,
    *,
    loss_fn: LossFn,
    inner_lr: LearningRate,
    num_inner_steps: int = 1,
    first_order: bool = False,
) -> Tensor:
    """The MAML objective: mean over tasks of the query loss after adapting on the support set.

    ``meta_loss = mean_τ loss_fn(model(x_query_τ; adapt(params, support_τ)), y_query_τ)``,
    computed for all tasks at once. Calling ``.backward()`` on it gives the meta-gradient.

    Args:
        model, params, loss_fn, inner_lr, num_inner_steps, first_order: as in :func:`adapt`.
        tasks: any object with tensors ``x_support, y_support, x_query, y_query`` whose leading
            dimension is the task (e.g. :class:`mlcourse.tasks.TaskBatch`); every task must have
            the same number of points (use :func:`meta_loss_loop` otherwise).

    Returns:
        A scalar tensor.

    Example:
        >>> import torch.nn.functional as F
        >>> from mlcourse.models import MLP
        >>> from mlcourse.tasks import Sinusoid
        >>> model, tasks = MLP(), Sinusoid().sample(25, 10, 10)
        >>> loss = meta_loss(model, params_of(model), tasks, loss_fn=F.mse_loss, inner_lr=0.01)
        >>> loss.backward(); model[0].weight.grad.shape
        torch.Size([40, 1])
    """
    check_model(model)
    params = check_params(model, params)
    _check_inner(params, inner_lr, num_inner_steps)
    x_support, y_support, x_query, y_query = check_tasks(params, tasks)
    tie_weights = _has_tied_weights(model)  # once per call: it walks the modules
    adapted = _adapt_batch(
        model,
        params,
        x_support,
        y_support,
        loss_fn,
        inner_lr,
        num_inner_steps,
        first_order,
        tie_weights,
    )
    return _task_losses(model, loss_fn, adapted, x_query, y_query, tie_weights).mean()


# ---------------------------------------------------------------------------------------------
# torch.compile: the pure torch.func form.

# float32 meta-gradients of compiled and eager code agree to about 1e-6 of their size.
COMPILED_GRAD_TOLERANCE = 1e-4


def compile_meta_loss(
    model: nn.Module,
    params: Mapping[str, Tensor],
    tasks,
    *,
    loss_fn: LossFn,
    inner_lr: LearningRate,
    num_inner_steps: int = 1,
    first_order: bool = False,
):
    """``torch.compile`` of the meta-loss, checked against eager :func:`meta_loss` on ``tasks``.

    ``torch.compile(meta_loss)`` itself would silently lose the second-order path (the
    inner ``torch.autograd.grad(create_graph=True)`` has no double backward under AOT
    autograd), so what is compiled is the pure ``torch.func`` form: ``vmap`` over tasks of
    the one-task :func:`adapt` (``grad`` inside), slower than :func:`meta_loss` in eager mode
    but traceable to second order. It is only used if its meta-gradient matches eager's.

    Args:
        model, params, loss_fn, inner_lr, num_inner_steps, first_order: as in
            :func:`meta_loss` (``params`` are not changed).
        tasks: a batch to check on.

    Returns:
        ``(fn, info)``: ``fn(model, params, tasks)`` returns the meta-loss, or is ``None``
        when compiling failed or disagreed with eager, which ``info["compiled_error"]`` then
        explains; ``info`` also holds ``compile_seconds`` and ``compiled_max_grad_diff``.
    """

    def fn(m, p, t):
        def one_task(xs, ys, xq, yq):
            fast = _adapt(m, p, xs, ys, loss_fn, inner_lr, num_inner_steps, first_order)
            return loss_fn(functional_call(m, fast, (xq,)), yq)

        return vmap(one_task)(t.x_support, t.y_support, t.x_query, t.y_query).mean()

    start = time.perf_counter()
    leaves = [p for p in params.values() if p.requires_grad]
    eager = meta_loss(  # also checks the inputs, with meta_loss's errors
        model,
        params,
        tasks,
        loss_fn=loss_fn,
        inner_lr=inner_lr,
        num_inner_steps=num_inner_steps,
        first_order=first_order,
    )
    g_eager = torch.autograd.grad(eager, leaves)
    try:
        compiled = torch.compile(fn)
        g_comp = torch.autograd.grad(compiled(model, params, tasks), leaves)
    except Exception as err:  # report, do not hide: eager still works
        return None, {"compiled_error": f"{type(err).__name__}: {err}"[:500]}
    diff = max((a - b).abs().max().item() for a, b in zip(g_eager, g_comp, strict=True))
    scale = max(a.abs().max().item() for a in g_eager)
    info = {
        "compile_seconds": round(time.perf_counter() - start, 1),
        "compiled_max_grad_diff": diff,
    }
    if diff > COMPILED_GRAD_TOLERANCE * max(scale, 1.0):
        info["compiled_error"] = (
            f"the compiled meta-gradient differs from eager by {diff:.3g} (largest entry "
            f"{scale:.3g})"
        )
        return None, info
    return compiled, info


# ---------------------------------------------------------------------------------------------
# The reference: one task at a time, with torch.autograd.grad.


def adapt_reference(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x_support: Tensor,
    y_support: Tensor,
    *,
    loss_fn: LossFn,
    inner_lr: LearningRate,
    num_inner_steps: int = 1,
    first_order: bool = False,
) -> Params:
    """The plain version of :func:`adapt`, with ``torch.autograd.grad(create_graph=...)``.

    Same arguments and result as :func:`adapt`; kept as the oracle the vectorized code is
    tested against, and as the version lesson 02 derives first.
    """
    check_model(model)
    params = check_params(model, params)
    _check_inner(params, inner_lr, num_inner_steps)
    check_task(params, x_support, y_support)
    return _adapt_reference(
        model, params, x_support, y_support, loss_fn, inner_lr, num_inner_steps, first_order
    )


def _adapt_reference(
    model,
    params,
    x_support,
    y_support,
    loss_fn,
    inner_lr,
    num_inner_steps,
    first_order,
    tie_weights: bool | None = None,
) -> Params:
    names = list(params)
    params = {n: p if p.requires_grad else p.detach().requires_grad_() for n, p in params.items()}
    if tie_weights is None:
        tie_weights = _has_tied_weights(model)
    with torch.enable_grad():
        for _ in range(num_inner_steps):
            prediction = functional_call(model, params, (x_support,), tie_weights=tie_weights)
            loss = loss_fn(prediction, y_support)
            grads = torch.autograd.grad(
                loss, [params[n] for n in names], create_graph=not first_order, allow_unused=True
            )
            params = {
                n: _step(params[n], g, _lr(inner_lr, n)) for n, g in zip(names, grads, strict=True)
            }
    return params


def meta_loss_loop(
    model: nn.Module,
    params: Mapping[str, Tensor],
    tasks,
    *,
    loss_fn: LossFn,
    inner_lr: LearningRate,
    num_inner_steps: int = 1,
    first_order: bool = False,
) -> Tensor:
    """The per-task loop version of :func:`meta_loss` (the reference implementation).

    ``tasks`` may also hold sequences of per-task tensors of different sizes, which the
    vectorized :func:`meta_loss` cannot take.
    """
    check_model(model)
    params = check_params(model, params)
    _check_inner(params, inner_lr, num_inner_steps)
    x_support, y_support, x_query, y_query = check_tasks(params, tasks, allow_ragged=True)
    tie_weights = _has_tied_weights(model)
    losses = []
    for xs, ys, xq, yq in zip(x_support, y_support, x_query, y_query, strict=True):
        adapted = _adapt_reference(
            model, params, xs, ys, loss_fn, inner_lr, num_inner_steps, first_order, tie_weights
        )
        prediction = functional_call(model, adapted, (xq,), tie_weights=tie_weights)
        losses.append(loss_fn(prediction, yq))
    return torch.stack(losses).mean()


# ---------------------------------------------------------------------------------------------
# Internals (no validation: callers check their inputs once).


def _adapt(
    model: nn.Module,
    params: Params,
    x_support: Tensor,
    y_support: Tensor,
    loss_fn: LossFn,
    inner_lr: LearningRate,
    num_inner_steps: int,
    first_order: bool,
) -> Params:
    def support_loss(p: Params) -> Tensor:
        return loss_fn(functional_call(model, p, (x_support,)), y_support)

    support_grad = grad(support_loss)
    for _ in range(num_inner_steps):
        # First order: take the gradient at a detached copy, so no second-order graph is built.
        at = {n: p.detach() for n, p in params.items()} if first_order else params
        grads = support_grad(at)
        params = {n: p - _lr(inner_lr, n) * grads[n] for n, p in params.items()}
    return params


def _adapt_batch(
    model: nn.Module,
    params: Params,
    x_support: Tensor,
    y_support: Tensor,
    loss_fn: LossFn,
    inner_lr: LearningRate,
    num_inner_steps: int,
    first_order: bool,
    tie_weights: bool | None = None,
) -> Params:
    """All tasks at once, on *batched parameters*: one copy of θ per task, ``(T, *shape)``.

    The per-task losses come from ``vmap`` over the one-task forward pass. Task ``t``'s loss
    depends only on copy ``t``, so the gradient of their sum with respect to the batched
    parameters holds every task's own gradient in its row: one backward pass gives all of
    them, and ``create_graph`` keeps the second-order path to θ (through ``expand``). This
    computes exactly what ``vmap(grad(...))`` does, with fewer, larger operations.
    """
    num_tasks = x_support.shape[0]
    # Under the caller's no_grad (e.g. evaluation), build no graph at all.
    differentiable = torch.is_grad_enabled() and not first_order
    batched = {n: p.expand(num_tasks, *p.shape) for n, p in params.items()}
    if tie_weights is None:
        tie_weights = _has_tied_weights(model)
    for _ in range(num_inner_steps):
        with torch.enable_grad():
            at = {
                n: p if differentiable and p.requires_grad else p.detach().requires_grad_()
                for n, p in batched.items()
            }
            losses = _task_losses(model, loss_fn, at, x_support, y_support, tie_weights)
            grads = torch.autograd.grad(
                losses.sum(), list(at.values()), create_graph=differentiable, allow_unused=True
            )
        batched = {
            n: _step(p, g, _lr(inner_lr, n))
            for (n, p), g in zip(batched.items(), grads, strict=True)
        }
    return batched


def _step(p: Tensor, g: Tensor | None, lr) -> Tensor:
    """``p - lr * g`` (one fused ``add`` when ``lr`` is a number); ``p`` where ``g`` is unused."""
    if g is None:
        return p
    if isinstance(lr, (int, float)):
        return torch.add(p, g, alpha=-lr)
    return p - lr * g


def _task_losses(
    model: nn.Module,
    loss_fn: LossFn,
    params: Params,
    x: Tensor,
    y: Tensor,
    tie_weights: bool | None = None,
) -> Tensor:
    """``(T,)`` losses of ``T`` tasks, each under its own row of the batched ``params``.

    Re-tying shared weights costs a walk over the modules on every call, so it is only asked
    of a model that has tied weights (``tie_weights``; found out here if ``None``).
    """
    if tie_weights is None:
        tie_weights = _has_tied_weights(model)

    def one_task(p: Params, xt: Tensor, yt: Tensor) -> Tensor:
        return loss_fn(functional_call(model, p, (xt,), tie_weights=tie_weights), yt)

    return vmap(one_task)(params, x, y)


def _has_tied_weights(model: nn.Module) -> bool:
    """Whether one tensor is registered under several names (e.g. shared embeddings)."""
    every = model.named_parameters(remove_duplicate=False)
    return sum(1 for _ in every) != sum(1 for _ in model.parameters())


def _lr(inner_lr: LearningRate, name: str):
    return inner_lr[name] if isinstance(inner_lr, Mapping) else inner_lr


def _check_inner(params: Params, inner_lr: LearningRate, num_inner_steps: int) -> None:
    if not isinstance(num_inner_steps, int) or num_inner_steps < 0:
        raise ValueError(f"num_inner_steps must be a non-negative int, got {num_inner_steps!r}")
    if isinstance(inner_lr, Mapping):
        missing = sorted(set(params) - set(inner_lr))
        if missing:
            raise KeyError(
                f"inner_lr has no step size for {missing}: give one tensor per parameter name "
                "(see mlcourse.algorithms.metasgd.init_inner_lrs)"
            )
    elif not isinstance(inner_lr, (int, float, Tensor)):
        raise TypeError(f"inner_lr must be a float or a dict of tensors, got {type(inner_lr)}")
