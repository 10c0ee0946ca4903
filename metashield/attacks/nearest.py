"""Edits that evade a 1-nearest-neighbour classifier, which its gradient does not find.

1-NN changes its answer only when a support row of another class becomes the nearest. The gradient of its
distance margin points at the CURRENT nearest row of another class, often not the cheapest to reach, and
a greedy attack that follows it stalls on binary features (on Drebin families it left 19% of 5-shot queries
right after 10 edits where this attack leaves 3%). Here every support row of another class is tried as the
target, in the spirit of the region-based attacks on nearest neighbours (Yang et al., AISTATS 2020): the
query moves one unit edit at a time towards the target, each time on the coordinate that most shrinks its
distance to the target relative to its nearest row of its own class, and it succeeds once the target is
strictly nearer than every own row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from metashield.attacks.constraints import Constraints

CHUNK = 4
"""Episodes per pass: the candidates are [episodes, queries, support rows, features]."""

TIE = 1e-9
"""How much nearer (squared z-units) a target must be to count as reached: an exact tie is not a success."""


def nearest_neighbour_edits(
    support_x: Tensor,
    support_y: Tensor,
    x: Tensor,
    y: Tensor,
    constraints: Constraints,
    budgets: Sequence[int],
) -> dict[int, Tensor]:
    """Adversarial queries per whole-edit budget: support_x [T, S, D], support_y [T, S], queries x [T, M, D]
    with labels y [T, M]. A query for which no target is reached within a budget is returned unchanged."""
    if not budgets or min(budgets) < 1 or any(b != int(b) for b in budgets):
        raise ValueError(f"budgets must be whole numbers of edits >= 1, got {list(budgets)}")
    constraints = constraints.to(x)
    parts = [
        _attack_chunk(
            support_x[i : i + CHUNK],
            support_y[i : i + CHUNK],
            x[i : i + CHUNK],
            y[i : i + CHUNK],
            constraints,
            sorted({int(b) for b in budgets}),
        )
        for i in range(0, len(x), CHUNK)
    ]
    return {int(b): torch.cat([p[int(b)] for p in parts]) for b in budgets}


def _attack_chunk(
    sx: Tensor, sy: Tensor, x: Tensor, y: Tensor, c: Constraints, budgets: list[int]
) -> dict[int, Tensor]:
    t, m, d = x.shape
    s = sx.shape[1]
    # Distances in float64: binary and count features make exact ties, which float32 sums would break.
    support = sx.double()
    own = sy.unsqueeze(1) == y.unsqueeze(-1)  # [T, M, S]: support rows of the query's class
    target = support.unsqueeze(1).expand(t, m, s, d)  # one candidate per support row
    xt = x.unsqueeze(2).expand(t, m, s, d).clone()  # [T, M, S, D] in x's dtype (the constraints' grid)
    done = torch.zeros(t, m, s, dtype=torch.bool, device=x.device)
    out = {}
    for r in range(1, budgets[-1] + 1):
        d2 = _sq_dist(xt.double(), support)  # [T, M, S(candidate), S(row)]
        nearest_own = d2.masked_fill(~own.unsqueeze(2), torch.inf).argmin(-1)  # [T, M, S]
        r_own = torch.gather(support, 1, nearest_own.reshape(t, m * s, 1).expand(t, m * s, d)).view(
            t, m, s, d
        )
        up, down = c.edit_steps(xt)
        cur = xt.double()
        # One unit towards the target; a continuous column's edit jumps to a bound, so it stops at the target.
        step = torch.where(
            target > cur, torch.minimum(up.double(), target), torch.maximum(down.double(), target)
        )
        gain = ((cur - target) ** 2 - (step - target) ** 2) + ((step - r_own) ** 2 - (cur - r_own) ** 2)
        gain = gain.masked_fill(step == cur, -torch.inf)
        best = gain.argmax(-1, keepdim=True)
        movable = torch.isfinite(gain.gather(-1, best)).squeeze(-1) & ~done & ~own
        moved = xt.scatter(-1, best, step.gather(-1, best).to(xt.dtype))
        xt = torch.where(movable.unsqueeze(-1), moved, xt)
        d2 = _sq_dist(xt.double(), support)
        to_target = d2.diagonal(dim1=2, dim2=3)  # candidate k's distance to its own target row k
        own_min = d2.masked_fill(~own.unsqueeze(2), torch.inf).amin(-1)
        done |= ~own & (to_target < own_min - TIE)
        if r in budgets:
            hit = done.any(-1)
            first = done.to(torch.int8).argmax(-1)  # the first target reached
            chosen = xt.gather(2, first.view(t, m, 1, 1).expand(t, m, 1, d)).squeeze(2)
            out[r] = torch.where(hit.unsqueeze(-1), chosen, x)
    return out


def _sq_dist(a: Tensor, b: Tensor) -> Tensor:
    """Squared distances [T, M, K, S] of candidates a [T, M, K, D] to support rows b [T, S, D], float64.

    The |a|² + |b|² - 2ab form: the direct one would hold [T, M, K, S, D] at once. Its rounding is ~1e-12 on
    these scales, so a success needs a margin (``TIE``) and the caller's own 1-NN has the last word.
    """
    t, m, k, d = a.shape
    flat = a.reshape(t, m * k, d)
    d2 = flat.pow(2).sum(-1, keepdim=True) + b.pow(2).sum(-1).unsqueeze(1) - 2 * flat @ b.transpose(1, 2)
    return d2.clamp_min(0).view(t, m, k, -1)
