"""Where an attack starts: a random point of the ball, or the benign rows a sample can come closest to."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from metashield.attacks.state import AttackRun

GUIDE_CANDIDATES = 16
"""Guides scored per row by a ``benign`` start: those the constraints let the row come closest to."""

GUIDE_CHUNK = 2**24
"""Elements (rows x guides x features) per pass of the guide ranking, which bounds its memory."""


def random_start(x0: Tensor, eps: float, norm: str, gen: torch.Generator) -> Tensor:
    """A point of the ball around x0 [..., D], not yet projected: uniform in the L∞ ball, or for L2 a
    uniform direction at a radius eps·U[0, 1]."""
    if norm == "linf":
        return x0 + eps * (2 * torch.rand(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype) - 1)
    d = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
    r = torch.rand(x0.shape[:-1] + (1,), generator=gen, device=x0.device, dtype=x0.dtype)
    return x0 + eps * r * d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def guide_starts(run: AttackRun, guides: Tensor | None) -> Tensor:
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
