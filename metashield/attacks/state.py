"""The state one attack call shares with its step rule: the columns the iterates hold, the projection, and
the best iterate per unit; and the step's hot functions, through ``torch.compile`` when asked.

The hot functions (the objective with the best-iterate bookkeeping, the projection, a projected step) take
the ``AttackRun`` as an argument instead of closing over it, so one compiled version serves every call of a
process whose tensors have the same shapes and dtypes.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from metashield.attacks.constraints import Constraints

if TYPE_CHECKING:
    from metashield.attacks.engine import Attack, Objective

_compile_default = False
_compiled: dict[str, Callable] = {}


def set_compile(enabled: bool) -> None:
    """Default of ``perturb(compile=...)`` for this process (the CLI's ``--compile``)."""
    global _compile_default
    _compile_default = bool(enabled)


def compile_default() -> bool:
    """What ``perturb(compile=None)`` does in this process."""
    return _compile_default


def compile_unavailable() -> str | None:
    """Why ``torch.compile`` cannot build its CPU kernels here, or None: it needs a C++ compiler and the
    Python headers."""
    if not any(map(shutil.which, (os.environ.get("CXX", "c++"), "g++", "clang++"))):
        return "no C++ compiler (c++, g++ or clang++ on PATH, or $CXX)"
    include = Path(sysconfig.get_paths()["include"])
    if not (include / "Python.h").is_file():
        return f"no Python headers ({include / 'Python.h'} is missing)"
    return None


def _fn(name: str, compile: bool) -> Callable:
    """One of the step's hot functions, through ``torch.compile`` when asked.

    Each is compiled once per process and takes the objects it works on as arguments, so a new attack call
    reuses the compiled code: the guards check their tensors' shapes and dtypes, not their identity.
    """
    fn = _STEP_FUNCTIONS[name]
    if not compile:
        return fn
    if name not in _compiled:
        _compiled[name] = torch.compile(fn)
    return _compiled[name]


def unit_rows(unit: Tensor, x: Tensor) -> Tensor:
    """A unit-shaped tensor broadcast over the rows and features of ``x``."""
    return unit.reshape(unit.shape + (1,) * (x.dim() - unit.dim()))


def step_direction(g: Tensor, norm: str) -> Tensor:
    if norm == "linf":
        return g.sign()
    return g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class AttackRun:
    """State shared by the step rules of one call: projection, frozen rows, best-so-far per unit."""

    def __init__(
        self,
        objective: Objective,
        x0: Tensor,
        eps: float,
        attack: Attack,
        constraints: Constraints,
        free: Tensor | None,
        compile: bool = False,
    ) -> None:
        self.full_x0, self.full_constraints, self.columns = x0, constraints, None
        self.compile = compile
        # Sign steps and edits never use the gradient of an immutable column, and the projection holds those
        # columns at x0. So where the objective can (``MLPObjective.restrict``), the iterates hold the
        # mutable columns only: the objective precomputes the rest, and every step's elementwise work and
        # projection shrink to those columns (47 of NSL-KDD's 121). L2 steps normalise the whole gradient,
        # so they keep the full objective.
        restrict = getattr(objective, "restrict", None)
        if restrict is not None and attack.norm != "l2" and not bool(constraints.mutable.all()):
            # In the projection's block order, so that it reads each kind of column as one slice.
            self.columns = constraints.block_order(constraints.mutable)
            objective = restrict(x0, self.columns)
            constraints = constraints.select(self.columns)
            x0 = x0.index_select(-1, self.columns)
        self.objective, self.x0, self.eps, self.attack = objective, x0, eps, attack
        self.constraints = constraints
        self.free = None if free is None else free.unsqueeze(-1)
        self.projector = constraints.projector(x0, eps, attack.norm)
        self.track = attack.keep == "best"
        with torch.no_grad():
            _, score = _fn("value", compile)(objective, x0)
        self.best_x, self.best_score = x0.clone(), score.detach().clone()

    def narrow(self, t: Tensor) -> Tensor:
        """The columns of full-width ``t`` [..., D] that the iterates hold."""
        return t if self.columns is None else t.index_select(-1, self.columns)

    def widen(self, x: Tensor) -> Tensor:
        """An iterate as a full input [..., D]: x0 outside the columns it holds."""
        return x if self.columns is None else self.full_x0.index_copy(-1, self.columns, x)

    def project(self, x: Tensor) -> Tensor:
        return _fn("project", self.compile)(self, x)

    def ascend(self, x: Tensor, g: Tensor, size: float | Tensor) -> Tensor:
        """project(x + size * the step direction of g): sign (L∞) or unit gradient (L2); size float or
        unit-shaped."""
        if self.compile and not isinstance(size, Tensor):
            # torch.compile bakes a Python float into the graph, so every new step size would compile anew.
            size = torch.tensor(size, dtype=x.dtype, device=x.device)
        return _fn("ascend", self.compile)(self, x, g, size)

    def evaluate(self, x: Tensor, need_grad: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """(loss, score, gradient of the summed loss w.r.t. x or None), recording the best iterate."""
        if need_grad and not hasattr(self.objective, "value_and_grad"):
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                loss, score = _fn("value", self.compile)(self.objective, xg)
                (g,) = torch.autograd.grad(loss.sum(), xg)
            loss, score = loss.detach(), score.detach()
            best = _fn("record", self.compile)(self, x, score) if self.track else None
        else:
            name = "evaluate_grad" if need_grad else "evaluate"
            loss, score, g, best = _fn(name, self.compile)(self, x)
        if best is not None:
            self.best_score, self.best_x = best
        return loss, score, g


def _record(run: AttackRun, x: Tensor, score: Tensor) -> tuple[Tensor, Tensor]:
    """(best score, best iterate) per unit once ``x`` with ``score`` is seen."""
    better = score < run.best_score
    return torch.where(better, score, run.best_score), torch.where(unit_rows(better, x), x, run.best_x)


def _evaluate(run: AttackRun, x: Tensor) -> tuple[Tensor, Tensor, None, tuple[Tensor, Tensor] | None]:
    with torch.no_grad():
        loss, score = run.objective(x)
    return loss, score, None, _record(run, x, score) if run.track else None


def _evaluate_grad(run: AttackRun, x: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor] | None]:
    loss, score, g = run.objective.value_and_grad(x)
    return loss, score, g, _record(run, x, score) if run.track else None


def _project(run: AttackRun, x: Tensor) -> Tensor:
    x = run.projector(x)
    return x if run.free is None else torch.where(run.free, x, run.x0)


def _ascend(run: AttackRun, x: Tensor, g: Tensor, size: float | Tensor) -> Tensor:
    if isinstance(size, Tensor):
        size = unit_rows(size, x)
    return _project(run, x + size * step_direction(g, run.attack.norm))


_STEP_FUNCTIONS: dict[str, Callable] = {
    "value": lambda objective, x: objective(x),
    "record": _record,
    "evaluate": _evaluate,
    "evaluate_grad": _evaluate_grad,
    "project": _project,
    "ascend": _ascend,
}
