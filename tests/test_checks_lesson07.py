"""Lesson 07's checks accept the reference answers and reject every known-wrong one with a
message naming the mistake."""

from __future__ import annotations

import pytest
import torch

from mlcourse.course.checks import lesson07

# ---------------------------------------------------------------------------------------------
# reinforce_loss


def loss_ok(logp, returns):
    return -(logp * returns.detach()).sum(0).mean()


def loss_stub(logp, returns):
    raise NotImplementedError()


def loss_sign(logp, returns):
    return (logp * returns.detach()).sum(0).mean()


def loss_time_mean(logp, returns):
    return -(logp * returns.detach()).mean()


def loss_sum_trajectories(logp, returns):
    return -(logp * returns.detach()).sum()


def loss_total_return(logp, returns):
    return -(logp.sum(0) * returns[0].detach()).mean()


def loss_no_detach(logp, returns):
    return -(logp * returns).sum(0).mean()


def loss_detached_logp(logp, returns):
    return -(logp.detach() * returns.detach()).sum(0).mean()


def loss_rewards(logp, returns):  # the naive "loss = -rewards": no log-probabilities at all
    return -returns.detach().sum(0).mean()


def loss_per_trajectory(logp, returns):
    return -(logp * returns.detach()).sum(0)


def loss_axes_swapped(logp, returns):
    """Sums over the trajectories (dim 1) and averages over time (dim 0)."""
    return -(logp * returns.detach()).sum(1).mean()


def loss_baseline(logp, returns):
    """Subtracts the mean return: a valid baseline for the gradient, but not the loss asked."""
    r = returns.detach()
    return -(logp * (r - r.mean())).sum(0).mean()


def test_reinforce_loss_accepts_the_reference():
    result = lesson07.reinforce_loss(loss_ok)
    assert result.passed, result.message


@pytest.mark.parametrize(
    "answer, words",
    [
        (loss_stub, "not implemented yet"),
        (loss_sign, "sign is flipped"),
        (loss_time_mean, "averages over time"),
        (loss_sum_trajectories, "sums over trajectories"),
        (loss_total_return, "G_0"),
        (loss_no_detach, "flows into the returns"),
        (loss_detached_logp, "no gradient"),
        (loss_rewards, "expected"),
        (loss_per_trajectory, "scalar"),
        (loss_axes_swapped, "sums over dim 1"),
        (loss_baseline, "expected"),
    ],
)
def test_reinforce_loss_rejects_wrong_answers(answer, words):
    result = lesson07.reinforce_loss(answer)
    assert not result.passed and result.hint, str(result)
    assert words in result.message, result.message


# ---------------------------------------------------------------------------------------------
# magic_box


def box_ok(x):
    return torch.exp(x - x.detach())


def box_stub(x):
    raise NotImplementedError()


def box_exp(x):
    return torch.exp(x)


def box_constant(x):
    return torch.ones_like(x)


def box_linear(x):
    return 1 + x - x.detach()


def box_detached(x):
    return torch.exp(x - x).detach() * 1.0


def box_wrong_scale(x):
    return torch.exp(2 * (x - x.detach()))


def box_of_the_sum(x):
    """One box for the whole tensor: right only when x holds one number."""
    return torch.exp(x.sum() - x.sum().detach())


def box_mean(x):
    return torch.exp(x - x.detach()).mean()


def box_shared_detach(x):
    """Subtracts the mean of the detached x: 1 only where x equals its mean."""
    return torch.exp(x - x.detach().mean())


def box_exp_ratio(x):
    """Also right: exp(x) / exp(x).detach()."""
    return torch.exp(x) / torch.exp(x).detach()


@pytest.mark.parametrize("answer", [box_ok, box_exp_ratio])
def test_magic_box_accepts_the_reference(answer):
    result = lesson07.magic_box(answer)
    assert result.passed, result.message


@pytest.mark.parametrize(
    "answer, words",
    [
        (box_stub, "not implemented yet"),
        (box_exp, "exp(x), not 1"),
        (box_constant, "no gradient"),
        (box_linear, "1 + x − x.detach()"),
        (box_detached, "no gradient"),
        (box_wrong_scale, "should be ☐·x'"),
        (box_of_the_sum, "must be shaped like x"),
        (box_mean, "must be shaped like x"),
        (box_shared_detach, "not 1 in every entry"),
    ],
)
def test_magic_box_rejects_wrong_answers(answer, words):
    result = lesson07.magic_box(answer)
    assert not result.passed and result.hint, str(result)
    assert words in result.message, result.message


# ---------------------------------------------------------------------------------------------
# policy_inner_step


def step_ok(objective, params, inner_lr):
    grads = torch.autograd.grad(objective(params), list(params.values()), create_graph=True)
    return {n: p + inner_lr * g for (n, p), g in zip(params.items(), grads, strict=True)}


def step_stub(objective, params, inner_lr):
    raise NotImplementedError()


def step_descent(objective, params, inner_lr):
    grads = torch.autograd.grad(objective(params), list(params.values()), create_graph=True)
    return {n: p - inner_lr * g for (n, p), g in zip(params.items(), grads, strict=True)}


def step_first_order(objective, params, inner_lr):
    grads = torch.autograd.grad(objective(params), list(params.values()))
    return {n: p + inner_lr * g for (n, p), g in zip(params.items(), grads, strict=True)}


def step_detached(objective, params, inner_lr):
    grads = torch.autograd.grad(objective(params), list(params.values()))
    return {n: (p + inner_lr * g).detach() for (n, p), g in zip(params.items(), grads, strict=True)}


def step_in_place(objective, params, inner_lr):
    grads = torch.autograd.grad(objective(params), list(params.values()))
    with torch.no_grad():
        for p, g in zip(params.values(), grads, strict=True):
            p.add_(inner_lr * g)
    return dict(params)


def step_wrong_lr(objective, params, inner_lr):
    return step_ok(objective, params, 2 * inner_lr)


def step_list(objective, params, inner_lr):
    return list(step_ok(objective, params, inner_lr).values())


def step_hard_coded_lr(objective, params, inner_lr):
    return step_ok(objective, params, 0.1)


def test_policy_inner_step_accepts_the_reference():
    result = lesson07.policy_inner_step(step_ok)
    assert result.passed, result.message


@pytest.mark.parametrize(
    "answer, words",
    [
        (step_stub, "not implemented yet"),
        (step_descent, "descent step"),
        (step_first_order, "first order"),
        (step_detached, "does not depend on θ"),
        (step_in_place, "in place"),
        (step_wrong_lr, "ascent step of size 0.2, but inner_lr = 0.1"),
        (step_list, "return a dict"),
        (step_hard_coded_lr, "ascent step of size 0.1, but inner_lr = 0.03"),
    ],
)
def test_policy_inner_step_rejects_wrong_answers(answer, words):
    result = lesson07.policy_inner_step(answer)
    assert not result.passed and result.hint, str(result)
    assert words in result.message, result.message
