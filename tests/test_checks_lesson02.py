"""Lesson 02's checks: the reference answers pass, and every known-wrong answer is rejected with
a message naming the mistake (a check that cannot fail is a defect)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from own import own
from torch.func import functional_call

from mlcourse.algorithms import maml
from mlcourse.algorithms.maml import params_of
from mlcourse.course import checks as check

adapt = own(maml.adapt)

# ---------------------------------------------------------------------------------------------
# Building blocks the right and wrong answers share


def sgd_step(model, params, x, y, inner_lr, *, loss=F.mse_loss, create_graph=True, sign=1.0):
    names = list(params)
    value = loss(functional_call(model, params, (x,)), y)
    grads = torch.autograd.grad(value, [params[n] for n in names], create_graph=create_graph)
    return {n: params[n] - sign * inner_lr * g for n, g in zip(names, grads, strict=True)}


def output_sum(prediction, target):
    return prediction.sum()


def sum_squares(prediction, target):
    return ((prediction - target) ** 2).sum()


# ---------------------------------------------------------------------------------------------
# (a) inner_update


def inner_ok(model, params, x_support, y_support, inner_lr):
    return sgd_step(model, params, x_support, y_support, inner_lr)


def inner_first_order(model, params, x_support, y_support, inner_lr):
    return sgd_step(model, params, x_support, y_support, inner_lr, create_graph=False)


def inner_detached(model, params, x_support, y_support, inner_lr):
    step = sgd_step(model, params, x_support, y_support, inner_lr)
    return {n: p.detach() for n, p in step.items()}


def inner_in_place(model, params, x_support, y_support, inner_lr):
    step = sgd_step(model, params, x_support, y_support, inner_lr, create_graph=False)
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(step[n])
    return params


def inner_wrong_sign(model, params, x_support, y_support, inner_lr):
    return sgd_step(model, params, x_support, y_support, inner_lr, sign=-1.0)


def inner_output_sum(model, params, x_support, y_support, inner_lr):
    return sgd_step(model, params, x_support, y_support, inner_lr, loss=output_sum)


def inner_sum_squares(model, params, x_support, y_support, inner_lr):
    return sgd_step(model, params, x_support, y_support, inner_lr, loss=sum_squares)


def inner_no_step(model, params, x_support, y_support, inner_lr):
    return dict(params)


def inner_list(model, params, x_support, y_support, inner_lr):
    return list(sgd_step(model, params, x_support, y_support, inner_lr).values())


def inner_float32(model, params, x_support, y_support, inner_lr):
    step = sgd_step(model, params, x_support, y_support, inner_lr)
    return {n: p.float() for n, p in step.items()}


def inner_mutates_dict(model, params, x_support, y_support, inner_lr):
    params.update(sgd_step(model, params, x_support, y_support, inner_lr))
    return params


def inner_stub(model, params, x_support, y_support, inner_lr):
    raise NotImplementedError()


def inner_model_gradient(model, params, x_support, y_support, inner_lr):
    """Differentiates the model's own parameters (`model(x)`), whatever `params` holds: right
    only when params are the model's own, as in the first inner step."""
    loss = F.mse_loss(model(x_support), y_support)
    grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
    return {n: p - inner_lr * g for (n, p), g in zip(params.items(), grads, strict=True)}


def inner_from_model(model, params, x_support, y_support, inner_lr):
    """Steps from the model's own parameters with the gradient taken at `params`."""
    step = sgd_step(model, params, x_support, y_support, inner_lr)
    own = dict(model.named_parameters())
    return {n: own[n] + (step[n] - params[n]) for n in params}


def inner_detached_start(model, params, x_support, y_support, inner_lr):
    names = list(params)
    loss = F.mse_loss(functional_call(model, params, (x_support,)), y_support)
    grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True)
    return {n: params[n].detach() - inner_lr * g for n, g in zip(names, grads, strict=True)}


def inner_last_detached(model, params, x_support, y_support, inner_lr):
    """First order, and the last parameter's step detached (e.g. through `.data`): the query
    loss then has no path to that parameter at all."""
    step = sgd_step(model, params, x_support, y_support, inner_lr, create_graph=False)
    last = list(params)[-1]
    return {**step, last: step[last].detach()}


def inner_hard_coded_lr(model, params, x_support, y_support, inner_lr):
    return sgd_step(model, params, x_support, y_support, 0.05)


# ---------------------------------------------------------------------------------------------
# (b) maml_meta_loss


