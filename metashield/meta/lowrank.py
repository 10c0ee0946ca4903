"""Task-fused inner loop for ReLU MLPs, without ``vmap``: meta-training of MAML, FOMAML and Reptile without
per-task weight tensors, of Meta-SGD with them, and ``adapt`` (no graph) with dense per-task weights.

One SGD step on the mean cross-entropy of S support rows changes a Linear layer's weight by a rank-≤S matrix:
∇W = δᵀa, with a [S, in] the layer's input and δ [S, out] its back-propagated signal. After k steps a task's
weight is W_k = θ − lr Σ_j δ_jᵀ a_j, so for any input u

    u W_kᵀ = u θᵀ − lr (u Aᵀ) Δ,   A = [a_0; …; a_{k−1}] [kS, in],  Δ = [δ_0; …; δ_{k−1}] [kS, out]

The θ term is one GEMM over the T·N rows of all tasks, the task term two thin batched matmuls, and no
[T, out, in] tensor is built, forward or in the outer backward. The first layer always sees the support x, so
its task term is (u xᵀ) Σ_j δ_j; narrow layers (the classifier head) keep dense per-task weights.

Every step is written with differentiable torch ops (the inner gradient is the closed form of softmax
cross-entropy back-propagated through Linear/ReLU, ReLU's mask applied by ``threshold_backward`` as autograd's
own double backward does), so ``backward()`` on the query loss is the exact second-order meta-gradient; only
the order of floating-point sums differs from ``inner.query_losses``. First order runs the inner loop
without a graph (Meta-SGD's keeps one for α's gradient, with every inner gradient cut).

Meta-SGD's per-parameter step sizes break the low rank (α ⊙ δᵀa is a full matrix), so its layers
(``_PerParameter``) carry a dense task term α ⊙ Σ_j δ_jᵀ a_j [T, out, in] beside the shared θ.

``supported`` says where this path is exact; everything else goes through ``metashield.meta.inner``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metashield.models.mlp import linear_stack

_DENSE_MAX_OUT = 16
"""Layers with at most this many outputs keep dense per-task weights (the head: out·in is tiny)."""


def supported(model: nn.Module, loss_fn, *targets: Tensor) -> bool:
    """True where the fused path is exact: Linear/ReLU stack, mean cross-entropy, integer targets [T, N]."""
    return (
        loss_fn is F.cross_entropy
        and all(not y.is_floating_point() and y.dim() == 2 for y in targets)
        and linear_stack(model) is not None
    )


def stack_params(model: nn.Module) -> list[Tensor]:
    """The weight and bias of every Linear layer of a ``supported`` model, in forward order: the order of
    every parameter list (and Meta-SGD step-size list) this module takes and returns."""
    return [t for m in linear_stack(model) for t in (m.weight, m.bias)]


class _LowRank:
    """A hidden layer: W_k = θ − lr Σ_j δ_jᵀ a_j, kept as the factors A [T, kS, in] and Δ [T, kS, out]."""

    def __init__(self, w: Tensor, b: Tensor, lr: float) -> None:
        self.w, self.b, self.lr = w, b, lr
        self.a: Tensor | None = None
        self.d: Tensor | None = None
        self.db: Tensor | None = None  # Σ_j δ_j summed over rows: the bias's accumulated gradient [T, out]

    def forward(self, u: Tensor) -> Tensor:
        y = F.linear(u, self.w, self.b)
        if self.a is None:
            return y
        task = torch.baddbmm(self.db.unsqueeze(1), torch.bmm(u, self.a.transpose(1, 2)), self.d)
        return torch.add(y, task, alpha=-self.lr)

    def input_grad(self, d: Tensor) -> Tensor:
        g = d @ self.w
        if self.a is None:
            return g
        return torch.add(g, torch.bmm(torch.bmm(d, self.d.transpose(1, 2)), self.a), alpha=-self.lr)

    def push(self, a: Tensor, d: Tensor) -> None:
        if self.a is None:
            self.a, self.d, self.db = a, d, d.sum(1)
        else:
            self.a, self.d, self.db = torch.cat([self.a, a], 1), torch.cat([self.d, d], 1), self.db + d.sum(1)


class _First(_LowRank):
    """First layer: its input is the support x at every step, so (u Aᵀ) Δ = (u xᵀ) Σ_j δ_j."""

    def __init__(self, w: Tensor, b: Tensor, lr: float, x: Tensor) -> None:
        super().__init__(w, b, lr)
        self.x = x
        self.gram: Tensor | None = None

    def forward(self, u: Tensor) -> Tensor:
        y = F.linear(u, self.w, self.b)
        if self.d is None:
            return y
        if u is self.x:
            if self.gram is None:
                self.gram = torch.bmm(self.x, self.x.transpose(1, 2))
            g = self.gram
        else:
            g = torch.bmm(u, self.x.transpose(1, 2))
        return torch.add(y, torch.baddbmm(self.db.unsqueeze(1), g, self.d), alpha=-self.lr)

    def push(self, a: Tensor, d: Tensor) -> None:
        if self.d is None:
            self.d, self.db = d, d.sum(1)
        else:
            self.d, self.db = self.d + d, self.db + d.sum(1)


class _Dense(_LowRank):
    """A narrow layer with explicit per-task weights [T, out, in] after the first step."""

    def forward(self, u: Tensor) -> Tensor:
        if self.w.dim() == 2:
            return F.linear(u, self.w, self.b)
        return torch.baddbmm(self.b.unsqueeze(1), u, self.w.transpose(1, 2))

    def input_grad(self, d: Tensor) -> Tensor:
        return d @ self.w if self.w.dim() == 2 else torch.bmm(d, self.w)

    def dense(self, tasks: int) -> tuple[Tensor, Tensor]:
        """This layer's per-task weight [T, out, in] and bias [T, out]."""
        if self.w.dim() == 3:
            return self.w, self.b
        return self.w.expand(tasks, *self.w.shape), self.b.expand(tasks, *self.b.shape)

    def push(self, a: Tensor, d: Tensor) -> None:
        self.w = torch.add(self.w, torch.bmm(d.transpose(1, 2), a), alpha=-self.lr)
        self.b = torch.add(self.b, d.sum(1), alpha=-self.lr)


