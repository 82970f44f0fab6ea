"""Checks of lesson 01 (``solutions/01_meta_learning_problem.ipynb``).

- :func:`meta_objective` (implement): the bilevel problem's outer loss on a batch of tasks, for a
  given adaptation function.
- :func:`meta_train` (train to a threshold): a short meta-training loop that must reach a
  seeded held-out score.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch.func import functional_call

from mlcourse.algorithms.maml import adapt, meta_loss_loop, params_of
from mlcourse.course.checks._core import Fail, check, expect_tensor
from mlcourse.experiments.sine import evaluate
from mlcourse.models import MLP
from mlcourse.tasks import Sinusoid

LESSON = "01_meta_learning_problem"

# meta_objective: the adaptation the check hands to the learner's function.
OBJECTIVE_INNER_LR = 0.05
OBJECTIVE_INNER_STEPS = 2

# meta_train: the budget the check gives the learner's loop, and what it must reach.
TRAIN_STEPS = 500
TRAIN_SEED = 0
THRESHOLD_MSE = 1.5  # query MSE after 1 SGD step (inner_lr 0.01) on 10 support points
EVAL_INNER_LR = 0.01
EVAL_TASKS = 500
EVAL_SEED = 2024  # held-out tasks for this check (not the course's reporting seed)
TIME_LIMIT_S = 90.0

__all__ = ["meta_objective", "meta_train"]


# ---------------------------------------------------------------------------------------------
# Implement: the meta-objective.


@check(
    LESSON,
    points=2,
    forbid=("mlcourse.algorithms.maml.meta_loss", "mlcourse.algorithms.maml.meta_loss_loop"),
)
def meta_objective(fn) -> str:
    """Checks ``fn(model, params, tasks, adapt_fn) -> scalar tensor``: the mean over tasks of the
    query MSE of ``adapt_fn(params, x_support_i, y_support_i)``, differentiable in ``params``.

    Compared with :func:`mlcourse.algorithms.maml.meta_loss_loop` in float64 on two random task
    batches.
    """
    for seed, (num_tasks, k_support, k_query) in enumerate([(4, 5, 7), (3, 10, 2)]):
        torch.manual_seed(seed)
        model = MLP(hidden_sizes=(16, 16)).double()
        tasks = Sinusoid().sample(
            num_tasks,
            k_support,
            k_query,
            generator=torch.Generator().manual_seed(seed),
            dtype=torch.float64,
        )
        params = params_of(model) if seed == 0 else _moved_params(model, seed)
        adapt_fn = _CountingAdapt(model)
        got = fn(model, params, tasks, adapt_fn)
        expected = meta_loss_loop(
            model,
            params,
            tasks,
            loss_fn=F.mse_loss,
            inner_lr=OBJECTIVE_INNER_LR,
            num_inner_steps=OBJECTIVE_INNER_STEPS,
        )
        if isinstance(got, torch.Tensor) and got.shape == (tasks.num_tasks,):
            raise Fail(
                f"the objective has shape {tuple(got.shape)}: one loss per task",
                "the meta-objective is one number: take the mean over tasks",
            )
        if isinstance(got, torch.Tensor) and (got.shape, got.dtype) == (
            expected.shape,
            expected.dtype,
        ):
            _diagnose(got, expected, model, params, tasks, adapt_fn.calls)
        try:
            expect_tensor(got, expected, "the meta-objective", atol=1e-10, rtol=1e-8)
        except Fail as fail:
            fail.hint = fail.hint or (
                "for every task i: adapted = adapt_fn(params, x_support[i], y_support[i]) from "
                "`params` itself, then the MSE of functional_call(model, adapted, "
                "(x_query[i],)) against y_query[i]; return the mean of the losses"
            )
            raise
        _check_meta_gradient(got, expected, params, model, tasks)
    return (
        "the mean over tasks of the query MSE after adapting on each support set matches "
        "mlcourse.algorithms.maml.meta_loss_loop in two batches (θ the model's own parameters, "
        "then another parameter dict), and its second-order gradient reaches θ"
    )


def _moved_params(model, seed: int) -> dict:
    """Parameters that are not the model's own (as for any θ the outer loop hands over): the
    model's, moved by a seeded random amount, as fresh leaves."""
    gen = torch.Generator().manual_seed(100 + seed)
    return {
        n: (p.detach() + 0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype)).requires_grad_()
        for n, p in params_of(model).items()
    }


