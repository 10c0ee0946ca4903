"""Robust detection: several attacks, the worst case per sample, at the clean operating threshold.

The operating threshold of each task is the one that gives ``fpr`` (1%) on its CLEAN benign queries; the
attacker perturbs only malicious queries, towards benign, and a sample counts as detected under attack when
EVERY attack of the ensemble leaves its score above that threshold. ``robust_evaluate`` also runs the sanity
checks that catch a weak or masked evaluation and flags the ones that fail.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from metashield.attacks.constraints import Constraints, sum_violations
from metashield.attacks.engine import Attack, classifier_objective, perturb
from metashield.attacks.fast_mlp import Layers, MLPObjective
from metashield.attacks.presets import DEFAULT_ENSEMBLE, get_attack
from metashield.evaluation.metrics import roc_auc, threshold_at_fpr

Forward = Callable[[Tensor], Tensor]
"""x [T, M, D] -> logits [T, M, 2] under each task's (adapted) parameters."""

UNBOUNDED_LARGE_EPS = 20.0
"""The sanity check's "large epsilon" (z-units) when no mutable feature has a finite box: twice the
pipeline's default clip."""

LARGE_EDITS = 10
"""The sanity check's large budget for the ``edits`` norm, in whole edits."""


def large_eps(constraints: Constraints, norm: str) -> float:
    """The "large epsilon" of the sanity check: a ball that holds the whole box of the mutable features
    (z-units; L∞: the widest finite interval, L2: the diagonal over the finite ones), ``LARGE_EDITS`` for the
    ``edits`` norm. A ball only as wide as the clip (10) is not enough: a rare value clipped at +10 (NSL-KDD's
    land = 1) then cannot return to its usual z near 0, and the check would credit the detector with
    robustness that comes from the ball, not from the immutable features."""
    if norm == "edits":
        return float(LARGE_EDITS)
    width = (constraints.upper - constraints.lower)[constraints.mutable].double()
    width = width[torch.isfinite(width)]
    if not width.numel():
        return UNBOUNDED_LARGE_EPS
    return float(width.max() if norm == "linf" else width.norm())


def _scores(forward: Forward, x: Tensor) -> Tensor:
    with torch.no_grad():
        logits = forward(x)
    return (logits[..., 1] - logits[..., 0]).double()


def worst_case(scores: Sequence[Tensor]) -> Tensor:
    """Per-sample minimum over attacks: a sample evades if ANY attack pushes its score down enough."""
    return torch.stack(list(scores)).amin(0)


def detected(scores: Tensor, thresholds: Tensor) -> Tensor:
    """Per-task detection rate of attack scores [T, A] at thresholds [T] (flagged iff score > threshold)."""
    return (scores > thresholds.unsqueeze(-1)).double().mean(-1)


def attack_scores(
    forward: Forward,
    attack_x: Tensor,
    attack: Attack,
    eps: float,
    constraints: Constraints,
    seed: int,
    layers: Layers | None = None,
    guides: Tensor | None = None,
) -> tuple[Tensor, dict[str, int]]:
    """Adversarial scores [T, A] of the malicious queries and the constraint violations of the result.

    layers: the (weight, bias) stack of ``forward`` when it is a Linear/ReLU MLP (``fast_mlp.mlp_layers``):
    the same attack with the input gradient in closed form instead of autograd. guides: benign rows [T, G, D]
    for an attack that starts from them (``mimicry``).
    """
    y = torch.ones(attack_x.shape[:-1], dtype=torch.int64, device=attack_x.device)
    objective = (
        MLPObjective(layers, y, attack.loss)
        if layers is not None
        else classifier_objective(forward, y, attack.loss)
    )
    x_adv, _ = perturb(
        objective,
        attack_x,
        attack=attack,
        eps=eps,
        constraints=constraints,
        seed=seed,
        guides=guides,
    )
    return _scores(forward, x_adv), constraints.to(attack_x).violations(x_adv, attack_x, eps, attack.norm)


def robust_evaluate(
    forward: Forward,
    benign_x: Tensor,
    attack_x: Tensor,
    *,
    constraints: Constraints,
    eps: Sequence[float],
    attacks: Sequence[str | Attack] = DEFAULT_ENSEMBLE,
    norm: str = "linf",
    fpr: float = 0.01,
    seed: int = 0,
    sanity: bool = True,
    layers: Layers | None = None,
    guides: Tensor | None = None,
) -> dict:
    """Clean and robust detection of T tasks; benign_x [T, B, D] (clean only), attack_x [T, A, D].

    layers: ``forward``'s weights when it is a Linear/ReLU MLP, for the closed-form input gradient.
    guides: the benign rows [T, G, D] or [G, D] a ``mimicry`` attacker has seen; by default each task's
    benign queries (benign traffic of the same network, which an attacker on it can observe).

    Returns per-task lists (one value per task, for CIs over episodes): ``clean`` {tpr, auc}, and per eps
    ``robust`` {tpr (worst case over the ensemble), per_attack tpr, violations}. With ``sanity``, a
    ``sanity`` block holds the three checks and ``flags`` lists the ones that failed.
    """
    ensemble = [get_attack(a, norm=norm) if isinstance(a, str) else a for a in attacks]
    if not ensemble:
        raise ValueError("attacks is empty: give at least one attack")
    benign_scores = _scores(forward, benign_x)
    clean = _scores(forward, attack_x)
    thresholds = torch.tensor(
        [threshold_at_fpr(s, fpr) for s in benign_scores.cpu().numpy()], dtype=torch.float64
    ).to(clean.device)
    auc = [
        roc_auc(np.concatenate([b, a]), np.r_[np.zeros(len(b)), np.ones(len(a))])
        for b, a in zip(benign_scores.cpu().numpy(), clean.cpu().numpy(), strict=True)
    ]
    out: dict = {
        "fpr": fpr,
        "norm": norm,
        "attacks": [a.name for a in ensemble],
        "clean": {"tpr": detected(clean, thresholds).tolist(), "auc": auc},
        "robust": {},
    }
    per_eps: dict[float, dict[str, Tensor]] = {}
    pool = benign_x if guides is None else guides
    for e in eps:
        per_attack, violations = {}, []
        for i, attack in enumerate(ensemble):
            scores, bad = attack_scores(forward, attack_x, attack, e, constraints, seed + i, layers, pool)
            per_attack[attack.name] = scores
            violations.append(bad)
        per_eps[e] = per_attack
        out["robust"][str(e)] = {
            "tpr": detected(worst_case([clean, *per_attack.values()]), thresholds).tolist(),
            "per_attack_tpr": {n: detected(s, thresholds).tolist() for n, s in per_attack.items()},
            "violations": sum_violations(violations),
        }
    if sanity:
        out["sanity"] = _sanity(
            forward, attack_x, thresholds, clean, ensemble, per_eps, constraints, seed, layers
        )
        out["flags"] = [name for name, check in out["sanity"].items() if not check["ok"]]
    return out


