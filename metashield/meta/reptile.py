"""Reptile (Nichol et al., 2018): move θ toward the parameters each task adapts to."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metashield.meta import lowrank
from metashield.meta._checks import check_episode
from metashield.meta.inner import LossFn
from metashield.meta.learners import GradientLearner


class Reptile(GradientLearner):
    """Reptile on the shared inner loop: ``inner_steps`` first-order SGD steps with ``inner_lr`` per task.

    ``step`` applies θ ← θ + outer_lr · mean_t(θ'_t − θ) in place; ``adapt`` and ``predict`` are as for MAML.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 5,
        outer_lr: float = 0.1,
        loss_fn: LossFn | None = None,
    ) -> None:
        super().__init__(model, inner_lr, inner_steps, first_order=True, loss_fn=loss_fn)
        self.outer_lr = float(outer_lr)

    @torch.no_grad()
    def step(self, support_x: Tensor, support_y: Tensor) -> None:
        """One meta-update from a batch of tasks: support [T, S, D], [T, S, ...]."""
        check_episode(support_x, support_y, None, None)
        if self._fused(support_y):
            lowrank.reptile_update(
                self.model, self.inner_lr, self.inner_steps, self.outer_lr, self._cast(support_x), support_y
            )
            return
        adapted = self.adapt(support_x, support_y)
        for name, p in self.model.named_parameters():
            p.add_(adapted[name].mean(0) - p, alpha=self.outer_lr)
