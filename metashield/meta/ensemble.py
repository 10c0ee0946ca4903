"""A mean-logit ensemble of learners that adapt on the same support set.

It is the ``ensemble`` candidate of ``metashield evaluate`` (``evaluate.ensemble``): the one object that
``evaluate`` scores, ``adapt`` deploys and ``attack`` attacks end to end (gradients flow through every
member).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


class Ensemble(nn.Module):
    """Members adapt on the same support set on their own; predictions are the mean of their logits.

    For two classes the logit margin z1 - z0 of the mean is the mean of the members' margins (up to float
    rounding). ``adapt`` returns every member's parameters in one dict keyed ``<member>/<name>``.
    """

    def __init__(self, members: Mapping[str, nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        bad = [name for name in members if "/" in name or "." in name]
        if bad:
            raise ValueError(f"ensemble member names may not contain '/' or '.': {bad}")
        self.members = nn.ModuleDict(dict(members))

    def adapt(self, support_x: Tensor, support_y: Tensor) -> dict[str, Tensor]:
        """support [T, S, D], [T, S] -> {"<member>/<name>": tensor [T, *shape]}."""
        return {
            f"{name}/{key}": value
            for name, member in self.members.items()
            for key, value in member.adapt(support_x, support_y).items()
        }

    def member_params(self, params: Mapping[str, Tensor], name: str) -> dict[str, Tensor]:
        """The parameters of member ``name`` out of ``adapt``'s dict, under the member's own names."""
        prefix = f"{name}/"
        own = {key[len(prefix) :]: value for key, value in params.items() if key.startswith(prefix)}
        if not own:
            raise KeyError(f"no adapted parameters for ensemble member {name!r}")
        return own

    def predict(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """x [T, M, D] -> mean logits [T, M, C] of the members under their adapted ``params``."""
        logits = [m.predict(self.member_params(params, name), x) for name, m in self.members.items()]
        return torch.stack(logits).mean(0)
