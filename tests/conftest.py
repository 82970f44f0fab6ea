import pytest
import torch

from mlcourse.models import MLP
from mlcourse.tasks import Sinusoid


@pytest.fixture
def model64():
    torch.manual_seed(0)
    return MLP().double()


@pytest.fixture
def tasks64():
    return Sinusoid().sample(
        6, 10, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
