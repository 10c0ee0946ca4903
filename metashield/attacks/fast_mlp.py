"""The attack objective of a Linear/ReLU classifier with its input gradient in closed form.

An attack needs, at every step, the loss, the score and d loss / d x — never gradients of the weights. For a
Linear → ReLU → … → Linear stack that is one forward pass that keeps each ReLU's mask and one backward pass
of matmuls by the weights, masked: dx = (((dz W_L) ⊙ m_{L-1}) W_{L-1} ⊙ …) W_1, with dz = softmax(z) − e_y
for cross-entropy or −(e_y − e_j*) for the margin z_y − z_j*. Written out, it skips autograd's graph and the
weight-gradient bookkeeping, and runs the ReLUs in place; ``value_and_grad`` is what the engine calls
instead of autograd when an objective offers it. Weights may be shared ([out, in]) or per task
([T, out, in], as adapted learners return them; then inputs are [T, M, in]).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metashield.models.mlp import linear_stack

Layers = list[tuple[Tensor, Tensor]]


def mlp_layers(model: nn.Module, params: Mapping[str, Tensor] | None = None) -> Layers | None:
    """(weight, bias) of each Linear of a Linear/ReLU stack, else None.

    params: name -> tensor as in ``model.named_parameters()``, e.g. a learner's adapted [T, *shape] params;
    default the model's own (detached) parameters.
    """
    linears = linear_stack(model)
    if linears is None:
        return None
    names = {id(p): n for n, p in model.named_parameters()}

    def get(p: Tensor) -> Tensor:
        return (params[names[id(p)]] if params is not None else p).detach()

    layers = [(get(m.weight), get(m.bias)) for m in linears]
    if len({w.dim() for w, _ in layers}) != 1:
        # ANIL-style params mix shared and per-task tensors; per-task views of the shared ones keep it simple.
        t = max(w.shape[0] for w, _ in layers if w.dim() == 3)
        layers = [
            (w if w.dim() == 3 else w.expand(t, *w.shape), b if b.dim() == 2 else b.expand(t, *b.shape))
            for w, b in layers
        ]
    return layers


class MLPObjective:
    """``classifier_objective`` of a Linear/ReLU stack, plus ``value_and_grad`` without autograd.

    layers: from ``mlp_layers``. y: int64 true labels of the unit shape. loss: ``ce`` or ``margin``.
    """

    def __init__(self, layers: Layers, y: Tensor, loss: str) -> None:
        if loss not in ("ce", "margin"):
            raise ValueError(f"loss must be 'ce' or 'margin', got {loss!r}")
        self.layers, self.y, self.loss = layers, y, loss
        self.batched = layers[0][0].dim() == 3

    def _linear(self, h: Tensor, w: Tensor, b: Tensor) -> Tensor:
        if self.batched:
            return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        return F.linear(h, w, b)

    def _forward(self, x: Tensor, masks: list[Tensor] | None) -> Tensor:
        h = x
        for w, b in self.layers[:-1]:
            h = self._linear(h, w, b)
            if masks is not None:
                masks.append(h > 0)
            h = h.clamp_min_(0)
        return self._linear(h, *self.layers[-1])

    def _loss_score(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, margin score, index of the strongest other class)."""
        true = z.gather(-1, self.y.unsqueeze(-1)).squeeze(-1)
        others = z.scatter(-1, self.y.unsqueeze(-1), -torch.inf)
        best_other, j = others.max(-1)
        score = true - best_other
        loss = -score if self.loss == "margin" else torch.logsumexp(z, -1) - true
        return loss, score, j

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            loss, score, _ = self._loss_score(self._forward(x, None))
        return loss, score

    def value_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, score, d sum(loss) / d x) at x [..., D]."""
        with torch.no_grad():
            masks: list[Tensor] = []
            z = self._forward(x, masks)
            loss, score, j = self._loss_score(z)
            true = F.one_hot(self.y, z.shape[-1]).to(z.dtype)
            if self.loss == "margin":
                dz = F.one_hot(j, z.shape[-1]).to(z.dtype) - true
            else:
                dz = torch.softmax(z, -1) - true
            g = dz
            for i in range(len(self.layers) - 1, -1, -1):
                w = self.layers[i][0]
                g = torch.bmm(g, w) if self.batched else g @ w
                if i > 0:
                    g.mul_(masks[i - 1])
        return loss, score, g
