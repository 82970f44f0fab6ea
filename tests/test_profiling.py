"""saved_tensor_bytes counts what autograd holds for backward: each storage once, at its peak."""

import weakref

import pytest
import torch
import torch.nn.functional as F

from mlcourse.algorithms.maml import meta_loss, params_of
from mlcourse.models import MLP
from mlcourse.profiling import cuda_peak_bytes, saved_tensor_bytes
from mlcourse.tasks import Sinusoid

FLOAT = 4  # bytes of a float32


def test_counts_what_an_operation_saves():
    x = torch.randn(1000, requires_grad=True)
    assert saved_tensor_bytes(lambda: x.exp().sum()) == 1000 * FLOAT  # exp saves its result
    assert saved_tensor_bytes(lambda: (x * 2.0).sum()) == 0  # a product by a number saves none


def test_each_storage_is_counted_once():
    x = torch.randn(1000, requires_grad=True)
    assert saved_tensor_bytes(lambda: (x * x).sum()) == 1000 * FLOAT
    # two views of x, each saved by the product of the other: one storage
    assert saved_tensor_bytes(lambda: (x[:500] * x[500:]).sum()) == 1000 * FLOAT
    y = torch.randn(1000, requires_grad=True)
    assert saved_tensor_bytes(lambda: (x * y).sum()) == 2 * 1000 * FLOAT


def test_nothing_is_saved_without_gradients():
    x = torch.randn(1000, requires_grad=True)
    with torch.no_grad():
        assert saved_tensor_bytes(lambda: x.exp().sum()) == 0
    assert saved_tensor_bytes(lambda: torch.randn(1000).exp().sum()) == 0


def test_the_peak_survives_backward_and_freed_graphs_stop_counting():
    x = torch.randn(1000, requires_grad=True)

    def two_graphs_one_after_the_other():
        x.exp().sum().backward()  # 4000 bytes, freed by backward
        x.exp().sum().backward()  # the same again, never both at once

    assert saved_tensor_bytes(two_graphs_one_after_the_other) == 1000 * FLOAT

    def two_graphs_alive_together():
        return x.exp().sum(), (x + 1).exp().sum()

    assert saved_tensor_bytes(two_graphs_alive_together) == 2 * 1000 * FLOAT


def test_the_returned_graph_is_released_afterwards():
    x = torch.randn(1000, requires_grad=True)
    kept = []

    def forward():
        y = x.exp()
        kept.append(weakref.ref(y))
        return y.sum()

    assert saved_tensor_bytes(forward) == 1000 * FLOAT
    assert kept[0]() is None  # the graph (and the tensor it saved) did not outlive the call


def test_second_order_maml_holds_more_than_first_order_and_grows_with_steps():
    torch.manual_seed(0)
    model = MLP()
    tasks = Sinusoid().sample(8, 10, 10, generator=torch.Generator().manual_seed(0))

    def kib(steps, first_order):
        return saved_tensor_bytes(
            lambda: meta_loss(
                model,
                params_of(model),
                tasks,
                loss_fn=F.mse_loss,
                inner_lr=0.01,
                num_inner_steps=steps,
                first_order=first_order,
            )
        )

    assert kib(1, False) > kib(1, True) > 0
    assert kib(5, False) > 3 * kib(1, False)
    assert kib(5, True) < 1.5 * kib(1, True)


def test_cuda_peak_is_none_off_cuda():
    assert cuda_peak_bytes(lambda: torch.ones(3).exp(), "cpu") is None
    assert cuda_peak_bytes(lambda: torch.ones(3).exp()) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peak_sees_a_large_temporary():
    def make():
        big = torch.ones(1 << 20, device="cuda")  # 4 MiB, freed on return
        return big.sum()

    assert cuda_peak_bytes(make, "cuda") >= (1 << 20) * FLOAT
