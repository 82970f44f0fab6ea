"""Checks of lesson 09 (``solutions/09_relation.ipynb``).

- :func:`outer_step` (implement): one step of the outer loop every learner shares.
- :func:`bandit_inner_step` (implement): MAML's inner step on bandits, per task, second order.
- :func:`blackbox_predict` (implement): the black-box regressor reads the support, predicts
  the query, from a fresh hidden state for every task.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mlcourse.algorithms import unified
from mlcourse.course.checks._core import Fail, check, expect_tensor

LESSON = "09_relation"

__all__ = ["bandit_inner_step", "blackbox_predict", "outer_step"]


# ---------------------------------------------------------------------------------------------
# outer_step


class _Quadratic:
    """A toy meta-learner: meta-loss = mean over tasks of ‖w − target‖², tasks = targets. It
    records the generators its meta_loss is given (the inner loop of an RL learner samples from
    it)."""

    kind, name = "supervised", "toy"

    def __init__(self):
        self.generators = []

    def meta_loss(self, params, tasks, generator=None):
        self.generators.append(generator)
        return ((params["w"] - tasks) ** 2).sum(-1).mean()


class _CountingSGD(torch.optim.SGD):
    """SGD with momentum (so that no hand-written update can pass for it) that counts its
    steps."""

    def __init__(self, params):
        super().__init__(params, lr=0.05, momentum=0.9)
        self.steps = 0

    def step(self, closure=None):
        self.steps += 1
        return super().step(closure)


def _outer_problem():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, generator=gen, dtype=torch.float64).requires_grad_()
    batches = [torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(3)]
    stale = torch.randn(3, generator=gen, dtype=torch.float64)  # left in .grad from before
    return {"w": w}, batches, stale


def _run_outer(start, batches, stale, *, zero_first=True, zero_after=False):
    """Three SGD steps from ``start`` with ``stale`` in ``.grad`` before the first; by default
    the right order (zero_grad, loss, backward, step). Returns the parameters and the losses."""
    params = {"w": start.clone().requires_grad_()}
    params["w"].grad = stale.clone()
    optimizer = _CountingSGD(params.values())
    losses = []
    for tasks in batches:
        if zero_first:
            optimizer.zero_grad()
        loss = _Quadratic().meta_loss(params, tasks)
        loss.backward()
        optimizer.step()
        if zero_after:
            optimizer.zero_grad()
        losses.append(loss.item())
    return params["w"].detach(), losses


@check(LESSON, points=1, forbid=("mlcourse.algorithms.unified.outer_step",))
def outer_step(fn: Callable) -> str:
    """Checks ``fn(learner, params, optimizer, tasks, generator) -> loss`` over three steps of
    SGD with momentum on a toy meta-learner, with old gradients left in ``.grad`` before the
    first: one optimizer step per call, the generator handed to the learner, the parameters
    after each step and the losses returned (detached)."""
    params, batches, stale = _outer_problem()
    start = params["w"].detach().clone()
    want_w, want_losses = _run_outer(start, batches, stale)
    params["w"].grad = stale.clone()
    optimizer = _CountingSGD(params.values())
    got_losses = []
    for i, tasks in enumerate(batches):
        learner, generator = _Quadratic(), torch.Generator().manual_seed(i)
        loss = fn(learner, params, optimizer, tasks, generator)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise Fail(
                f"return the meta-loss as a scalar tensor, got {type(loss).__name__}",
                "loss = learner.meta_loss(params, tasks, generator); ...; return loss.detach()",
            )
        if optimizer.steps != i + 1:
            calls = optimizer.steps - i
            raise Fail(
                "optimizer.step() was never called"
                if optimizer.steps == 0
                else f"optimizer.step() was called {calls} times in one outer step",
                "one outer step is one optimizer.step(), after one loss.backward(): let the "
                "optimizer make the update (a hand-written `p -= lr * p.grad` ignores its "
                "momentum, Adam's moments and every other setting)",
            )
        if learner.generators and not any(g is generator for g in learner.generators):
            raise Fail(
                "learner.meta_loss was not given the generator handed to outer_step",
                "pass it on: learner.meta_loss(params, tasks, generator); the inner loop of an "
                "RL learner samples from it, which makes a run reproducible",
            )
        got_losses.append(loss)
    w = params["w"].detach()
    if torch.equal(w, start):
        raise Fail(
            "the parameters did not change: the optimizer never stepped after a backward pass",
            "zero_grad, then loss.backward(), then optimizer.step()",
        )
    uphill = 2 * start - want_w  # three steps uphill, to first order
    if (w - uphill).abs().max() < (w - want_w).abs().max():
        raise Fail(
            "the parameters moved uphill: the meta-loss grows",
            "minimise: loss.backward() on the meta-loss itself, not on its negative",
        )
    leftovers = {
        "the gradients of earlier steps accumulate into later ones": _run_outer(
            start, batches, stale, zero_first=False
        )[0],
        "the first step adds the gradients left in .grad before it (zero_grad comes after the "
        "step, too late for the first one)": _run_outer(
            start, batches, stale, zero_first=False, zero_after=True
        )[0],
    }
    for what, value in leftovers.items():
        if torch.allclose(w, value, atol=1e-10) and not torch.allclose(w, want_w, atol=1e-10):
            raise Fail(what, "call optimizer.zero_grad() first, before loss.backward()")
    try:
        expect_tensor(w, want_w, "the parameters after three steps", atol=1e-10, rtol=1e-8)
    except Fail as fail:
        fail.hint = fail.hint or (
            "optimizer.zero_grad(); loss = learner.meta_loss(params, tasks, generator); "
            "loss.backward(); optimizer.step(): the optimizer makes the update, not your code"
        )
        raise
    for got, want in zip(got_losses, want_losses, strict=True):
        if abs(got.item() - want) > 1e-9:
            raise Fail(
                f"you returned {got.item():.6f} where the meta-loss before the step was {want:.6f}",
                "return the loss you called backward on (detached), not a recomputed one",
            )
        if got.requires_grad:
            raise Fail(
                "the returned loss still carries its graph",
                "return loss.detach(): a caller that keeps the losses would otherwise keep "
                "every step's graph alive",
            )
    return (
        "zero_grad → meta_loss(params, tasks, generator) → backward → step: three steps match "
        "SGD with momentum from stale gradients, detached losses returned"
    )


# ---------------------------------------------------------------------------------------------
# bandit_inner_step


def _bandit_problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    actions = torch.randint(4, (3, 5), generator=gen)
    rewards = torch.randint(2, (3, 5), generator=gen).to(torch.float64)
    rewards[0] = 1.0  # tasks differ: the first only succeeds, the others mix
    return logits, actions, rewards


def _variant(logits, actions, rewards, lr, *, centre=0.5, reduce="mean", per_task=True):
    batched = logits.expand(actions.shape[0], -1)
    logp = torch.log_softmax(batched, -1).gather(1, actions)
    terms = logp * (rewards - centre)
    per = terms.mean(1) if reduce == "mean" else terms.sum(1)
    if per_task:
        (g,) = torch.autograd.grad(per.sum(), batched, create_graph=True)
    else:
        (g,) = torch.autograd.grad(per.mean(), logits, create_graph=True)
        g = g.expand_as(batched)
    return batched + lr * g


@check(LESSON, points=2, forbid=("mlcourse.algorithms.unified.bandit_inner_step",))
def bandit_inner_step(fn: Callable) -> str:
    """Checks ``fn(logits, actions, rewards, inner_lr) -> (num_tasks, num_arms)``: one
    policy-gradient ascent step per task on its own pulls, rewards centred on 0.5, averaged
    over the pulls, differentiable in θ with the second-order terms."""
    logits, actions, rewards = _bandit_problem()
    before = logits.detach().clone()
    got = fn(logits, actions, rewards, 0.3)
    if not torch.equal(logits.detach(), before):
        raise Fail("your step modified logits in place", "return a new tensor: logits + ...")
    want = unified.bandit_inner_step(logits, actions, rewards, 0.3)
    if not isinstance(got, Tensor):
        raise Fail(
            f"return a tensor, got {type(got).__name__}",
            "return the (num_tasks, num_arms) adapted logits",
        )
    if got.shape != want.shape:
        raise Fail(
            f"the adapted logits have shape {tuple(got.shape)}, expected {tuple(want.shape)}",
            "one row of adapted logits per task: expand θ to (num_tasks, num_arms) first",
        )
    wrong = {
        "this is a descent step: the inner loop maximises the expected reward": (
            _variant(logits, actions, rewards, -0.3),
            "θ' = θ + inner_lr · ∇(1/m) Σ log π(a)(r − 0.5)",
        ),
        "the rewards are not centred on the baseline 0.5: a failed pull should push "
        "probability away from its arm": (
            _variant(logits, actions, rewards, 0.3, centre=0.0),
            "weight each log-probability by (reward − 0.5)",
        ),
        "it sums over the pulls; average them (the step size must not grow with m)": (
            _variant(logits, actions, rewards, 0.3, reduce="sum"),
            "(logp * (rewards − 0.5)).mean(1)",
        ),
        "every task takes the same step: each must follow the gradient of its own pulls": (
            _variant(logits, actions, rewards, 0.3, per_task=False),
            "differentiate with respect to a per-task copy, logits.expand(num_tasks, -1)",
        ),
        "the surrogate is averaged over the tasks too, so each task's step shrinks by "
        f"1/num_tasks = 1/{actions.shape[0]}": (
            _variant(logits, actions, rewards, 0.3 / actions.shape[0]),
            "sum the tasks' surrogates (each a mean over its own pulls): .mean(1).sum()",
        ),
    }
    if not torch.allclose(got.detach(), want.detach(), atol=1e-10):
        for what, (value, hint) in wrong.items():
            if torch.allclose(got.detach(), value.detach(), atol=1e-10):
                raise Fail(what, hint)
    try:
        expect_tensor(got.detach(), want.detach(), "the adapted logits", atol=1e-10)
    except Fail as fail:
        fail.hint = fail.hint or "θ'_t = θ + inner_lr · ∇_θ (1/m) Σ_i log π_θ(a_ti) (r_ti − 0.5)"
        raise
    if got.grad_fn is None:
        raise Fail(
            "the adapted logits do not depend on θ: the step was taken on detached tensors",
            "keep the graph: torch.autograd.grad(..., create_graph=True)",
        )
    weights = torch.arange(1.0, 1.0 + got.numel(), dtype=got.dtype).view_as(got)
    meta = (torch.softmax(got, -1) * weights).sum()
    (g_got,) = torch.autograd.grad(meta, logits, allow_unused=True)
    (g_want,) = torch.autograd.grad((torch.softmax(want, -1) * weights).sum(), logits)
    if g_got is None:
        raise Fail(
            "the meta-gradient does not reach logits",
            "build the step from logits itself (logits.expand(...)), not from a detached copy",
        )
    if not torch.allclose(g_got, g_want, atol=1e-9):
        first = torch.softmax(logits + (want - logits).detach(), -1)
        (g_first,) = torch.autograd.grad((first * weights).sum(), logits)
        if torch.allclose(g_got, g_first, atol=1e-9):
            raise Fail(
                "the step is first order: its gradient was taken without create_graph=True, so "
                "the meta-gradient misses the second-order terms",
                "torch.autograd.grad(surrogate, batched, create_graph=True)",
            )
    try:
        expect_tensor(g_got, g_want, "the meta-gradient through your step", atol=1e-9)
        zero = fn(logits, actions, rewards, 0.0)
        expect_tensor(
            zero.detach(), before.expand_as(want), "the step with inner_lr = 0", atol=1e-12
        )
    except Fail as fail:
        fail.hint = fail.hint or (
            "batched = logits.expand(num_tasks, -1); grads from torch.autograd.grad(surrogate, "
            "batched, create_graph=True); return batched + inner_lr * grads"
        )
        raise
    return "per-task θ' = θ + α∇(1/m)Σ log π(a)(r − 0.5) matches, with its second-order path"


# ---------------------------------------------------------------------------------------------
# blackbox_predict


def _regressor_problem():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = unified.BlackBoxRegressor(hidden_size=12, head_sizes=(16,))
    tasks = unified.SineFamily(k_support=6, k_query=7).sample(4, torch.Generator().manual_seed(1))
    other = unified.SineFamily(k_support=6, k_query=7).sample(4, torch.Generator().manual_seed(2))
    return model, tasks, other


@check(
    LESSON,
    points=2,
    forbid=(
        "mlcourse.algorithms.unified.BlackBoxRegressor.forward",
        "mlcourse.algorithms.unified.BlackBoxRegressor.encode",
        "mlcourse.algorithms.unified.BlackBoxRegressor.decode",
    ),
)
def blackbox_predict(fn: Callable) -> str:
    """Checks ``fn(model, x_support, y_support, x_query) -> (T, Q, 1)`` against
    ``model(x_support, y_support, x_query)``: a zero state per task, every support pair read
    (x and y, scaled), the last state and the query x through the head."""
    model, tasks, other = _regressor_problem()
    with torch.no_grad():
        want = model(tasks.x_support, tasks.y_support, tasks.x_query)
        fn(model, other.x_support, other.y_support, other.x_query)  # a previous call
        got = fn(model, tasks.x_support, tasks.y_support, tasks.x_query)
        if not isinstance(got, Tensor):
            raise Fail(
                f"return a tensor, got {type(got).__name__}",
                "return the (num_tasks, k_query, 1) predictions",
            )
        if got.shape != want.shape:
            raise Fail(
                f"the predictions have shape {tuple(got.shape)}, expected {tuple(want.shape)}",
                "one prediction per query point: (num_tasks, k_query, 1)",
            )
        again = fn(model, tasks.x_support, tasks.y_support, tasks.x_query)
        if not torch.allclose(got, again, atol=1e-6):
            raise Fail(
                "the same tasks give different predictions on a second call: the hidden state "
                "is carried over from the previous call instead of being reset",
                "start every task from a zero state: model.gru(inputs) with no hidden argument",
            )
        swapped = torch.cat([other.x_support[:1], tasks.x_support[1:]])
        swapped_y = torch.cat([other.y_support[:1], tasks.y_support[1:]])
        mixed = fn(model, swapped, swapped_y, tasks.x_query)
        if not torch.allclose(mixed[1:], got[1:], atol=1e-5):
            raise Fail(
                "a task's prediction depends on the *other* tasks of the batch: the hidden "
                "state flows from one task into the next",
                "the GRU is batch_first: feed (num_tasks, k_support, 2), tasks along dim 0",
            )
        no_y = fn(model, tasks.x_support, torch.zeros_like(tasks.y_support), tasks.x_query)
        if torch.allclose(no_y, got, atol=1e-7):
            raise Fail(
                "the predictions do not depend on y_support: the GRU must read (x, y) pairs",
                "torch.cat([x_support, y_support], -1)",
            )
        late = fn(
            model,
            torch.cat([tasks.x_support[:, :-1], other.x_support[:, -1:]], 1),
            torch.cat([tasks.y_support[:, :-1], other.y_support[:, -1:]], 1),
            tasks.x_query,
        )
        if torch.allclose(late, got, atol=1e-7):
            raise Fail(
                "the last support pair does not change the predictions: use the state after "
                "the *last* pair",
                "states[:, -1], not states[:, 0]",
            )
        unscaled = model.decode(
            model.gru(torch.cat([tasks.x_support, tasks.y_support], -1))[0][:, -1],
            tasks.x_query * model.scale,
        )
        if torch.allclose(got, unscaled, atol=1e-6):
            raise Fail(
                "the inputs are not divided by model.scale",
                "inputs = torch.cat([x, y], -1) / model.scale, and x_query / model.scale",
            )
        states = model.gru(torch.cat([tasks.x_support, tasks.y_support], -1) / model.scale)[0]
        wrong = {
            "the prediction reads the mean of the GRU states over the support pairs, not the "
            "state after the last pair": model.decode(states.mean(1), tasks.x_query),
            "x_query is not divided by model.scale (the support pairs are)": model.decode(
                states[:, -1], tasks.x_query * model.scale
            ),
            "the support pairs are not divided by model.scale (x_query is)": model.decode(
                model.gru(torch.cat([tasks.x_support, tasks.y_support], -1))[0][:, -1],
                tasks.x_query,
            ),
        }
        hint = (
            "states, _ = model.gru(torch.cat([x_support, y_support], -1) / model.scale); "
            "model.head(torch.cat([states[:, -1] repeated for each query, x_query / "
            "model.scale], -1))"
        )
        for what, value in wrong.items():
            if torch.allclose(got, value, atol=1e-6) and not torch.allclose(got, want, atol=1e-6):
                raise Fail(what, hint)
        try:
            expect_tensor(got, want, "the prediction tensor", atol=1e-5)
        except Fail as fail:
            fail.hint = fail.hint or hint
            raise
    return "reads each task's (x, y) pairs from a zero state and predicts the query like the model"
