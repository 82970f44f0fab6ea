"""Lesson 09's checks accept the reference answers and reject every known-wrong one with a
message naming the mistake."""

from __future__ import annotations

import pytest
import torch

from mlcourse.course.checks import lesson09

# ---------------------------------------------------------------------------------------------
# outer_step


def outer_ok(learner, params, optimizer, tasks, generator):
    optimizer.zero_grad()
    loss = learner.meta_loss(params, tasks, generator)
    loss.backward()
    optimizer.step()
    return loss.detach()


def outer_stub(learner, params, optimizer, tasks, generator):
    raise NotImplementedError()


def outer_no_zero_grad(learner, params, optimizer, tasks, generator):
    loss = learner.meta_loss(params, tasks, generator)
    loss.backward()
    optimizer.step()
    return loss.detach()


def outer_ascent(learner, params, optimizer, tasks, generator):
    optimizer.zero_grad()
    loss = learner.meta_loss(params, tasks, generator)
    (-loss).backward()
    optimizer.step()
    return loss.detach()


def outer_no_step(learner, params, optimizer, tasks, generator):
    optimizer.zero_grad()
    loss = learner.meta_loss(params, tasks, generator)
    loss.backward()
    return loss.detach()


def outer_step_before_backward(learner, params, optimizer, tasks, generator):
    optimizer.zero_grad()
    loss = learner.meta_loss(params, tasks, generator)
    optimizer.step()
    loss.backward()
    return loss.detach()


def outer_loss_after(learner, params, optimizer, tasks, generator):
    outer_ok(learner, params, optimizer, tasks, generator)
    return learner.meta_loss(params, tasks, generator).detach()


def outer_returns_nothing(learner, params, optimizer, tasks, generator):
    outer_ok(learner, params, optimizer, tasks, generator)


def outer_twice(learner, params, optimizer, tasks, generator):
    outer_ok(learner, params, optimizer, tasks, generator)
    return outer_ok(learner, params, optimizer, tasks, generator)


def outer_no_generator(learner, params, optimizer, tasks, generator):
    optimizer.zero_grad()
    loss = learner.meta_loss(params, tasks)
    loss.backward()
    optimizer.step()
    return loss.detach()


def outer_by_hand(learner, params, optimizer, tasks, generator):
    """Plain SGD written out, with the optimizer's step size: not the optimizer's update."""
    for p in params.values():
        p.grad = None
    loss = learner.meta_loss(params, tasks, generator)
    loss.backward()
    lr = optimizer.param_groups[0]["lr"]
    with torch.no_grad():
        for p in params.values():
            p -= lr * p.grad
    return loss.detach()


def outer_zero_grad_after(learner, params, optimizer, tasks, generator):
    loss = learner.meta_loss(params, tasks, generator)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.detach()


def outer_not_detached(learner, params, optimizer, tasks, generator):
    optimizer.zero_grad()
    loss = learner.meta_loss(params, tasks, generator)
    loss.backward()
    optimizer.step()
    return loss


def test_outer_step_accepts_the_reference():
    result = lesson09.outer_step(outer_ok)
    assert result.passed, result.message


@pytest.mark.parametrize(
    "answer, words",
    [
        (outer_stub, "not implemented yet"),
        (outer_no_zero_grad, "accumulate"),
        (outer_ascent, "uphill"),
        (outer_no_step, "never called"),
        (outer_step_before_backward, "did not change"),
        (outer_loss_after, "before the step"),
        (outer_returns_nothing, "scalar tensor"),
        (outer_twice, "called 2 times"),
        (outer_no_generator, "not given the generator"),
        (outer_by_hand, "never called"),
        (outer_zero_grad_after, "left in .grad before it"),
        (outer_not_detached, "still carries its graph"),
    ],
)
def test_outer_step_rejects_wrong_answers(answer, words):
    result = lesson09.outer_step(answer)
    assert not result.passed and result.hint, str(result)
    assert words in result.message, result.message


