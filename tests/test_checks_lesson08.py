"""Lesson 08's checks accept the reference answers and reject every known-wrong one with a
message naming the mistake."""

from __future__ import annotations

import pytest
import torch

from mlcourse.course.checks import lesson08


def stub(*args):
    raise NotImplementedError()


# ---------------------------------------------------------------------------------------------
# td3_target


def target_ok(rewards, dones, q1, q2, gamma):
    with torch.no_grad():
        return rewards + gamma * (1 - dones) * torch.minimum(q1, q2)


def target_max(rewards, dones, q1, q2, gamma):
    return (rewards + gamma * (1 - dones) * torch.maximum(q1, q2)).detach()


def target_mean(rewards, dones, q1, q2, gamma):
    return (rewards + gamma * (1 - dones) * (q1 + q2) / 2).detach()


def target_no_done(rewards, dones, q1, q2, gamma):
    return (rewards + gamma * torch.minimum(q1, q2)).detach()


def target_q1(rewards, dones, q1, q2, gamma):
    return (rewards + gamma * (1 - dones) * q1).detach()


def target_no_gamma(rewards, dones, q1, q2, gamma):
    return (rewards + (1 - dones) * torch.minimum(q1, q2)).detach()


def target_with_grad(rewards, dones, q1, q2, gamma):
    return rewards + gamma * (1 - dones) * torch.minimum(q1, q2)


def target_hard_coded_gamma(rewards, dones, q1, q2, gamma):
    return target_ok(rewards, dones, q1, q2, 0.9)


def target_done_cancels_reward(rewards, dones, q1, q2, gamma):
    with torch.no_grad():
        return (1 - dones) * (rewards + gamma * torch.minimum(q1, q2))


def test_td3_target_accepts_the_reference():
    result = lesson08.td3_target(target_ok)
    assert result.passed, result.message


@pytest.mark.parametrize(
    "answer, words",
    [
        (stub, "not implemented yet"),
        (target_max, "larger of the two"),
        (target_mean, "averages"),
        (target_no_done, "end of an episode"),
        (target_q1, "first critic only"),
        (target_no_gamma, "discount"),
        (target_with_grad, "carries a gradient"),
        (target_hard_coded_gamma, "discount used is 0.9, not the gamma = 0.97"),
        (target_done_cancels_reward, "cancels the last reward"),
    ],
)
def test_td3_target_rejects_wrong_answers(answer, words):
    result = lesson08.td3_target(answer)
    assert not result.passed and result.hint, str(result)
    assert words in result.message, result.message


# ---------------------------------------------------------------------------------------------
# soft_update


def soft_ok(target, source, tau):
    return {n: (1 - tau) * target[n] + tau * source[n] for n in target}


def soft_in_place(target, source, tau):
    for n in target:
        target[n].lerp_(source[n], tau)


def soft_swapped(target, source, tau):
    return {n: tau * target[n] + (1 - tau) * source[n] for n in target}


def soft_copy(target, source, tau):
    return {n: source[n].clone() for n in target}


def soft_moves_source(target, source, tau):
    for n in source:
        source[n].lerp_(target[n], tau)
    return {n: (1 - tau) * target[n] + tau * source[n] for n in target}


def soft_hard_coded_tau(target, source, tau):
    return soft_ok(target, source, 0.1)


def test_soft_update_accepts_the_reference_and_an_in_place_update():
    for answer in (soft_ok, soft_in_place):
        result = lesson08.soft_update(answer)
        assert result.passed, result.message


@pytest.mark.parametrize(
    "answer, words",
    [
        (stub, "not implemented yet"),
        (soft_swapped, "swapped"),
        (soft_copy, "hard copy"),
        (soft_moves_source, "changed the source"),
        (soft_hard_coded_tau, "fraction 0.1 of the way to the source, not tau = 0.3"),
    ],
)
def test_soft_update_rejects_wrong_answers(answer, words):
    result = lesson08.soft_update(answer)
    assert not result.passed and result.hint, str(result)
    assert words in result.message, result.message


# ---------------------------------------------------------------------------------------------
# normalized_step


def _grads(loss, params, create_graph=True):
    return torch.autograd.grad(loss(params), list(params.values()), create_graph=create_graph)


def step_ok(loss, params, step_size):
    grads = _grads(loss, params)
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    return {n: p - step_size * g / norm for (n, p), g in zip(params.items(), grads, strict=True)}


def step_unnormalised(loss, params, step_size):
    grads = _grads(loss, params)
    return {n: p - step_size * g for (n, p), g in zip(params.items(), grads, strict=True)}


def step_per_tensor(loss, params, step_size):
    grads = _grads(loss, params)
    return {
        n: p - step_size * g / g.norm() for (n, p), g in zip(params.items(), grads, strict=True)
    }


def step_ascent(loss, params, step_size):
    grads = _grads(loss, params)
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    return {n: p + step_size * g / norm for (n, p), g in zip(params.items(), grads, strict=True)}


def step_first_order(loss, params, step_size):
    grads = _grads(loss, params, create_graph=False)
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    return {n: p - step_size * g / norm for (n, p), g in zip(params.items(), grads, strict=True)}


def step_detached(loss, params, step_size):
    out = step_ok(loss, params, step_size)
    return {n: v.detach() for n, v in out.items()}


def step_in_place(loss, params, step_size):
    grads = _grads(loss, params, create_graph=False)
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    with torch.no_grad():
        for (_, p), g in zip(params.items(), grads, strict=True):
            p -= step_size * g / norm
    return params


def step_sum_of_norms(loss, params, step_size):
    grads = _grads(loss, params)
    norm = sum(g.norm() for g in grads)
    return {n: p - step_size * g / norm for (n, p), g in zip(params.items(), grads, strict=True)}


def step_detached_norm(loss, params, step_size):
    grads = _grads(loss, params)
    norm = torch.sqrt(sum((g**2).sum() for g in grads)).detach()
    return {n: p - step_size * g / norm for (n, p), g in zip(params.items(), grads, strict=True)}


def step_hard_coded_size(loss, params, step_size):
    return step_ok(loss, params, 0.5)


def step_with_epsilon(loss, params, step_size):
    """Also right: a tiny epsilon in the norm, as optimisers write it."""
    grads = _grads(loss, params)
    norm = torch.sqrt(sum((g**2).sum() for g in grads)) + 1e-8
    return {n: p - step_size * g / norm for (n, p), g in zip(params.items(), grads, strict=True)}


@pytest.mark.parametrize("answer", [step_ok, step_with_epsilon])
def test_normalized_step_accepts_the_reference(answer):
    result = lesson08.normalized_step(answer)
    assert result.passed, result.message


@pytest.mark.parametrize(
    "answer, words",
    [
        (stub, "not implemented yet"),
        (step_unnormalised, "not normalised"),
        (step_per_tensor, "its own norm"),
        (step_ascent, "ascent"),
        (step_first_order, "objective's parameters"),
        (step_detached, "does not depend"),
        (step_in_place, "in place"),
        (step_sum_of_norms, "sum of the tensors' norms"),
        (step_detached_norm, "norm ‖g‖ is detached"),
        (step_hard_coded_size, "step of size 0.5, but step_size = 0.2"),
    ],
)
def test_normalized_step_rejects_wrong_answers(answer, words):
    result = lesson08.normalized_step(answer)
    assert not result.passed and result.hint, str(result)
    assert words in result.message, result.message