def _noise(p: float, n: int) -> float:
    """Two binomial standard errors of a detection rate p over n samples, at least one point."""
    return max(0.01, 2 * math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1)))


def _sanity(
    forward: Forward,
    attack_x: Tensor,
    thresholds: Tensor,
    clean: Tensor,
    ensemble: list[Attack],
    per_eps: dict[float, dict[str, Tensor]],
    constraints: Constraints,
    seed: int,
    layers: Layers | None,
) -> dict:
    """The three checks at the largest eps: more steps, a huge eps, and gradient-free vs white-box."""
    n = attack_x.shape[0] * attack_x.shape[1]
    eps = max(per_eps)
    scores_at = per_eps[eps]

    def rate(*scores: Tensor) -> float:
        return float(detected(worst_case([clean, *scores]), thresholds).mean())

    base = rate(*scores_at.values())
    gradient = [a for a in ensemble if a.rule != "square"]
    square = [a for a in ensemble if a.rule == "square"]
    checks: dict = {}
    if gradient:
        first = gradient[0]
        longer = replace(first, name=f"{first.name}-x5", steps=5 * first.steps)
        extra, _ = attack_scores(forward, attack_x, longer, eps, constraints, seed + 101, layers)
        extended = rate(*scores_at.values(), extra)
        checks["more_steps"] = {
            "eps": eps,
            "attack": longer.name,
            "robust_tpr": base,
            "robust_tpr_with_5x_steps": extended,
            "drop": base - extended,
            "samples": n,
            "noise": _noise(base, n),
        }
        # Cross-entropy saturates to an exactly zero gradient far from the boundary, which a huge ball reaches
        # from a random start; the margin loss does not.
        widest = next((a for a in gradient if a.loss == "margin"), replace(first, loss="margin"))
        big = large_eps(constraints, widest.norm)
        huge, _ = attack_scores(forward, attack_x, widest, big, constraints, seed + 202, layers)
        clean_tpr, large = rate(), rate(huge)
        checks["large_eps"] = {
            "eps": big,
            "attack": widest.name,
            "clean_tpr": clean_tpr,
            "robust_tpr": large,
            "drop": clean_tpr - large,
        }
    if gradient and square:
        white = rate(*(scores_at[a.name] for a in gradient))
        free = rate(scores_at[square[0].name])
        checks["gradient_free"] = {
            "eps": eps,
            "white_box_tpr": white,
            "gradient_free_tpr": free,
            "gap": white - free,
        }
    for name, check in checks.items():
        check["ok"] = bool(_PASSES[name](check))
    return checks


_PASSES = {
    # Five times the steps finding more than noise means the default budget had not converged.
    "more_steps": lambda c: c["drop"] <= c["noise"],
    # Immutable features may keep some detection; an attack that cannot even halve it is suspect.
    "large_eps": lambda c: c["robust_tpr"] <= 0.5 * c["clean_tpr"],
    # The score-based search beating every gradient attack by 5 points means the gradients mislead.
    "gradient_free": lambda c: c["gap"] <= 0.05,
}


def pool_sanity(parts: Sequence[dict]) -> dict:
    """Sanity checks of several batches of tasks (each from ``robust_evaluate``) pooled into one verdict:
    rates averaged over batches (weighted by samples for the step check), then the same pass rules."""
    pooled: dict = {}
    for name in _PASSES:
        checks = [p[name] for p in parts if name in p]
        if not checks:
            continue
        merged = dict(checks[0])
        for key, value in checks[0].items():
            if isinstance(value, float) and key != "eps":
                merged[key] = float(np.mean([c[key] for c in checks]))
        if name == "more_steps":
            weights = np.array([c["samples"] for c in checks], dtype=float)
            for key in ("robust_tpr", "robust_tpr_with_5x_steps", "drop"):
                merged[key] = float(np.average([c[key] for c in checks], weights=weights))
            merged["samples"] = int(weights.sum())
            merged["noise"] = _noise(merged["robust_tpr"], merged["samples"])
        merged["ok"] = bool(_PASSES[name](merged))
        pooled[name] = merged
    return pooled
