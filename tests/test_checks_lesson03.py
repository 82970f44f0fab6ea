"""Lesson 03's checks accept the reference answers and reject every known-wrong one."""

import pytest
import torch
from torch.func import grad, jvp

from mlcourse.course.checks import lesson03

# ---------------------------------------------------------------------------------------------
# reptile_update


def update_reference(theta, adapted, outer_lr):
    return {n: t + outer_lr * (adapted[n] - t).mean(0) for n, t in theta.items()}


def update_interpolate(theta, adapted, outer_lr):
    """Also right: (1 − ε)θ + ε·mean φ."""
    return {n: (1 - outer_lr) * t + outer_lr * adapted[n].mean(0) for n, t in theta.items()}


def update_stub(theta, adapted, outer_lr):
    raise NotImplementedError()


def update_sum(theta, adapted, outer_lr):
    return {n: t + outer_lr * (adapted[n] - t).sum(0) for n, t in theta.items()}


def update_wrong_sign(theta, adapted, outer_lr):
    return {n: t - outer_lr * (adapted[n] - t).mean(0) for n, t in theta.items()}


def update_wrong_axis(theta, adapted, outer_lr):
    return {n: t + outer_lr * (adapted[n] - t).mean(-1) for n, t in theta.items()}


def update_last_task(theta, adapted, outer_lr):
    return {n: t + outer_lr * (adapted[n][-1] - t) for n, t in theta.items()}


def update_step_only(theta, adapted, outer_lr):
    return {n: outer_lr * (adapted[n] - t).mean(0) for n, t in theta.items()}


def update_no_outer_lr(theta, adapted, outer_lr):
    return {n: adapted[n].mean(0) for n in theta}


def update_in_place(theta, adapted, outer_lr):
    for n, t in theta.items():
        t += outer_lr * (adapted[n] - t).mean(0)
    return theta


def update_float32(theta, adapted, outer_lr):
    return {n: v.float() for n, v in update_reference(theta, adapted, outer_lr).items()}


def update_missing_key(theta, adapted, outer_lr):
    new = update_reference(theta, adapted, outer_lr)
    new.pop(sorted(new)[0])
    return new


def update_list(theta, adapted, outer_lr):
    return list(update_reference(theta, adapted, outer_lr).values())


def update_serial(theta, adapted, outer_lr):
    """Applies the displacements one task after another (not what the batched step does)."""
    new = dict(theta)
    for i in range(next(iter(adapted.values())).shape[0]):
        new = {n: t + outer_lr * (adapted[n][i] - t) for n, t in new.items()}
    return new


def update_divides_by_len(theta, adapted, outer_lr):
    """`len(adapted)` counts the parameter names, not the tasks."""
    return {n: t + outer_lr * (adapted[n] - t).sum(0) / len(adapted) for n, t in theta.items()}


def update_fractions_swapped(theta, adapted, outer_lr):
    return {n: outer_lr * t + (1 - outer_lr) * adapted[n].mean(0) for n, t in theta.items()}


def update_hard_coded_lr(theta, adapted, outer_lr):
    return {n: t + 0.1 * (adapted[n] - t).mean(0) for n, t in theta.items()}


@pytest.mark.parametrize("answer", [update_reference, update_interpolate])
def test_reptile_update_accepts_right_answers(answer):
    result = lesson03.reptile_update(answer)
    assert result.passed, result.message


WRONG_UPDATES = {
    update_stub: "not implemented yet",
    update_sum: "sums the displacements",
    update_wrong_sign: "sign",
    update_wrong_axis: "size of tensor",  # the broadcast fails: reported, not a crash
    update_last_task: "last task",
    update_step_only: "returns the step",
    update_no_outer_lr: "ignores outer_lr",
    update_in_place: "in place",
    update_float32: "dtype",
    update_missing_key: "same names",
    update_list: "should be a dict",
    update_serial: "differs from the reference",
    update_divides_by_len: "number of parameter tensors",
    update_fractions_swapped: "fraction 0.7",
    update_hard_coded_lr: "fraction 0.1",
}


@pytest.mark.parametrize("answer", list(WRONG_UPDATES), ids=lambda f: f.__name__)
def test_reptile_update_rejects_known_wrong_answers(answer):
    result = lesson03.reptile_update(answer)
    assert not result.passed and result.hint, str(result)
    assert WRONG_UPDATES[answer] in result.message + (result.hint or ""), str(result)


# ---------------------------------------------------------------------------------------------
# k2_gradients


def k2_autograd(loss_1, loss_2, phi, inner_lr):
    """Right, with torch.autograd instead of torch.func."""
    p = phi.detach().clone().requires_grad_()
    (g1,) = torch.autograd.grad(loss_1(p), p, create_graph=True)
    phi_2 = p - inner_lr * g1
    (g2,) = torch.autograd.grad(loss_2(phi_2), phi_2, retain_graph=True)
    (maml,) = torch.autograd.grad(loss_2(phi_2), p)
    return {"maml": maml, "fomaml": g2, "reptile": g1.detach() + g2}


def k2_explicit_hessian(loss_1, loss_2, phi, inner_lr):
    """Right, with the Hessian written out."""
    g1 = grad(loss_1)(phi)
    g2 = grad(loss_2)(phi - inner_lr * g1)
    h1 = torch.func.hessian(loss_1)(phi)
    eye = torch.eye(phi.shape[0], dtype=phi.dtype)
    return {"maml": (eye - inner_lr * h1) @ g2, "fomaml": g2, "reptile": g1 + g2}


