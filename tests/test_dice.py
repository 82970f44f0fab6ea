"""DiCE on a problem whose expected return is known in closed form: a two-step, two-armed
bandit with a softmax policy. The estimator's first and second derivatives must match the exact
ones within sampling error; the plain REINFORCE surrogate's second derivative must not."""

import pytest
import torch
from torch.autograd.functional import hessian

from mlcourse.rl.dice import dice_objective, lvc_objective, magic_box, reinforce_surrogate

THETA = torch.tensor([0.3, -0.4], dtype=torch.float64)
R1 = torch.tensor([1.0, 0.2], dtype=torch.float64)  # reward of the first pull, by arm
R2 = torch.tensor([[0.0, 2.0], [1.0, -1.0]], dtype=torch.float64)  # second pull, by both arms


def exact_return(theta):
    p = torch.softmax(theta, 0)
    return p @ R1 + p @ R2 @ p


def estimates(theta, n, generator, surrogate):
    """Gradient and Hessian of a surrogate on n sampled two-step trajectories."""
    theta = theta.clone().requires_grad_()
    p = torch.softmax(theta, 0)
    a = torch.multinomial(p.detach(), 2 * n, replacement=True, generator=generator).view(2, n)
    logp = torch.log_softmax(theta, 0)[a]  # (2, n)
    rewards = torch.stack([R1[a[0]], R2[a[0], a[1]]])
    value = surrogate(logp, rewards)
    (grad,) = torch.autograd.grad(value, theta, create_graph=True)
    rows = [torch.autograd.grad(grad[i], theta, retain_graph=True)[0] for i in range(2)]
    return grad.detach(), torch.stack(rows).detach()


def dice(logp, rewards):
    return dice_objective(logp, rewards)


def naive(logp, rewards):
    returns_to_go = rewards.flip(0).cumsum(0).flip(0)
    return -reinforce_surrogate(logp, returns_to_go)


def batches(surrogate, k=40, n=5000):
    gen = torch.Generator().manual_seed(0)
    grads, hessians = zip(*(estimates(THETA, n, gen, surrogate) for _ in range(k)), strict=True)
    grads, hessians = torch.stack(grads), torch.stack(hessians)
    return (
        grads.mean(0),
        grads.std(0) / k**0.5,
        hessians.mean(0),
        hessians.std(0) / k**0.5,
    )


def test_magic_box_is_one_with_the_derivatives_of_exp():
    x = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    y = magic_box(2 * x)
    (g,) = torch.autograd.grad(y, x, create_graph=True)
    (h,) = torch.autograd.grad(g, x)
    assert y.item() == 1.0 and g.item() == pytest.approx(2.0) and h.item() == pytest.approx(4.0)


def test_dice_value_is_the_sampled_return():
    logp = torch.log(torch.tensor([[0.5, 0.2], [0.4, 0.9]]))
    rewards = torch.tensor([[1.0, 0.0], [2.0, 3.0]])
    assert dice_objective(logp, rewards, gamma=0.5).item() == pytest.approx((2.0 + 1.5) / 2)


def test_a_baseline_changes_neither_the_value_nor_the_dtype():
    """``1 − ☐`` evaluates to 0: with a baseline, DiCE still evaluates to the sampled
    discounted return, exactly, in the rewards' dtype."""
    logp = torch.log(torch.tensor([[0.5, 0.2], [0.4, 0.9], [0.3, 0.6]], dtype=torch.float64))
    rewards = torch.tensor([[1.0, 0.0], [2.0, 3.0], [-1.0, 0.5]], dtype=torch.float64)
    baseline = torch.tensor([[0.7, -0.3], [1.1, 0.4], [2.0, -5.0]], dtype=torch.float64)
    sampled = (1.0 + 0.9 * 2.0 - 0.81) / 2 + (0.9 * 3.0 + 0.81 * 0.5) / 2
    for b in (None, baseline):
        value = dice_objective(logp.requires_grad_(), rewards, gamma=0.9, baseline=b)
        assert value.dtype == torch.float64
        assert value.item() == pytest.approx(sampled, rel=1e-14, abs=0)


