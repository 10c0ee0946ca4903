"""MAML, Meta-SGD and ANIL: one shared inner loop (``metashield.meta.inner``) with different step sizes and
different sets of adapted parameters.

Every learner registers the model it is given as the submodule ``model``, so its first parameters are the
model's own Parameter objects and a meta-gradient lands on their ``.grad``. Episode tensors are [T, N, D]
inputs with [T, N, ...] targets; floating inputs and targets are cast to the model's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metashield.meta import lowrank
from metashield.meta._checks import check_episode, check_x
from metashield.meta.inner import LossFn, Params, StepSizes, adapt_tasks, predict_tasks, query_losses
from metashield.models.mlp import linear_stack


class GradientLearner(nn.Module):
    """Shared state and ``adapt``/``predict`` of the learners built on the inner loop.

    model: the network to adapt. inner_lr: inner step size. inner_steps: full-batch gradient steps on the
    support set. first_order: detach every inner gradient. loss_fn: ``(outputs, targets) -> scalar``, mean
    cross-entropy by default; float targets [T, S] meet single-output nets as [T, S, 1], so ``F.mse_loss``
    works for regression directly.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 5,
        first_order: bool = False,
        loss_fn: LossFn | None = None,
    ) -> None:
        super().__init__()
        if inner_steps < 0:
            raise ValueError(f"inner_steps must be >= 0, got {inner_steps}")
        if not any(True for _ in model.parameters()):
            raise ValueError("model has no parameters to adapt")
        self.model = model
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.first_order = first_order
        self.loss_fn = loss_fn if loss_fn is not None else F.cross_entropy

    def _adapted(self) -> tuple[str, ...]:
        """Names of the parameters that the inner loop moves; all of them unless a subclass narrows it."""
        return tuple(n for n, _ in self.model.named_parameters())

    def _step_sizes(self) -> StepSizes:
        return self.inner_lr

    def _loop(self) -> dict:
        """Keyword arguments of ``inner.adapt_task`` for this learner."""
        return {
            "module": self.model,
            "loss_fn": self.loss_fn,
            "adapted": self._adapted(),
            "steps": self.inner_steps,
            "first_order": self.first_order,
        }

    def _fused(self, *targets: Tensor) -> bool:
        """Whether ``metashield.meta.lowrank`` computes this learner's loop exactly: every parameter of a
        Linear/ReLU stack adapts under mean cross-entropy (MAML, FOMAML, Meta-SGD, Reptile on ``MLP``)."""
        return self._frozen_layers(*targets) == 0

    def _frozen_layers(self, *targets: Tensor) -> int | None:
        """How many leading Linear layers do not adapt, where ``lowrank`` supports the model and targets
        and the adapted parameters are exactly the weights and biases of the layers after them; else None
        (ANIL on ``MLP``: the body's layers)."""
        if lowrank.supported(self.model, self.loss_fn, *targets):
            names = self._stack_names()
            adapted = set(self._adapted())
            for frozen in range(len(names) // 2):
                if adapted == set(names[2 * frozen :]):
                    return frozen
        return None

    def _stack_names(self) -> list[str]:
        """Parameter names in ``lowrank.stack_params`` order, the order of every list the fused path takes."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        return [names[id(t)] for t in lowrank.stack_params(self.model)]

    def _fused_step_sizes(self) -> float | list[Tensor]:
        """The step size(s) in ``lowrank``'s order: the scalar, or Meta-SGD's tensors layer by layer."""
        sizes = self._step_sizes()
        return sizes if isinstance(sizes, float) else [sizes[n] for n in self._stack_names()]

    def _fused_adapt(self, support_x: Tensor, support_y: Tensor, frozen: int) -> Params:
        """``adapt`` without a graph on the fused path, keyed like ``model.named_parameters()``."""
        sizes = self._fused_step_sizes()
        sizes = sizes if isinstance(sizes, float) else sizes[2 * frozen :]
        adapted = lowrank.adapt(self.model, sizes, self.inner_steps, support_x, support_y, frozen)
        by_name = dict(zip(self._stack_names(), adapted, strict=True))
        return {n: by_name[n] for n, _ in self.model.named_parameters()}

    def _cast(self, t: Tensor) -> Tensor:
        """Floating tensors in the model's dtype; integer class labels unchanged."""
        dtype = next(self.model.parameters()).dtype
        return t.to(dtype) if t.is_floating_point() else t

    def adapt(self, support_x: Tensor, support_y: Tensor) -> Params:
        """Adapted parameters per task: support [T, S, D], [T, S, ...] -> name -> [T, *shape].

        Keys are exactly ``model.named_parameters()`` names. Parameters the learner does not adapt (ANIL's
        body) are stride-0 expanded views of the shared tensor, not copies. Differentiable w.r.t. the
        learner's parameters under autograd; under ``torch.no_grad()`` the inner gradients are still computed
        but no outer graph is built.
        """
        check_episode(support_x, support_y, None, None)
        frozen = self._frozen_layers(support_y)
        if not torch.is_grad_enabled() and frozen is not None:
            return self._fused_adapt(self._cast(support_x), support_y, frozen)
        params = dict(self.model.named_parameters())
        if not torch.is_grad_enabled():
            # vmap hands back non-adapted inputs as views that keep requires_grad even under no_grad.
            params = {n: p.detach() for n, p in params.items()}
        return adapt_tasks(
            params, self._step_sizes(), self._cast(support_x), self._cast(support_y), **self._loop()
        )

    def predict(self, params: Params, x: Tensor) -> Tensor:
        """Outputs of the model under per-task params (name -> [T, *shape]): x [T, M, D] -> [T, M, C]."""
        tasks = {p.shape[0] for p in params.values()}
        if len(tasks) != 1:
            raise ValueError(f"params must all have the same leading task dimension T, got {sorted(tasks)}")
        check_x("x", x, tasks=tasks.pop())
        if linear_stack(self.model) is not None:
            return lowrank.predict([params[n] for n in self._stack_names()], self._cast(x))
        return predict_tasks(self.model, params, self._cast(x))


class MetaLearner(GradientLearner):
    """A gradient learner trained by back-propagating the query loss through the inner loop."""

    def outer_loss(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor) -> Tensor:
        """Mean over tasks of the query loss after adaptation (a scalar to ``backward()``).

        support [T, S, D], [T, S, ...]; query [T, Q, D], [T, Q, ...].
        """
        check_episode(support_x, support_y, query_x, query_y)
        if self._fused(support_y, query_y):
            return lowrank.query_loss(
                self.model,
                self._fused_step_sizes(),
                self.inner_steps,
                self.first_order,
                self._cast(support_x),
                support_y,
                self._cast(query_x),
                query_y,
            )
        losses = query_losses(
            dict(self.model.named_parameters()),
            self._step_sizes(),
            self._cast(support_x),
            self._cast(support_y),
            self._cast(query_x),
            self._cast(query_y),
            **self._loop(),
        )
        return losses.mean()


class MAML(MetaLearner):
    """Model-Agnostic Meta-Learning (Finn et al., 2017); ``first_order=True`` gives FOMAML.

    Every parameter adapts with the scalar step ``inner_lr``; second order unless ``first_order``.
    """


class MetaSGD(MetaLearner):
    """Meta-SGD (Li et al., 2017): θ' = θ − α ⊙ ∇L with a learned step-size tensor α per parameter.

    ``parameters()`` yields the model's θ, then the raw α tensors (same shapes, same order, initialised to
    ``inner_lr``, shared by all inner steps). α is used as is: it may turn negative, as in the paper.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        first_order: bool = False,
        loss_fn: LossFn | None = None,
    ) -> None:
        super().__init__(model, inner_lr, inner_steps, first_order, loss_fn)
        self.step_sizes = nn.ParameterList(
            nn.Parameter(torch.full_like(p, self.inner_lr)) for p in self.model.parameters()
        )

    def _step_sizes(self) -> StepSizes:
        names = (n for n, _ in self.model.named_parameters())
        return dict(zip(names, self.step_sizes, strict=True))


class ANIL(MetaLearner):
    """Almost No Inner Loop (Raghu et al., 2020): only parameters under ``head`` adapt.

    The body gets its meta-gradient through the query loss only; ``adapt`` returns it as expanded views.
    """

    def __init__(
        self,
        model: nn.Module,
        head: str = "head",
        inner_lr: float = 0.01,
        inner_steps: int = 5,
        first_order: bool = False,
        loss_fn: LossFn | None = None,
    ) -> None:
        super().__init__(model, inner_lr, inner_steps, first_order, loss_fn)
        self.head = head
        if not self._adapted():
            raise ValueError(f"head={head!r} matches no parameter of the model")

    def _adapted(self) -> tuple[str, ...]:
        return tuple(
            n for n, _ in self.model.named_parameters() if n == self.head or n.startswith(self.head + ".")
        )
