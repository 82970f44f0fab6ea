"""Checks of lesson 02 (MAML): the inner update, the second-order meta-loss, and the two halves
of the naive blog-post MAML fixed (the meta-training step and the meta-test path).

Every check builds a small random float64 network and random sinusoid tasks, runs the learner's
function, and compares it with :mod:`mlcourse.algorithms.maml` (never with ``solutions/``). Before
the generic comparison it tries the known wrong answers (first order, detached gradient, wrong sign,
no support/query split, ...) so that the ❌ names the mistake. Exercises in
``solutions/02_maml.ipynb``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from mlcourse.algorithms.maml import adapt_reference, meta_loss_loop, params_of
from mlcourse.course.checks._core import (
    ATOL,
    DETACHED_HINT,
    RTOL,
    Fail,
    check,
    expect_model_unchanged,
    expect_second_order,
    expect_tensor,
    first_match,
    grads_of,
    same_dict,
    same_tensor,
    shifted,
    snapshot,
    step_size_fail,
    step_variants,
)
from mlcourse.models import MLP
from mlcourse.tasks import Sinusoid, TaskBatch

__all__ = ["fixed_maml_step", "fixed_meta_test", "inner_update", "maml_meta_loss"]

LESSON = "02_maml"
DTYPE = torch.float64


# ---------------------------------------------------------------------------------------------
# Random problems


def _mlp(seed: int, hidden=(8, 8)) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MLP(hidden_sizes=hidden).to(DTYPE)


class _Standardize(nn.Module):
    """Scales the input with fixed statistics kept as buffers (so ``state_dict`` holds more
    than the parameters, and in a different order)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5], dtype=DTYPE))
        self.register_buffer("std", torch.tensor([2.0], dtype=DTYPE))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def _buffered_mlp(seed: int) -> nn.Module:
    return nn.Sequential(_Standardize(), _mlp(seed))


def _tasks(seed: int, num_tasks: int = 4, k_support: int = 5, k_query: int = 7) -> TaskBatch:
    gen = torch.Generator().manual_seed(seed)
    return Sinusoid().sample(num_tasks, k_support, k_query, generator=gen, dtype=DTYPE)


