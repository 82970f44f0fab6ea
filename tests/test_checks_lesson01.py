"""Lesson 01's checks accept the reference answers and reject every known-wrong one."""

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from own import own
from torch.func import functional_call

from mlcourse.algorithms import maml
from mlcourse.algorithms.maml import params_of
from mlcourse.course.checks import lesson01
from mlcourse.tasks import Sinusoid

meta_loss = own(maml.meta_loss)

# ---------------------------------------------------------------------------------------------
# meta_objective


def _query_loss(model, params, tasks, i):
    return F.mse_loss(functional_call(model, params, (tasks.x_query[i],)), tasks.y_query[i])


def objective_reference(model, params, tasks, adapt_fn):
    losses = []
    for i in range(tasks.num_tasks):
        adapted = adapt_fn(params, tasks.x_support[i], tasks.y_support[i])
        losses.append(_query_loss(model, adapted, tasks, i))
    return torch.stack(losses).mean()


def objective_vmap(model, params, tasks, adapt_fn):
    """Also right: every task at once with torch.func.vmap."""

    def one(xs, ys, xq, yq):
        adapted = adapt_fn(params, xs, ys)
        return F.mse_loss(functional_call(model, adapted, (xq,)), yq)

    return torch.func.vmap(one)(
        tasks.x_support, tasks.y_support, tasks.x_query, tasks.y_query
    ).mean()


def obj_stub(model, params, tasks, adapt_fn):
    raise NotImplementedError()


def obj_no_adaptation(model, params, tasks, adapt_fn):
    return torch.stack(
        [_query_loss(model, params, tasks, i) for i in range(tasks.num_tasks)]
    ).mean()


def obj_adapt_but_score_theta(model, params, tasks, adapt_fn):
    for i in range(tasks.num_tasks):
        adapt_fn(params, tasks.x_support[i], tasks.y_support[i])
    return obj_no_adaptation(model, params, tasks, adapt_fn)


def obj_sum(model, params, tasks, adapt_fn):
    return objective_reference(model, params, tasks, adapt_fn) * tasks.num_tasks


def obj_per_task(model, params, tasks, adapt_fn):
    return torch.stack(
        [
            _query_loss(model, adapt_fn(params, tasks.x_support[i], tasks.y_support[i]), tasks, i)
            for i in range(tasks.num_tasks)
        ]
    )


def obj_first_task(model, params, tasks, adapt_fn):
    return obj_per_task(model, params, tasks, adapt_fn)[0]


def obj_support_loss(model, params, tasks, adapt_fn):
    losses = []
    for i in range(tasks.num_tasks):
        adapted = adapt_fn(params, tasks.x_support[i], tasks.y_support[i])
        pred = functional_call(model, adapted, (tasks.x_support[i],))
        losses.append(F.mse_loss(pred, tasks.y_support[i]))
    return torch.stack(losses).mean()


def obj_adapt_on_query(model, params, tasks, adapt_fn):
    losses = []
    for i in range(tasks.num_tasks):
        adapted = adapt_fn(params, tasks.x_query[i], tasks.y_query[i])
        losses.append(_query_loss(model, adapted, tasks, i))
    return torch.stack(losses).mean()


def obj_detached(model, params, tasks, adapt_fn):
    return objective_reference(model, params, tasks, adapt_fn).detach()


def obj_python_float(model, params, tasks, adapt_fn):
    return objective_reference(model, params, tasks, adapt_fn).item()


def obj_joint(model, params, tasks, adapt_fn):
    x = torch.cat([tasks.x_support, tasks.x_query], 1)
    y = torch.cat([tasks.y_support, tasks.y_query], 1)
    return F.mse_loss(functional_call(model, params, (x,)), y)


def obj_pooled_mse(model, params, tasks, adapt_fn):
    """Also right: with equal query sizes, one mean over all query points is the mean of means."""
    preds = [
        functional_call(
            model, adapt_fn(params, tasks.x_support[i], tasks.y_support[i]), (tasks.x_query[i],)
        )
        for i in range(tasks.num_tasks)
    ]
    return F.mse_loss(torch.stack(preds), tasks.y_query)


def obj_float32(model, params, tasks, adapt_fn):
    return objective_reference(model, params, tasks, adapt_fn).float()


def obj_abs_error(model, params, tasks, adapt_fn):
    losses = []
    for i in range(tasks.num_tasks):
        adapted = adapt_fn(params, tasks.x_support[i], tasks.y_support[i])
        pred = functional_call(model, adapted, (tasks.x_query[i],))
        losses.append((pred - tasks.y_query[i]).abs().mean())
    return torch.stack(losses).mean()


def obj_chained(model, params, tasks, adapt_fn):
    """Forgets to start each task from params: task i adapts from task i - 1's result."""
    losses, start = [], params
    for i in range(tasks.num_tasks):
        start = adapt_fn(start, tasks.x_support[i], tasks.y_support[i])
        losses.append(_query_loss(model, start, tasks, i))
    return torch.stack(losses).mean()


def obj_skips_last_task(model, params, tasks, adapt_fn):
    losses = []
    for i in range(tasks.num_tasks - 1):
        adapted = adapt_fn(params, tasks.x_support[i], tasks.y_support[i])
        losses.append(_query_loss(model, adapted, tasks, i))
    return torch.stack(losses).mean()


def obj_adapts_once(model, params, tasks, adapt_fn):
    """Adapts to the first task's support set only and scores every task with it."""
    adapted = adapt_fn(params, tasks.x_support[0], tasks.y_support[0])
    return torch.stack(
        [_query_loss(model, adapted, tasks, i) for i in range(tasks.num_tasks)]
    ).mean()


