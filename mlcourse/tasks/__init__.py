"""Task families: each samples whole batches of tasks as tensors on the target device."""

from mlcourse.tasks.base import TaskBatch
from mlcourse.tasks.sinusoid import Sinusoid

__all__ = ["Sinusoid", "TaskBatch"]