def meta_loss_with(
    model,
    params,
    tasks,
    inner_lr,
    steps,
    *,
    adapt_on="support",
    score_on="query",
    create_graph=True,
    reduce=torch.mean,
    sign=1.0,
    loss=F.mse_loss,
):
    losses = []
    for i in range(tasks.num_tasks):
        xa, ya = getattr(tasks, f"x_{adapt_on}")[i], getattr(tasks, f"y_{adapt_on}")[i]
        xe, ye = getattr(tasks, f"x_{score_on}")[i], getattr(tasks, f"y_{score_on}")[i]
        fast = dict(params)
        for _ in range(steps):
            fast = sgd_step(
                model, fast, xa, ya, inner_lr, loss=loss, create_graph=create_graph, sign=sign
            )
        losses.append(F.mse_loss(functional_call(model, fast, (xe,)), ye))
    return reduce(torch.stack(losses))


def meta_ok(model, params, tasks, inner_lr, num_inner_steps):
    return meta_loss_with(model, params, tasks, inner_lr, num_inner_steps)


def meta_restarts_from_theta(model, params, tasks, inner_lr, num_inner_steps):
    """Takes every inner step, but each one from θ: they add up to one step."""
    losses = []
    for i in range(tasks.num_tasks):
        fast = dict(params)
        for _ in range(num_inner_steps):
            fast = sgd_step(model, params, tasks.x_support[i], tasks.y_support[i], inner_lr)
        losses.append(
            F.mse_loss(functional_call(model, fast, (tasks.x_query[i],)), tasks.y_query[i])
        )
    return torch.stack(losses).mean()


WRONG_META = {
    "first-order": (dict(create_graph=False), "first-order"),
    "no split": (dict(score_on="support"), "no support/query split"),
    "swapped": (dict(adapt_on="query", score_on="support"), "swapped"),
    "query only": (dict(adapt_on="query"), "support set is never used"),
    "no adaptation": (dict(steps=0), "no adaptation"),
    "one step": (dict(steps=1), "num_inner_steps is ignored"),
    "sum over tasks": (dict(reduce=torch.sum), "summed over tasks"),
    "wrong sign": (dict(sign=-1.0), "wrong sign"),
    "summed output": (dict(loss=output_sum), "output summed"),
}


def wrong_meta(kind):
    options, _ = WRONG_META[kind]

    def meta(model, params, tasks, inner_lr, num_inner_steps):
        kwargs = dict(options)
        steps = kwargs.pop("steps", num_inner_steps)
        return meta_loss_with(model, params, tasks, inner_lr, steps, **kwargs)

    return meta


def meta_detached(model, params, tasks, inner_lr, num_inner_steps):
    return meta_ok(model, params, tasks, inner_lr, num_inner_steps).detach()


def meta_item(model, params, tasks, inner_lr, num_inner_steps):
    return meta_ok(model, params, tasks, inner_lr, num_inner_steps).item()


def meta_per_task(model, params, tasks, inner_lr, num_inner_steps):
    return meta_loss_with(model, params, tasks, inner_lr, num_inner_steps, reduce=lambda t: t)


def meta_no_reset(model, params, tasks, inner_lr, num_inner_steps):
    """`fast = dict(params)` outside the loop over tasks: never reset."""
    fast, losses = dict(params), []
    for i in range(tasks.num_tasks):
        for _ in range(num_inner_steps):
            fast = sgd_step(model, fast, tasks.x_support[i], tasks.y_support[i], inner_lr)
        losses.append(
            F.mse_loss(functional_call(model, fast, (tasks.x_query[i],)), tasks.y_query[i])
        )
    return torch.stack(losses).mean()


def meta_model_params(model, params, tasks, inner_lr, num_inner_steps):
    return meta_ok(model, dict(model.named_parameters()), tasks, inner_lr, num_inner_steps)


def meta_one_extra_step(model, params, tasks, inner_lr, num_inner_steps):
    return meta_ok(model, params, tasks, inner_lr, num_inner_steps + 1)


def meta_one_step_short(model, params, tasks, inner_lr, num_inner_steps):
    return meta_ok(model, params, tasks, inner_lr, num_inner_steps - 1)


# ---------------------------------------------------------------------------------------------
# (c) fixed_maml_step: the planted naive step and its partial fixes


def naive_maml_step(model, meta_optimizer, tasks, inner_lr):
    """The blog-post version, every bug included (as planted in the exercise notebook)."""
    meta_optimizer.zero_grad()
    total = 0.0
    for i in range(tasks.num_tasks):
        x = tasks.x_support[i]
        fast_weights = model.state_dict().copy()
        loss = model(x).sum()
        grads = torch.autograd.grad(loss, model.parameters())
        for (name, _w), g in zip(fast_weights.items(), grads, strict=False):
            fast_weights[name] -= inner_lr * g
        meta_loss = model(x).sum()
        meta_loss.backward()
        total += meta_loss.item()
    meta_optimizer.step()
    return total / tasks.num_tasks


