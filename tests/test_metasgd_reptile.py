import torch
import torch.nn.functional as F

from mlcourse.maml import meta_loss, params_of
from mlcourse.metasgd import init_inner_lrs
from mlcourse.reptile import reptile_step, reptile_step_loop


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
