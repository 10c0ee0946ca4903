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
from metashield.tasks.fixed import Episodes

CHUNK = 25
"""Episodes attacked at once: bounds the memory of 1-NN's pairwise differences and of autograd."""


def robust_predictions(
    learner: nn.Module,
    episodes: Episodes,
    X: np.ndarray,
    constraints: Constraints,
    attacks: Sequence[Attack],
    eps: Sequence[float],
    device: torch.device,
    seed: int,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, int]]]:
    """Per budget (``str(eps)``): whether each query stays classified right under every attack, bool [E, M],
    and the constraint violations of the adversarial queries (all 0 for a valid attack)."""
    if not attacks or not eps:
        raise ValueError("robust_predictions needs at least one attack and one budget")
    sx, sy, qx = episodes.tensors(X, device)
    qy = torch.as_tensor(episodes.query_y, device=device)
    learner.eval()
    right = {str(e): [] for e in eps}
    violations: dict[str, dict[str, int]] = {str(e): {} for e in eps}
    for start in range(0, len(sx), CHUNK):
        part = slice(start, start + CHUNK)
        with torch.no_grad():
            params = learner.adapt(sx[part], sy[part])

        def forward(x: torch.Tensor, params: dict = params) -> torch.Tensor:
            return learner.predict(params, x)

        x0, y = qx[part], qy[part]
        with torch.no_grad():
            clean = forward(x0).argmax(-1) == y
        for e in eps:
            held = clean.clone()
            for i, attack in enumerate(attacks):
                objective = classifier_objective(forward, y, attack.loss)
                x_adv, _ = perturb(
                    objective, x0, attack=attack, eps=e, constraints=constraints, seed=seed + 1000 * i + start
                )
                with torch.no_grad():
                    held &= forward(x_adv).argmax(-1) == y
                bad = constraints.to(x0).violations(x_adv, x0, e, attack.norm)
                counts = violations[str(e)]
                for name, n in bad.items():
                    counts[name] = counts.get(name, 0) + n
            right[str(e)].append(held.cpu().numpy())
    return {k: np.concatenate(v) for k, v in right.items()}, violations