def step_with(
    model,
    meta_optimizer,
    tasks,
    inner_lr,
    *,
    inner_loss=F.mse_loss,
    outer_loss=F.mse_loss,
    score_on="query",
    adapt_steps=1,
    create_graph=True,
    reduce=torch.mean,
    start="parameters",
    step_per_task=False,
):
    """A MAML step with one mistake switched on at a time."""
    meta_optimizer.zero_grad()
    losses = []
    for i in range(tasks.num_tasks):
        xs, ys = tasks.x_support[i], tasks.y_support[i]
        xe, ye = getattr(tasks, f"x_{score_on}")[i], getattr(tasks, f"y_{score_on}")[i]
        params = dict(model.named_parameters())
        fast = dict(params)
        if adapt_steps:
            loss = inner_loss(functional_call(model, params, (xs,)), ys)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
            if start == "parameters":
                pairs = zip(params.items(), grads, strict=True)
                fast = {n: p - inner_lr * g for (n, p), g in pairs}
            elif start == "detached":
                state = model.state_dict()
                fast = {n: state[n] - inner_lr * g for n, g in zip(params, grads, strict=True)}
            elif start == "state_dict names":
                names = model.state_dict().keys()  # buffers too: misaligned with the gradients
                fast = {n: params[n] - inner_lr * g for n, g in zip(names, grads, strict=False)}
        query = outer_loss(functional_call(model, fast, (xe,)), ye)
        if step_per_task:
            query.backward()
            meta_optimizer.step()
            meta_optimizer.zero_grad()
        losses.append(query)
    meta = reduce(torch.stack(losses))
    if not step_per_task:
        meta.backward()
        meta_optimizer.step()
    return meta.item()


def step_ok(model, meta_optimizer, tasks, inner_lr):
    return step_with(model, meta_optimizer, tasks, inner_lr)


def step_in_place(model, meta_optimizer, tasks, inner_lr):
    """Fixes every bug but the shallow `state_dict().copy()` updated in place."""
    meta_optimizer.zero_grad()
    losses = []
    for i in range(tasks.num_tasks):
        fast_weights = model.state_dict().copy()
        params = dict(model.named_parameters())
        loss = F.mse_loss(model(tasks.x_support[i]), tasks.y_support[i])
        grads = torch.autograd.grad(loss, list(params.values()))
        for name, g in zip(params, grads, strict=True):
            fast_weights[name] -= inner_lr * g
        losses.append(F.mse_loss(model(tasks.x_query[i]), tasks.y_query[i]))
    meta = torch.stack(losses).mean()
    meta.backward()
    meta_optimizer.step()
    return meta.item()


def step_no_optimizer_step(model, meta_optimizer, tasks, inner_lr):
    meta_optimizer.zero_grad()
    params = dict(model.named_parameters())
    losses = [
        F.mse_loss(functional_call(model, sgd_step(model, params, xs, ys, inner_lr), (xq,)), yq)
        for xs, ys, xq, yq in zip(
            tasks.x_support, tasks.y_support, tasks.x_query, tasks.y_query, strict=True
        )
    ]
    meta = torch.stack(losses).mean()
    meta.backward()
    return meta.item()


def step_returns_none(model, meta_optimizer, tasks, inner_lr):
    step_ok(model, meta_optimizer, tasks, inner_lr)


