"""The one evasion engine: loss x step rule x constraint projection x initialisation.

An attack optimises inputs ``x`` [..., D] (rows: samples, or the rows of support sets) against an
*objective* ``x -> (loss, score)``: the attacker ascends ``loss`` (gradient rules) and wants ``score`` low
(the detector's attack score, e.g. the logit margin z_attack - z_benign). Both have a *unit* shape that is a
prefix of the row shape: one value per sample for query attacks, one per task when a whole support set is the
unit. Every iterate goes through ``Constraints.project``; the engine keeps, per unit, the iterate with the
lowest score (the original input included, so an attack never helps the detector), unless ``keep="last"``.

Step rules: ``pgd`` (fixed step, sign for L∞, normalised gradient for L2; FGSM is one full-size step),
``apgd`` (momentum and a per-unit step size halved at checkpoints when progress stalls, after Croce & Hein,
ICML 2020) and ``square`` (score-based random search over vertices of the ball, after Andriushchenko et al.,
ECCV 2020, without gradients: the check for gradient masking). Initialisation: the input, a random point
of the ball, or ``benign``: the best-scoring of the benign rows (of ``guides``, rows the attacker has seen)
that the constraints let it come closest to, projected into the ball; the mimicry attack of Šrndić & Laskov
(IEEE S&P 2014) as the start of a gradient attack. It aims at evasions that a gradient from the input can
miss on a detector with a distance-to-benign term (``evaluation.novelty``), whose gradient points at the
current nearest benign rows only.

``greedy`` spends a budget of ``eps`` whole edits (norm ``edits``: one word, flag or count more or fewer),
each on the feature whose edit the gradient says helps most, in the spirit of the feature-addition attacks
on Android malware detectors (Grosse et al., ESORICS 2017); it is the budget that means something for binary
and count features.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from metashield.attacks import rules, state
from metashield.attacks.constraints import Constraints, check_eps, check_norm
from metashield.attacks.starts import GUIDE_CANDIDATES, guide_starts, random_start
from metashield.attacks.state import AttackRun, set_compile

__all__ = ["Attack", "Objective", "classifier_objective", "margin", "perturb", "set_compile"]

Objective = Callable[[Tensor], tuple[Tensor, Tensor]]
"""x [..., D] -> (loss to ascend, score the attacker wants low), both of the unit shape. An objective may
also offer ``value_and_grad(x) -> (loss, score, d sum(loss)/dx)``, used instead of autograd, and
``restrict(x0, columns)``, the objective as a function of the columns that move alone, the others held at
x0 (``attacks.fast_mlp``)."""

LOSSES = ("ce", "margin")
RULES = tuple(rules.RULES)
STARTS = ("input", "random", "benign")


@dataclass(frozen=True)
class Attack:
    """One attack configuration; ``eps`` is given per call so one attack serves a list of budgets.

    loss: ``ce`` (cross-entropy of the true class) or ``margin`` (CW-style z_true - max other z; binary safe).
    rule: ``pgd``, ``apgd`` or ``square``. norm: ``linf`` or ``l2`` (z-units). steps: iterations per restart.
    step_size: PGD step as a fraction of eps. restarts: independent runs, the best per unit kept.
    start: ``input``, ``random`` (a random feasible point of the ball) or ``benign`` (restart i from the
    i-th best of the projected ``guides``; see the module docstring).
    keep: ``best`` (lowest score over all iterates) or ``last`` (final iterate, as torchattacks and ART).
    """

    name: str
    loss: str = "ce"
    rule: str = "pgd"
    norm: str = "linf"
    steps: int = 20
    step_size: float = 0.25
    restarts: int = 1
    start: str = "random"
    keep: str = "best"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"attack {self.name!r}: loss must be one of {LOSSES}, got {self.loss!r}")
        if self.rule not in RULES:
            raise ValueError(f"attack {self.name!r}: rule must be one of {RULES}, got {self.rule!r}")
        check_norm(self.norm)
        if (self.rule == "greedy") != (self.norm == "edits"):
            raise ValueError(f"attack {self.name!r}: rule 'greedy' and norm 'edits' go together")
        if self.steps < 1 or self.restarts < 1:
            raise ValueError(f"attack {self.name!r}: steps and restarts must be >= 1")
        if not (self.step_size > 0 and math.isfinite(self.step_size)):
            raise ValueError(f"attack {self.name!r}: step_size must be > 0, got {self.step_size}")
        if self.start not in STARTS:
            raise ValueError(f"attack {self.name!r}: start must be one of {STARTS}, got {self.start!r}")
        if self.start == "benign" and self.rule not in ("pgd", "apgd"):
            raise ValueError(f"attack {self.name!r}: a benign start goes with rule 'pgd' or 'apgd'")
        if self.start == "benign" and self.restarts > GUIDE_CANDIDATES:
            raise ValueError(
                f"attack {self.name!r}: a benign start has {GUIDE_CANDIDATES} guides per row to restart from"
            )
        if self.keep not in ("best", "last"):
            raise ValueError(f"attack {self.name!r}: keep must be 'best' or 'last', got {self.keep!r}")
        if self.keep == "last" and self.restarts != 1:
            raise ValueError(f"attack {self.name!r}: keep='last' needs restarts=1")


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """z_y - max_{j != y} z_j per sample: logits [..., C], y [...] int64 -> [...]; negative = misclassified.

    For two classes and y = 1 this is the detector's score z_attack - z_benign.
    """
    true = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[-1]).bool(), -math.inf)
    return true - others.amax(-1)


def classifier_objective(forward: Callable[[Tensor], Tensor], y: Tensor, loss: str) -> Objective:
    """Objective for a classifier's inputs: ``forward`` x [..., D] -> logits [..., C]; true labels y [...]."""

    def objective(x: Tensor) -> tuple[Tensor, Tensor]:
        logits = forward(x)
        m = margin(logits, y)
        if loss == "margin":
            return -m, m
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
        return ce.view(y.shape), m

    return objective


