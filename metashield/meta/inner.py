"""The one functional inner loop that every gradient-based learner shares.

``adapt_task`` adapts a parameter dict to the support set of ONE task; ``adapt_tasks`` and ``query_losses``
vmap it over the task dimension. The initial parameters enter every task unbatched, so the first inner forward
of each layer is a single matmul over all ``T*S`` support rows; after the first step the weights carry a task
dimension and vmap turns each layer into a batched matmul.

Second order: ``torch.func.grad`` only takes the inner derivative; it does not cut the ordinary autograd
graph that connects its output to the initial parameters (and to Meta-SGD's step sizes). A ``backward()`` on
the query loss therefore differentiates through the inner gradient, Hessian-vector products included. First
order detaches each inner gradient, so the adapted parameters depend on the initial ones only through the
identity path of θ − lr·g.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from functools import partial

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

LossFn = Callable[[Tensor, Tensor], Tensor]
Params = dict[str, Tensor]
StepSizes = float | Mapping[str, Tensor]
"""One learning rate for every adapted parameter, or one step-size tensor per adapted parameter (Meta-SGD)."""


def task_loss(loss_fn: LossFn, outputs: Tensor, targets: Tensor) -> Tensor:
    """``loss_fn(outputs, targets)`` for one task; float targets [N] meet outputs [N, 1] as [N, 1].

    Regression nets end in one unit while targets are naturally [N]; without the reshape MSE would silently
    broadcast [N, 1] against [N] to [N, N].
    """
    if targets.is_floating_point() and targets.dim() == outputs.dim() - 1 and outputs.shape[-1] == 1:
        targets = targets.unsqueeze(-1)
    return loss_fn(outputs, targets)


def adapt_task(
    params: Params,
    step_sizes: StepSizes,
    x: Tensor,
    y: Tensor,
    *,
    module: nn.Module,
    loss_fn: LossFn,
    adapted: Collection[str],
    steps: int,
    first_order: bool,
) -> Params:
    """``steps`` full-batch gradient steps on the mean support loss of one task: θ ← θ − lr ⊙ ∇L(θ).

    params: name -> tensor as in ``module.named_parameters()``; only names in ``adapted`` move, the rest are
    returned as given. x [S, D], y [S, ...]. Returns the adapted dict with the same keys.
    """
    fast = dict(params)
    for _ in range(steps):
        frozen = {n: p for n, p in fast.items() if n not in adapted}

        def support_loss(trainable: Params, frozen: Params = frozen) -> Tensor:
            return task_loss(loss_fn, functional_call(module, {**frozen, **trainable}, (x,)), y)

        grads = grad(support_loss)({n: fast[n] for n in adapted})
        for n, g in grads.items():
            if first_order:
                g = g.detach()
            # One fused kernel per update instead of a scale then a subtraction over [T, *shape].
            if isinstance(step_sizes, float):
                fast[n] = torch.add(fast[n], g, alpha=-step_sizes)
            else:
                fast[n] = torch.addcmul(fast[n], step_sizes[n], g, value=-1)
    return fast


def adapt_tasks(
    params: Params, step_sizes: StepSizes, support_x: Tensor, support_y: Tensor, **loop
) -> Params:
    """``adapt_task`` vmapped over tasks: support_x [T, S, D], support_y [T, S, ...] -> name -> [T, *shape].

    ``loop`` holds ``adapt_task``'s keyword arguments. Parameters that do not adapt come back as expanded
    (stride-0) views of the shared tensor, which is how vmap returns an output that has no task dimension.
    """
    return vmap(partial(adapt_task, **loop), in_dims=(None, None, 0, 0))(
        params, step_sizes, support_x, support_y
    )


def query_losses(
    params: Params,
    step_sizes: StepSizes,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    **loop,
) -> Tensor:
    """Per-task query loss after adaptation, [T]; adapts and evaluates inside one vmap.

    Evaluating inside the same vmap keeps non-adapted parameters unbatched, so they are never expanded to
    [T, ...] and their layers stay plain matmuls over all tasks' rows.
    """

    def one_task(
        params: Params, step_sizes: StepSizes, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor
    ) -> Tensor:
        fast = adapt_task(params, step_sizes, sx, sy, **loop)
        return task_loss(loop["loss_fn"], functional_call(loop["module"], fast, (qx,)), qy)

    return vmap(one_task, in_dims=(None, None, 0, 0, 0, 0))(
        params, step_sizes, support_x, support_y, query_x, query_y
    )


def predict_tasks(module: nn.Module, params: Params, x: Tensor) -> Tensor:
    """Per-task forward pass: params name -> [T, *shape], x [T, M, D] -> outputs [T, M, ...]."""
    return vmap(lambda p, xt: functional_call(module, p, (xt,)))(params, x)