class _NoZeroGrad:
    """Hands the step an optimizer whose zero_grad does nothing: the step as written, without
    its zero_grad() call."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def zero_grad(self, set_to_none=True):
        pass

    def step(self):
        self.optimizer.step()


def step_no_zero_grad(model, meta_optimizer, tasks, inner_lr):
    return step_ok(model, _NoZeroGrad(meta_optimizer), tasks, inner_lr)


def step_zero_grad_after(model, meta_optimizer, tasks, inner_lr):
    """Clears the gradients at the end, after the step: the first step still adds old ones."""
    value = step_ok(model, _NoZeroGrad(meta_optimizer), tasks, inner_lr)
    meta_optimizer.zero_grad()
    return value


WRONG_STEPS = {
    "naive (all bugs)": (naive_maml_step, "in-place update changed the model"),
    "state_dict in place": (step_in_place, "state_dict().copy()"),
    "summed output inner": (
        lambda m, o, t, a: step_with(m, o, t, a, inner_loss=output_sum),
        "inner 'loss' is the model's output summed",
    ),
    "summed output outer": (
        lambda m, o, t, a: step_with(m, o, t, a, outer_loss=output_sum),
        "meta-loss is the model's output summed",
    ),
    "summed output both": (
        lambda m, o, t, a: step_with(m, o, t, a, inner_loss=output_sum, outer_loss=output_sum),
        "in both loops",
    ),
    "no split": (
        lambda m, o, t, a: step_with(m, o, t, a, score_on="support"),
        "no support/query split",
    ),
    "no adaptation": (
        lambda m, o, t, a: step_with(m, o, t, a, adapt_steps=0),
        "computed with θ, not with the adapted parameters",
    ),
    "first order": (
        lambda m, o, t, a: step_with(m, o, t, a, create_graph=False),
        "first-order",
    ),
    "sum over tasks": (
        lambda m, o, t, a: step_with(m, o, t, a, reduce=torch.sum),
        "summed over tasks",
    ),
    "detached start": (
        lambda m, o, t, a: step_with(m, o, t, a, start="detached"),
        "detached",
    ),
    "state_dict names": (
        lambda m, o, t, a: step_with(m, o, t, a, start="state_dict names"),
        "with buffers",
    ),
    "step per task": (
        lambda m, o, t, a: step_with(m, o, t, a, step_per_task=True),
        "was called 4 times",
    ),
    "never steps": (step_no_optimizer_step, "never called"),
    "returns None": (step_returns_none, "instead of the meta-loss"),
    "no zero_grad": (step_no_zero_grad, "zero_grad() before the backward"),
    "zero_grad after the step": (step_zero_grad_after, "never cleared"),
}


# ---------------------------------------------------------------------------------------------
# (d) fixed_meta_test


def test_ok(model, x_support, y_support, x_query, inner_lr, num_inner_steps):
    adapted = adapt(
        model,
        params_of(model),
        x_support,
        y_support,
        loss_fn=F.mse_loss,
        inner_lr=inner_lr,
        num_inner_steps=num_inner_steps,
        first_order=True,
    )
    return functional_call(model, adapted, (x_query,))


test_ok.__test__ = False  # not a pytest test


def naive_meta_test(model, x_support, y_support, x_query, inner_lr, num_inner_steps):
    return model(x_query)


def meta_test_in_place(model, x_support, y_support, x_query, inner_lr, num_inner_steps):
    optimizer = torch.optim.SGD(model.parameters(), lr=inner_lr)
    for _ in range(num_inner_steps):
        optimizer.zero_grad()
        F.mse_loss(model(x_support), y_support).backward()
        optimizer.step()
    return model(x_query)


def meta_test_one_step(model, x_support, y_support, x_query, inner_lr, num_inner_steps):
    return test_ok(model, x_support, y_support, x_query, inner_lr, 1)


def meta_test_wrong_sign(model, x_support, y_support, x_query, inner_lr, num_inner_steps):
    return test_ok(model, x_support, y_support, x_query, -inner_lr, num_inner_steps)


def meta_test_flat(model, x_support, y_support, x_query, inner_lr, num_inner_steps):
    return test_ok(model, x_support, y_support, x_query, inner_lr, num_inner_steps).squeeze(-1)


def meta_test_one_step_short(model, x_support, y_support, x_query, inner_lr, num_inner_steps):
    return test_ok(model, x_support, y_support, x_query, inner_lr, num_inner_steps - 1)


def meta_test_restores(model, x_support, y_support, x_query, inner_lr, num_inner_steps):
    """Also right: adapts the model in place with an optimizer (clearing the gradients at every
    step), predicts, then puts θ back."""
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=inner_lr)
    for _ in range(num_inner_steps):
        optimizer.zero_grad()
        F.mse_loss(model(x_support), y_support).backward()
        optimizer.step()
    with torch.no_grad():
        prediction = model(x_query)
        for n, p in model.named_parameters():
            p.copy_(saved[n])
    return prediction


def test_meta_test_in_place_and_restored_is_accepted():
    result = check.fixed_meta_test(meta_test_restores)
    assert result.passed, str(result)


def meta_test_zero_grad_once(model, x_support, y_support, x_query, inner_lr, num_inner_steps):
    """Clears the old gradients once, then lets the steps' gradients add up."""
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=inner_lr)
    optimizer.zero_grad()
    for _ in range(num_inner_steps):
        F.mse_loss(model(x_support), y_support).backward()
        optimizer.step()
    with torch.no_grad():
        prediction = model(x_query)
        for n, p in model.named_parameters():
            p.copy_(saved[n])
    return prediction


