"""The mathematics of MAML, stated as properties, with autograd and a per-task loop as oracles."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlcourse.algorithms.maml import (
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


def query_meta_gradient(model, adapt_fn, params, task, **kw):
    """The meta-gradient of one task's query loss through ``adapt_fn``'s adaptation."""
    x_support, y_support, x_query, y_query = task
    fast = adapt_fn(model, params, x_support, y_support, loss_fn=F.mse_loss, **kw)
    loss = F.mse_loss(torch.func.functional_call(model, fast, (x_query,)), y_query)
    return grads(loss, params)


def test_adapt_first_order_meta_gradient_is_the_references_not_the_second_order_one(
    model64, tasks64
):
    """``adapt(first_order=True)`` drops the second-order path exactly as the reference does
    (the inner gradients are constants); by default both keep it."""
    p = params_of(model64)
    task = (tasks64.x_support[0], tasks64.y_support[0], tasks64.x_query[0], tasks64.y_query[0])
    kw = dict(inner_lr=0.05, num_inner_steps=2)
    first = query_meta_gradient(model64, adapt, p, task, first_order=True, **kw)
    second = query_meta_gradient(model64, adapt, p, task, **kw)
    assert (
        max_diff(
            first, query_meta_gradient(model64, adapt_reference, p, task, first_order=True, **kw)
        )
        < 1e-12
    )
    assert max_diff(second, query_meta_gradient(model64, adapt_reference, p, task, **kw)) < 1e-10
    assert max_diff(first, second) > 1e-3
    batch = adapt_batch(
        model64, p, tasks64.x_support, tasks64.y_support, loss_fn=F.mse_loss, first_order=True, **kw
    )
    loss = F.mse_loss(
        torch.func.functional_call(model64, {n: t[0] for n, t in batch.items()}, (task[2],)),
        task[3],
    )
    assert max_diff(grads(loss, p), first) < 1e-12


def test_adapt_batch_defaults_are_one_second_order_step(model64, tasks64):
    p = params_of(model64)
    xs, ys = tasks64.x_support, tasks64.y_support
    batch = adapt_batch(model64, p, xs, ys, loss_fn=F.mse_loss, inner_lr=0.05)
    one = adapt(model64, p, xs[0], ys[0], loss_fn=F.mse_loss, inner_lr=0.05)
    assert max_diff([batch[n][0] for n in p], one.values()) < 1e-12
    assert max_diff(grads(batch["0.weight"][0].sum(), p), grads(one["0.weight"].sum(), p)) < 1e-12


def test_adapt_reference_leaves_the_callers_tensors_as_they_were(model64, tasks64):
    """Parameters that do not require grad are adapted without switching it on for them."""
    frozen = {n: t.detach().clone() for n, t in params_of(model64).items()}
    before = {n: t.clone() for n, t in frozen.items()}
    for first_order in (False, True):
        adapt_reference(
            model64,
            frozen,
            tasks64.x_support[0],
            tasks64.y_support[0],
            loss_fn=F.mse_loss,
            inner_lr=0.05,
            first_order=first_order,
        )
        assert not any(t.requires_grad for t in frozen.values())
        assert all(torch.equal(frozen[n], before[n]) for n in frozen)


def test_a_parameter_that_does_not_require_grad_is_adapted_but_not_meta_learned(model64, tasks64):
    """A frozen parameter (as in ANIL's body) still takes inner steps, to second order for the
    others, in the vectorized path as in the loop; no meta-gradient reaches it."""
    p = params_of(model64)
    mixed = {**p, "0.bias": p["0.bias"].detach()}
    kw = dict(loss_fn=F.mse_loss, inner_lr=0.05, num_inner_steps=2)
    vec, loop = (
        meta_loss(model64, mixed, tasks64, **kw),
        meta_loss_loop(model64, mixed, tasks64, **kw),
    )
    trained = {n: t for n, t in mixed.items() if t.requires_grad}
    assert abs(vec.item() - loop.item()) < 1e-12
    assert max_diff(grads(vec, trained), grads(loop, trained)) < 1e-10
    x, y = tasks64.x_support[0], tasks64.y_support[0]
    for fn in (adapt, adapt_reference):
        assert not torch.equal(fn(model64, mixed, x, y, **kw)["0.bias"], mixed["0.bias"])


class WithUnused(nn.Module):
    """A linear model with a parameter its forward pass never reads."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 1)
        self.unused = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.linear(x)


def test_a_parameter_the_loss_ignores_is_returned_unchanged(tasks64):
    """Its gradient is zero (``None`` in autograd's words): every entry point leaves it as it
    is, adapts the others, and the meta-gradient does not reach it."""
    torch.manual_seed(0)
    model = WithUnused().double()
    p = params_of(model)
    xs, ys = tasks64.x_support, tasks64.y_support
    kw = dict(loss_fn=F.mse_loss, inner_lr=0.1, num_inner_steps=2)
    for fn in (adapt, adapt_reference):
        out = fn(model, p, xs[0], ys[0], **kw)
        assert torch.equal(out["unused"], p["unused"])
        assert not torch.equal(out["linear.weight"], p["linear.weight"])
    batch = adapt_batch(model, p, xs, ys, **kw)
    assert torch.equal(batch["unused"], p["unused"].expand(len(xs), 3))
    for meta in (meta_loss, meta_loss_loop):
        loss = meta(model, p, tasks64, **kw)
        g = torch.autograd.grad(loss, list(p.values()), allow_unused=True)
        assert g[list(p).index("unused")] is None or not g[list(p).index("unused")].any()


def test_meta_sgd_step_sizes_are_taken_per_parameter_entry_in_every_entry_point(model64, tasks64):
    """With a dict of step-size tensors, one step is θ − α ⊙ ∇L entry by entry."""
    p = params_of(model64)
    gen = torch.Generator().manual_seed(3)
    lrs = {n: 0.1 * torch.rand(t.shape, generator=gen, dtype=t.dtype) for n, t in p.items()}
    x, y = tasks64.x_support[0], tasks64.y_support[0]
    g = dict(zip(p, grads(F.mse_loss(model64(x), y), p), strict=True))
    by_hand = {n: p[n] - lrs[n] * g[n] for n in p}
    kw = dict(loss_fn=F.mse_loss, inner_lr=lrs)
    for fn in (adapt, adapt_reference):
        assert max_diff(fn(model64, p, x, y, **kw).values(), by_hand.values()) < 1e-14
    batch = adapt_batch(model64, p, tasks64.x_support, tasks64.y_support, **kw)
    assert max_diff([batch[n][0] for n in p], by_hand.values()) < 1e-14


@pytest.mark.parametrize("fn", [adapt, adapt_batch, adapt_reference])
def test_entry_points_refuse_bad_inner_loop_arguments(model64, tasks64, fn):
    p = params_of(model64)
    xs, ys = tasks64.x_support, tasks64.y_support
    if fn is not adapt_batch:
        xs, ys = xs[0], ys[0]
    kw = dict(loss_fn=F.mse_loss)
    with pytest.raises(KeyError, match=r"no step size for \['2.bias'\]"):
        fn(model64, p, xs, ys, inner_lr={n: 0.1 for n in p if n != "2.bias"}, **kw)
    with pytest.raises(ValueError, match="num_inner_steps must be a non-negative int, got 1.5"):
        fn(model64, p, xs, ys, inner_lr=0.1, num_inner_steps=1.5, **kw)
    with pytest.raises(TypeError, match="a float or a dict of tensors, got <class 'str'>"):
        fn(model64, p, xs, ys, inner_lr="0.1", **kw)


@pytest.mark.parametrize("fn", [meta_loss, meta_loss_loop])
def test_meta_losses_refuse_a_step_size_dict_that_misses_a_parameter(model64, tasks64, fn):
    p = params_of(model64)
    with pytest.raises(KeyError, match=r"no step size for \['0.bias'\]"):
        fn(model64, p, tasks64, loss_fn=F.mse_loss, inner_lr={n: 0.1 for n in p if n != "0.bias"})


def test_adapt_batch_asks_for_a_task_dimension():
    model = nn.Linear(1, 1).double()
    x = torch.zeros(5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"x_support has shape \(5,\); expected \(num_tasks, k"):
        adapt_batch(model, params_of(model), x, x, loss_fn=F.mse_loss, inner_lr=0.1)


def test_tied_weights_are_tied_in_every_entry_point(tasks64):
    """adapt, adapt_reference and adapt_batch, called directly, find the shared weight too."""
    torch.manual_seed(0)
    first, second = nn.Linear(1, 1), nn.Linear(1, 1)
    second.weight = first.weight
    model = nn.Sequential(first, nn.Tanh(), second).double()
    p = params_of(model)
    xs, ys = tasks64.x_support, tasks64.y_support

    def explicit(q, x):
        return torch.tanh(x * q["0.weight"] + q["0.bias"]) * q["0.weight"] + q["2.bias"]

    by_hand = list(p.values())
    for _ in range(2):  # from the second step on, the shared weight differs from the model's
        q = dict(zip(p, by_hand, strict=True))
        g = torch.autograd.grad(F.mse_loss(explicit(q, xs[0]), ys[0]), by_hand)
        by_hand = [v - 0.05 * gv for v, gv in zip(by_hand, g, strict=True)]
    kw = dict(loss_fn=F.mse_loss, inner_lr=0.05, num_inner_steps=2)
    for fn in (adapt, adapt_reference):
        assert max_diff(fn(model, p, xs[0], ys[0], **kw).values(), by_hand) < 1e-12
    batch = adapt_batch(model, p, xs, ys, **kw)
    assert max_diff([batch[n][0] for n in p], by_hand) < 1e-12
    losses = query_losses(model, batch, tasks64.x_query, tasks64.y_query, loss_fn=F.mse_loss)
    fast = dict(zip(p, by_hand, strict=True))
    assert (
        abs(
            losses[0].item()
            - F.mse_loss(explicit(fast, tasks64.x_query[0]), tasks64.y_query[0]).item()
        )
        < 1e-12
    )


@pytest.mark.parametrize("first_order", [False, True])
def test_compile_meta_loss_compiles_the_torch_func_form_of_the_same_meta_loss(
    model64, tasks64, monkeypatch, first_order
):
    """What it compiles (run uncompiled here) is the meta-loss, with every argument passed on,
    and it is kept only if its meta-gradient matches eager's; a compiler that fails is reported."""
    from mlcourse.algorithms.maml import compile_meta_loss

    p = params_of(model64)
    kw = dict(loss_fn=F.mse_loss, inner_lr=0.05, num_inner_steps=2, first_order=first_order)
    eager = meta_loss(model64, p, tasks64, **kw)
    monkeypatch.setattr(torch, "compile", lambda fn: fn)
    compiled, info = compile_meta_loss(model64, p, tasks64, **kw)
    value = compiled(model64, p, tasks64)
    assert abs(value.item() - eager.item()) < 1e-12
    assert max_diff(grads(value, p), grads(eager, p)) < 1e-10
    assert info["compiled_max_grad_diff"] < 1e-10 and 0 <= info["compile_seconds"] < 60

    def broken(fn):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    assert compile_meta_loss(model64, p, tasks64, **kw) == (
        None,
        {"compiled_error": "RuntimeError: no compiler here"},
    )

    def off_by_a_little(fn):
        return lambda m, q, t: fn(m, q, t) * (1 + 2e-4)

    monkeypatch.setattr(torch, "compile", off_by_a_little)
    compiled, info = compile_meta_loss(model64, p, tasks64, **kw)
    assert compiled is None and "differs from eager" in info["compiled_error"]


def test_compile_meta_loss_defaults_reports_and_tolerance(model64, tasks64, monkeypatch):
    """Defaults as in meta_loss (one second-order step); a compiler's error is cut to 500
    characters; the compile time is given to 0.1 s; the tolerance is relative to the largest
    meta-gradient entry, so large gradients may differ by more in absolute terms."""
    from mlcourse.algorithms.maml import COMPILED_GRAD_TOLERANCE, compile_meta_loss

    p = params_of(model64)
    monkeypatch.setattr(torch, "compile", lambda fn: fn)
    compiled, info = compile_meta_loss(model64, p, tasks64, loss_fn=F.mse_loss, inner_lr=0.05)
    eager = meta_loss(model64, p, tasks64, loss_fn=F.mse_loss, inner_lr=0.05)
    assert max_diff(grads(compiled(model64, p, tasks64), p), grads(eager, p)) < 1e-10
    seconds = info["compile_seconds"]
    assert isinstance(seconds, float) and seconds == round(seconds, 1)

    def long_error(fn):
        raise RuntimeError("x" * 1000)

    monkeypatch.setattr(torch, "compile", long_error)
    _, info = compile_meta_loss(model64, p, tasks64, loss_fn=F.mse_loss, inner_lr=0.05)
    assert len(info["compiled_error"]) == 500

    def scaled_mse(prediction, target):  # meta-gradient entries far above 1
        return 1e4 * F.mse_loss(prediction, target)

    def off_within_tolerance(fn):
        return lambda m, q, t: fn(m, q, t) * (1 + COMPILED_GRAD_TOLERANCE / 10)

    monkeypatch.setattr(torch, "compile", off_within_tolerance)
    compiled, info = compile_meta_loss(model64, p, tasks64, loss_fn=scaled_mse, inner_lr=1e-6)
    assert compiled is not None and info["compiled_max_grad_diff"] > COMPILED_GRAD_TOLERANCE
