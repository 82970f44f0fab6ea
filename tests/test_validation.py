"""Bad input gets one clear error each, saying what to do."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlcourse.algorithms.maml import adapt, meta_loss, meta_loss_loop, params_of
from mlcourse.models import MLP
from mlcourse.tasks import Sinusoid, TaskBatch

KW = dict(loss_fn=F.mse_loss, inner_lr=0.01)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return MLP()


@pytest.fixture
def tasks():
    return Sinusoid().sample(4, 5, 6, generator=torch.Generator().manual_seed(0))


def replace(tasks, **fields):
    kw = dict(
        x_support=tasks.x_support,
        y_support=tasks.y_support,
        x_query=tasks.x_query,
        y_query=tasks.y_query,
    )
    kw.update(fields)
    return TaskBatch(**kw)


def test_batchnorm_with_running_stats_is_refused_with_a_fix(tasks):
    model = nn.Sequential(nn.Linear(1, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    with pytest.raises(ValueError, match=r"track_running_stats=False.*GroupNorm"):
        meta_loss(model, params_of(model), tasks, **KW)
    with pytest.raises(ValueError, match="running statistics"):
        meta_loss_loop(model, params_of(model), tasks, **KW)


def test_batchnorm_without_running_stats_works(tasks):
    model = nn.Sequential(
        nn.Linear(1, 8), nn.BatchNorm1d(8, track_running_stats=False), nn.ReLU(), nn.Linear(8, 1)
    )
    meta_loss(model, params_of(model), tasks, **KW).backward()
    assert model[0].weight.grad is not None


def test_mismatched_support_inputs_and_targets(model, tasks):
    bad = replace(tasks, y_support=tasks.y_support[:, :4])
    with pytest.raises(ValueError, match="x_support has shape .* but y_support has"):
        meta_loss(model, params_of(model), bad, **KW)


def test_support_and_query_from_different_input_spaces(model, tasks):
    bad = replace(tasks, x_query=torch.zeros(4, 6, 2))
    with pytest.raises(ValueError, match="same input space"):
        meta_loss(model, params_of(model), bad, **KW)


def test_different_numbers_of_tasks(model, tasks):
    bad = replace(tasks, x_query=tasks.x_query[:3], y_query=tasks.y_query[:3])
    with pytest.raises(ValueError, match="different numbers of tasks"):
        meta_loss(model, params_of(model), bad, **KW)


def test_missing_task_dimension(model, tasks):
    bad = replace(tasks, x_support=torch.zeros(5), y_support=torch.zeros(5))
    with pytest.raises(ValueError, match=r"\(num_tasks, k, \.\.\.\)"):
        meta_loss(model, params_of(model), bad, **KW)


def test_tasks_of_different_sizes_need_the_loop(model):
    gen = torch.Generator().manual_seed(0)
    a, b = Sinusoid().sample(1, 5, 6, generator=gen), Sinusoid().sample(1, 3, 4, generator=gen)
    ragged = TaskBatch(
        x_support=[a.x_support[0], b.x_support[0]],
        y_support=[a.y_support[0], b.y_support[0]],
        x_query=[a.x_query[0], b.x_query[0]],
        y_query=[a.y_query[0], b.y_query[0]],
    )
    with pytest.raises(ValueError, match="same size.*meta_loss_loop"):
        meta_loss(model, params_of(model), ragged, **KW)
    loss = meta_loss_loop(model, params_of(model), ragged, **KW)
    expected = (
        meta_loss(model, params_of(model), a, **KW) + meta_loss(model, params_of(model), b, **KW)
    ) / 2
    torch.testing.assert_close(loss, expected)


def test_wrong_dtype(model, tasks):
    with pytest.raises(TypeError, match=r"x_support is torch.float64 .*torch.float32"):
        meta_loss(model, params_of(model), tasks.to(torch.float64), **KW)
    with pytest.raises(TypeError, match="floating point"):
        adapt(model, params_of(model), torch.zeros(5, 1, dtype=torch.long), torch.zeros(5, 1), **KW)


def test_wrong_device(model, tasks):
    # the 'meta' device stands in for a GPU: same check, no GPU needed
    with pytest.raises(ValueError, match=r"x_support is on meta .* on cpu: move the data"):
        meta_loss(model, params_of(model), tasks.to("meta"), **KW)


def test_not_a_task_batch(model):
    with pytest.raises(TypeError, match="x_support, y_support, x_query, y_query"):
        meta_loss(model, params_of(model), {"x_support": 1}, **KW)


def test_params_not_matching_the_model(model, tasks):
    with pytest.raises(KeyError, match="does not have"):
        meta_loss(model, {"nope": torch.zeros(1)}, tasks, **KW)
    p = params_of(model)
    with pytest.raises(ValueError, match="has shape"):
        meta_loss(model, {**p, "0.weight": torch.zeros(3, 3)}, tasks, **KW)
    with pytest.raises(TypeError, match="dict of tensors"):
        meta_loss(model, list(p.values()), tasks, **KW)


def test_bad_inner_loop_arguments(model, tasks):
    with pytest.raises(ValueError, match="num_inner_steps"):
        meta_loss(
            model, params_of(model), tasks, loss_fn=F.mse_loss, inner_lr=0.1, num_inner_steps=-1
        )
    with pytest.raises(KeyError, match="no step size"):
        meta_loss(model, params_of(model), tasks, loss_fn=F.mse_loss, inner_lr={})
