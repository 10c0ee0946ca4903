"""The attack objective of a Linear/ReLU classifier with its input gradient in closed form.

An attack needs, at every step, the loss, the score and d loss / d x — never gradients of the weights. For a
Linear → ReLU → … → Linear stack that is one forward pass that keeps each ReLU's mask and one backward pass
of matmuls by the weights, masked: dx = (((dz W_L) ⊙ m_{L-1}) W_{L-1} ⊙ …) W_1, with dz = softmax(z) − e_y
for cross-entropy or −(e_y − e_j*) for the margin z_y − z_j*. Written out, it skips autograd's graph and the
weight-gradient bookkeeping, and runs the ReLUs in place; ``value_and_grad`` is what the engine calls
instead of autograd when an objective offers it. Weights may be shared ([out, in]) or per task
([T, out, in], as adapted learners return them; then inputs are [T, M, in]).

``restrict`` turns the objective into one of the columns that can move alone (an attack under a threat
schema: NSL-KDD's leaves 47 of 121 free). The first layer's product with the fixed columns is then computed
once per attack instead of twice per step (forward and backward), and the engine keeps its iterates in
those columns only.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metashield.models.mlp import linear_stack

Layers = list[tuple[Tensor, Tensor]]
ALIGN = 16  # floats per AVX-512 register


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
    offset: set by ``restrict`` only: the first layer's output share of the fixed columns, per row, used in
    place of its bias.
    """

    def __init__(self, layers: Layers, y: Tensor, loss: str, *, offset: Tensor | None = None) -> None:
        if loss not in ("ce", "margin"):
            raise ValueError(f"loss must be 'ce' or 'margin', got {loss!r}")
        self.layers, self.y, self.loss = layers, y, loss
        self.batched = layers[0][0].dim() == 3
        # The first layer's backward writes one column per input feature; MKL's kernels run up to twice as
        # fast when that width is a multiple of the AVX-512 vector (16 floats), so it multiplies by a copy of
        # the weight padded with zero columns and drops them afterwards.
        w = layers[0][0]
        self.back0 = F.pad(w, (0, -w.shape[-1] % ALIGN)) if w.shape[-1] % ALIGN else w
        self.offset = offset

    def restrict(self, x0: Tensor, columns: Tensor) -> MLPObjective:
        """This objective as a function of ``x[..., columns]`` for inputs that equal ``x0`` [..., D]
        elsewhere: it takes [..., k] inputs of the k selected columns and returns their gradient.

        columns: a bool mask [D], or int64 indices [k] in the order the inputs hold them. Only for an attack
        whose every iterate keeps the other columns at ``x0`` and whose step ignores their gradient (sign
        steps and edits): the engine then works in the selected columns alone.
        """
        if self.offset is not None:
            raise ValueError("the objective is already restricted")
        columns = columns.to(x0.device)
        free = columns.nonzero().squeeze(-1) if columns.dtype == torch.bool else columns
        held = torch.ones(x0.shape[-1], dtype=torch.bool, device=x0.device)
        held[free] = False
        fixed = held.nonzero().squeeze(-1)
        (w, b), *rest = self.layers
        offset = self._linear(x0.detach().index_select(-1, fixed), w.index_select(-1, fixed), b)
        return MLPObjective([(w.index_select(-1, free), b), *rest], self.y, self.loss, offset=offset)

    def _linear(self, h: Tensor, w: Tensor, b: Tensor) -> Tensor:
        """h [..., in] -> h W^T + b; b [out] or per task [T, out], or per row [..., out] (a fixed offset)."""
        if self.batched:
            return torch.baddbmm(b if b.dim() == h.dim() else b.unsqueeze(1), h, w.transpose(1, 2))
        if b.dim() == h.dim():
            return torch.addmm(b.reshape(-1, b.shape[-1]), h.reshape(-1, h.shape[-1]), w.t()).view(b.shape)
        return F.linear(h, w, b)

    def _forward(self, x: Tensor, hidden: list[Tensor] | None) -> Tensor:
        """Logits at x [..., D]; ``hidden`` collects each ReLU's output for the backward pass."""
        h, first_bias = x, self.layers[0][1] if self.offset is None else self.offset
        for i, (w, b) in enumerate(self.layers):
            h = self._linear(h, w, first_bias if i == 0 else b)
            if i < len(self.layers) - 1:
                h = h.clamp_min_(0)
                if hidden is not None:
                    hidden.append(h)
        return h

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
            hidden: list[Tensor] = []
            z = self._forward(x, hidden)
            loss, score, j = self._loss_score(z)
            true = F.one_hot(self.y, z.shape[-1]).to(z.dtype)
            if self.loss == "margin":
                dz = F.one_hot(j, z.shape[-1]).to(z.dtype) - true
            else:
                dz = torch.softmax(z, -1) - true
            g = dz
            for i in range(len(self.layers) - 1, -1, -1):
                w = self.layers[i][0] if i > 0 else self.back0
                g = torch.bmm(g, w) if self.batched else g @ w
                if i > 0:
                    # ReLU's backward from its output, in one pass (no boolean mask to build and multiply).
                    g = torch.ops.aten.threshold_backward(g, hidden[i - 1], 0)
            g = g[..., : self.layers[0][0].shape[-1]]
        return loss, score, g
