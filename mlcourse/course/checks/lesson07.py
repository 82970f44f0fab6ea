"""Checks of lesson 07 (``solutions/07_maml_rl.ipynb``).

- :func:`reinforce_loss` (implement): the REINFORCE surrogate loss.
- :func:`magic_box` (implement): DiCE's operator, checked to the second derivative.
- :func:`policy_inner_step` (implement): one differentiable policy-gradient ascent step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mlcourse.course.checks._core import Fail, check, expect_tensor, probe, step_scale
from mlcourse.rl.dice import reinforce_surrogate

LESSON = "07_maml_rl"

__all__ = ["magic_box", "policy_inner_step", "reinforce_loss"]


# ---------------------------------------------------------------------------------------------
# reinforce_loss


@check(
    LESSON,
    points=1,
    forbid=("mlcourse.rl.dice.reinforce_surrogate",),
)
def reinforce_loss(fn: Callable) -> str:
    """Checks ``fn(logp, returns) -> scalar``: ``−mean over trajectories of Σ_t log π · G_t``,
    its value and its gradient (which must not flow into the returns)."""
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    logp = torch.log_softmax(theta, 0)  # (T, N) log-probabilities depending on theta
    weights = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    returns = weights * 2.0  # returns that (wrongly) carry a gradient: must be detached
    got = fn(logp, returns)
    expected = reinforce_surrogate(logp, returns)
    if not isinstance(got, Tensor) or got.dim() != 0:
        raise Fail(
            "the loss should be a scalar tensor",
            "sum over time (dim 0), then average over trajectories",
        )
    if got.dtype != expected.dtype:
        raise Fail(
            f"the loss has dtype {got.dtype}, expected {expected.dtype}",
            "compute it from logp and returns as they are: no .float() or torch.tensor(...)",
        )
    value, want = got.item(), expected.item()
    wrong = {
        "the sign is flipped: minimising this loss would lower the return": -want,
        "it averages over time steps; sum over the steps of each trajectory (dim 0)": (
            -(logp * returns).mean().item()
        ),
        "it sums over trajectories; average them": -(logp * returns).sum().item(),
        "it weights every step by the whole trajectory's return G_0, not by G_t": (
            -(logp.sum(0) * returns[0]).mean().item()
        ),
        "it sums over dim 1 and averages over dim 0: time runs along dim 0 (T = 6 steps), the "
        "trajectories along dim 1 (N = 4)": -(logp * returns).sum(1).mean().item(),
    }
    if abs(value - want) > 1e-9:
        for what, v in wrong.items():
            if abs(value - v) < 1e-9:
                raise Fail(what, "loss = −(logp * returns).sum(0).mean()")
        raise Fail(
            f"the loss is {value:.6f}, expected {want:.6f}",
            "loss = −(logp * returns.detach()).sum(0).mean(): the returns as they are (no "
            "baseline, no normalisation), summed over time, averaged over trajectories",
        )
    if got.grad_fn is None:
        raise Fail(
            "the loss has no gradient: it must keep logp's graph",
            "do not detach logp (only the returns are constants)",
        )
    g_theta, g_weights = torch.autograd.grad(
        got, [theta, weights], allow_unused=True, retain_graph=True
    )
    ref_theta = torch.autograd.grad(expected, theta)[0]
    if g_weights is not None and g_weights.abs().max() > 0:
        raise Fail(
            "the gradient flows into the returns: they are constants in the surrogate",
            "use returns.detach()",
        )
    expect_tensor(g_theta, ref_theta, "the gradient of your loss", atol=1e-10, rtol=1e-8)
    return "−mean_n Σ_t log π(a_t|s_t) G_t: value and gradient match, returns treated as constants"


# ---------------------------------------------------------------------------------------------
# magic_box


@check(LESSON, points=2, forbid=("mlcourse.rl.dice.magic_box",))
def magic_box(fn: Callable) -> str:
    """Checks ``fn(x) -> ☐(x)``: value 1, first derivative ☐(x)·x', second derivative
    ☐(x)(x'² + x''), on x = 2·t² at a few points, then elementwise on a (2, 3) tensor."""
    for t0 in (0.3, -1.2):
        t = torch.tensor(t0, dtype=torch.float64, requires_grad=True)
        x = 2 * t**2  # x' = 4t, x'' = 4
        y = fn(x)
        if not isinstance(y, Tensor):
            raise Fail(
                f"expected a tensor, got {type(y).__name__}",
                "return torch.exp(x - x.detach()), a tensor shaped like x",
            )
        if abs(y.item() - 1.0) > 1e-12:
            hint = "☐(x) = exp(x − x.detach()) evaluates to exactly 1"
            if abs(y.item() - torch.exp(x).item()) < 1e-9:
                raise Fail("☐(x) evaluates to exp(x), not 1: subtract the detached x", hint)
            raise Fail(f"☐(x) should evaluate to 1, got {y.item():.6f}", hint)
        if y.grad_fn is None:
            raise Fail(
                "☐(x) has no gradient: a constant 1 loses the score function",
                "exp(x − x.detach()) is 1 in value but carries x's gradient",
            )
        (g,) = torch.autograd.grad(y, t, create_graph=True)
        if abs(g.item() - 4 * t0) > 1e-9:
            raise Fail(
                f"d☐/dt should be ☐·x' = {4 * t0:.3f}, got {g.item():.6f}",
                "☐(x) = exp(x − x.detach()): its derivative is ☐(x)·x', with ☐(x) = 1",
            )
        if g.grad_fn is None:
            raise Fail(
                "the first derivative is right but has no second derivative: 1 + x − x.detach() "
                "gives the score function once, not its derivative",
                "use exp(x − x.detach()): its derivative is itself times x'",
            )
        (h,) = torch.autograd.grad(g, t)
        want = (4 * t0) ** 2 + 4
        if abs(h.item() - want) > 1e-9:
            if abs(h.item() - 4) < 1e-9:
                raise Fail(
                    "the second derivative is x'' only: 1 + x − x.detach() has the right first "
                    "derivative but drops the (x')² term",
                    "use exp(x − x.detach()): d²☐/dt² = ☐ (x'² + x'')",
                )
            raise Fail(
                f"d²☐/dt² should be ☐ (x'² + x'') = {want:.3f}, got {h.item():.6f}",
                "☐(x) = exp(x − x.detach()): one detach, inside the exponential",
            )
    _magic_box_elementwise(fn)
    return (
        "☐(x) = 1 with first and second derivatives ☐x' and ☐(x'² + x''), as DiCE needs, "
        "elementwise on a (2, 3) tensor too"
    )


def _magic_box_elementwise(fn: Callable) -> None:
    """On a (2, 3) tensor: ☐ applies to every entry on its own, keeping x's shape."""
    t = torch.tensor([[0.3, -1.2, 0.8], [-0.5, 1.1, 0.05]], dtype=torch.float64)
    t.requires_grad_()
    x = 2 * t**2
    y = fn(x)
    if not isinstance(y, Tensor) or y.shape != x.shape:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise Fail(
            f"☐(x) of a {tuple(x.shape)} tensor has shape {shape}: it must be shaped like x",
            "apply the box to every entry: exp(x − x.detach()), with no sum, mean or product",
        )
    if not torch.allclose(y.detach(), torch.ones_like(x), atol=1e-12):
        raise Fail(
            "☐(x) of a (2, 3) tensor is not 1 in every entry",
            "subtract each entry's own detached value: exp(x − x.detach())",
        )
    if y.grad_fn is None:
        raise Fail(
            "☐(x) of a (2, 3) tensor has no gradient",
            "exp(x − x.detach()) is 1 in value but carries x's gradient",
        )
    (g,) = torch.autograd.grad(y.sum(), t, create_graph=True)
    if not torch.allclose(g, 4 * t, atol=1e-9):
        raise Fail(
            "on a (2, 3) tensor, each entry of ☐(x) should depend on its own entry of x only "
            "(d☐ᵢ/dtᵢ = xᵢ')",
            "exp(x − x.detach()) entry by entry: no sum or mean of x inside the box",
        )
    (h,) = torch.autograd.grad(g.sum(), t)
    if not torch.allclose(h, (4 * t) ** 2 + 4, atol=1e-9):
        raise Fail(
            "on a (2, 3) tensor, the second derivatives of ☐(x) are not ☐ (x'² + x'')",
            "exp(x − x.detach()) entry by entry",
        )


# ---------------------------------------------------------------------------------------------
# policy_inner_step


def _objective_problem(seed: int):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    a = a @ a.T / 3 + torch.eye(3, dtype=torch.float64)
    b = torch.randn(3, generator=gen, dtype=torch.float64)
    w = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    s = torch.randn(2, generator=gen, dtype=torch.float64, requires_grad=True)

    def objective(params):  # concave in w, a smooth function of s
        return -0.5 * params["w"] @ a @ params["w"] + b @ params["w"] + torch.sin(params["s"]).sum()

    return objective, {"w": w, "s": s}


@check(LESSON, points=2, forbid=("mlcourse.algorithms.maml_rl.adapt",))
def policy_inner_step(fn: Callable) -> str:
    """Checks ``fn(objective, params, inner_lr) -> dict``: one gradient *ascent* step
    θ' = θ + α ∇J(θ) that stays differentiable in θ (second order), on two problems with two
    step sizes."""
    for seed, inner_lr in ((0, 0.1), (1, 0.03)):
        _policy_step_case(fn, seed, inner_lr)
    return (
        "θ' = θ + α∇J(θ) matches (α = 0.1 and 0.03), leaves θ untouched, and carries the "
        "second-order meta-gradient"
    )


def _policy_step_case(fn: Callable, seed: int, lr: float) -> None:
    objective, params = _objective_problem(seed)
    before = {n: p.detach().clone() for n, p in params.items()}
    got = fn(objective, params, lr)
    if any(not torch.equal(p.detach(), before[n]) for n, p in params.items()):
        raise Fail("your step modified params in place", "return new tensors: {n: p + ...}")
    if not isinstance(got, dict) or set(got) != set(params):
        raise Fail(
            f"return a dict with the keys of params {sorted(params)}",
            "{name: p + inner_lr * g for (name, p), g in zip(params.items(), grads)}",
        )
    grads = torch.autograd.grad(objective(params), list(params.values()), create_graph=True)
    expected = {n: p + lr * g for (n, p), g in zip(params.items(), grads, strict=True)}
    descent = {n: p - lr * g for (n, p), g in zip(params.items(), grads, strict=True)}
    if all(torch.allclose(got[n].detach(), descent[n].detach()) for n in params):
        raise Fail(
            "this is a descent step: the inner loop of RL *maximises* the expected return",
            "θ' = θ + inner_lr · ∇J(θ)",
        )
    scale = step_scale(got, params, dict(zip(params, grads, strict=True)), atol=1e-10)
    if scale is not None and abs(scale - lr) > 1e-6 * abs(lr):
        raise Fail(
            f"this is an ascent step of size {scale:.4g}, but inner_lr = {lr:g}",
            "use the inner_lr argument itself: θ' = θ + inner_lr · ∇J(θ)",
        )
    for n in params:
        try:
            expect_tensor(got[n].detach(), expected[n].detach(), f"θ'['{n}']", atol=1e-10)
        except Fail as fail:
            fail.hint = fail.hint or (
                "θ' = θ + inner_lr · ∇J(θ), with ∇J from torch.autograd.grad(objective(params), "
                "list(params.values()), create_graph=True)"
            )
            raise
    meta = probe(got)
    if meta.grad_fn is None:
        raise Fail(
            "θ' does not depend on θ: the step was taken on detached tensors",
            "keep the graph: torch.autograd.grad(..., create_graph=True)",
        )
    want = probe(expected)
    g_got = torch.autograd.grad(meta, list(params.values()), allow_unused=True)
    g_want = torch.autograd.grad(want, list(params.values()))
    first = {n: p + lr * g.detach() for (n, p), g in zip(params.items(), grads, strict=True)}
    f = probe(first)
    g_first = torch.autograd.grad(f, list(params.values()))
    for name, a, b, c in zip(params, g_got, g_want, g_first, strict=True):
        if a is None:
            raise Fail(
                f"the meta-gradient does not reach params['{name}']",
                "step every tensor of params, from params itself (not a detached copy)",
            )
        if not torch.allclose(a, b, atol=1e-9) and torch.allclose(a, c, atol=1e-9):
            raise Fail(
                "the step is first order: its gradient was computed without create_graph=True, "
                "so the meta-gradient misses the second-order terms",
                "torch.autograd.grad(J, params, create_graph=True)",
            )
        try:
            expect_tensor(a, b, f"the meta-gradient for params['{name}']", atol=1e-9)
        except Fail as fail:
            fail.hint = fail.hint or (
                "θ' = p + inner_lr * g with p the tensor in params (not detached) and g from "
                "create_graph=True"
            )
            raise