class _PerParameter:
    """A layer under Meta-SGD's step sizes: W_k = θ − α ⊙ C_k, C_k = Σ_j δ_jᵀ a_j [T, out, in].

    α ⊙ (a low-rank update) is not low rank, so the task term is a dense [T, out, in] tensor; θ's term stays
    one GEMM over the rows of all tasks, so its meta-gradient is one matmul rather than a sum over T of
    per-task weight gradients at every step.
    """

    def __init__(self, w: Tensor, b: Tensor, alpha: tuple[Tensor, Tensor]) -> None:
        self.w, self.b = w, b
        self.alpha_w, self.alpha_b = alpha
        self.c: Tensor | None = None
        self.cb: Tensor | None = None
        self.m: Tensor | None = None  # α ⊙ C_k
        self.mb: Tensor | None = None

    def forward(self, u: Tensor) -> Tensor:
        y = F.linear(u, self.w, self.b)
        if self.m is None:
            return y
        return y - torch.baddbmm(self.mb.unsqueeze(1), u, self.m.transpose(1, 2))

    def input_grad(self, d: Tensor) -> Tensor:
        g = d @ self.w
        return g if self.m is None else g - torch.bmm(d, self.m)

    def dense(self, tasks: int) -> tuple[Tensor, Tensor]:
        w, b = self.w.expand(tasks, *self.w.shape), self.b.expand(tasks, *self.b.shape)
        return (w, b) if self.m is None else (w - self.m, b - self.mb)

    def push(self, a: Tensor, d: Tensor) -> None:
        g, gb = torch.bmm(d.transpose(1, 2), a), d.sum(1)
        self.c, self.cb = (g, gb) if self.c is None else (self.c + g, self.cb + gb)
        self.m, self.mb = self.alpha_w * self.c, self.alpha_b * self.cb