def _mse(prediction: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(prediction, target)


def _sum_squares(prediction: Tensor, target: Tensor) -> Tensor:
    return ((prediction - target) ** 2).sum()


def _output_sum(prediction: Tensor, target: Tensor) -> Tensor:
    return prediction.sum()


def _adapt(model, params, x, y, inner_lr, steps=1, *, loss_fn=_mse, first_order=False):
    return adapt_reference(
        model,
        params,
        x,
        y,
        loss_fn=loss_fn,
        inner_lr=inner_lr,
        num_inner_steps=steps,
        first_order=first_order,
    )


def _query_loss(model, params, x, y) -> Tensor:
    return _mse(functional_call(model, dict(params), (x,)), y)


# ---------------------------------------------------------------------------------------------
# (a) inner_update


@check(
    LESSON,
    points=1,
    forbid=(
        "mlcourse.algorithms.maml.adapt",
        "mlcourse.algorithms.maml.adapt_batch",
        "mlcourse.algorithms.maml.adapt_reference",
        "mlcourse.algorithms.maml._adapt",
    ),
)
def inner_update(fn: Callable) -> str:
    """Checks ``fn(model, params, x_support, y_support, inner_lr) -> dict``: one differentiable
    step of SGD on the mean squared error, from the model's own parameters and from parameters
    that are a function of them (as in a second inner step), with two step sizes."""
    model = _mlp(seed=1)
    theta = params_of(model)
    first = _tasks(seed=2)
    second = _tasks(seed=12, num_tasks=1, k_support=9, k_query=4)
    for params, tasks, inner_lr in (
        (theta, first, 0.05),
        (shifted(theta, seed=13), second, 0.02),
    ):
        xs, ys = tasks.x_support[0], tasks.y_support[0]
        xq, yq = tasks.x_query[0], tasks.y_query[0]
        _inner_case(fn, model, theta, params, (xs, ys, xq, yq), inner_lr)
    return (
        "one SGD step matches mlcourse.algorithms.maml.adapt on a random 1-8-8-1 network "
        "(float64), from θ and from parameters computed from θ, with step sizes 0.05 and 0.02; it "
        "leaves the model untouched and carries the second-order meta-gradient"
    )


def _inner_case(fn, model, theta, params, data, inner_lr: float) -> None:
    xs, ys, xq, yq = data
    given = dict(params)
    before = snapshot(model)
    out = fn(model, params, xs, ys, inner_lr)
    expect_model_unchanged(model, before, "inner_update")
    if any(params[n] is not given[n] for n in given) or set(params) != set(given):
        raise Fail(
            "inner_update changed the `params` dict it was given",
            "return a new dict, e.g. `{name: p - inner_lr * g for ...}`",
        )
    if not isinstance(out, Mapping):
        raise Fail(
            f"inner_update should return a dict of tensors, got {type(out).__name__}",
            "return `{name: new_tensor}` with the same names as `params`",
        )
    if set(out) != set(params):
        raise Fail(
            f"the returned dict has names {sorted(out)}, expected {sorted(params)}",
            "keep the names of `params` (zip the gradients with `params.keys()`)",
        )
    ref = _adapt(model, params, xs, ys, inner_lr)
    wrong = {
        **step_variants(model, theta, params, xs, ys, inner_lr),
        "the inner 'loss' is the model's output summed, not a loss against y_support": _adapt(
            model, params, xs, ys, inner_lr, loss_fn=_output_sum
        ),
        "the loss is the sum of squared errors, not their mean": _adapt(
            model, params, xs, ys, inner_lr, loss_fn=_sum_squares
        ),
    }
    mistake = first_match(out, wrong, same_dict)
    hint = (
        "θ' = θ - inner_lr * ∇_θ F.mse_loss(functional_call(model, params, (x_support,)), "
        "y_support), with θ = params"
    )
    if mistake:
        raise Fail(mistake, hint)
    step_size_fail(out, params, ref, inner_lr, "your update")
    for name in params:
        try:
            expect_tensor(out[name], ref[name], f"adapted ['{name}']", atol=ATOL, rtol=RTOL)
        except Fail as fail:
            fail.hint = fail.hint or hint
            raise
    second = grads_of(_query_loss(model, ref, xq, yq), theta)
    first = grads_of(
        _query_loss(model, _adapt(model, params, xs, ys, inner_lr, first_order=True), xq, yq),
        theta,
    )
    mine = grads_of(_query_loss(model, out, xq, yq), theta)
    again = _adapt(model, params, xs, ys, inner_lr)  # ref's graph was used up just above
    detached_start = {n: v - params[n] + params[n].detach() for n, v in again.items()}
    if (
        all(g is not None for g in mine.values())
        and same_dict(mine, grads_of(_query_loss(model, detached_start, xq, yq), theta))
        and not same_dict(mine, second)
    ):
        raise Fail(
            "the step starts from detached parameters (`p.detach()` or `p.data`): the "
            "meta-gradient misses the direct path from θ to θ'",
            "θ' = p - inner_lr * g with p the tensor in `params` itself, not a detached copy",
        )
    expect_second_order(mine, theta, second, first, "the query loss after your step")


# ---------------------------------------------------------------------------------------------
# (b) maml_meta_loss


def _meta_loss_variants(model, params, tasks: TaskBatch, inner_lr: float, steps: int) -> dict:
    """Values of the usual wrong meta-losses, keyed by what is wrong."""

    def per_task(
        adapt_on: str, score_on: str, lr=inner_lr, n=steps, loss_fn=_mse, start=params, chain=False
    ):
        losses = []
        for i in range(tasks.num_tasks):
            xa, ya = getattr(tasks, f"x_{adapt_on}")[i], getattr(tasks, f"y_{adapt_on}")[i]
            xe, ye = getattr(tasks, f"x_{score_on}")[i], getattr(tasks, f"y_{score_on}")[i]
            adapted = _adapt(model, start, xa, ya, lr, n, loss_fn=loss_fn)
            if chain:  # the next task starts where this one ended
                start = adapted
            losses.append(_query_loss(model, adapted, xe, ye))
        return torch.stack(losses)

    return {
        "the fast weights are not reset between tasks: each task starts from the previous "
        "task's adapted parameters instead of from `params`": per_task(
            "support", "query", chain=True
        ).mean(),
        "the adaptation starts from the model's own parameters, not from the `params` you were "
        "given": per_task("support", "query", start=params_of(model)).mean(),
        f"one inner step too many: {steps + 1} instead of num_inner_steps = {steps}": per_task(
            "support", "query", n=steps + 1
        ).mean(),
        f"one inner step too few: {steps - 1} instead of num_inner_steps = {steps}": per_task(
            "support", "query", n=steps - 1
        ).mean(),
        "no adaptation: this is the query loss at θ itself": per_task(
            "support", "query", n=0
        ).mean(),
        "no support/query split: the adapted parameters are scored on the support set": per_task(
            "support", "support"
        ).mean(),
        "support and query are swapped (adapted on the query set, scored on the support set)": (
            per_task("query", "support").mean()
        ),
        "adapted and scored on the query set (the support set is never used)": per_task(
            "query", "query"
        ).mean(),
        "summed over tasks instead of averaged": per_task("support", "query").sum(),
        f"num_inner_steps is ignored: one inner step taken instead of {steps}": per_task(
            "support", "query", n=1
        ).mean(),
        "wrong sign in the inner step (it goes up the support gradient)": per_task(
            "support", "query", lr=-inner_lr
        ).mean(),
        "the inner 'loss' is the model's output summed, not a loss against y_support": per_task(
            "support", "query", loss_fn=_output_sum
        ).mean(),
    }


META_LOSS_HINT = (
    "meta-loss = mean_τ MSE(model(x_query; adapt(θ, support_τ))): for each task, fast = "
    "dict(params) inside the loop over tasks, num_inner_steps calls of your inner_update on its "
    "support set, then the MSE on its query set; the mean over tasks"
)


@check(
    LESSON,
    points=2,
    forbid=(
        "mlcourse.algorithms.maml.meta_loss",
        "mlcourse.algorithms.maml.meta_loss_loop",
        "mlcourse.algorithms.maml.adapt",
        "mlcourse.algorithms.maml.adapt_batch",
        "mlcourse.algorithms.maml.adapt_reference",
        "mlcourse.algorithms.maml._adapt",
    ),
)
def maml_meta_loss(fn: Callable) -> str:
    """Checks ``fn(model, params, tasks, inner_lr, num_inner_steps) -> scalar``: the mean over
    tasks of the query MSE after ``num_inner_steps`` second-order SGD steps on the support set."""
    model, tasks, inner_lr, steps = _mlp(seed=3), _tasks(seed=4), 0.03, 3
    # θ handed over as fresh leaves that are not the model's own parameters, as the outer loop
    # may do: the loss must adapt from `params`, whatever the model holds.
    params = {n: p.detach().requires_grad_() for n, p in shifted(params_of(model), 14).items()}
    before = snapshot(model)
    support_calls = [0]  # forward passes on one task's support set: one per inner step

    def count(_module, inputs):
        if inputs and isinstance(inputs[0], Tensor) and inputs[0].shape == tasks.x_support[0].shape:
            support_calls[0] += 1

    hook = model.register_forward_pre_hook(count)
    try:
        out = fn(model, params, tasks, inner_lr, steps)
    finally:
        hook.remove()
    expect_model_unchanged(model, before, "maml_meta_loss")
    if not isinstance(out, Tensor):
        raise Fail(
            f"maml_meta_loss should return a tensor, got {type(out).__name__}",
            "return the loss tensor itself (no `.item()`), so that `.backward()` can follow",
        )
    ref = meta_loss_loop(
        model, params, tasks, loss_fn=_mse, inner_lr=inner_lr, num_inner_steps=steps
    )
    if out.shape == ref.shape:
        mistake = first_match(
            out, _meta_loss_variants(model, params, tasks, inner_lr, steps), same_tensor
        )
        if mistake and mistake.startswith("num_inner_steps is ignored"):
            if support_calls[0] >= steps * tasks.num_tasks:  # steps were taken, all from θ
                raise Fail(
                    f"each of the {steps} inner steps starts again from θ: the support loss is "
                    "computed at `params` every time, so the steps add up to one step",
                    "compute step k's support loss at the fast weights of step k - 1 "
                    "(functional_call(model, fast, ...)) and update fast from fast",
                )
        if mistake:
            raise Fail(mistake, META_LOSS_HINT)
    try:
        expect_tensor(out, ref, "the meta-loss", atol=ATOL, rtol=RTOL)
    except Fail as fail:
        fail.hint = fail.hint or META_LOSS_HINT
        raise
    first = meta_loss_loop(
        model,
        params,
        tasks,
        loss_fn=_mse,
        inner_lr=inner_lr,
        num_inner_steps=steps,
        first_order=True,
    )
    expect_second_order(
        grads_of(out, params),
        params,
        grads_of(ref, params),
        grads_of(first, params),
        "your meta-loss",
    )
    return (
        "the meta-loss and its second-order gradient match mlcourse.algorithms.maml on "
        f"{tasks.num_tasks} random tasks with {steps} inner steps from a given θ (float64)"
    )


# ---------------------------------------------------------------------------------------------
# (c) fixed_maml_step: the naive blog-post MAML, fixed


class _ProbeOptimizer:
    """Plain SGD that records what the learner's step hands it."""

    def __init__(self, model: nn.Module, lr: float):
        self.model, self.lr = model, lr
        self.start = snapshot(model)
        self.steps = 0
        self.moved_before_step: str | None = None
        self.grads: dict[str, Tensor | None] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.model.parameters():
            p.grad = None

    def step(self) -> None:
        self.steps += 1
        if self.steps == 1:
            self.moved_before_step = _moved(self.model, self.start)
        self.grads = {
            n: None if p.grad is None else p.grad.detach().clone()
            for n, p in self.model.named_parameters()
        }
        with torch.no_grad():
            for p in self.model.parameters():
                if p.grad is not None:
                    p -= self.lr * p.grad


def _outer_grad_variants(model, params, tasks: TaskBatch, inner_lr: float) -> dict:
    """Meta-gradients of the usual wrong MAML steps, keyed by what is wrong."""

    def grad_of(
        adapt_on="support",
        score_on="query",
        inner=_mse,
        outer=_mse,
        n=1,
        fo=False,
        reduce="mean",
        detached_start=False,
    ):
        losses = []
        for i in range(tasks.num_tasks):
            xa, ya = getattr(tasks, f"x_{adapt_on}")[i], getattr(tasks, f"y_{adapt_on}")[i]
            xe, ye = getattr(tasks, f"x_{score_on}")[i], getattr(tasks, f"y_{score_on}")[i]
            adapted = _adapt(model, params, xa, ya, inner_lr, n, loss_fn=inner, first_order=fo)
            if detached_start:  # θ' = θ.detach() - α g(θ): only the path through g is left
                adapted = {k: v - params[k] + params[k].detach() for k, v in adapted.items()}
            losses.append(outer(functional_call(model, adapted, (xe,)), ye))
        total = torch.stack(losses)
        return grads_of(total.mean() if reduce == "mean" else total.sum(), params)

    return {
        "the inner 'loss' is the model's output summed (`model(x).sum()`): use "
        "F.mse_loss(prediction, y_support)": grad_of(inner=_output_sum),
        "the meta-loss is the model's output summed: use F.mse_loss(prediction, y_query)": grad_of(
            outer=_output_sum
        ),
        "the 'loss' is the model's output summed, in both loops": grad_of(
            inner=_output_sum, outer=_output_sum
        ),
        "no support/query split: the meta-loss is computed on the support set": grad_of(
            score_on="support"
        ),
        "the meta-loss is computed with θ, not with the adapted parameters: use "
        "functional_call(model, fast_weights, (x_query,))": grad_of(n=0),
        "first-order answer where second order is asked (the inner gradient was computed "
        "without create_graph=True)": grad_of(fo=True),
        "the meta-loss is summed over tasks instead of averaged": grad_of(reduce="sum"),
        "the fast weights start from `state_dict()` tensors, which are detached: the "
        "meta-gradient misses the path through θ itself; start from "
        "dict(model.named_parameters())": grad_of(detached_start=True),
    }


def _moved(model: nn.Module, start: Mapping[str, Tensor]) -> str | None:
    for name, p in model.named_parameters():
        if not torch.equal(p.detach(), start[name]):
            return name
    return None


def _fail_in_place(name: str, then: str = "") -> None:
    raise Fail(
        f"in-place update changed the model's parameters ('{name}') before "
        "meta_optimizer.step(): `model.state_dict().copy()` is a new dict holding the same "
        f"tensors, so `fast_weights[name] -= ...` writes into the model{then}",
        "build the fast weights out of place from `dict(model.named_parameters())`: "
        "`{name: p - inner_lr * g}`",
    )


STEP_HINT = (
    "the fixed step: meta_optimizer.zero_grad(); for each task, fast = {n: p - inner_lr * g} "
    "from dict(model.named_parameters()) with g = torch.autograd.grad(support MSE, ..., "
    "create_graph=True), then the query MSE at fast; the mean over tasks; backward(); step()"
)
ZIP_HINT = (
    "`zip(model.state_dict().items(), grads)` pairs buffers with gradients: state_dict holds "
    "buffers too, `model.parameters()` does not. Take names and tensors from "
    "`dict(model.named_parameters())`, exactly the tensors `torch.autograd.grad` differentiates"
)


def _leave_stale_gradients(model: nn.Module, seed: int) -> dict[str, Tensor]:
    """Puts seeded non-zero ``.grad`` tensors on the parameters, as a previous meta-update or
    an evaluation leaves them: a step that forgets ``zero_grad()`` adds them to its own."""
    gen = torch.Generator().manual_seed(seed)
    stale = {}
    for name, p in model.named_parameters():
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        stale[name] = p.grad.clone()
    return stale


def _run_step(fn: Callable, model: nn.Module, tasks: TaskBatch, inner_lr: float):
    opt = _ProbeOptimizer(model, lr=0.1)
    try:
        returned = fn(model, opt, tasks, inner_lr)
    except Exception as err:
        moved = _moved(model, opt.start)
        if opt.steps == 0 and moved:  # autograd trips over the in-place writes
            _fail_in_place(moved, f" (then your code raised {type(err).__name__})")
        raise
    if opt.moved_before_step:
        _fail_in_place(opt.moved_before_step)
    if opt.steps == 0:
        raise Fail(
            "meta_optimizer.step() was never called",
            "after the loss's `.backward()`, call `meta_optimizer.step()` once",
        )
    if opt.steps > 1:
        raise Fail(
            f"meta_optimizer.step() was called {opt.steps} times in one meta-update",
            "average the tasks' query losses, call `.backward()` once, then `step()` once",
        )
    return returned, opt.grads


@check(
    LESSON,
    points=2,
    forbid=(
        "mlcourse.algorithms.maml.meta_loss",
        "mlcourse.algorithms.maml.meta_loss_loop",
        "mlcourse.algorithms.maml.adapt",
        "mlcourse.algorithms.maml.adapt_batch",
        "mlcourse.algorithms.maml.adapt_reference",
        "mlcourse.algorithms.maml._adapt",
    ),
)
def fixed_maml_step(fn: Callable) -> str:
    """Checks ``fn(model, meta_optimizer, tasks, inner_lr) -> loss``: one second-order MAML
    meta-update (one inner SGD step on each task's support set, mean query MSE, one optimizer
    step), on a plain network and on one with buffers."""
    inner_lr = 0.05
    for label, model in (("", _mlp(seed=5)), (" with buffers", _buffered_mlp(seed=6))):
        tasks = _tasks(seed=7)
        params = params_of(model)
        ref_loss = meta_loss_loop(model, params, tasks, loss_fn=_mse, inner_lr=inner_lr)
        ref = grads_of(ref_loss, params)
        variants = _outer_grad_variants(model, params, tasks, inner_lr)
        stale = _leave_stale_gradients(model, seed=len(label))
        try:
            returned, grads = _run_step(fn, model, tasks, inner_lr)
        except Fail:
            raise
        except Exception as err:
            if not label:
                raise
            raise Fail(
                f"right on a plain network, but on a network with buffers your code raised "
                f"{type(err).__name__}: {err}",
                ZIP_HINT,
            ) from err
        if all(g is None for g in grads.values()):
            raise Fail("no gradient reached the model's parameters", DETACHED_HINT)
        if any(g is None for g in grads.values()):
            raise Fail(
                f"no gradient reached {[n for n, g in grads.items() if g is None]}",
                "every parameter should get a meta-gradient: adapt all of them",
            )
        if same_dict({n: g - stale[n] for n, g in grads.items()}, ref):
            raise Fail(
                "the meta-gradient still holds the gradients left in `.grad` before this "
                "meta-update (from the previous one): they were never cleared",
                "call meta_optimizer.zero_grad() before the backward pass",
            )
        mistake = first_match(grads, variants, same_dict)
        if mistake:
            raise Fail(mistake, STEP_HINT)
        if label and not same_dict(grads, ref):
            raise Fail("right on a plain network, wrong on a network with buffers", ZIP_HINT)
        for name in params:
            try:
                expect_tensor(grads[name], ref[name], f"meta-gradient ['{name}']", atol=ATOL)
            except Fail as fail:
                fail.hint = fail.hint or STEP_HINT
                raise
        value = returned.item() if isinstance(returned, Tensor) and returned.numel() == 1 else None
        value = float(returned) if isinstance(returned, (int, float)) else value
        if value is None or abs(value - ref_loss.item()) > 1e-6 * max(1.0, abs(ref_loss.item())):
            raise Fail(
                f"the meta-update is right, but the function returned {returned!r}{label} "
                f"instead of the meta-loss {ref_loss.item():.6g}",
                "return the mean query loss of this meta-batch (a float or a 0-d tensor)",
            )
    return (
        "one meta-update matches second-order MAML (mlcourse.algorithms.maml.meta_loss) on a plain "
        "network and on one with buffers, old gradients cleared; the model moves only in "
        "meta_optimizer.step()"
    )


# ---------------------------------------------------------------------------------------------
# (d) fixed_meta_test: the naive meta-test path, fixed


def _accumulating(model, params, data, inner_lr, steps, start) -> Tensor:
    """Predictions after ``steps`` SGD steps whose gradients are never cleared: step k uses
    ``start`` (old ``.grad`` values, or ``None``) plus the gradients of steps 1 to k."""
    xs, ys, xq = data
    fast = {n: p.detach() for n, p in params.items()}
    total = {n: torch.zeros_like(p) if start is None else start[n] for n, p in fast.items()}
    for _ in range(steps):
        leaves = {n: p.clone().requires_grad_() for n, p in fast.items()}
        loss = _mse(functional_call(model, leaves, (xs,)), ys)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        total = {n: total[n] + g for n, g in zip(leaves, grads, strict=True)}
        fast = {n: fast[n] - inner_lr * total[n] for n in fast}
    return functional_call(model, fast, (xq,)).detach()


@check(
    LESSON,
    points=1,
    forbid=(
        "mlcourse.algorithms.maml.adapt",
        "mlcourse.algorithms.maml.adapt_batch",
        "mlcourse.algorithms.maml.adapt_reference",
        "mlcourse.algorithms.maml._adapt",
    ),
)
def fixed_meta_test(fn: Callable) -> str:
    """Checks ``fn(model, x_support, y_support, x_query, inner_lr, num_inner_steps) ->
    predictions``: adapt on the support set, predict the query set, leave the model as it was."""
    model, tasks, inner_lr, steps = _mlp(seed=8), _tasks(seed=9), 0.02, 3
    xs, ys, xq = tasks.x_support[0], tasks.y_support[0], tasks.x_query[0]
    params = params_of(model)
    stale = _leave_stale_gradients(model, seed=8)  # what meta-training leaves behind
    before = snapshot(model)
    out = fn(model, xs, ys, xq, inner_lr, steps)
    if any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters()):
        raise Fail(
            "meta-test changed the model's parameters: the next task would start from these "
            "adapted weights instead of θ",
            "adapt a params dict (`mlcourse.algorithms.maml.adapt(model, params_of(model), ...)`) "
            "and predict with `functional_call(model, adapted, (x_query,))`",
        )

    def predict(n=steps, lr=inner_lr):
        return functional_call(model, _adapt(model, params, xs, ys, lr, n), (xq,)).detach()

    wrong = {
        "the meta-test path performs no adaptation at all: these are θ's predictions": predict(0),
        f"num_inner_steps is ignored: one step taken instead of {steps}": predict(1),
        f"one adaptation step too few: {steps - 1} instead of {steps}": predict(steps - 1),
        f"one adaptation step too many: {steps + 1} instead of {steps}": predict(steps + 1),
        "wrong sign: the adaptation goes up the support gradient": predict(lr=-inner_lr),
        "the gradients add up from step to step, on top of the old ones left in the model's "
        "`.grad`: an optimizer loop without zero_grad()": _accumulating(
            model, params, (xs, ys, xq), inner_lr, steps, stale
        ),
        "the gradients add up from step to step: zero_grad() is called once, before the "
        "loop, instead of at every step": _accumulating(
            model, params, (xs, ys, xq), inner_lr, steps, None
        ),
    }
    if isinstance(out, Tensor):
        out = out.detach()
    mistake = first_match(out, wrong, same_tensor)
    if mistake:
        raise Fail(mistake, "adapt on (x_support, y_support) first, then predict x_query")
    try:
        expect_tensor(out, predict(), "the prediction tensor", atol=ATOL, rtol=RTOL)
    except Fail as fail:
        fail.hint = fail.hint or (
            "num_inner_steps plain SGD steps of size inner_lr on the support MSE, each from "
            "fresh gradients (the model's parameters may hold old .grad values: "
            "torch.autograd.grad ignores them, .backward() adds to them), then predict x_query"
        )
        raise
    return (
        f"predictions after {steps} adaptation steps match mlcourse.algorithms.maml.adapt (each "
        "step from fresh gradients, whatever the model's .grad held) and the model's parameters "
        "are left as they were"
    )
