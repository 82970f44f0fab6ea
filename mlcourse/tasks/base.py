"""The batch-of-tasks container shared by every supervised task family."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch


@dataclass
class TaskBatch:
    """A batch of supervised tasks, each split into a support set and a query set.

    The leading dimension of every tensor is the task index.

    Attributes:
        x_support: ``(num_tasks, k_support, *input_shape)`` inputs the learner adapts on.
        y_support: ``(num_tasks, k_support, *target_shape)`` their targets.
        x_query: ``(num_tasks, k_query, *input_shape)`` inputs the adapted learner is scored on.
        y_query: ``(num_tasks, k_query, *target_shape)`` their targets.
        info: per-task tensors that describe each task (e.g. amplitude and phase), for plots.
    """

    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor
    info: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_tasks(self) -> int:
        return self.x_support.shape[0]

    def to(self, *args, **kwargs) -> TaskBatch:
        """Moves every tensor, like ``Tensor.to``; a dtype casts only the floating ones (labels
        and class ids stay integers)."""
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        moved = {
            f.name: _moved(getattr(self, f.name), device, args, kwargs) for f in fields(self)[:4]
        }
        info = {k: _moved(v, device, args, kwargs) for k, v in self.info.items()}
        return TaskBatch(**moved, info=info)

    def __getitem__(self, index) -> TaskBatch:
        """Selects tasks, e.g. ``batch[0:5]`` or ``batch[3]`` (keeps the task dimension)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        picked = {f.name: getattr(self, f.name)[index] for f in fields(self)[:4]}
        return TaskBatch(**picked, info={k: v[index] for k, v in self.info.items()})


def _moved(tensor: torch.Tensor, device, args, kwargs) -> torch.Tensor:
    """Casts floating tensors; integer ones (labels, class ids) only change device."""
    if tensor.is_floating_point():
        return tensor.to(*args, **kwargs)
    return tensor.to(device) if device is not None else tensor
