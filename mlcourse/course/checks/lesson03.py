"""Checks of lesson 03 (``solutions/03_reptile.ipynb``).

- :func:`reptile_update` (implement): the batched Reptile meta-update from adapted weights.
- :func:`k2_gradients` (implement): the exact MAML, first-order MAML and Reptile gradients for
  k = 2 minibatches, the quantities whose expansion the lesson checks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import grad

from mlcourse.algorithms.maml import adapt_batch, params_of
from mlcourse.algorithms.reptile import reptile_step
from mlcourse.course.checks._core import Fail, check, expect_tensor, step_scale
from mlcourse.models import MLP
from mlcourse.tasks import Sinusoid

LESSON = "03_reptile"
INNER_LR = 0.02
INNER_STEPS = 3
KEYS = ("maml", "fomaml", "reptile")

__all__ = ["k2_gradients", "reptile_update"]


# ---------------------------------------------------------------------------------------------
# reptile_update


@check(
    LESSON,
    points=2,
    forbid=(
        "mlcourse.algorithms.reptile.reptile_step",
        "mlcourse.algorithms.reptile.reptile_step_loop",
    ),
)
def reptile_update(fn) -> str:
    """Checks ``fn(theta, adapted, outer_lr) -> new theta`` against
    :func:`mlcourse.algorithms.reptile.reptile_step` (batched), in float64 on random tasks."""
    for seed, (num_tasks, outer_lr) in enumerate([(5, 0.3), (3, 0.7)]):
        torch.manual_seed(seed)
        model = MLP(hidden_sizes=(8, 8)).double()
        tasks = Sinusoid().sample(
            num_tasks, 10, 0, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
        theta = {n: p.detach().clone() for n, p in params_of(model).items()}
        options = dict(loss_fn=F.mse_loss, inner_lr=INNER_LR, num_inner_steps=INNER_STEPS)
        with torch.no_grad():
            adapted = adapt_batch(
                model, theta, tasks.x_support, tasks.y_support, first_order=True, **options
            )
        expected = reptile_step(model, theta, tasks, outer_lr=outer_lr, **options)
        theta_before = {n: t.clone() for n, t in theta.items()}
        adapted_before = {n: t.clone() for n, t in adapted.items()}
        got = fn(theta, adapted, outer_lr)
        _check_untouched(theta, theta_before, "theta")
        _check_untouched(adapted, adapted_before, "adapted")
        if not isinstance(got, dict) or set(got) != set(theta):
            raise Fail(
                "the result should be a dict with the same names as theta "
                f"({sorted(theta)}), got {_describe(got)}",
                "return {name: new_tensor for name in theta}",
            )
        for name in theta:
            _diagnose_update(got[name], theta[name], adapted[name], outer_lr, name, len(theta))
            try:
                expect_tensor(got[name], expected[name], f"new theta['{name}']", atol=1e-12)
            except Fail as fail:
                fail.hint = fail.hint or (
                    "θ + outer_lr · (φ − θ) averaged over the tasks, the leading dimension of "
                    "adapted[name]: theta[name] + outer_lr * (adapted[name] - theta[name]).mean(0)"
                )
                raise
    return (
        "θ + ε·mean_τ(φ_τ − θ) matches mlcourse.algorithms.reptile.reptile_step for every "
        "parameter, and θ and the adapted weights are left untouched"
    )


def _describe(value) -> str:
    if isinstance(value, dict):
        return f"a dict with keys {sorted(value)}"
    return type(value).__name__


def _check_untouched(now: dict[str, Tensor], before: dict[str, Tensor], what: str) -> None:
    for name, t in now.items():
        if not torch.equal(t, before[name]):
            raise Fail(
                f"your function modified {what}['{name}'] in place",
                "build new tensors (theta[name] + ...) instead of +=, add_ or copy_: the "
                "caller may still need the old values",
            )


def _diagnose_update(got, theta: Tensor, phi: Tensor, eps: float, name: str, names: int) -> None:
    if not isinstance(got, Tensor) or (got.shape, got.dtype) != (theta.shape, theta.dtype):
        return
    step = phi - theta  # (num_tasks, *shape)
    wrong = [
        (theta + eps * step.sum(0), "sums the displacements over tasks", "average them (mean)"),
        (theta - eps * step.mean(0), "moves θ away from the adapted weights", "mind the sign"),
        (
            theta + eps * step[-1],
            "uses only the last task",
            "average φ_τ − θ over every task (the leading dimension)",
        ),
        (
            eps * step.mean(0),
            "returns the step, not the new θ",
            "add the step to θ: θ + ε·mean_τ(φ_τ − θ)",
        ),
        (phi.mean(0), "ignores outer_lr (ε = 1)", "scale the displacement by outer_lr"),
        (
            theta + eps * step.sum(0) / names,
            f"divides the summed displacements by len(adapted) = {names}, the number of "
            f"parameter tensors, not by the number of tasks ({phi.shape[0]})",
            "average over the tasks: .mean(0), or divide by adapted[name].shape[0]",
        ),
    ]
    for value, what, hint in wrong:
        if torch.allclose(got.detach(), value, atol=1e-12, rtol=1e-9):
            raise Fail(f"new theta['{name}'] {what}", hint)
    scale = step_scale(got, theta, step.mean(0), atol=1e-12)
    if scale is not None and abs(scale - eps) > 1e-6 * eps:
        raise Fail(
            f"new theta['{name}'] moves θ a fraction {scale:.4g} of the way to the mean adapted "
            f"weights, not outer_lr = {eps:g}",
            "θ + outer_lr · mean_τ(φ_τ − θ): the fraction is outer_lr itself (not 1 − outer_lr, "
            "not a hard-coded value)",
        )


# ---------------------------------------------------------------------------------------------
# k2_gradients

LossOfPhi = Callable[[Tensor], Tensor]


def k2_reference(loss_1: LossOfPhi, loss_2: LossOfPhi, phi: Tensor, inner_lr: float) -> dict:
    """The exact gradients for two minibatches (Nichol et al., 2018, section 5.1).

    With ``φ₂ = φ − α∇L₁(φ)`` and ``φ₃ = φ₂ − α∇L₂(φ₂)``:
    ``g_MAML = ∇_φ L₂(φ₂(φ))``, ``g_FOMAML = ∇L₂(φ₂)``, ``g_Reptile = (φ − φ₃) / α``.

    Args:
        loss_1, loss_2: minibatch losses, each ``(d,) -> scalar``.
        phi: ``(d,)`` the initial parameters φ₁.
        inner_lr: SGD step α.

    Returns:
        ``{"maml", "fomaml", "reptile"}``, each ``(d,)``.
    """

    def step(p: Tensor, loss: LossOfPhi) -> Tensor:
        return p - inner_lr * grad(loss)(p)

    phi_2 = step(phi, loss_1)
    return {
        "maml": grad(lambda p: loss_2(step(p, loss_1)))(phi),
        "fomaml": grad(loss_2)(phi_2),
        "reptile": (phi - step(phi_2, loss_2)) / inner_lr,
    }


def _random_losses(seed: int, d: int = 6, n: int = 8):
    """Two smooth, non-quadratic minibatch losses of a (d,) vector (their Hessians vary)."""
    gen = torch.Generator().manual_seed(seed)

    def make():
        x = torch.randn(n, d, generator=gen, dtype=torch.float64)
        y = torch.randn(n, generator=gen, dtype=torch.float64)
        return lambda p: ((torch.tanh(x @ p) - y) ** 2).mean()

    phi = torch.randn(d, generator=gen, dtype=torch.float64)
    return make(), make(), phi


@check(LESSON, points=3, forbid=("mlcourse.course.checks.lesson03.k2_reference",))
def k2_gradients(fn) -> str:
    """Checks ``fn(loss_1, loss_2, phi, inner_lr) -> {"maml", "fomaml", "reptile"}`` against
    :func:`k2_reference` in float64 on random smooth losses."""
    for seed, inner_lr in [(0, 0.1), (1, 0.37)]:
        loss_1, loss_2, phi = _random_losses(seed)
        phi_before = phi.clone()
        got = fn(loss_1, loss_2, phi, inner_lr)
        if not torch.equal(phi, phi_before):
            raise Fail(
                "your function modified phi in place",
                "compute φ₂ = phi - inner_lr * g as a new tensor",
            )
        if not isinstance(got, dict) or set(got) != set(KEYS):
            raise Fail(
                f"the result should be a dict with keys {list(KEYS)}, got {_describe(got)}",
                'return {"maml": ..., "fomaml": ..., "reptile": ...}',
            )
        expected = k2_reference(loss_1, loss_2, phi, inner_lr)
        for key in ("fomaml", "reptile", "maml"):
            value = got[key]
            if isinstance(value, Tensor) and (value.shape, value.dtype) == (phi.shape, phi.dtype):
                _diagnose_k2(key, got[key], loss_1, loss_2, phi, inner_lr)
            try:
                expect_tensor(got[key], expected[key], f'the "{key}" gradient', atol=1e-10)
            except Fail as fail:
                fail.hint = fail.hint or K2_HINTS[key]
                raise
    return (
        "the exact MAML, first-order MAML and Reptile gradients for two minibatches match the "
        "reference (φ₂ = φ − α∇L₁(φ); g_FOMAML = ∇L₂(φ₂); g_MAML = (I − α∇²L₁(φ))∇L₂(φ₂); "
        "g_Reptile = ∇L₁(φ) + ∇L₂(φ₂))"
    )


K2_HINTS = {
    "fomaml": "g_FOMAML = ∇L₂(φ₂), the second minibatch's gradient at φ₂ = φ − α∇L₁(φ)",
    "reptile": "φ₃ = φ₂ − α∇L₂(φ₂) after φ₂ = φ − α∇L₁(φ) (L₁ first, then L₂); "
    "g_Reptile = (φ − φ₃)/α",
    "maml": "g_MAML = ∇_φ L₂(φ − α∇L₁(φ)): differentiate the loss of the second minibatch "
    "through the step on the first (torch.func.grad of that whole function of φ)",
}


def _hvp(loss: LossOfPhi, phi: Tensor, v: Tensor) -> Tensor:
    """∇²L(φ)·v by reverse over reverse (forward over reverse fails on some losses)."""
    return grad(lambda p: grad(loss)(p).dot(v))(phi)


def _diagnose_k2(key, got, loss_1, loss_2, phi, alpha) -> None:
    g1 = grad(loss_1)(phi)
    phi_2 = phi - alpha * g1
    g2 = grad(loss_2)(phi_2)
    hvp_1 = _hvp(loss_1, phi, g2)  # H₁(φ) g₂
    wrong = {
        "fomaml": [
            (grad(loss_2)(phi), "is ∇L₂ at φ", "take the gradient at φ₂ = φ − α∇L₁(φ)"),
            (g1, "is ∇L₁(φ), the first minibatch's", "FOMAML uses the last minibatch: ∇L₂(φ₂)"),
            (
                grad(loss_2)(phi_2 - alpha * g2),
                "is ∇L₂ at φ₃, after both steps",
                "take it at φ₂ = φ − α∇L₁(φ), where the second step starts",
            ),
        ],
        "reptile": [
            (-(g1 + g2), "has the wrong sign", "g_Reptile = (φ − φ₃)/α points uphill"),
            (alpha * (g1 + g2), "is φ − φ₃, not divided by α", "divide the displacement by α"),
            ((g1 + g2) / 2, "averages the two gradients", "sum them: (φ − φ₃)/α = g₁ + g₂"),
            (
                g1 + grad(loss_2)(phi),
                "evaluates both gradients at φ",
                "the second gradient is taken after the first step, at φ₂",
            ),
            (
                grad(loss_2)(phi) + grad(loss_1)(phi - alpha * grad(loss_2)(phi)),
                "takes the minibatches in the wrong order (a step on L₂, then on L₁)",
                "φ₂ = φ − α∇L₁(φ) first, then φ₃ = φ₂ − α∇L₂(φ₂)",
            ),
        ],
        "maml": [
            (
                g2,
                "equals the first-order gradient ∇L₂(φ₂)",
                "differentiate through the inner step: (I − α∇²L₁(φ))∇L₂(φ₂)",
            ),
            (g2 + alpha * hvp_1, "has the wrong sign on the Hessian term", "it is I − αH₁"),
            (
                grad(loss_2)(phi) - alpha * _hvp(loss_1, phi, grad(loss_2)(phi)),
                "uses ∇L₂ at φ instead of at φ₂",
                "evaluate the query gradient at the adapted φ₂",
            ),
            (
                grad(lambda p: loss_1(p - alpha * grad(loss_2)(p)))(phi),
                "swaps the minibatches: it differentiates L₁ after a step on L₂",
                "the inner step is on L₁ (the first minibatch), the loss after it is L₂",
            ),
        ],
    }
    for value, what, hint in wrong[key]:
        if torch.allclose(got.detach(), value, atol=1e-10, rtol=1e-8):
            raise Fail(f'the "{key}" gradient {what}', hint)