class FusedMLP:
    """The adapted MLP of every task at once; ``step`` is one inner SGD step on the support set.

    ``lr``: one scalar step size, or one step-size tensor per parameter (Meta-SGD, in ``params`` order),
    which makes every layer dense (``_PerParameter``). ``dense``: per-task weights in every layer, for loops
    without a graph.
    """

    def __init__(
        self, params: list[Tensor], lr: float | list[Tensor], x: Tensor, dense: bool = False
    ) -> None:
        self.x = x
        self.layers: list[_LowRank | _PerParameter] = []
        for i in range(len(params) // 2):
            w, b = params[2 * i], params[2 * i + 1]
            if not isinstance(lr, float):
                self.layers.append(_PerParameter(w, b, (lr[2 * i], lr[2 * i + 1])))
            elif dense or w.shape[0] <= _DENSE_MAX_OUT:
                self.layers.append(_Dense(w, b, lr))
            elif i == 0:
                self.layers.append(_First(w, b, lr, x))
            else:
                self.layers.append(_LowRank(w, b, lr))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Logits [T, N, C] and every layer's input (x, then each hidden ReLU output)."""
        inputs = [x]
        h = x
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer.forward(h)
            if i < last:
                h = torch.relu(h)
                inputs.append(h)
        return h, inputs

    def step(self, y: Tensor, detach: bool) -> None:
        z, inputs = self.forward(self.x)
        d = torch.softmax(z, -1) - F.one_hot(y, z.shape[-1]).to(z.dtype)
        d = d / z.shape[1]  # ∂ mean_n CE / ∂ logits
        signals = [d]
        for i in range(len(self.layers) - 1, 0, -1):
            d = torch.ops.aten.threshold_backward(self.layers[i].input_grad(d), inputs[i], 0)
            signals.append(d)
        signals.reverse()
        for layer, a, s in zip(self.layers, inputs, signals, strict=True):
            layer.push(a.detach() if detach else a, s.detach() if detach else s)

    def rebase(self, params: list[Tensor]) -> None:
        """Put live parameters under corrections made without a graph (first order): θ' = θ + (θ'₀ − θ₀)."""
        for i, layer in enumerate(self.layers):
            w, b = params[2 * i], params[2 * i + 1]
            if isinstance(layer, _Dense) and layer.w.dim() == 3:
                layer.w, layer.b = w + (layer.w - w.detach()), b + (layer.b - b.detach())
            else:
                layer.w, layer.b = w, b


def query_loss(
    model: nn.Module,
    lr: float | list[Tensor],
    steps: int,
    first_order: bool,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
) -> Tensor:
    """Mean over tasks of the query cross-entropy after ``steps`` inner steps (``query_losses().mean()``).

    ``lr``: a scalar, or one step-size tensor per parameter in ``linear_stack`` order (Meta-SGD).
    """
    params = stack_params(model)
    if first_order and isinstance(lr, float):
        with torch.no_grad():
            net = FusedMLP([p.detach() for p in params], lr, support_x)
            for _ in range(steps):
                net.step(support_y, detach=True)
        net.rebase(params)
    else:
        # Meta-SGD's step sizes need their gradient through θ − α ⊙ g even at first order, so its loop keeps
        # a graph and only cuts the inner gradients; the rebase above would detach α's part too.
        net = FusedMLP(params, lr, support_x)
        for _ in range(steps):
            net.step(support_y, detach=first_order)
    z, _ = net.forward(query_x)
    return F.cross_entropy(z.reshape(-1, z.shape[-1]), query_y.reshape(-1))


@torch.no_grad()
def adapt(
    model: nn.Module, lr: float | list[Tensor], steps: int, x: Tensor, y: Tensor, frozen: int = 0
) -> list[Tensor]:
    """Adapted parameters without a graph, in ``linear_stack`` order: weight [T, out, in], bias [T, out], ….

    ``frozen``: leading Linear layers that do not adapt (ANIL's body); ``lr`` then covers the others only.
    Unchanged parameters (frozen, or no steps) come back as expanded views of the shared tensor, as ``vmap``
    gives them.
    """
    params = [t.detach() for t in stack_params(model)]
    if not 0 <= frozen < len(params) // 2:
        raise ValueError(f"frozen must be in [0, {len(params) // 2 - 1}], got {frozen}")
    tasks = x.shape[0]
    kept = [t.expand(tasks, *t.shape) for t in params[: 2 * frozen]]
    # The frozen layers' output does not change across inner steps: computed once, on all tasks' rows.
    h = x
    for i in range(frozen):
        h = torch.relu(F.linear(h, params[2 * i], params[2 * i + 1]))
    # Without a graph the low-rank factors buy nothing, and they grow with every step (fine-tuning takes
    # up to 100): dense per-task weights cost the same at every step.
    net = FusedMLP(params[2 * frozen :], lr if isinstance(lr, float) else [a.detach() for a in lr], h, True)
    for _ in range(steps):
        net.step(y, detach=True)
    return kept + [t for layer in net.layers for t in layer.dense(tasks)]


def predict(params: list[Tensor], x: Tensor) -> Tensor:
    """The MLP's forward under per-task parameters in ``stack_params`` order ([T, out, in], [T, out], …):
    x [T, M, in] -> [T, M, C], one batched matmul per layer (no ``vmap``)."""
    h = x
    last = len(params) // 2 - 1
    for i in range(last + 1):
        w, b = params[2 * i], params[2 * i + 1]
        h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        if i < last:
            h = torch.relu(h)
    return h


@torch.no_grad()
def reptile_update(model: nn.Module, lr: float, steps: int, outer_lr: float, x: Tensor, y: Tensor) -> None:
    """θ ← θ + outer_lr · mean_t(θ'_t − θ) in place, θ'_t after ``steps`` SGD steps; one GEMM per layer."""
    linears = linear_stack(model)
    net = FusedMLP([p.detach() for p in stack_params(model)], lr, x)
    for _ in range(steps):
        net.step(y, detach=True)
    scale = -lr * outer_lr / x.shape[0]  # mean_t(θ'_t − θ) = −lr/T · Σ_t Σ_j δ_tjᵀ a_tj
    for m, layer in zip(linears, net.layers, strict=True):
        if isinstance(layer, _Dense):
            if layer.w.dim() == 3:
                m.weight.add_(layer.w.mean(0) - m.weight, alpha=outer_lr)
                m.bias.add_(layer.b.mean(0) - m.bias, alpha=outer_lr)
            continue
        if layer.d is None:  # steps == 0
            continue
        a = x if isinstance(layer, _First) else layer.a  # _First.d is already Σ_j δ_j
        m.weight.add_(layer.d.flatten(0, 1).T @ a.flatten(0, 1), alpha=scale)
        m.bias.add_(layer.db.sum(0), alpha=scale)