def meta_test_restores_but_accumulates(
    model, x_support, y_support, x_query, inner_lr, num_inner_steps
):
    """Adapts the model in place and restores it afterwards, but never clears `.grad`: the old
    gradients and every earlier step's gradients add up."""
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=inner_lr)
    for _ in range(num_inner_steps):
        F.mse_loss(model(x_support), y_support).backward()
        optimizer.step()
    with torch.no_grad():
        prediction = model(x_query)
        for n, p in model.named_parameters():
            p.copy_(saved[n])
    return prediction


# ---------------------------------------------------------------------------------------------
# The tests


def assert_rejected(result, fragment: str) -> None:
    assert not result.passed, f"accepted a wrong answer: {result}"
    assert result.points == 0
    assert result.hint or "hint" in fragment, f"no hint: {result}"
    assert fragment.lower() in (result.message + " " + (result.hint or "")).lower(), str(result)


def test_references_are_accepted():
    for name, fn in [
        ("inner_update", inner_ok),
        ("maml_meta_loss", meta_ok),
        ("fixed_maml_step", step_ok),
        ("fixed_meta_test", test_ok),
    ]:
        result = getattr(check, name)(fn)
        assert result.passed, str(result)
        assert result.points == result.max_points > 0
        assert "✅" in str(result)


@pytest.mark.parametrize(
    "fn, fragment",
    [
        (inner_first_order, "first-order answer where second order is asked"),
        (inner_detached, "do not depend on θ: did you detach the gradient"),
        (inner_in_place, "in-place update changed the model's parameters"),
        (inner_wrong_sign, "wrong sign"),
        (inner_output_sum, "output summed"),
        (inner_sum_squares, "sum of squared errors"),
        (inner_no_step, "did not move"),
        (inner_list, "should return a dict"),
        (inner_float32, "dtype"),
        (inner_mutates_dict, "changed the `params` dict"),
        (inner_stub, "not implemented yet"),
        (inner_model_gradient, "gradient is taken at the model's own parameters"),
        (inner_from_model, "starts from the model's own parameters"),
        (inner_detached_start, "starts from detached parameters"),
        (inner_hard_coded_lr, "step of size 0.05 in the right direction, but inner_lr = 0.02"),
        (inner_last_detached, "does not depend on θ through ['4.bias']"),
    ],
)
def test_inner_update_rejects(fn, fragment):
    assert_rejected(check.inner_update(fn), fragment)


@pytest.mark.parametrize("kind", sorted(WRONG_META))
def test_maml_meta_loss_rejects(kind):
    assert_rejected(check.maml_meta_loss(wrong_meta(kind)), WRONG_META[kind][1])


@pytest.mark.parametrize(
    "fn, fragment",
    [
        (meta_detached, "does not depend on θ"),
        (meta_item, "should return a tensor"),
        (meta_per_task, "shape"),
        (meta_no_reset, "not reset between tasks"),
        (meta_model_params, "model's own parameters"),
        (meta_one_extra_step, "one inner step too many"),
        (meta_one_step_short, "one inner step too few"),
        (meta_restarts_from_theta, "each of the 3 inner steps starts again from θ"),
    ],
)
def test_maml_meta_loss_rejects_other(fn, fragment):
    assert_rejected(check.maml_meta_loss(fn), fragment)


@pytest.mark.parametrize("kind", sorted(WRONG_STEPS))
def test_fixed_maml_step_rejects(kind):
    fn, fragment = WRONG_STEPS[kind]
    assert_rejected(check.fixed_maml_step(fn), fragment)


@pytest.mark.parametrize(
    "fn, fragment",
    [
        (naive_meta_test, "performs no adaptation at all"),
        (meta_test_in_place, "changed the model's parameters"),
        (meta_test_one_step, "num_inner_steps is ignored"),
        (meta_test_wrong_sign, "wrong sign"),
        (meta_test_flat, "shape"),
        (meta_test_one_step_short, "one adaptation step too few"),
        (meta_test_restores_but_accumulates, "on top of the old ones"),
        (meta_test_zero_grad_once, "called once, before the loop"),
    ],
)
def test_fixed_meta_test_rejects(fn, fragment):
    assert_rejected(check.fixed_meta_test(fn), fragment)


def test_crashing_answer_is_reported_not_raised():
    def crash(*args):
        raise ValueError("boom")

    result = check.inner_update(crash)
    assert_rejected(result, "raised ValueError: boom")
