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

from metashield.attacks.constraints import Constraints, check_eps, check_norm

Objective = Callable[[Tensor], tuple[Tensor, Tensor]]
"""x [..., D] -> (loss to ascend, score the attacker wants low), both of the unit shape. An objective may
also offer ``value_and_grad(x) -> (loss, score, d sum(loss)/dx)``, used instead of autograd, and
``restrict(x0, columns)``, the objective as a function of the columns that move alone, the others held at
x0 (``attacks.fast_mlp``)."""

LOSSES = ("ce", "margin")
RULES = ("pgd", "apgd", "square", "greedy")
STARTS = ("input", "random", "benign")

GUIDE_CANDIDATES = 16
"""Guides scored per row by a ``benign`` start: those the constraints let the row come closest to."""

GUIDE_CHUNK = 2**24
"""Elements (rows x guides x features) per pass of the guide ranking, which bounds its memory."""

_compile_default = False
_compiled: dict[str, Callable] = {}


def set_compile(enabled: bool) -> None:
    """Default of ``perturb(compile=...)`` for this process (the CLI's ``--compile``)."""
    global _compile_default
    _compile_default = bool(enabled)


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


def _rows(unit: Tensor, x: Tensor) -> Tensor:
    """A unit-shaped tensor broadcast over the rows and features of ``x``."""
    return unit.reshape(unit.shape + (1,) * (x.dim() - unit.dim()))


def _normalise(g: Tensor, norm: str) -> Tensor:
    if norm == "linf":
        return g.sign()
    return g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _random_start(x0: Tensor, eps: float, norm: str, gen: torch.Generator) -> Tensor:
    if norm == "linf":
        return x0 + eps * (2 * torch.rand(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype) - 1)
    d = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
    r = torch.rand(x0.shape[:-1] + (1,), generator=gen, device=x0.device, dtype=x0.dtype)
    return x0 + eps * r * d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class _Run:
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
        self.full_mutable = constraints.mutable
        # Sign steps and edits never use the gradient of an immutable column, and the projection holds those
        # columns at x0. So where the objective can (``MLPObjective.restrict``), the iterates hold the
        # mutable columns only: the objective precomputes the rest, and every step's elementwise work and
        # projection shrink to those columns (47 of NSL-KDD's 121). L2 steps normalise the whole gradient,
        # so they keep the full objective.
        restrict = getattr(objective, "restrict", None)
        if restrict is not None and attack.norm != "l2" and not bool(constraints.mutable.all()):
            objective = restrict(x0, constraints.mutable)
            self.columns = constraints.mutable.nonzero().squeeze(-1)
            constraints = constraints.select(constraints.mutable)
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


def _record(run: _Run, x: Tensor, score: Tensor) -> tuple[Tensor, Tensor]:
    """(best score, best iterate) per unit once ``x`` with ``score`` is seen."""
    better = score < run.best_score
    return torch.where(better, score, run.best_score), torch.where(_rows(better, x), x, run.best_x)


def _evaluate(run: _Run, x: Tensor) -> tuple[Tensor, Tensor, None, tuple[Tensor, Tensor] | None]:
    with torch.no_grad():
        loss, score = run.objective(x)
    return loss, score, None, _record(run, x, score) if run.track else None


def _evaluate_grad(run: _Run, x: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor] | None]:
    loss, score, g = run.objective.value_and_grad(x)
    return loss, score, g, _record(run, x, score) if run.track else None


def _project(run: _Run, x: Tensor) -> Tensor:
    x = run.projector(x)
    return x if run.free is None else torch.where(run.free, x, run.x0)


def _ascend(run: _Run, x: Tensor, g: Tensor, size: float | Tensor) -> Tensor:
    if isinstance(size, Tensor):
        size = _rows(size, x)
    return _project(run, x + size * _normalise(g, run.attack.norm))


_STEP_FUNCTIONS: dict[str, Callable] = {
    "value": lambda objective, x: objective(x),
    "record": _record,
    "evaluate": _evaluate,
    "evaluate_grad": _evaluate_grad,
    "project": _project,
    "ascend": _ascend,
}


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
    check_eps(eps)
    if attack.norm == "edits" and eps != int(eps):
        raise ValueError(f"an edits budget is a whole number of edits, got eps = {eps}")
    x0 = x0.detach()
    constraints = constraints.to(x0)
    if constraints.n_features != x0.shape[-1]:
        raise ValueError(f"constraints cover {constraints.n_features} features, inputs have {x0.shape[-1]}")
    if free is not None:
        if free.shape != x0.shape[:-1]:
            raise ValueError(f"free must have the row shape {tuple(x0.shape[:-1])}, got {tuple(free.shape)}")
        free = free.to(x0.device)
    gen = torch.Generator(device=x0.device).manual_seed(seed)
    compile = _compile_default if compile is None else compile
    run = _Run(objective, x0, eps, attack, constraints, free, compile)
    if eps == 0:
        return run.widen(run.best_x), run.best_score
    rule = {"pgd": _pgd, "apgd": _apgd, "square": _square, "greedy": _greedy}[attack.rule]
    starts = _guide_starts(run, guides) if attack.start == "benign" else None
    for i in range(attack.restarts):
        if starts is not None:
            start = starts[i]
        elif attack.start == "random" and attack.norm != "edits":
            # Drawn at full width whatever the iterates hold, so a seed gives the same attack either way.
            start = run.project(run.narrow(_random_start(x0, eps, attack.norm, gen)))
        else:
            start = run.x0
        last, last_score = rule(run, start, gen)
    return (run.widen(run.best_x), run.best_score) if run.track else (run.widen(last), last_score)