def perturb(
    objective: Objective,
    x0: Tensor,
    *,
    attack: Attack,
    eps: float,
    constraints: Constraints,
    free: Tensor | None = None,
    seed: int = 0,
    guides: Tensor | None = None,
    compile: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Run ``attack`` from ``x0`` [..., D]; returns (adversarial x [..., D], its score [unit shape]).

    free: bool [...] rows allowed to move (e.g. only malicious samples); the others stay exactly as given.
    guides: benign rows [G, D], or [*lead, G, D] per leading index of x0 (e.g. per task), for a ``benign``
    start, which also needs one score per row.
    compile: run the objective and the projection through ``torch.compile`` (default: ``set_compile``'s),
    which fuses each step's elementwise passes into a few kernels; the first call of a new shape or
    objective pays the compilation (seconds), and it needs a C++ compiler on CPU.
    The result satisfies every constraint and the ``eps`` ball around ``x0``. Seeded: the same call gives
    the same result.
    """
    check_eps(eps, attack.norm)
    x0 = x0.detach()
    constraints = constraints.to(x0)
    if constraints.n_features != x0.shape[-1]:
        raise ValueError(f"constraints cover {constraints.n_features} features, inputs have {x0.shape[-1]}")
    if free is not None:
        if free.shape != x0.shape[:-1]:
            raise ValueError(f"free must have the row shape {tuple(x0.shape[:-1])}, got {tuple(free.shape)}")
        free = free.to(x0.device)
    gen = torch.Generator(device=x0.device).manual_seed(seed)
    compile = state.compile_default() if compile is None else compile
    run = AttackRun(objective, x0, eps, attack, constraints, free, compile)
    if eps == 0:
        return run.widen(run.best_x), run.best_score
    rule = rules.RULES[attack.rule]
    starts = guide_starts(run, guides) if attack.start == "benign" else None
    for i in range(attack.restarts):
        if starts is not None:
            start = starts[i]
        elif attack.start == "random" and attack.norm != "edits":
            # Drawn at full width whatever the iterates hold, so a seed gives the same attack either way.
            start = run.project(run.narrow(random_start(x0, eps, attack.norm, gen)))
        else:
            start = run.x0
        last, last_score = rule(run, start, gen)
    return (run.widen(run.best_x), run.best_score) if run.track else (run.widen(last), last_score)
