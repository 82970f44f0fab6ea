"""Conv4: shapes, clear errors, and an exact vectorized MAML meta-gradient with each norm."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from mlcourse.algorithms.maml import meta_loss, meta_loss_loop, params_of
from mlcourse.models import Conv4, head_params
from mlcourse.tasks import TaskBatch

N_WAY = 5


def episodes(num_tasks=2, k_shot=1, k_query=3, dtype=torch.float64, seed=0):
    """Random 5-way episodes in the data side's format (class-major labels)."""
    g = torch.Generator().manual_seed(seed)

    def split(k):
        x = torch.randn(num_tasks, N_WAY * k, 1, 28, 28, generator=g, dtype=dtype)
        y = torch.arange(N_WAY).repeat_interleave(k).repeat(num_tasks, 1)
        return x, y

    return TaskBatch(*split(k_shot), *split(k_query))


def small_conv4(norm, dtype=torch.float64):
    torch.manual_seed(0)
    return Conv4(out_features=N_WAY, hidden_channels=8, norm=norm).to(dtype)


def grads(loss, params):
    return torch.autograd.grad(loss, list(params.values()))


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    ("size", "embedding_dim"), [(28, 64), (84, 64 * 5 * 5)], ids=["omniglot", "miniimagenet"]
)
def test_output_shapes(size, embedding_dim):
    x = torch.zeros(3, 1, size, size)
    body = Conv4(image_size=size)
    assert body.embedding_dim == embedding_dim
    assert body(x).shape == (3, embedding_dim)
    assert Conv4(out_features=N_WAY, image_size=size)(x).shape == (3, N_WAY)
    assert Conv4(in_channels=3, hidden_channels=32, image_size=size)(
        torch.zeros(2, 3, size, size)
    ).shape == (2, embedding_dim // 2)


@pytest.mark.parametrize("norm", ["group", "batch", "none"])
def test_norm_layers_keep_no_running_statistics(norm):
    model = Conv4(hidden_channels=8, norm=norm)
    assert not list(model.buffers())
    model(torch.randn(4, 1, 28, 28))  # works in train mode with a small batch


def test_parameter_names_separate_body_and_head():
    params = params_of(Conv4(out_features=N_WAY, hidden_channels=8))
    head = head_params(params)
    assert sorted(head) == ["head.bias", "head.weight"]
    assert all(n.startswith("features.") for n in params if n not in head)
    assert all(head[n] is params[n] for n in head)
    with pytest.raises(ValueError, match=r"out_features=n_way"):
        head_params(params_of(Conv4(hidden_channels=8)))


def test_a_batch_of_tasks_is_refused_with_the_fix():
    model = Conv4(out_features=N_WAY, hidden_channels=8)
    with pytest.raises(ValueError, match=r"flatten\(0, 1\).*vmap"):
        model(torch.zeros(2, 5, 1, 28, 28))
    with pytest.raises(ValueError, match=r"unsqueeze\(0\)"):
        model(torch.zeros(1, 28, 28))
    assert vmap(model)(torch.zeros(2, 5, 1, 28, 28)).shape == (2, 5, N_WAY)


def test_wrong_channels_and_sizes_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"in_channels=3"):
        Conv4(hidden_channels=8)(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"image_size=84"):
        Conv4(out_features=N_WAY, hidden_channels=8)(torch.zeros(2, 1, 84, 84))
    with pytest.raises(ValueError, match="too small"):
        Conv4(image_size=8)
    with pytest.raises(ValueError, match="out_features must be positive"):
        Conv4(out_features=0)
    with pytest.raises(ValueError, match="norm must be one of"):
        Conv4(norm="layer")
    with pytest.raises(ValueError, match="must divide"):
        Conv4(hidden_channels=10, num_groups=4)


def test_group_norm_embeds_each_image_on_its_own():
    model = small_conv4("group")
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    alone = torch.cat([model(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(model(x), alone, rtol=0, atol=1e-12)


@pytest.mark.parametrize("norm", ["group", "batch", "none"])
@pytest.mark.parametrize(
    ("num_inner_steps", "first_order"),
    [(1, False), (2, False), (1, True)],
    ids=["second-order-1-step", "second-order-2-steps", "first-order"],
)
def test_vectorized_meta_gradient_equals_per_task_loop(norm, num_inner_steps, first_order):
    """The contract the Conv4 norms are chosen by: meta_loss is exact against the loop."""
    model, tasks = small_conv4(norm), episodes()
    p = params_of(model)
    kw = dict(
        loss_fn=F.cross_entropy,
        inner_lr=0.4,
        num_inner_steps=num_inner_steps,
        first_order=first_order,
    )
    vec, loop = meta_loss(model, p, tasks, **kw), meta_loss_loop(model, p, tasks, **kw)
    assert abs(vec.item() - loop.item()) < 1e-12
    g_vec, g_loop = grads(vec, p), grads(loop, p)
    assert max_diff(g_vec, g_loop) < 1e-10
    assert all(g.abs().sum() > 0 for g in g_loop)


def test_second_order_terms_are_there_on_conv4():
    model, tasks = small_conv4("group"), episodes()
    p = params_of(model)
    kw = dict(loss_fn=F.cross_entropy, inner_lr=0.4)
    so = grads(meta_loss(model, p, tasks, **kw), p)
    fo = grads(meta_loss(model, p, tasks, first_order=True, **kw), p)
    assert max_diff(so, fo) > 1e-4


def test_raw_vmap_of_grad_is_wrong_with_batch_norm():
    """Why Conv4 warns about ``norm="batch"`` outside ``meta_loss``: the *raw* torch.func
    recipe ``vmap(grad(...))`` gives a wrong second-order gradient through ``F.batch_norm``
    with an adapted affine weight (torch 2.13), while GroupNorm is exact on that path too.

    If the first assertion starts failing, PyTorch fixed the defect: update the docstring.
    """
    tasks = episodes()

    def raw_meta_loss(model):
        p = params_of(model)

        def one_task(xs, ys, xq, yq):
            g = grad(lambda q: F.cross_entropy(functional_call(model, q, (xs,)), ys))(p)
            fast = {n: p[n] - 0.4 * g[n] for n in p}
            return F.cross_entropy(functional_call(model, fast, (xq,)), yq)

        t = tasks
        raw = vmap(one_task)(t.x_support, t.y_support, t.x_query, t.y_query).mean()
        loop = meta_loss_loop(model, p, t, loss_fn=F.cross_entropy, inner_lr=0.4)
        return max_diff(grads(raw, p), grads(loop, p))

    assert raw_meta_loss(small_conv4("batch")) > 1e-4
    assert raw_meta_loss(small_conv4("group")) < 1e-10
