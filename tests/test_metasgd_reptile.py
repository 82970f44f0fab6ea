import dataclasses

import pytest
import torch
import torch.nn.functional as F

from mlcourse.algorithms.maml import meta_loss, params_of
from mlcourse.algorithms.metasgd import init_inner_lrs
from mlcourse.algorithms.reptile import reptile_step, reptile_step_loop
from mlcourse.tasks import TaskBatch


def max_diff(a, b):
    return max((a[n] - b[n]).abs().max().item() for n in a)


def test_metasgd_with_constant_step_sizes_is_maml(model64, tasks64):
    p = params_of(model64)
    lrs = {n: torch.full_like(t, 0.05) for n, t in p.items()}
    a = meta_loss(model64, p, tasks64, loss_fn=F.mse_loss, inner_lr=lrs)
    b = meta_loss(model64, p, tasks64, loss_fn=F.mse_loss, inner_lr=0.05)
    assert abs(a.item() - b.item()) < 1e-12


def test_metasgd_step_sizes_receive_the_meta_gradient(model64, tasks64):
    p = params_of(model64)
    lrs = init_inner_lrs(p, generator=torch.Generator().manual_seed(0))
    loss = meta_loss(model64, p, tasks64, loss_fn=F.mse_loss, inner_lr=lrs)
    g = torch.autograd.grad(loss, list(lrs.values()))
    assert all(t.abs().sum() > 0 for t in g)
    # d loss / d lr = -<∇ query loss at φ, ∇ support loss at θ>: check it by finite differences
    name, eps = "2.weight", 1e-6

    def bumped(sign):
        lr = {n: (t + sign * eps if n == name else t) for n, t in lrs.items()}
        with torch.no_grad():
            return meta_loss(model64, p, tasks64, loss_fn=F.mse_loss, inner_lr=lr)

    fd = (bumped(1) - bumped(-1)) / (2 * eps)
    assert abs(fd.item() - g[list(lrs).index(name)].sum().item()) < 1e-6


def test_reptile_batched_equals_per_task_loop(model64, tasks64):
    p = params_of(model64)
    kw = dict(loss_fn=F.mse_loss, inner_lr=0.02, num_inner_steps=4, outer_lr=0.3)
    assert (
        max_diff(
            reptile_step(model64, p, tasks64, **kw), reptile_step_loop(model64, p, tasks64, **kw)
        )
        < 1e-12
    )


def test_reptile_with_one_inner_step_follows_joint_training(model64, tasks64):
    """With k = 1, φ - θ = -α ∇L_τ(θ): Reptile steps along the joint-training gradient."""
    p = params_of(model64)
    new = reptile_step(
        model64, p, tasks64, loss_fn=F.mse_loss, inner_lr=0.02, num_inner_steps=1, outer_lr=0.5
    )
    joint = torch.stack(
        [
            F.mse_loss(model64(tasks64.x_support[i]), tasks64.y_support[i])
            for i in range(tasks64.num_tasks)
        ]
    ).mean()
    g = dict(zip(p, torch.autograd.grad(joint, list(p.values())), strict=True))
    expected = {n: p[n].detach() - 0.5 * 0.02 * g[n] for n in p}
    assert max_diff(new, expected) < 1e-12


def test_reptile_serial_processes_tasks_in_turn(model64, tasks64):
    p = params_of(model64)
    kw = dict(loss_fn=F.mse_loss, inner_lr=0.02, num_inner_steps=3, outer_lr=0.4)
    one = tasks64[0]
    assert (
        max_diff(
            reptile_step(model64, p, one, serial=True, **kw), reptile_step(model64, p, one, **kw)
        )
        < 1e-12
    )
    two = reptile_step(model64, p, tasks64[0:2], serial=True, **kw)
    by_hand = reptile_step(model64, reptile_step(model64, p, tasks64[0], **kw), tasks64[1], **kw)
    assert max_diff(two, by_hand) < 1e-12


def test_reptile_with_more_steps_is_not_joint_training(model64, tasks64):
    p = params_of(model64)
    kw = dict(loss_fn=F.mse_loss, inner_lr=0.02, outer_lr=1.0)
    k1 = reptile_step(model64, p, tasks64, num_inner_steps=1, **kw)
    k5 = reptile_step(model64, p, tasks64, num_inner_steps=5, **kw)
    d1 = torch.cat([(k1[n] - p[n]).flatten() for n in p])
    d5 = torch.cat([(k5[n] - p[n]).flatten() for n in p])
    cos = torch.nn.functional.cosine_similarity(d1, d5, dim=0)
    assert cos < 1 - 1e-6


