"""Base learner for tabular features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """``in_dim -> hidden... -> out_dim`` ReLU network.

    The last layer is ``head`` and everything before it is ``body``, so ANIL can adapt ``head`` alone and a
    prototypical network can embed with ``body``.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int] = (256, 256), out_dim: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