class _CountingAdapt:
    """Two SGD steps of size 0.05 on the points given (what the learner's ``adapt_fn`` is)."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, params, x_support, y_support):
        self.calls += 1
        return adapt(
            self.model,
            params,
            x_support,
            y_support,
            loss_fn=F.mse_loss,
            inner_lr=OBJECTIVE_INNER_LR,
            num_inner_steps=OBJECTIVE_INNER_STEPS,
        )


def _diagnose(got, expected, model, params, tasks, calls: int) -> None:
    """Names the usual wrong answer when ``got`` equals one of them."""
    if torch.allclose(got.detach(), expected.detach(), atol=1e-10, rtol=1e-8):
        return
    adapt_on = partial(
        adapt,
        model,
        params,
        loss_fn=F.mse_loss,
        inner_lr=OBJECTIVE_INNER_LR,
        num_inner_steps=OBJECTIVE_INNER_STEPS,
    )
    n = tasks.num_tasks
    S, Q = (tasks.x_support, tasks.y_support), (tasks.x_query, tasks.y_query)

    def mse(p, data, i):
        return F.mse_loss(functional_call(model, p, (data[0][i],)), data[1][i])

    fit_support = [adapt_on(S[0][i], S[1][i]) for i in range(n)]
    fit_query = [adapt_on(Q[0][i], Q[1][i]) for i in range(n)]
    query = torch.stack([mse(fit_support[i], Q, i) for i in range(n)])
    chained, start = [], params
    for i in range(n):
        start = adapt(
            model,
            start,
            S[0][i],
            S[1][i],
            loss_fn=F.mse_loss,
            inner_lr=OBJECTIVE_INNER_LR,
            num_inner_steps=OBJECTIVE_INNER_STEPS,
        )
        chained.append(mse(start, Q, i))
    wrong = [
        (query.sum(), "the sum over tasks", "average over tasks (mean), not sum"),
        (query[0], "the first task's loss only", "average the query loss over every task"),
        (
            query[:-1].mean(),
            "the mean over every task but the last",
            "loop over range(tasks.num_tasks): every task counts (an off-by-one?)",
        ),
        (
            torch.stack(chained).mean(),
            "the query loss with each task adapted from the previous task's adapted parameters",
            "start every task from `params` itself: adapt_fn(params, ...), not from the "
            "result of the previous task",
        ),
        (
            torch.stack([mse(fit_support[0], Q, i) for i in range(n)]).mean(),
            "the query loss of every task at the parameters adapted to the first task",
            "adapt to each task on its own support set: adapt_fn(params, x_support[i], "
            "y_support[i]) inside the loop",
        ),
        (
            torch.stack([mse(fit_support[i], S, i) for i in range(n)]).mean(),
            "the support loss after adaptation",
            "score the adapted parameters on the query set, not on the points they adapted to",
        ),
        (
            torch.stack([mse(fit_query[i], Q, i) for i in range(n)]).mean(),
            "the query loss after adapting on the query set",
            "adapt on (x_support, y_support), score on (x_query, y_query): adapting on the "
            "points you score measures memorisation, not learning from few examples",
        ),
        (
            torch.stack([mse(params, Q, i) for i in range(n)]).mean(),
            "the query loss before adaptation",
            "score the parameters returned by adapt_fn, not params",
        ),
    ]
    own = params_of(model)
    if any(own[k] is not params[k] for k in params):
        adapt_own = partial(
            adapt,
            model,
            own,
            loss_fn=F.mse_loss,
            inner_lr=OBJECTIVE_INNER_LR,
            num_inner_steps=OBJECTIVE_INNER_STEPS,
        )
        wrong.append(
            (
                torch.stack([mse(adapt_own(S[0][i], S[1][i]), Q, i) for i in range(n)]).mean(),
                "the loss after adapting the model's own parameters, not `params`",
                "adapt from the `params` you were given (the outer loop may hand you any θ): "
                "adapt_fn(params, ...), never model.parameters() or params_of(model)",
            )
        )
    for value, what, hint in wrong:
        if torch.allclose(got.detach(), value.detach(), atol=1e-10, rtol=1e-8):
            raise Fail(f"your objective computes {what}", hint)
    if calls == 0:
        raise Fail(
            "adapt_fn was never called: the objective does not adapt θ to each task",
            "for task i: adapted = adapt_fn(params, tasks.x_support[i], tasks.y_support[i])",
        )


def _check_meta_gradient(got, expected, params, model, tasks) -> None:
    if not got.requires_grad:
        raise Fail(
            "the objective does not depend on θ: no gradient can flow back to params",
            "do not detach, call .item() or use torch.no_grad(): the outer loop differentiates "
            "this objective",
        )
    names = list(params)
    g_got = torch.autograd.grad(got, [params[n] for n in names], allow_unused=True)
    g_exp = torch.autograd.grad(expected, [params[n] for n in names])
    first_order = meta_loss_loop(
        model,
        params,
        tasks,
        loss_fn=F.mse_loss,
        inner_lr=OBJECTIVE_INNER_LR,
        num_inner_steps=OBJECTIVE_INNER_STEPS,
        first_order=True,
    )
    g_first = torch.autograd.grad(first_order, [params[n] for n in names])
    if all(a is not None for a in g_got) and all(
        torch.allclose(a, c, atol=1e-9, rtol=1e-7) and not torch.allclose(a, b, atol=1e-9)
        for a, b, c in zip(g_got, g_exp, g_first, strict=True)
    ):
        raise Fail(
            "the objective's gradient is the first-order one: the path through adapt_fn's "
            "inner gradient was cut",
            "use adapt_fn's result as it is: no .detach() on the adapted parameters or on "
            "their difference from params",
        )
    for name, a, b in zip(names, g_got, g_exp, strict=True):
        if a is None:
            raise Fail(f"the objective's gradient does not reach params['{name}']")
        expect_tensor(a, b, f"the meta-gradient for params['{name}']", atol=1e-9, rtol=1e-7)


# ---------------------------------------------------------------------------------------------
# Train to a threshold.


def threshold_score(model) -> dict:
    """The held-out score :func:`meta_train` judges: 10 shots, 1 SGD step of size 0.01.

    Returns:
        :func:`mlcourse.experiments.sine.evaluate`'s dict (``mse`` after the step, ``mse_by_step``).
    """
    return evaluate(
        model,
        params_of(model),
        EVAL_INNER_LR,
        shots=10,
        inner_steps=1,
        num_tasks=EVAL_TASKS,
        seed=EVAL_SEED,
    )


@contextmanager
def _one_thread():
    """Tiny networks train fastest on one CPU thread; on a busy machine, several threads can be
    ten times slower. Restores the caller's setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _score_or_nan(model) -> dict:
    try:
        return threshold_score(model)
    except FloatingPointError:
        return {"mse": math.nan, "mse_by_step": [math.nan, math.nan]}