def test_init_inner_lrs_accepts_the_closed_range_and_refuses_what_is_outside():
    """``0 <= low <= high``: zero step sizes and a single value are allowed."""
    p = {"w": torch.zeros(4, 3, dtype=torch.float64)}
    assert torch.equal(init_inner_lrs(p, low=0.0, high=0.0)["w"], torch.zeros(4, 3).double())
    assert torch.equal(
        init_inner_lrs(p, low=0.1, high=0.1)["w"], torch.full((4, 3), 0.1, dtype=torch.float64)
    )
    for low, high in [(-0.1, 0.1), (0.2, 0.1)]:
        with pytest.raises(ValueError, match=f"need 0 <= low <= high, got low={low}, high={high}"):
            init_inner_lrs(p, low=low, high=high)


def test_init_inner_lrs_draws_from_the_generator_given():
    p = {"w": torch.zeros(50)}

    def draw(seed):
        return init_inner_lrs(p, generator=torch.Generator().manual_seed(seed))["w"]

    torch.manual_seed(0)
    first = draw(1)
    torch.manual_seed(1)
    assert torch.equal(draw(1), first) and not torch.equal(draw(2), first)


REPTILE_KW = dict(loss_fn=F.mse_loss, inner_lr=0.02, num_inner_steps=2, outer_lr=0.3)


def reptile_variants():
    return {
        "batched": reptile_step,
        "serial": lambda *a, **kw: reptile_step(*a, serial=True, **kw),
        "loop": reptile_step_loop,
    }


@pytest.mark.parametrize("variant", ["batched", "serial", "loop"])
def test_reptile_returns_a_detached_theta_and_leaves_the_callers_tensors_as_they_were(
    model64, tasks64, variant
):
    """The new θ carries no graph, whether or not the given θ requires grad, and the given
    tensors keep their values and their ``requires_grad``."""
    step = reptile_variants()[variant]
    own = params_of(model64)
    frozen = {n: t.detach().clone() for n, t in own.items()}
    for params in (own, frozen):
        before = {n: (t.detach().clone(), t.requires_grad) for n, t in params.items()}
        new = step(model64, params, tasks64, **REPTILE_KW)
        assert all(not t.requires_grad and t.grad_fn is None for t in new.values())
        for n, t in params.items():
            assert torch.equal(t, before[n][0]) and t.requires_grad == before[n][1]


def test_serial_and_loop_reptile_take_tasks_of_different_sizes(model64, tasks64):
    """Algorithm 1 and the reference loop accept per-task tensors of different sizes."""
    t = tasks64
    short = dataclasses.replace(
        t[1:2], x_support=t.x_support[1:2, :4], y_support=t.y_support[1:2, :4]
    )
    ragged = TaskBatch(
        x_support=[t.x_support[0], short.x_support[0]],
        y_support=[t.y_support[0], short.y_support[0]],
        x_query=[t.x_query[0], short.x_query[0]],
        y_query=[t.y_query[0], short.y_query[0]],
    )
    p = params_of(model64)
    one = reptile_step(model64, p, t[0:1], **REPTILE_KW)
    in_turn = reptile_step(model64, one, short, **REPTILE_KW)
    assert max_diff(reptile_step(model64, p, ragged, serial=True, **REPTILE_KW), in_turn) < 1e-12
    other = reptile_step(model64, p, short, **REPTILE_KW)
    mean = {n: (one[n] + other[n]) / 2 for n in p}
    assert max_diff(reptile_step_loop(model64, p, ragged, **REPTILE_KW), mean) < 1e-12


@pytest.mark.parametrize("variant", ["batched", "serial", "loop"])
def test_reptile_refuses_bad_inner_loop_arguments(model64, tasks64, variant):
    step = reptile_variants()[variant]
    p = params_of(model64)
    kw = dict(loss_fn=F.mse_loss, num_inner_steps=2, outer_lr=0.3)
    with pytest.raises(KeyError, match=r"no step size for \['2.bias'\]"):
        step(model64, p, tasks64, inner_lr={n: 0.1 for n in p if n != "2.bias"}, **kw)
    with pytest.raises(ValueError, match="num_inner_steps must be a non-negative int, got -1"):
        step(model64, p, tasks64, inner_lr=0.1, **{**kw, "num_inner_steps": -1})


class GradientWatcher(torch.nn.Module):
    """A linear model that records whether the gradients reaching its output carry a graph
    (they do when an inner loop differentiates with ``create_graph=True``)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(1, 1).double()
        self.graphs = []

    def forward(self, x):
        out = self.linear(x)
        if out.requires_grad:
            out.register_hook(lambda g: self.graphs.append(g.requires_grad))
        return out


@pytest.mark.parametrize("variant", ["serial", "loop"])
def test_reptile_inner_loop_builds_no_second_order_graph(tasks64, variant):
    """Reptile needs no meta-gradient: the inner gradients are plain tensors, never graphs.
    (The batched path runs under ``torch.no_grad``, where tensor hooks do not fire.)"""
    model = GradientWatcher()
    reptile_variants()[variant](model, params_of(model), tasks64, **REPTILE_KW)
    assert model.graphs and not any(model.graphs)
