"""Task families: each samples whole batches of tasks as tensors on the target device."""

from mlcourse.tasks.base import TaskBatch
from mlcourse.tasks.characters import ProceduralCharacters
from mlcourse.tasks.episodes import nearest_neighbour_accuracy, sample_bank_episodes
from mlcourse.tasks.omniglot import Omniglot, download_omniglot, load_omniglot
from mlcourse.tasks.sinusoid import Sinusoid

__all__ = [
    "Omniglot",
    "ProceduralCharacters",
    "Sinusoid",
    "TaskBatch",
    "download_omniglot",
    "load_omniglot",
    "nearest_neighbour_accuracy",
    "sample_bank_episodes",
]
