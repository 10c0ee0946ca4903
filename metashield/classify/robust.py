"""Robust N-way accuracy: can a sample of a held-out family be made to look like another family?

Threat model (query threat, as ``metashield attack`` for detection): each method adapts on the CLEAN support
set; the attacker, a malware author who knows the adapted model, perturbs each query within the dataset's
threat schema so that it is attributed to any other family of the episode (untargeted misattribution, which
defeats family-based triage and tracking). A query counts as right under attack when EVERY attack of the
ensemble leaves it classified as its own family.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from metashield.attacks.constraints import Constraints, sum_violations
from metashield.attacks.engine import Attack, classifier_objective, margin, perturb
from metashield.attacks.nearest import nearest_neighbour_edits
from metashield.evaluation.baselines import NearestNeighbourLearner
from metashield.tasks.fixed import Episodes

CHUNK = 25
"""Episodes attacked at once: bounds the memory of 1-NN's pairwise differences and of autograd."""

EXACT = "exact-greedy-edits"
NEAREST = "nearest-neighbour-edits"


def robust_predictions(
    learner: nn.Module,
    episodes: Episodes,
    X: np.ndarray,
    constraints: Constraints,
    attacks: Sequence[Attack],
    eps: Sequence[float],
    device: torch.device,
    seed: int,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]], dict[str, dict[str, int]]]:
    """Per budget (``str(eps)``): whether each query stays right under every attack, bool [E, M]; the same
    per attack alone; and the constraint violations of the adversarial queries (all 0 for a valid attack).

    Under the edits budget two more attacks join the ensemble. ``exact-greedy-edits`` takes, each round, the
    candidate edit that lowers the true margin most: every single edit in round 1, so at a budget of 1 the
    robust accuracy is exact, then the ``SHORTLIST`` best first-order ones (``EXACT_ROUNDS`` rounds at most;
    one round against 1-NN, whose every candidate costs a pass over the support set). Against 1-NN,
    ``nearest-neighbour-edits`` (``attacks.nearest``) aims at every support row of another class, which the
    gradient does not.
    """
    if not attacks or not eps:
        raise ValueError("robust_predictions needs at least one attack and one budget")
    edits = all(a.norm == "edits" for a in attacks)
    names = [a.name for a in attacks] + ([EXACT] if edits else [])
    knn = isinstance(learner, NearestNeighbourLearner)
    if edits and knn:
        names.append(NEAREST)
    sx, sy, qx = episodes.tensors(X, device)
    qy = torch.as_tensor(episodes.query_y, device=device)
    learner.eval()
    right: dict[str, list[np.ndarray]] = {str(e): [] for e in eps}
    alone = {str(e): {n: [] for n in names} for e in eps}
    violations: dict[str, list[dict[str, int]]] = {str(e): [] for e in eps}
    for start in range(0, len(sx), CHUNK):
        part = slice(start, start + CHUNK)
        with torch.no_grad():
            params = learner.adapt(sx[part], sy[part])

        def forward(x: torch.Tensor, params: dict = params) -> torch.Tensor:
            return learner.predict(params, x)

        x0, y = qx[part], qy[part]

        def correct(x: torch.Tensor, y: torch.Tensor = y) -> torch.Tensor:
            with torch.no_grad():
                return forward(x).argmax(-1) == y

        clean = correct(x0)
        feasible = constraints.to(x0)
        exact = (
            _exact_greedy(
                forward,
                x0,
                y,
                feasible,
                rounds=1 if knn else min(EXACT_ROUNDS, int(max(eps))),
                block=2 if knn else 32,
            )
            if edits
            else []
        )
        nearest = (
            nearest_neighbour_edits(sx[part], sy[part], x0, y, feasible, [int(e) for e in eps])
            if NEAREST in names
            else {}
        )
        for e in eps:
            held = clean.clone()
            found = {}
            for i, attack in enumerate(attacks):
                objective = classifier_objective(forward, y, attack.loss)
                x_adv, _ = perturb(
                    objective, x0, attack=attack, eps=e, constraints=feasible, seed=seed + 1000 * i + start
                )
                found[attack.name] = (x_adv, attack.norm)
            if NEAREST in names:
                found[NEAREST] = (nearest[int(e)], "edits")
            for name, (x_adv, norm) in found.items():
                ok = correct(x_adv) & clean
                held &= ok
                alone[str(e)][name].append(ok.cpu().numpy())
                violations[str(e)].append(feasible.violations(x_adv, x0, e, norm))
            if exact:
                ok = exact[min(int(e), len(exact)) - 1] & clean
                held &= ok
                alone[str(e)][EXACT].append(ok.cpu().numpy())
            right[str(e)].append(held.cpu().numpy())
    return (
        {k: np.concatenate(v) for k, v in right.items()},
        {k: {n: np.concatenate(v) for n, v in per.items()} for k, per in alone.items()},
        {k: sum_violations(v) for k, v in violations.items()},
    )


