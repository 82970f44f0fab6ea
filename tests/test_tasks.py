import math

import pytest
import torch

from mlcourse.tasks import Sinusoid, TaskBatch


def test_shapes_and_ranges():
    batch = Sinusoid().sample(300, 10, 15, generator=torch.Generator().manual_seed(0))
    assert batch.x_support.shape == (300, 10, 1) and batch.y_support.shape == (300, 10, 1)
    assert batch.x_query.shape == (300, 15, 1) and batch.y_query.shape == (300, 15, 1)
    amp, phase = batch.info["amplitude"], batch.info["phase"]
    assert amp.shape == (300,) and phase.shape == (300,)
    assert 0.1 <= amp.min() and amp.max() <= 5.0
    assert 0.0 <= phase.min() and phase.max() <= math.pi
    x = torch.cat([batch.x_support, batch.x_query], 1)
    assert -5 <= x.min() and x.max() <= 5
    # the targets are the task's sinusoid
    expected = amp[:, None, None] * torch.sin(batch.x_query - phase[:, None, None])
    torch.testing.assert_close(batch.y_query, expected, rtol=0, atol=0)


def test_distribution_covers_the_ranges():
    batch = Sinusoid().sample(20_000, 1, 0, generator=torch.Generator().manual_seed(0))
    amp = batch.info["amplitude"]
    assert abs(amp.mean().item() - 2.55) < 0.05  # mean of U[0.1, 5]
    assert abs(batch.info["phase"].mean().item() - math.pi / 2) < 0.05


def test_seeded_generator_is_reproducible_and_tasks_differ():
    a = Sinusoid().sample(5, 4, 4, generator=torch.Generator().manual_seed(3))
    b = Sinusoid().sample(5, 4, 4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a.x_support, b.x_support, rtol=0, atol=0)
    assert len(set(a.info["amplitude"].tolist())) == 5


def test_dtype_and_device_arguments():
    batch = Sinusoid().sample(2, 3, 3, dtype=torch.float64, device="cpu")
    assert batch.x_support.dtype == torch.float64 and batch.x_support.device.type == "cpu"
    with pytest.raises(ValueError, match="floating"):
        Sinusoid().sample(2, 3, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="num_tasks"):
        Sinusoid().sample(0, 3, 3)


def test_taskbatch_indexing_and_to():
    batch = Sinusoid().sample(4, 3, 2)
    one = batch[1]
    assert isinstance(one, TaskBatch) and one.x_support.shape == (1, 3, 1)
    assert batch[1:3].num_tasks == 2
    assert batch.to(torch.float64).y_query.dtype == torch.float64