def _parts(loss_1, loss_2, phi, a):
    g1 = grad(loss_1)(phi)
    g2 = grad(loss_2)(phi - a * g1)
    h1g2 = jvp(grad(loss_1), (phi,), (g2,))[1]
    return g1, g2, h1g2


def k2_with(**overrides):
    def answer(loss_1, loss_2, phi, a):
        g1, g2, h1g2 = _parts(loss_1, loss_2, phi, a)
        out = {"maml": g2 - a * h1g2, "fomaml": g2, "reptile": g1 + g2}
        for key, make in overrides.items():
            out[key] = make(loss_1, loss_2, phi, a, g1, g2, h1g2)
        return out

    answer.__name__ = "k2_" + "_".join(overrides)
    return answer


def k2_stub(loss_1, loss_2, phi, inner_lr):
    raise NotImplementedError()


def k2_in_place(loss_1, loss_2, phi, inner_lr):
    out = k2_with()(loss_1, loss_2, phi, inner_lr)
    phi -= inner_lr * grad(loss_1)(phi)
    return out


def k2_tuple(loss_1, loss_2, phi, inner_lr):
    return tuple(k2_with()(loss_1, loss_2, phi, inner_lr).values())


WRONG_K2 = [
    (k2_stub, "not implemented yet"),
    (k2_in_place, "in place"),
    (k2_tuple, "should be a dict"),
    (k2_with(fomaml=lambda f1, f2, p, a, g1, g2, h: grad(f2)(p)), "∇L₂ at φ"),
    (k2_with(fomaml=lambda f1, f2, p, a, g1, g2, h: g1), "first minibatch"),
    (k2_with(reptile=lambda f1, f2, p, a, g1, g2, h: -(g1 + g2)), "wrong sign"),
    (k2_with(reptile=lambda f1, f2, p, a, g1, g2, h: a * (g1 + g2)), "not divided by α"),
    (k2_with(reptile=lambda f1, f2, p, a, g1, g2, h: (g1 + g2) / 2), "averages"),
    (k2_with(reptile=lambda f1, f2, p, a, g1, g2, h: g1 + grad(f2)(p)), "both gradients at φ"),
    (k2_with(reptile=lambda f1, f2, p, a, g1, g2, h: g2), "differs from the reference"),
    (k2_with(maml=lambda f1, f2, p, a, g1, g2, h: g2), "first-order"),
    (k2_with(maml=lambda f1, f2, p, a, g1, g2, h: g2 + a * h), "wrong sign on the Hessian"),
    (
        k2_with(
            maml=lambda f1, f2, p, a, g1, g2, h: (
                grad(f2)(p) - a * jvp(grad(f1), (p,), (grad(f2)(p),))[1]
            )
        ),
        "instead of at φ₂",
    ),
    (
        # the Hessian of the second minibatch instead of the first
        k2_with(maml=lambda f1, f2, p, a, g1, g2, h: g2 - a * jvp(grad(f2), (p,), (g2,))[1]),
        "differs from the reference",
    ),
    (
        k2_with(
            reptile=lambda f1, f2, p, a, g1, g2, h: grad(f2)(p) + grad(f1)(p - a * grad(f2)(p))
        ),
        "wrong order",
    ),
    (
        k2_with(maml=lambda f1, f2, p, a, g1, g2, h: grad(lambda q: f1(q - a * grad(f2)(q)))(p)),
        "swaps the minibatches",
    ),
    (
        # the gradient at φ₃, after both steps, instead of at φ₂
        k2_with(fomaml=lambda f1, f2, p, a, g1, g2, h: grad(f2)(p - a * g1 - a * g2)),
        "at φ₃",
    ),
    (k2_with(maml=lambda f1, f2, p, a, g1, g2, h: (g2 - a * h).float()), "dtype"),
    (k2_with(maml=lambda f1, f2, p, a, g1, g2, h: (g2 - a * h)[None]), "has shape"),
]


@pytest.mark.parametrize("answer", [k2_autograd, k2_explicit_hessian, k2_with()])
def test_k2_gradients_accepts_right_answers(answer):
    result = lesson03.k2_gradients(answer)
    assert result.passed, result.message


@pytest.mark.parametrize(("answer", "expected"), WRONG_K2, ids=[a.__name__ for a, _ in WRONG_K2])
def test_k2_gradients_rejects_known_wrong_answers(answer, expected):
    result = lesson03.k2_gradients(answer)
    assert not result.passed and result.hint, str(result)
    assert expected in result.message + (result.hint or ""), result


def test_k2_reference_matches_the_first_order_expansion():
    """g = expansion + O(α²): halving α divides the error by about four."""
    loss_1, loss_2, phi = lesson03._random_losses(3)
    g1 = grad(loss_1)(phi)
    g2 = grad(loss_2)(phi)
    h1g2 = jvp(grad(loss_1), (phi,), (g2,))[1]
    h2g1 = jvp(grad(loss_2), (phi,), (g1,))[1]
    errors = []
    for a in (1e-2, 5e-3):
        exact = lesson03.k2_reference(loss_1, loss_2, phi, a)
        predicted = {
            "maml": g2 - a * h2g1 - a * h1g2,
            "fomaml": g2 - a * h2g1,
            "reptile": g1 + g2 - a * h2g1,
        }
        errors.append({k: (exact[k] - predicted[k]).norm().item() for k in exact})
    for key in errors[0]:
        assert 3.0 < errors[0][key] / errors[1][key] < 5.0