EXACT_ROUNDS = 10
"""Most rounds of ``exact-greedy-edits``; a larger budget gets its first 10 edits from it and the whole
budget from the other attacks."""

SHORTLIST = 32
"""Edits tried exactly in every round after the first: those with the largest first-order gain."""


def _exact_greedy(
    forward, x0: torch.Tensor, y: torch.Tensor, constraints: Constraints, rounds: int, block: int
) -> list[torch.Tensor]:
    """bool [T, M] per round r = 1..rounds: whether each query is still right after r edits (one unit of one
    column, up or down), each round taking the candidate with the lowest TRUE margin. Round 1 tries every
    feasible edit and counts a query wrong if any candidate fools the model, so it is the exact one-edit
    answer; later rounds try the ``SHORTLIST`` edits with the largest first-order gain: one forward pass per
    round instead of one per ``block`` columns (2 x 204 / 32 = 13 on Drebin)."""
    x = x0.clone()
    held = torch.ones(y.shape, dtype=torch.bool, device=x0.device)
    out = []
    for r in range(rounds):
        up, down = constraints.edit_steps(x)
        groups = _all_edits(x, up, down, block) if r == 0 else [_top_edits(forward, x, y, up, down)]
        best = torch.full(y.shape, torch.inf, dtype=torch.float64, device=x.device)
        best_x = x
        with torch.no_grad():
            for cand, moved in groups:
                t, m, b, d = cand.shape
                logits = forward(cand.reshape(t, m * b, d)).view(t, m, b, -1)
                held &= ~(moved & (logits.argmax(-1) != y.unsqueeze(-1))).any(-1)
                score = (
                    margin(logits, y.unsqueeze(-1).expand(t, m, b)).double().masked_fill(~moved, torch.inf)
                )
                low, at = score.min(-1)
                better = low < best
                best = torch.where(better, low, best)
                pick = cand.gather(2, at.view(t, m, 1, 1).expand(t, m, 1, d)).squeeze(2)
                best_x = torch.where(better.unsqueeze(-1), pick, best_x)
        x = best_x
        out.append(held.clone())
    return out


def _all_edits(x: torch.Tensor, up: torch.Tensor, down: torch.Tensor, block: int):
    """(candidates [T, M, B, D], moved [T, M, B]) for every column and direction, ``block`` columns a time."""
    d = x.shape[-1]
    eye = torch.eye(d, dtype=torch.bool, device=x.device)
    for lo in range(0, d, block):
        cols = torch.arange(lo, min(lo + block, d), device=x.device)
        for steps in (up, down):
            moved = steps[..., cols] != x[..., cols]
            if bool(moved.any()):
                yield torch.where(eye[cols], steps.unsqueeze(2), x.unsqueeze(2)), moved


def _top_edits(forward, x: torch.Tensor, y: torch.Tensor, up: torch.Tensor, down: torch.Tensor):
    """(candidates [T, M, K, D], moved [T, M, K]): the K single edits with the largest first-order drop of the
    margin."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(margin(forward(xg), y).sum(), xg)
    steps = torch.cat([up, down], dim=-1)  # [T, M, 2D]: every single edit, up then down
    delta = steps - torch.cat([x, x], dim=-1)
    gain = (-torch.cat([g, g], dim=-1) * delta).masked_fill(delta == 0, -torch.inf)
    top = gain.topk(min(SHORTLIST, gain.shape[-1]), dim=-1)
    cols = top.indices % x.shape[-1]
    cand = x.unsqueeze(2).expand(*x.shape[:2], cols.shape[-1], x.shape[-1]).clone()
    cand.scatter_(-1, cols.unsqueeze(-1), steps.gather(-1, top.indices).unsqueeze(-1))
    return cand, torch.isfinite(top.values)
