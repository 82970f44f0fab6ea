"""Checks of lesson 08 (learned objectives, MetaGenRL).

- :func:`td3_target` (implement): the critic's clipped double-Q regression target.
- :func:`soft_update` (implement): Polyak averaging of target-network parameters.
- :func:`normalized_step` (implement): the differentiable, scale-free actor step that the
  learned objective is meta-trained through.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mlcourse.course.checks._core import Fail, check, expect_tensor, probe, step_scale

LESSON = "08_learned_objectives"

__all__ = ["normalized_step", "soft_update", "td3_target"]


# ---------------------------------------------------------------------------------------------
# td3_target


TD3_CASES = [  # (seed, dones, gamma)
    (0, [0, 0, 1, 0, 1, 0, 0, 0], 0.9),
    (1, [1, 0, 0, 0, 0, 1], 0.97),
]


@check(LESSON, points=1, forbid=("mlcourse.algorithms.metagenrl.critic_loss",))
def td3_target(fn: Callable) -> str:
    """Checks ``fn(rewards, dones, q1_next, q2_next, gamma) -> (B,)``:
    r + γ (1 − d) min(Q₁', Q₂'), a constant (no gradient into the target critics), for two
    batches and two discounts."""
    for seed, done_list, gamma in TD3_CASES:
        _td3_case(fn, seed, torch.tensor(done_list, dtype=torch.float64), gamma)
    return "r + γ(1 − d)·min(Q₁', Q₂'), cut at episode ends, held constant (γ = 0.9 and 0.97)"


def _td3_case(fn: Callable, seed: int, dones: Tensor, gamma: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    size = dones.shape[0]
    rewards = torch.randn(size, generator=gen, dtype=torch.float64)
    q1 = torch.randn(size, generator=gen, dtype=torch.float64, requires_grad=True)
    q2 = torch.randn(size, generator=gen, dtype=torch.float64, requires_grad=True)
    got = fn(rewards, dones, q1, q2, gamma)
    low = torch.minimum(q1, q2).detach()
    want = rewards + gamma * (1 - dones) * low
    hint = "rewards + gamma * (1 - dones) * torch.minimum(q1_next, q2_next)"
    if not isinstance(got, Tensor):
        raise Fail(f"expected a tensor, got {type(got).__name__}", hint)
    wrong = {
        "it takes the larger of the two critics: the max overestimates, TD3 takes the min": (
            rewards + gamma * (1 - dones) * torch.maximum(q1, q2).detach()
        ),
        "it averages the two critics: TD3 takes their minimum against overestimation": (
            rewards + gamma * (1 - dones) * ((q1 + q2) / 2).detach()
        ),
        "it bootstraps past the end of an episode: multiply the next value by (1 − done)": (
            rewards + gamma * low
        ),
        "it uses the first critic only: take the minimum of both": (
            rewards + gamma * (1 - dones) * q1.detach()
        ),
        "the discount is missing": rewards + (1 - dones) * low,
        "(1 − done) also cancels the last reward: it multiplies only the bootstrapped value, "
        "the reward of the final step still counts": (1 - dones) * (rewards + gamma * low),
    }
    if got.shape == want.shape and not torch.allclose(got.detach(), want, atol=1e-10):
        for what, value in wrong.items():
            if torch.allclose(got.detach(), value, atol=1e-10):
                raise Fail(what, hint)
        used = step_scale(got, rewards, (1 - dones) * low, atol=1e-10)
        if used is not None:
            raise Fail(f"the discount used is {used:.4g}, not the gamma = {gamma:g} given", hint)
    try:
        expect_tensor(got.detach(), want, "the target", atol=1e-10)
    except Fail as fail:
        fail.hint = fail.hint or hint
        raise
    if got.requires_grad:
        raise Fail(
            "the target carries a gradient into the target critics: it is a constant to regress on",
            "compute it under torch.no_grad() or .detach() it",
        )


# ---------------------------------------------------------------------------------------------
# soft_update


SOFT_CASES = [(1, 0.1), (2, 0.3)]  # (seed, tau)


@check(LESSON, points=1, forbid=("mlcourse.algorithms.metagenrl.soft_update",))
def soft_update(fn: Callable) -> str:
    """Checks ``fn(target, source, tau) -> dict``: (1 − τ)·target + τ·source, parameter by
    parameter, leaving the source untouched, for two values of τ."""
    for seed, tau in SOFT_CASES:
        _soft_case(fn, seed, tau)
    return "target ← (1 − τ)·target + τ·source (τ = 0.1 and 0.3), the source untouched"


def _soft_case(fn: Callable, seed: int, tau: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    target = {
        "w": torch.randn(3, 2, generator=gen, dtype=torch.float64),
        "b": torch.randn(2, generator=gen, dtype=torch.float64),
    }
    source = {
        n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in target.items()
    }
    before_target = {n: p.clone() for n, p in target.items()}
    before_source = {n: p.clone() for n, p in source.items()}
    got = fn(target, source, tau)
    if any(not torch.equal(source[n], before_source[n]) for n in source):
        raise Fail("your update changed the source (online) network", "only the target moves")
    if got is None:
        got = target  # updated in place: accepted, and checked below
    if not isinstance(got, dict) or set(got) != set(target):
        raise Fail(
            f"return a dict with the keys {sorted(target)}",
            "{n: (1 - tau) * target[n] + tau * source[n] for n in target}",
        )
    hint = "(1 - tau) * target + tau * source"
    for n in target:
        want = (1 - tau) * before_target[n] + tau * before_source[n]
        swapped = tau * before_target[n] + (1 - tau) * before_source[n]
        if isinstance(got[n], Tensor) and got[n].shape == want.shape:
            if torch.allclose(got[n], swapped, atol=1e-12):
                raise Fail(
                    "τ and 1 − τ are swapped: the target should move only a little (τ) towards "
                    "the source",
                    hint,
                )
            if torch.allclose(got[n], before_source[n], atol=1e-12):
                raise Fail(
                    "the target is replaced by the source: that is a hard copy, not Polyak", hint
                )
        moved = step_scale(got[n], before_target[n], before_source[n] - before_target[n])
        if moved is not None and abs(moved - tau) > 1e-6 * tau:
            raise Fail(
                f"the target moves a fraction {moved:.4g} of the way to the source, not tau = "
                f"{tau:g}",
                "use the tau argument itself: " + hint,
            )
        try:
            expect_tensor(got[n], want, f"the updated target['{n}']", atol=1e-12)
        except Fail as fail:
            fail.hint = fail.hint or hint
            raise


# ---------------------------------------------------------------------------------------------
# normalized_step


def _problem(seed: int):
    gen = torch.Generator().manual_seed(seed)
    params = {
        "w": torch.randn(3, 2, generator=gen, dtype=torch.float64, requires_grad=True),
        "b": torch.randn(2, generator=gen, dtype=torch.float64, requires_grad=True),
    }
    alpha = torch.randn(2, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)

    def loss(p):  # a learned-objective stand-in: depends on the meta-parameters alpha
        out = x @ p["w"] + p["b"]
        return (alpha[0] * out**2 + alpha[1] * torch.sin(out)).mean()

    return params, alpha, loss


@check(LESSON, points=2, forbid=("mlcourse.algorithms.metagenrl.objective_meta_loss",))
def normalized_step(fn: Callable) -> str:
    """Checks ``fn(loss, params, step_size) -> dict``: θ' = θ − η·g/‖g‖ with g = ∇_θ loss(θ)
    and ‖g‖ the norm over *all* parameters together, differentiable in the loss's own
    parameters (here α) to second order, on two problems with two step sizes."""
    for seed, step_size in ((0, 0.5), (1, 0.2)):
        _normalized_case(fn, seed, step_size)
    return (
        "θ' = θ − η g/‖g‖ with one global norm (η = 0.5 and 0.2), differentiable in the "
        "objective's parameters"
    )


def _normalized_case(fn: Callable, seed: int, eta: float) -> None:
    params, alpha, loss = _problem(seed)
    before = {n: p.detach().clone() for n, p in params.items()}
    got = fn(loss, params, eta)
    if any(not torch.equal(p.detach(), before[n]) for n, p in params.items()):
        raise Fail("your step modified params in place", "return new tensors")
    if not isinstance(got, dict) or set(got) != set(params):
        raise Fail(
            f"return a dict with the keys of params {sorted(params)}",
            "{n: p - step_size * g / norm for (n, p), g in zip(params.items(), grads)}",
        )
    grads = torch.autograd.grad(loss(params), list(params.values()), create_graph=True)
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    want = {n: p - eta * g / norm for (n, p), g in zip(params.items(), grads, strict=True)}
    hint = "θ' = θ − η g / ‖g‖, ‖g‖ = sqrt(Σ over tensors of (g²).sum())"
    wrong = {
        "the gradient is not normalised: divide it by its norm over all parameters": {
            n: p - eta * g for (n, p), g in zip(params.items(), grads, strict=True)
        },
        "each tensor is normalised by its own norm: use one norm over all parameters together": {
            n: p - eta * g / g.norm() for (n, p), g in zip(params.items(), grads, strict=True)
        },
        "this is an ascent step: the actor *minimises* the learned loss": {
            n: p + eta * g / norm for (n, p), g in zip(params.items(), grads, strict=True)
        },
        "the norm is the sum of the tensors' norms, not the norm of all the gradients together "
        "(sqrt of the summed squares)": {
            n: p - eta * g / sum(h.norm() for h in grads)
            for (n, p), g in zip(params.items(), grads, strict=True)
        },
    }
    for what, values in wrong.items():
        if all(
            isinstance(got[n], Tensor)
            and got[n].shape == values[n].shape
            and torch.allclose(got[n].detach(), values[n].detach(), atol=1e-10)
            for n in params
        ):
            raise Fail(what, hint)
    direction = {n: -g / norm for n, g in zip(params, grads, strict=True)}
    size = step_scale(got, params, direction, atol=1e-10)
    if size is not None and abs(size - eta) > 1e-6 * eta:
        raise Fail(
            f"this is a normalised step of size {size:.4g}, but step_size = {eta:g}",
            "use the step_size argument itself: " + hint,
        )
    for n in params:
        try:
            expect_tensor(got[n].detach(), want[n].detach(), f"θ'['{n}']", atol=1e-8, rtol=1e-6)
        except Fail as fail:
            fail.hint = fail.hint or hint
            raise
    scalar = probe(got)
    if scalar.grad_fn is None:
        raise Fail(
            "θ' does not depend on the objective: the step was taken on detached gradients",
            "torch.autograd.grad(loss(params), params, create_graph=True)",
        )
    (g_got,) = torch.autograd.grad(scalar, [alpha], allow_unused=True)
    if g_got is None:
        raise Fail(
            "θ' carries no gradient to the objective's parameters: compute the gradient with "
            "create_graph=True, or the objective cannot be meta-trained",
            "torch.autograd.grad(loss(params), params, create_graph=True)",
        )
    (g_want,) = torch.autograd.grad(probe(want), [alpha], retain_graph=True)
    constant_norm = {
        n: p - eta * g / norm.detach() for (n, p), g in zip(params.items(), grads, strict=True)
    }
    (g_constant,) = torch.autograd.grad(probe(constant_norm), [alpha])
    if torch.allclose(g_got, g_constant, atol=1e-9) and not torch.allclose(
        g_got, g_want, atol=1e-9
    ):
        raise Fail(
            "the norm ‖g‖ is detached: θ' has the right value, but its gradient with respect to "
            "the objective misses the path through the norm",
            "keep ‖g‖ in the graph (no .detach() or .item()): it depends on α too",
        )
    try:
        expect_tensor(
            g_got,
            g_want,
            "the gradient of θ' with respect to the objective",
            atol=1e-8,
            rtol=1e-6,
        )
    except Fail as fail:
        fail.hint = fail.hint or (
            "compute g with create_graph=True and the norm from g itself, all in the graph"
        )
        raise
