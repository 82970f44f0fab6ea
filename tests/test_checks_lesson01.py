"""Lesson 01's checks accept the reference answers and reject every known-wrong one."""

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from mlcourse.checks import lesson01
from mlcourse.maml import meta_loss, params_of
from mlcourse.tasks import Sinusoid

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
}


@pytest.mark.parametrize("answer", list(WRONG_OBJECTIVES), ids=lambda f: f.__name__)
def test_meta_objective_rejects_known_wrong_answers(answer):
    result = lesson01.meta_objective(answer)
    assert not result.passed
    assert WRONG_OBJECTIVES[answer] in result.message + (result.hint or "")


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
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))


def test_meta_train_rejects_a_stub():
    result = lesson01.meta_train(train_stub)
    assert not result.passed and result.message == "not implemented yet"


def test_meta_train_rejects_no_training_and_a_copy():
    for answer in (train_nothing, train_a_copy):
        result = lesson01.meta_train(answer)
        assert not result.passed and "did not change" in result.message


def test_meta_train_rejects_nan():
    result = lesson01.meta_train(train_diverges)
    assert not result.passed and "NaN" in result.message


def test_meta_train_rejects_too_few_steps_of_the_right_loop():
    """The threshold is not reached by accident: 20 steps of the reference stay above it."""
    result = lesson01.meta_train(lambda m, n, g: train_reference(m, 20, g))
    assert not result.passed and "must be below" in result.message


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