def _unchanged(model, before: dict) -> bool:
    return all(torch.equal(before[n], t) for n, t in model.state_dict().items())


def _probe_steps(fn) -> None:
    """Short calls before the real run: ``num_steps = 0`` must leave a model as it was, and
    ``num_steps = 1`` must change it with a task batch drawn from ``generator``. Cheap for a
    right answer; they catch an off-by-one, a hard-coded number of steps and an ignored
    generator, which the long run cannot tell apart from a right answer."""
    torch.manual_seed(TRAIN_SEED + 1)
    model = MLP()
    before = copy.deepcopy(model.state_dict())
    fn(model, 0, torch.Generator().manual_seed(TRAIN_SEED + 1))
    if not _unchanged(model, before):
        raise Fail(
            "with num_steps = 0, meta_train still changed the model's parameters",
            "take exactly num_steps steps: `for _ in range(num_steps):`, no extra step before "
            "or after the loop and no hard-coded number of steps",
        )
    model = MLP()
    before = copy.deepcopy(model.state_dict())
    generator = torch.Generator().manual_seed(TRAIN_SEED + 1)
    state = generator.get_state()
    fn(model, 1, generator)
    if _unchanged(model, before):
        raise Fail(
            "with num_steps = 1, meta_train did not change the model's parameters",
            "take exactly num_steps steps (`range(num_steps)`, not `range(1, num_steps)`), each "
            "an optimizer step on `model` itself: torch.optim.Adam(model.parameters(), ...) "
            "with params = mlcourse.algorithms.maml.params_of(model), not a copy of the model",
        )
    if torch.equal(generator.get_state(), state):
        raise Fail(
            "meta_train did not draw its tasks from `generator`: the run cannot be reproduced "
            "from the seed it is given",
            "sample every task batch with it: Sinusoid().sample(25, 10, 10, generator=generator)",
        )