# ---------------------------------------------------------------------------------------------
# bandit_inner_step


def inner_ok(logits, actions, rewards, inner_lr):
    batched = logits.expand(actions.shape[0], -1)
    logp = torch.log_softmax(batched, -1).gather(1, actions)
    surrogate = (logp * (rewards - 0.5)).mean(1).sum()
    (grads,) = torch.autograd.grad(surrogate, batched, create_graph=True)
    return batched + inner_lr * grads


def inner_analytic(logits, actions, rewards, inner_lr):  # ∇ log π(a) = e_a − π, by hand
    pi = torch.softmax(logits, -1)
    one_hot = torch.nn.functional.one_hot(actions, logits.shape[0]).to(logits.dtype)
    centred = (rewards - 0.5)[..., None]
    grads = ((one_hot - pi) * centred).mean(1)
    return logits + inner_lr * grads


def inner_stub(logits, actions, rewards, inner_lr):
    raise NotImplementedError()


def inner_descent(logits, actions, rewards, inner_lr):
    return inner_ok(logits, actions, rewards, -inner_lr)


def inner_uncentred(logits, actions, rewards, inner_lr):
    return inner_ok(logits, actions, rewards + 0.5, inner_lr)


def inner_sum(logits, actions, rewards, inner_lr):
    return inner_ok(logits, actions, rewards, inner_lr * actions.shape[1])


def inner_shared(logits, actions, rewards, inner_lr):
    logp = torch.log_softmax(logits, -1)[actions]
    (g,) = torch.autograd.grad((logp * (rewards - 0.5)).mean(), logits, create_graph=True)
    return logits.expand(actions.shape[0], -1) + inner_lr * g


def inner_first_order(logits, actions, rewards, inner_lr):
    batched = logits.expand(actions.shape[0], -1)
    logp = torch.log_softmax(batched, -1).gather(1, actions)
    (grads,) = torch.autograd.grad((logp * (rewards - 0.5)).mean(1).sum(), batched)
    return batched + inner_lr * grads


def inner_detached(logits, actions, rewards, inner_lr):
    return inner_ok(logits, actions, rewards, inner_lr).detach()


def inner_in_place(logits, actions, rewards, inner_lr):
    new = inner_ok(logits, actions, rewards, inner_lr).detach()
    with torch.no_grad():
        logits.add_(1.0)
    return new


def inner_one_task(logits, actions, rewards, inner_lr):
    return inner_ok(logits, actions, rewards, inner_lr)[0]


def inner_mean_over_tasks(logits, actions, rewards, inner_lr):
    batched = logits.expand(actions.shape[0], -1)
    logp = torch.log_softmax(batched, -1).gather(1, actions)
    (grads,) = torch.autograd.grad((logp * (rewards - 0.5)).mean(), batched, create_graph=True)
    return batched + inner_lr * grads


@pytest.mark.parametrize("answer", [inner_ok, inner_analytic])
def test_bandit_inner_step_accepts_the_reference(answer):
    result = lesson09.bandit_inner_step(answer)
    assert result.passed, result.message


@pytest.mark.parametrize(
    "answer, words",
    [
        (inner_stub, "not implemented yet"),
        (inner_descent, "descent step"),
        (inner_uncentred, "not centred"),
        (inner_sum, "sums over the pulls"),
        (inner_shared, "same step"),
        (inner_first_order, "first order"),
        (inner_detached, "do not depend on θ"),
        (inner_in_place, "in place"),
        (inner_one_task, "shape"),
        (inner_mean_over_tasks, "averaged over the tasks too"),
    ],
)
def test_bandit_inner_step_rejects_wrong_answers(answer, words):
    result = lesson09.bandit_inner_step(answer)
    assert not result.passed and result.hint, str(result)
    assert words in result.message, result.message


# ---------------------------------------------------------------------------------------------
# blackbox_predict