def test_dice_gradient_is_the_discounted_reward_to_go_minus_the_discounted_baseline():
    """∂/∂ log π(a_t) of the objective is (Σ_{t'≥t} γ^t' r_t' − γ^t b_t) / N, per trajectory."""
    gen = torch.Generator().manual_seed(0)
    logp = -torch.rand(4, 3, generator=gen, dtype=torch.float64).requires_grad_()
    rewards = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    baseline = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    gamma = 0.8
    discount = gamma ** torch.arange(4, dtype=torch.float64)[:, None]
    to_go = (rewards * discount).flip(0).cumsum(0).flip(0)
    (g,) = torch.autograd.grad(dice_objective(logp, rewards, gamma=gamma, baseline=baseline), logp)
    torch.testing.assert_close(g, (to_go - discount * baseline) / 3, rtol=1e-12, atol=1e-14)


def test_the_surrogates_send_no_gradient_into_returns_advantages_or_baselines():
    """Returns, advantages and baselines from a critic are constants of every surrogate: its
    derivatives are those of the same surrogate with the critic's outputs detached."""
    critic = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    logp = torch.log(torch.tensor([[0.5, 0.2], [0.4, 0.9]], dtype=torch.float64))
    logp.requires_grad_()
    values = critic * torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    rewards = torch.tensor([[1.0, 0.0], [2.0, 3.0]], dtype=torch.float64)
    surrogates = [
        lambda v: reinforce_surrogate(logp, v),
        lambda v: lvc_objective(logp, v),
        lambda v: dice_objective(logp, rewards, gamma=0.9, baseline=v),
    ]
    for surrogate in surrogates:
        g_logp, g_critic = torch.autograd.grad(surrogate(values), [logp, critic], allow_unused=True)
        assert g_critic is None
        assert torch.equal(g_logp, torch.autograd.grad(surrogate(values.detach()), logp)[0])


def test_dice_derivatives_match_the_exact_ones_within_sampling_error():
    exact_grad = torch.autograd.functional.jacobian(exact_return, THETA)
    exact_hess = hessian(exact_return, THETA)
    grad, grad_se, hess, hess_se = batches(dice)
    assert ((grad - exact_grad).abs() <= 4 * grad_se + 1e-9).all()
    assert ((hess - exact_hess).abs() <= 4 * hess_se + 1e-9).all()


def test_the_naive_surrogate_gets_the_gradient_but_not_the_hessian():
    exact_grad = torch.autograd.functional.jacobian(exact_return, THETA)
    exact_hess = hessian(exact_return, THETA)
    grad, grad_se, hess, hess_se = batches(naive)
    assert ((grad - exact_grad).abs() <= 4 * grad_se + 1e-9).all()
    assert ((hess - exact_hess).abs() > 8 * hess_se).any()


def test_a_baseline_keeps_the_expectations_and_can_remove_variance():
    """Adding 5 to every reward changes no derivative of J but inflates the estimator's
    variance; a baseline equal to the added return-to-go (10, then 5) takes it out again."""

    def shifted(logp, rewards):
        return dice_objective(logp, rewards + 5.0)

    offset_to_go = torch.tensor([10.0, 5.0], dtype=torch.float64)

    def shifted_with_baseline(logp, rewards):
        b = offset_to_go[:, None].expand_as(rewards)
        return dice_objective(logp, rewards + 5.0, baseline=b)

    exact_grad = torch.autograd.functional.jacobian(exact_return, THETA)
    exact_hess = hessian(exact_return, THETA)
    _, se_shifted, _, _ = batches(shifted)
    grad, grad_se, hess, hess_se = batches(shifted_with_baseline)
    assert ((grad - exact_grad).abs() <= 4 * grad_se + 1e-9).all()
    assert ((hess - exact_hess).abs() <= 4 * hess_se + 1e-9).all()
    _, se_plain, _, _ = batches(dice)
    assert (grad_se < se_shifted / 3).all()
    assert torch.allclose(grad_se, se_plain, rtol=1e-6)


def test_dice_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(T, N\)"):
        dice_objective(torch.zeros(3, 2), torch.zeros(2, 3))


def test_lvc_has_the_right_gradient_but_drops_the_cross_step_curvature():
    def lvc(logp, rewards):
        returns_to_go = rewards.flip(0).cumsum(0).flip(0)
        return lvc_objective(logp, returns_to_go)

    exact_grad = torch.autograd.functional.jacobian(exact_return, THETA)
    exact_hess = hessian(exact_return, THETA)
    grad, grad_se, hess, hess_se = batches(lvc)
    assert ((grad - exact_grad).abs() <= 4 * grad_se + 1e-9).all()
    assert ((hess - exact_hess).abs() > 8 * hess_se).any()  # biased: no cross-step terms
    _, _, _, dice_hess_se = batches(dice)
    assert (hess_se < dice_hess_se).all()  # ... and less noisy