def _guide_starts(run: _Run, guides: Tensor | None) -> Tensor:
    """[GUIDE_CANDIDATES, ..., D_held]: per row, the projected guides best score first.

    The candidates are the guides nearest to the row's feasible box (the ball as a box, which holds the L2
    ball too, intersected with the constraints' box, immutable and increase-only columns): a cheap bound on
    how close the row can come to each guide; only those are projected and scored.
    """
    x0 = run.full_x0
    rows, d = x0.shape[:-1], x0.shape[-1]
    if guides is None:
        raise ValueError(f"attack {run.attack.name!r} starts from benign rows: pass guides")
    if run.best_score.shape != rows:
        raise ValueError(f"attack {run.attack.name!r}: a benign start needs one score per row")
    lead = guides.shape[:-2]
    if guides.dim() < 2 or guides.shape[-1] != d or tuple(rows[: len(lead)]) != tuple(lead):
        raise ValueError(f"guides must be [G, {d}] or [*lead, G, {d}] with lead a prefix of {tuple(rows)}")
    if guides.shape[-2] < GUIDE_CANDIDATES:
        raise ValueError(f"a benign start needs at least {GUIDE_CANDIDATES} guides, got {guides.shape[-2]}")
    lo, hi = run.full_constraints.linf_interval(x0, run.eps)
    n_lead = math.prod(lead)
    g = guides.to(x0).reshape(n_lead, -1, d)
    # An immutable column's interval is the single point x0, so its share of the gap is a squared distance:
    # one matmul (in float64, where |a|² + |b|² − 2a·b loses little to cancellation) instead of a pass over
    # [rows, guides, columns]. The mutable columns keep the elementwise distance to their interval.
    mutable = run.full_constraints.mutable
    n_free, per_lead = int(mutable.sum()), math.prod(rows) // n_lead
    fixed_x = x0[..., ~mutable].reshape(n_lead, per_lead, d - n_free).double()
    fixed_g = g[..., ~mutable].double()
    g_free = g[..., mutable]
    # The distance to an interval is |g − centre| − radius where positive.
    lo = lo[..., mutable].reshape(n_lead, per_lead, n_free)
    hi = hi[..., mutable].reshape(n_lead, per_lead, n_free)
    centre, radius = (lo + hi) / 2, (hi - lo) / 2
    chunk = max(1, GUIDE_CHUNK // (g.shape[1] * max(1, n_free)))
    picks = []
    for j in range(n_lead):
        fixed_gap = torch.addmm(
            fixed_x[j].square().sum(-1, keepdim=True) + fixed_g[j].square().sum(-1),
            fixed_x[j],
            fixed_g[j].t(),
            alpha=-2,
        )
        for i in range(0, lo.shape[1], chunk):
            out = (g_free[j] - centre[j, i : i + chunk, None]).abs_().sub_(radius[j, i : i + chunk, None])
            gap = out.clamp_min_(0).square_().sum(-1) + fixed_gap[i : i + chunk]
            picks.append(g[j][gap.topk(GUIDE_CANDIDATES, dim=1, largest=False).indices])
    candidates = torch.cat(picks).reshape(*rows, GUIDE_CANDIDATES, d).movedim(-2, 0)
    points = torch.stack([run.project(run.narrow(candidate)) for candidate in candidates])
    scores = torch.stack([run.evaluate(p, need_grad=False)[1] for p in points])
    order = scores.argsort(dim=0).unsqueeze(-1).expand_as(points)
    return points.gather(0, order)


def _pgd(run: _Run, x: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    step = run.attack.step_size * run.eps
    for _ in range(run.attack.steps):
        _, _, g = run.evaluate(x, need_grad=True)
        x = run.ascend(x, g, step)
    _, score, _ = run.evaluate(x, need_grad=False)
    return x, score


def _checkpoints(steps: int) -> list[int]:
    """Iterations where APGD reconsiders its step size.

    Fractions of the budget p0 = 0, p1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06).
    """
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # The small slack keeps 0.41 * 100 = 41.000000000000004 from rounding up to 42.
    marks = {math.ceil(q * steps - 1e-9) for q in p[1:]}
    return sorted(m for m in marks if m < steps)


def _apgd(run: _Run, x: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    steps, momentum, rho = run.attack.steps, 0.75, 0.75
    loss, _, g = run.evaluate(x, need_grad=True)
    unit = loss.shape
    eta = torch.full(unit, 2.0 * run.eps, device=x.device, dtype=x.dtype)
    best_loss, best_x, best_g = loss.clone(), x.clone(), g
    x_prev = x
    x = run.ascend(x, g, eta)
    checkpoints = set(_checkpoints(steps))
    increases = torch.zeros(unit, device=x.device, dtype=x.dtype)
    since, last_best, last_eta = 0, best_loss.clone(), eta.clone()
    prev_loss = loss
    for k in range(1, steps):
        loss, _, g = run.evaluate(x, need_grad=True)
        increases += (loss > prev_loss).to(x.dtype)
        since += 1
        improved = loss > best_loss
        best_loss = torch.where(improved, loss, best_loss)
        best_x = torch.where(_rows(improved, x), x, best_x)
        best_g = torch.where(_rows(improved, x), g, best_g)
        if k in checkpoints:
            stalled = increases < rho * since
            stuck = (eta == last_eta) & (best_loss == last_best)
            halve = stalled | stuck
            last_eta, last_best = eta.clone(), best_loss.clone()
            eta = torch.where(halve, eta / 2, eta)
            # Restart a halved unit from its best point (with that point's gradient).
            x = torch.where(_rows(halve, x), best_x, x)
            g = torch.where(_rows(halve, x), best_g, g)
            increases.zero_()
            since = 0
        z = run.ascend(x, g, eta)
        x_next = run.project(x + momentum * (z - x) + (1 - momentum) * (x - x_prev))
        x_prev, x, prev_loss = x, x_next, loss
    _, score, _ = run.evaluate(x, need_grad=False)
    return x, score


def _square(run: _Run, x: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random search: flip a shrinking random subset of mutable coordinates to a vertex of the ball and keep
    the candidate wherever it lowers the score. Uses scores only, so gradient masking cannot hide from it."""
    eps, norm = run.eps, run.attack.norm
    device, dtype = x.device, x.dtype

    def vertex(shape: torch.Size) -> Tensor:
        return eps * (2 * torch.randint(0, 2, shape, generator=gen, device=device) - 1).to(dtype)

    # Random draws are full width (``run.narrow`` keeps the held columns), so a seed gives the same attack
    # whichever columns the iterates hold.
    mutable = run.full_mutable
    shape = x.shape[:-1] + mutable.shape
    n_mutable = max(1, int(mutable.sum()))
    # Square starts at a vertex of the ball (L∞) whatever ``start`` says: vertices are where
    # a score-based search over an L∞ ball does best.
    if norm == "linf":
        start = torch.where(mutable, vertex(shape), torch.zeros(shape, device=device, dtype=dtype))
        x = run.project(run.x0 + run.narrow(start))
    _, score, _ = run.evaluate(x, need_grad=False)
    current, current_score = x, score
    for i in range(run.attack.steps):
        # The fraction of coordinates resampled halves at fixed fractions of the budget, as in Square.
        fraction = 0.3 * 0.5 ** sum(i >= int(f * run.attack.steps) for f in (0.01, 0.05, 0.2, 0.4, 0.6, 0.8))
        k = max(1, round(fraction * n_mutable))
        keys = torch.rand(shape, generator=gen, device=device, dtype=dtype).masked_fill(~mutable, 2.0)
        chosen = run.narrow(keys <= keys.kthvalue(k, dim=-1, keepdim=True).values)
        if norm == "linf":
            proposal = torch.where(chosen, run.x0 + run.narrow(vertex(shape)), current)
        else:
            noise = run.narrow(torch.randn(shape, generator=gen, device=device, dtype=dtype))
            proposal = current + torch.where(chosen, noise, torch.zeros_like(noise)) * eps / math.sqrt(k)
        proposal = run.project(proposal)
        _, score, _ = run.evaluate(proposal, need_grad=False)
        better = score < current_score
        current_score = torch.where(better, score, current_score)
        current = torch.where(_rows(better, x), proposal, current)
    return current, current_score


def _greedy(run: _Run, x: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``eps`` rounds; each row takes the one edit (feature, up or down) with the largest first-order gain
    g·Δ in the loss, or none when no edit has a positive gain. A feature may be edited again (a count can
    rise by several), each time from the budget."""
    constraints = run.constraints
    for _ in range(int(run.eps)):
        _, _, g = run.evaluate(x, need_grad=True)
        up, down = constraints.edit_steps(x)
        steps = torch.cat([up, down], dim=-1)  # [..., 2D]: every single edit, up then down
        gain = torch.cat([g, g], dim=-1) * (steps - torch.cat([x, x], dim=-1))
        best = gain.argmax(dim=-1, keepdim=True)
        moved = x.scatter(-1, best % x.shape[-1], steps.gather(-1, best))
        x = run.project(torch.where(gain.gather(-1, best) > 0, moved, x))
    _, score, _ = run.evaluate(x, need_grad=False)
    return x, score
