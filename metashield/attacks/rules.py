"""The step rules of the engine: each takes the call's ``AttackRun``, a start and the call's generator and
returns (last iterate, its score); the run records the best iterate on the way."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from metashield.attacks.state import AttackRun, unit_rows


def pgd(run: AttackRun, x: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    step = run.attack.step_size * run.eps
    for _ in range(run.attack.steps):
        _, _, g = run.evaluate(x, need_grad=True)
        x = run.ascend(x, g, step)
    _, score, _ = run.evaluate(x, need_grad=False)
    return x, score


def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations where APGD reconsiders its step size.

    Fractions of the budget p0 = 0, p1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06).
    """
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # The small slack keeps 0.41 * 100 = 41.000000000000004 from rounding up to 42.
    marks = {math.ceil(q * steps - 1e-9) for q in p[1:]}
    return sorted(m for m in marks if m < steps)


def apgd(run: AttackRun, x: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    steps, momentum, rho = run.attack.steps, 0.75, 0.75
    loss, _, g = run.evaluate(x, need_grad=True)
    unit = loss.shape
    eta = torch.full(unit, 2.0 * run.eps, device=x.device, dtype=x.dtype)
    best_loss, best_x, best_g = loss.clone(), x.clone(), g
    x_prev = x
    x = run.ascend(x, g, eta)
    checkpoints = set(apgd_checkpoints(steps))
    increases = torch.zeros(unit, device=x.device, dtype=x.dtype)
    since, last_best, last_eta = 0, best_loss.clone(), eta.clone()
    prev_loss = loss
    for k in range(1, steps):
        loss, _, g = run.evaluate(x, need_grad=True)
        increases += (loss > prev_loss).to(x.dtype)
        since += 1
        improved = loss > best_loss
        best_loss = torch.where(improved, loss, best_loss)
        best_x = torch.where(unit_rows(improved, x), x, best_x)
        best_g = torch.where(unit_rows(improved, x), g, best_g)
        if k in checkpoints:
            stalled = increases < rho * since
            stuck = (eta == last_eta) & (best_loss == last_best)
            halve = stalled | stuck
            last_eta, last_best = eta.clone(), best_loss.clone()
            eta = torch.where(halve, eta / 2, eta)
            # Restart a halved unit from its best point (with that point's gradient).
            x = torch.where(unit_rows(halve, x), best_x, x)
            g = torch.where(unit_rows(halve, x), best_g, g)
            increases.zero_()
            since = 0
        z = run.ascend(x, g, eta)
        x_next = run.project(x + momentum * (z - x) + (1 - momentum) * (x - x_prev))
        x_prev, x, prev_loss = x, x_next, loss
    _, score, _ = run.evaluate(x, need_grad=False)
    return x, score


def square(run: AttackRun, x: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random search: flip a shrinking random subset of mutable coordinates to a vertex of the ball and keep
    the candidate wherever it lowers the score. Uses scores only, so gradient masking cannot hide from it."""
    eps, norm = run.eps, run.attack.norm
    device, dtype = x.device, x.dtype

    def vertex(shape: torch.Size) -> Tensor:
        return eps * (2 * torch.randint(0, 2, shape, generator=gen, device=device) - 1).to(dtype)

    # Random draws are full width (``run.narrow`` keeps the held columns), so a seed gives the same attack
    # whichever columns the iterates hold.
    mutable = run.full_constraints.mutable
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
        current = torch.where(unit_rows(better, x), proposal, current)
    return current, current_score


def greedy(run: AttackRun, x: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
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


RULES = {"pgd": pgd, "apgd": apgd, "square": square, "greedy": greedy}