def predict_ok(model, x_support, y_support, x_query):
    inputs = torch.cat([x_support, y_support], -1) / model.scale
    states, _ = model.gru(inputs)
    h = states[:, -1]
    h = h[:, None].expand(-1, x_query.shape[1], -1)
    return model.head(torch.cat([h, x_query / model.scale], -1))


def predict_stub(model, x_support, y_support, x_query):
    raise NotImplementedError()


_carried = {}


def predict_stateful(model, x_support, y_support, x_query):
    inputs = torch.cat([x_support, y_support], -1) / model.scale
    states, hidden = model.gru(inputs, _carried.get("h"))
    _carried["h"] = hidden
    h = states[:, -1:].expand(-1, x_query.shape[1], -1)
    return model.head(torch.cat([h, x_query / model.scale], -1))


def predict_time_major(model, x_support, y_support, x_query):
    inputs = torch.cat([x_support, y_support], -1) / model.scale
    states, _ = model.gru(inputs.transpose(0, 1))  # tasks become time: they leak into each other
    h = states[-1][:, None].expand(-1, x_query.shape[1], -1)
    return model.head(torch.cat([h, x_query / model.scale], -1))


def predict_no_y(model, x_support, y_support, x_query):
    return predict_ok(model, x_support, torch.zeros_like(y_support), x_query)


def predict_first_state(model, x_support, y_support, x_query):
    return predict_ok(model, x_support[:, :1], y_support[:, :1], x_query)


def predict_unscaled(model, x_support, y_support, x_query):
    states, _ = model.gru(torch.cat([x_support, y_support], -1))
    h = states[:, -1:].expand(-1, x_query.shape[1], -1)
    return model.head(torch.cat([h, x_query], -1))


def predict_swapped_concat(model, x_support, y_support, x_query):
    inputs = torch.cat([y_support, x_support], -1) / model.scale
    states, _ = model.gru(inputs)
    h = states[:, -1:].expand(-1, x_query.shape[1], -1)
    return model.head(torch.cat([h, x_query / model.scale], -1))


def predict_mean_query(model, x_support, y_support, x_query):
    return predict_ok(model, x_support, y_support, x_query).mean(1)


def predict_mean_state(model, x_support, y_support, x_query):
    states, _ = model.gru(torch.cat([x_support, y_support], -1) / model.scale)
    h = states.mean(1)[:, None].expand(-1, x_query.shape[1], -1)
    return model.head(torch.cat([h, x_query / model.scale], -1))


def predict_query_unscaled(model, x_support, y_support, x_query):
    states, _ = model.gru(torch.cat([x_support, y_support], -1) / model.scale)
    h = states[:, -1:].expand(-1, x_query.shape[1], -1)
    return model.head(torch.cat([h, x_query], -1))


def predict_support_unscaled(model, x_support, y_support, x_query):
    states, _ = model.gru(torch.cat([x_support, y_support], -1))
    h = states[:, -1:].expand(-1, x_query.shape[1], -1)
    return model.head(torch.cat([h, x_query / model.scale], -1))


def test_blackbox_predict_accepts_the_reference():
    result = lesson09.blackbox_predict(predict_ok)
    assert result.passed, result.message


@pytest.mark.parametrize(
    "answer, words",
    [
        (predict_stub, "not implemented yet"),
        (predict_stateful, "carried over"),
        (predict_time_major, "other* tasks"),
        (predict_no_y, "do not depend on y_support"),
        (predict_first_state, "last support pair"),
        (predict_unscaled, "model.scale"),
        (predict_swapped_concat, "differs from the reference"),
        (predict_mean_query, "shape"),
        (predict_mean_state, "mean of the GRU states"),
        (predict_query_unscaled, "x_query is not divided"),
        (predict_support_unscaled, "support pairs are not divided"),
    ],
)
def test_blackbox_predict_rejects_wrong_answers(answer, words):
    _carried.clear()
    result = lesson09.blackbox_predict(answer)
    assert not result.passed and result.hint, str(result)
    assert words in result.message, result.message
