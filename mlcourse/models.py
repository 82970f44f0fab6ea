"""Models used across the lessons. Introduced in lesson 01."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class MLP(nn.Sequential):
    """A fully connected ReLU network; the default is the MAML paper's 1-40-40-1 regressor.

    Args:
        in_features: input size.
        out_features: output size.
        hidden_sizes: width of each hidden layer.

    Example:
        >>> import torch
        >>> MLP()(torch.zeros(7, 1)).shape
        torch.Size([7, 1])
    """

    def __init__(
        self, in_features: int = 1, out_features: int = 1, hidden_sizes: Sequence[int] = (40, 40)
    ):
        layers: list[nn.Module] = []
        width = in_features
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)