@check(
    LESSON,
    points=3,
    forbid=("mlcourse.experiments.sine.SineLearner.step", "mlcourse.experiments.training.train"),
)
def meta_train(fn, num_steps: int = TRAIN_STEPS) -> str:
    """Runs ``fn(model, num_steps, generator)`` on a fresh seeded 1-40-40-1 MLP, then checks that
    the query MSE after one SGD step (size 0.01) on 10 support points of held-out tasks is below
    ``THRESHOLD_MSE``. Calls with 0 and 1 steps on other models come first (see
    :func:`_probe_steps`)."""
    with torch.random.fork_rng(devices=[]), _one_thread():
        _probe_steps(fn)
        torch.manual_seed(TRAIN_SEED)
        model = MLP()
        before = copy.deepcopy(model.state_dict())
        generator = torch.Generator().manual_seed(TRAIN_SEED)
        start = time.perf_counter()
        fn(model, num_steps, generator)
        seconds = time.perf_counter() - start
        score = _score_or_nan(model)
    if _unchanged(model, before):
        raise Fail(
            "meta_train did not change the model's parameters",
            "train `model` itself: torch.optim.Adam(model.parameters(), ...) with "
            "params = mlcourse.algorithms.maml.params_of(model), not a copy of the model",
        )
    if seconds > TIME_LIMIT_S:
        raise Fail(
            f"meta_train took {seconds:.0f} s for {num_steps} steps (limit {TIME_LIMIT_S:.0f} s)",
            "take exactly num_steps steps, with the vectorized mlcourse.algorithms.maml.meta_loss",
        )
    mse, unadapted = score["mse"], score["mse_by_step"][0]
    if not math.isfinite(mse):
        raise Fail(
            "the trained model's predictions are NaN or infinite after one adaptation step",
            "lower the outer learning rate (Adam with lr=1e-2 works)",
        )
    if mse >= THRESHOLD_MSE:
        raise Fail(
            f"query MSE after one adaptation step is {mse:.2f} (before adapting: "
            f"{unadapted:.2f}); it must be below {THRESHOLD_MSE}",
            "minimise the query loss *after* adapting on the support set: "
            "mlcourse.algorithms.maml.meta_loss(..., inner_lr=0.01, num_inner_steps=1) on 25 tasks "
            "of 10 + 10 points drawn from `generator` each step, Adam with lr=1e-2. Training one "
            "model on every point (joint training) stays near 2.5.",
        )
    return (
        f"after {num_steps} meta-training steps ({seconds:.0f} s), one SGD step on 10 support "
        f"points gives query MSE {mse:.2f} < {THRESHOLD_MSE} on {EVAL_TASKS} held-out tasks "
        f"(before adapting: {unadapted:.2f})"
    )
