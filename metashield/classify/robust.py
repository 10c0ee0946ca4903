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

from metashield.attacks.constraints import Constraints
from metashield.attacks.engine import Attack, classifier_objective, perturb
from metashield.attacks.nearest import nearest_neighbour_edits
from metashield.evaluation.baselines import NearestNeighbourLearner
from metashield.tasks.fixed import Episodes

CHUNK = 25
"""Episodes attacked at once: bounds the memory of 1-NN's pairwise differences and of autograd."""

EXHAUSTIVE = "every-single-edit"
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

    Under the edits budget two more attacks join the ensemble. ``every-single-edit`` tries every single
    edit of every query, so at a budget of 1 the robust accuracy is exact, and whatever one edit achieves
    counts at every larger budget too. Against 1-NN, ``nearest-neighbour-edits`` (``attacks.nearest``) aims
    at every support row of another class, which the gradient does not.
    """
    if not attacks or not eps:
        raise ValueError("robust_predictions needs at least one attack and one budget")
    edits = all(a.norm == "edits" for a in attacks)
    names = [a.name for a in attacks] + ([EXHAUSTIVE] if edits else [])
    if edits and isinstance(learner, NearestNeighbourLearner):
        names.append(NEAREST)
    sx, sy, qx = episodes.tensors(X, device)
    qy = torch.as_tensor(episodes.query_y, device=device)
    learner.eval()
    right: dict[str, list[np.ndarray]] = {str(e): [] for e in eps}
    alone = {str(e): {n: [] for n in names} for e in eps}
    violations: dict[str, dict[str, int]] = {str(e): {} for e in eps}
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
        single = _every_single_edit(forward, x0, y, constraints.to(x0)) & clean if edits else None
        nearest = (
            nearest_neighbour_edits(sx[part], sy[part], x0, y, constraints, [int(e) for e in eps])
            if NEAREST in names
            else {}
        )
        for e in eps:
            held = clean.clone()
            found = {}
            for i, attack in enumerate(attacks):
                objective = classifier_objective(forward, y, attack.loss)
                x_adv, _ = perturb(
                    objective, x0, attack=attack, eps=e, constraints=constraints, seed=seed + 1000 * i + start
                )
                found[attack.name] = (x_adv, attack.norm)
            if NEAREST in names:
                found[NEAREST] = (nearest[int(e)], "edits")
            for name, (x_adv, norm) in found.items():
                ok = correct(x_adv) & clean
                held &= ok
                alone[str(e)][name].append(ok.cpu().numpy())
                _add(violations[str(e)], constraints.to(x0).violations(x_adv, x0, e, norm))
            if single is not None:
                held &= single
                alone[str(e)][EXHAUSTIVE].append(single.cpu().numpy())
            right[str(e)].append(held.cpu().numpy())
    return (
        {k: np.concatenate(v) for k, v in right.items()},
        {k: {n: np.concatenate(v) for n, v in per.items()} for k, per in alone.items()},
        violations,
    )


def _add(total: dict[str, int], counts: dict[str, int]) -> None:
    for name, n in counts.items():
        total[name] = total.get(name, 0) + n


BLOCK = 2
"""Columns edited per forward pass of the exhaustive single-edit search (bounds 1-NN's memory)."""


def _every_single_edit(forward, x0: torch.Tensor, y: torch.Tensor, constraints: Constraints) -> torch.Tensor:
    """bool [T, M]: whether each query stays right under every feasible single edit (up or down one unit of
    one column), i.e. the exact robust answer at a budget of one edit."""
    t, m, d = x0.shape
    up, down = constraints.edit_steps(x0)
    held = torch.ones(t, m, dtype=torch.bool, device=x0.device)
    eye = torch.eye(d, dtype=torch.bool, device=x0.device)
    with torch.no_grad():
        for lo in range(0, d, BLOCK):
            cols = torch.arange(lo, min(lo + BLOCK, d), device=x0.device)
            mask = eye[cols]  # [B, D]: candidate b edits column cols[b]
            for steps in (up, down):
                moved = steps[..., cols] != x0[..., cols]  # [T, M, B]
                if not bool(moved.any()):
                    continue
                cand = torch.where(mask, steps.unsqueeze(2), x0.unsqueeze(2))  # [T, M, B, D]
                pred = forward(cand.reshape(t, m * len(cols), d)).argmax(-1).view(t, m, len(cols))
                held &= ~(moved & (pred != y.unsqueeze(-1))).any(-1)
    return held
