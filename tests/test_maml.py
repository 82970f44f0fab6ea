"""The mathematics of MAML, stated as properties, with autograd and a per-task loop as oracles."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlcourse.maml import (
    adapt,
    adapt_batch,
    adapt_reference,
    meta_loss,
    meta_loss_loop,
    params_of,
    query_losses,
)


def grads(loss, params):
    return torch.autograd.grad(loss, list(params.values()))


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
def test_vectorized_meta_gradient_equals_per_task_loop(model64, tasks64, steps, first_order):
    p = params_of(model64)
    kw = dict(loss_fn=F.mse_loss, inner_lr=0.05, num_inner_steps=steps, first_order=first_order)
    vec, loop = meta_loss(model64, p, tasks64, **kw), meta_loss_loop(model64, p, tasks64, **kw)
    assert abs(vec.item() - loop.item()) < 1e-12
    assert max_diff(grads(vec, p), grads(loop, p)) < 1e-10


@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_meta_gradient_matches_finite_differences(model64, tasks64, steps):
    p = {n: t.detach().clone().requires_grad_() for n, t in params_of(model64).items()}
    kw = dict(loss_fn=F.mse_loss, inner_lr=0.05, num_inner_steps=steps)
    g = grads(meta_loss(model64, p, tasks64, **kw), p)
    g_fo = grads(meta_loss(model64, p, tasks64, first_order=True, **kw), p)
    torch.manual_seed(5)
    for _ in range(3):
        v = {n: torch.randn_like(t) for n, t in p.items()}
        eps = 1e-6
        with torch.no_grad():
            plus = meta_loss(model64, {n: p[n] + eps * v[n] for n in p}, tasks64, **kw)
            minus = meta_loss(model64, {n: p[n] - eps * v[n] for n in p}, tasks64, **kw)
        fd = ((plus - minus) / (2 * eps)).item()
        analytic = sum((gi * vi).sum() for gi, vi in zip(g, v.values(), strict=True)).item()
        first = sum((gi * vi).sum() for gi, vi in zip(g_fo, v.values(), strict=True)).item()
        assert abs(fd - analytic) < 1e-6 * max(1.0, abs(fd))
        # first order drops the second-order terms, so it misses the true derivative
        assert abs(fd - first) > 1e-4 * max(1.0, abs(fd))


def test_first_order_differs_from_second_order(model64, tasks64):
    p = params_of(model64)
    kw = dict(loss_fn=F.mse_loss, inner_lr=0.05)
    so = grads(meta_loss(model64, p, tasks64, **kw), p)
    fo = grads(meta_loss(model64, p, tasks64, first_order=True, **kw), p)
    assert max_diff(so, fo) > 1e-3


def test_first_order_gradient_is_the_query_gradient_at_the_adapted_point(model64, tasks64):
    """FOMAML: dL/dθ is taken as dL/dφ evaluated at φ = adapt(θ)."""
    p = params_of(model64)
    kw = dict(loss_fn=F.mse_loss, inner_lr=0.05)
    fo = grads(meta_loss(model64, p, tasks64, first_order=True, **kw), p)
    expected = [torch.zeros_like(t) for t in p.values()]
    for i in range(tasks64.num_tasks):
        phi = adapt_reference(model64, p, tasks64.x_support[i], tasks64.y_support[i], **kw)
        phi = {n: t.detach().requires_grad_() for n, t in phi.items()}
        loss = F.mse_loss(
            torch.func.functional_call(model64, phi, (tasks64.x_query[i],)), tasks64.y_query[i]
        )
        for e, g in zip(expected, grads(loss, phi), strict=True):
            e += g / tasks64.num_tasks
    assert max_diff(fo, expected) < 1e-12


def test_zero_inner_steps_is_the_identity(model64, tasks64):
    p = params_of(model64)
    kw = dict(loss_fn=F.mse_loss, inner_lr=0.05, num_inner_steps=0)
    out = adapt(model64, p, tasks64.x_support[0], tasks64.y_support[0], **kw)
    assert all(out[n] is p[n] for n in p)
    plain = F.mse_loss(model64(tasks64.x_query), tasks64.y_query)
    assert abs(meta_loss(model64, p, tasks64, **kw).item() - plain.item()) < 1e-12


def test_one_step_equals_hand_written_sgd_on_a_linear_model():
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)
    w, b = model.weight.detach(), model.bias.detach()
    residual = x @ w.T + b - y  # d/dŷ of mean((ŷ - y)²) is 2 (ŷ - y) / k
    grad_w = 2 * residual.T @ x / len(x)
    grad_b = 2 * residual.sum(0) / len(x)
    out = adapt(model, params_of(model), x, y, loss_fn=F.mse_loss, inner_lr=0.1)
    torch.testing.assert_close(out["weight"], w - 0.1 * grad_w, rtol=0, atol=1e-14)
    torch.testing.assert_close(out["bias"], b - 0.1 * grad_b, rtol=0, atol=1e-14)


def test_adapt_matches_reference_and_batch(model64, tasks64):
    p = params_of(model64)
    kw = dict(loss_fn=F.mse_loss, inner_lr=0.05, num_inner_steps=3)
    batch = adapt_batch(model64, p, tasks64.x_support, tasks64.y_support, **kw)
    for i in range(tasks64.num_tasks):
        ref = adapt_reference(model64, p, tasks64.x_support[i], tasks64.y_support[i], **kw)
        one = adapt(model64, p, tasks64.x_support[i], tasks64.y_support[i], **kw)
        assert max_diff(ref.values(), one.values()) < 1e-12
        assert max_diff(ref.values(), [batch[n][i] for n in ref]) < 1e-12


def test_adaptation_lowers_the_support_loss(model64, tasks64):
    p = params_of(model64)
    x, y = tasks64.x_support[0], tasks64.y_support[0]
    before = F.mse_loss(model64(x), y)
    fast = adapt(model64, p, x, y, loss_fn=F.mse_loss, inner_lr=0.01, num_inner_steps=5)
    after = F.mse_loss(torch.func.functional_call(model64, fast, (x,)), y)
    assert after < before


def test_meta_gradient_reaches_every_parameter(model64, tasks64):
    p = params_of(model64)
    g = grads(meta_loss(model64, p, tasks64, loss_fn=F.mse_loss, inner_lr=0.05), p)
    assert all(t.abs().sum() > 0 for t in g)


def test_query_losses_per_task(model64, tasks64):
    p = params_of(model64)
    shared = {n: t.expand(tasks64.num_tasks, *t.shape) for n, t in p.items()}
    losses = query_losses(model64, shared, tasks64.x_query, tasks64.y_query, loss_fn=F.mse_loss)
    assert losses.shape == (tasks64.num_tasks,)
    expected = ((model64(tasks64.x_query) - tasks64.y_query) ** 2).mean((1, 2))
    torch.testing.assert_close(losses, expected, rtol=0, atol=1e-12)


def _norm_model(norm):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1, 8), norm, nn.ReLU(), nn.Linear(8, 1)).double()


def test_group_norm_is_vectorizable_and_exact(tasks64):
    model = _norm_model(nn.GroupNorm(1, 8))
    p = params_of(model)
    kw = dict(loss_fn=F.mse_loss, inner_lr=0.05)
    vec, loop = meta_loss(model, p, tasks64, **kw), meta_loss_loop(model, p, tasks64, **kw)
    assert max_diff(grads(vec, p), grads(loop, p)) < 1e-10


@pytest.mark.parametrize("num_inner_steps", [1, 3])
def test_layer_norm_is_exact_in_the_vectorized_meta_loss(tasks64, num_inner_steps):
    model = _norm_model(nn.LayerNorm(8))
    p = params_of(model)
    kw = dict(loss_fn=F.mse_loss, inner_lr=0.05, num_inner_steps=num_inner_steps)
    vec, loop = meta_loss(model, p, tasks64, **kw), meta_loss_loop(model, p, tasks64, **kw)
    assert max_diff(grads(vec, p), grads(loop, p)) < 1e-10


def test_the_layer_norm_defect_is_still_there(tasks64):
    """Why ``meta_loss`` does not take ``vmap(grad(...))``: with LayerNorm, raw torch.func
    gives a wrong second-order gradient (torch 2.13). ``meta_loss`` differentiates batched
    parameters with ``torch.autograd.grad`` instead, which is exact (test above).

    If this test starts failing, PyTorch fixed the defect.
    """
    model = _norm_model(nn.LayerNorm(8))
    p = params_of(model)

    def one_task(xs, ys, xq, yq):
        g = torch.func.grad(lambda q: F.mse_loss(torch.func.functional_call(model, q, (xs,)), ys))(
            p
        )
        fast = {n: p[n] - 0.05 * g[n] for n in p}
        return F.mse_loss(torch.func.functional_call(model, fast, (xq,)), yq)

    t = tasks64
    raw = torch.func.vmap(one_task)(t.x_support, t.y_support, t.x_query, t.y_query).mean()
    loop = meta_loss_loop(model, p, t, loss_fn=F.mse_loss, inner_lr=0.05)
    assert max_diff(grads(raw, p), grads(loop, p)) > 1e-4


def test_tied_weights_are_adapted_as_one_parameter(tasks64):
    """A weight shared by two layers is one parameter: adapting it changes both uses.

    The per-task loop is checked against a model written with the shared weight explicitly,
    and the vectorized meta-loss against the loop.
    """
    torch.manual_seed(0)
    first, second = nn.Linear(1, 1), nn.Linear(1, 1)
    second.weight = first.weight
    model = nn.Sequential(first, nn.Tanh(), second).double()
    p = params_of(model)
    assert sorted(p) == ["0.bias", "0.weight", "2.bias"]
    kw = dict(loss_fn=F.mse_loss, inner_lr=0.05)

    def explicit(q, x):
        return torch.tanh(x * q["0.weight"] + q["0.bias"]) * q["0.weight"] + q["2.bias"]

    t = tasks64
    losses = []
    for xs, ys, xq, yq in zip(t.x_support, t.y_support, t.x_query, t.y_query, strict=True):
        g = torch.autograd.grad(
            F.mse_loss(explicit(p, xs), ys), list(p.values()), create_graph=True
        )
        fast = {n: v - 0.05 * gv for (n, v), gv in zip(p.items(), g, strict=True)}
        losses.append(F.mse_loss(explicit(fast, xq), yq))
    by_hand = torch.stack(losses).mean()
    loop = meta_loss_loop(model, p, t, **kw)
    vec = meta_loss(model, p, t, **kw)
    g_loop = grads(loop, p)
    assert abs(loop.item() - by_hand.item()) < 1e-12
    assert max_diff(g_loop, grads(by_hand, p)) < 1e-10
    assert max_diff(grads(vec, p), g_loop) < 1e-10
