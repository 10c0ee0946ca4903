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


def linear_stack(model: nn.Module) -> list[nn.Linear] | None:
    """The Linear layers of a model whose forward is exactly Linear → ReLU → … → Linear, else None.

    Only metashield's ``MLP`` (forward not overridden) and a plain ``nn.Sequential`` of Linear/ReLU qualify:
    for any other module the order of calls in ``forward`` cannot be known from its submodules.
    """
    if type(model) is MLP:
        mods = [*model.body, model.head]
    elif type(model) is nn.Sequential:
        mods = list(model)
    else:
        return None
    if not mods or type(mods[-1]) is not nn.Linear:
        return None
    linears: list[nn.Linear] = []
    for i, m in enumerate(mods):
        if type(m) is nn.Linear:
            if m.bias is None or (i > 0 and type(mods[i - 1]) is nn.Linear):
                return None
            linears.append(m)
        elif type(m) is nn.ReLU:
            if i == 0 or type(mods[i - 1]) is not nn.Linear:
                return None
        else:
            return None
    return linears