def obj_model_params(model, params, tasks, adapt_fn):
    """Adapts the model's own parameters instead of the params it is given."""
    return objective_reference(model, dict(model.named_parameters()), tasks, adapt_fn)


def obj_first_order(model, params, tasks, adapt_fn):
    """Right value, but the adapted parameters' dependence on θ is cut to the identity."""

    def straight_through(p, xs, ys):
        adapted = adapt_fn(p, xs, ys)
        return {n: p[n] + (v - p[n]).detach() for n, v in adapted.items()}

    return objective_reference(model, params, tasks, straight_through)


@pytest.mark.parametrize("answer", [objective_reference, objective_vmap, obj_pooled_mse])
def test_meta_objective_accepts_right_answers(answer):
    result = lesson01.meta_objective(answer)
    assert result.passed, result.message


WRONG_OBJECTIVES = {
    obj_stub: "not implemented yet",
    obj_no_adaptation: "before adaptation",
    obj_adapt_but_score_theta: "before adaptation",
    obj_sum: "sum over tasks",
    obj_per_task: "one loss per task",
    obj_first_task: "first task",
    obj_support_loss: "support loss",
    obj_adapt_on_query: "adapting on the query set",
    obj_detached: "does not depend on θ",
    obj_python_float: "should be a tensor",
    obj_joint: "never called",
    obj_float32: "dtype",
    obj_abs_error: "differs from the reference",
    obj_chained: "previous task's adapted parameters",
    obj_skips_last_task: "every task but the last",
    obj_adapts_once: "adapted to the first task",
    obj_model_params: "model's own parameters",
    obj_first_order: "first-order",
}


@pytest.mark.parametrize("answer", list(WRONG_OBJECTIVES), ids=lambda f: f.__name__)
def test_meta_objective_rejects_known_wrong_answers(answer):
    result = lesson01.meta_objective(answer)
    assert not result.passed and result.hint, str(result)
    assert WRONG_OBJECTIVES[answer] in result.message + (result.hint or ""), str(result)


# ---------------------------------------------------------------------------------------------
# meta_train


def train_reference(model, num_steps, generator):
    params = params_of(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(num_steps):
        tasks = Sinusoid().sample(25, 10, 10, generator=generator)
        loss = meta_loss(model, params, tasks, loss_fn=F.mse_loss, inner_lr=0.01)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def train_stub(model, num_steps, generator):
    raise NotImplementedError()


def train_nothing(model, num_steps, generator):
    pass


def train_a_copy(model, num_steps, generator):
    train_reference(copy.deepcopy(model), 5, generator)


def train_joint(model, num_steps, generator):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(num_steps):
        tasks = Sinusoid().sample(25, 10, 10, generator=generator)
        x = torch.cat([tasks.x_support, tasks.x_query], 1)
        y = torch.cat([tasks.y_support, tasks.y_query], 1)
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def train_diverges(model, num_steps, generator):
    """The right loop with an outer step size far too large."""
    params = params_of(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e6)
    for _ in range(num_steps):
        tasks = Sinusoid().sample(25, 10, 10, generator=generator)
        loss = meta_loss(model, params, tasks, loss_fn=F.mse_loss, inner_lr=0.01)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def train_one_extra_step(model, num_steps, generator):
    train_reference(model, num_steps + 1, generator)


def train_one_step_short(model, num_steps, generator):
    train_reference(model, max(num_steps - 1, 0), generator)


def train_hard_coded_steps(model, num_steps, generator):
    """Ignores num_steps (here with a count small enough for a quick test)."""
    train_reference(model, 3, generator)


def train_global_rng(model, num_steps, generator):
    """Draws the tasks from torch's global generator: not reproducible from `generator`."""
    params = params_of(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(num_steps):
        tasks = Sinusoid().sample(25, 10, 10)
        loss = meta_loss(model, params, tasks, loss_fn=F.mse_loss, inner_lr=0.01)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_meta_train_rejects_a_stub():
    result = lesson01.meta_train(train_stub)
    assert not result.passed and result.message == "not implemented yet"


def test_meta_train_rejects_no_training_and_a_copy():
    for answer in (train_nothing, train_a_copy):
        result = lesson01.meta_train(answer)
        assert not result.passed and "did not change" in result.message


def test_meta_train_rejects_nan():
    result = lesson01.meta_train(train_diverges, num_steps=20)
    assert not result.passed and "NaN" in result.message


def test_meta_train_rejects_too_few_steps_of_the_right_loop():
    """The threshold is not reached by accident: 20 steps of the reference stay above it."""
    result = lesson01.meta_train(lambda m, n, g: train_reference(m, min(n, 20), g))
    assert not result.passed and "must be below" in result.message


@pytest.mark.parametrize(
    "answer, words",
    [
        (train_one_extra_step, "num_steps = 0"),
        (train_hard_coded_steps, "num_steps = 0"),
        (train_one_step_short, "num_steps = 1"),
        (train_global_rng, "generator"),
    ],
    ids=lambda a: getattr(a, "__name__", ""),
)
def test_meta_train_rejects_loops_that_ignore_their_arguments(answer, words):
    """Caught by the short calls with 0 and 1 steps, before any long training."""
    result = lesson01.meta_train(answer)
    assert not result.passed and result.hint, str(result)
    assert words in result.message, str(result)


@pytest.mark.slow
def test_meta_train_rejects_joint_training():
    result = lesson01.meta_train(train_joint)
    assert not result.passed and "must be below" in result.message


@pytest.mark.slow
def test_meta_train_accepts_the_reference_with_margin():
    result = lesson01.meta_train(train_reference)
    assert result.passed, result.message
    mse = float(re.search(r"query MSE ([0-9.]+) <", result.message).group(1))
    assert mse < 0.7 * lesson01.THRESHOLD_MSE
