"""Attacks through adaptation: a poisoned few-shot support set, and queries that are also support rows.

A few-shot detector learns a new family from K labelled malicious rows. An attacker who controls some of
them can steer the adapted model. Here the attacker optimises its rows THROUGH the inner loop: it
differentiates, with respect to its support inputs, the adapted model's scores on its OWN further samples of
the family (never the defender's evaluation queries). Modes:

- ``flip``: the controlled rows are relabelled benign, unchanged (the random label-flip baseline);
- ``clean-label``: the controlled rows keep label 1 and are perturbed within eps (z-units, under the
  dataset's constraints);
- ``flip-optimised``: relabelled benign AND perturbed within eps.

The attacker's objective per task is the mean score of its own samples minus an estimate of the detector's
operating threshold: the mean score of the top 1% of the benign rows the attacker holds (at least one row:
with only the 5 clean benign support rows, their highest score). The threshold sits near the top of the
benign scores, so pushing its samples below it is what makes them missed, while lowering every score
together would change nothing. An attacker who holds a sample of the network's benign traffic
(``benign_ref``; any rows but the defender's evaluation queries) estimates that threshold far better than
from five rows.

``adaptive_query_attack`` is the end-to-end case: the attacked query is itself a labelled row of the
support set, so its gradient flows through the adaptation it triggers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from metashield.attacks.constraints import Constraints, check_eps
from metashield.attacks.engine import Attack, margin, perturb

Adapt = Callable[[Tensor, Tensor], dict[str, Tensor]]
"""support_x [T, S, D], support_y [T, S] -> per-task params (differentiable w.r.t. support_x)."""
Predict = Callable[[dict[str, Tensor], Tensor], Tensor]
"""(params, x [T, M, D]) -> logits [T, M, 2]."""

MODES = ("flip", "clean-label", "flip-optimised")


def controlled_rows(support_y: Tensor, fraction: float, seed: int) -> Tensor:
    """bool [T, S]: ceil(fraction * K) of each task's K malicious support rows (at least one), at random.

    Every task must hold the same number K of malicious rows (the episodes' layout).
    """
    if not (0.0 < fraction <= 1.0):
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    malicious = support_y == 1
    counts = malicious.sum(-1)
    if counts.min() != counts.max() or int(counts[0]) == 0:
        raise ValueError(f"every task needs the same number (>= 1) of malicious rows, got {counts.tolist()}")
    n = max(1, math.ceil(fraction * int(counts[0]) - 1e-9))
    gen = torch.Generator(device=support_y.device).manual_seed(seed)
    keys = torch.rand(support_y.shape, generator=gen, device=support_y.device).masked_fill(~malicious, 2.0)
    return keys <= keys.kthvalue(n, dim=-1, keepdim=True).values


def threshold_rows(n_benign: int, fpr: float = 0.01) -> int:
    """How many of ``n_benign`` benign scores lie at or above the ``fpr`` operating threshold:
    floor(fpr·n) + 1 (``evaluation.metrics.threshold_at_fpr`` puts τ at the (m+1)-th largest)."""
    return math.floor(fpr * n_benign + 1e-9) + 1


def _task_objective(
    adapt: Adapt, predict: Predict, support_y: Tensor, own_x: Tensor, benign_ref: Tensor
) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """own_x [T, A, D]; benign_ref [T, G, D]: the attacker's score is its samples' mean minus the mean of
    the top ``threshold_rows(G)`` benign scores (the highest one for G < 100)."""
    ones = torch.ones(own_x.shape[:-1], dtype=torch.int64, device=own_x.device)
    zeros = torch.zeros(benign_ref.shape[:-1], dtype=torch.int64, device=own_x.device)
    top = threshold_rows(benign_ref.shape[-2])

    def objective(sx: Tensor) -> tuple[Tensor, Tensor]:
        params = adapt(sx, support_y)
        own = margin(predict(params, own_x), ones).mean(-1)
        benign = -margin(predict(params, benign_ref), zeros)
        score = own - benign.topk(top, dim=-1).values.mean(-1)
        return -score, score

    return objective


def poison_support(
    adapt: Adapt,
    predict: Predict,
    support_x: Tensor,
    support_y: Tensor,
    own_x: Tensor,
    *,
    fraction: float,
    mode: str,
    eps: float,
    constraints: Constraints,
    attack: Attack,
    seed: int = 0,
    benign_ref: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The attacker's version of each support set: (support_x, support_y, controlled bool [T, S]).

    support_x [T, S, D], support_y [T, S] (1 = malicious); own_x [T, A, D]: the attacker's own samples of
    the family, disjoint from the defender's queries. benign_ref: benign rows the attacker holds, [G, D] or
    [T, G, D], disjoint from the defender's queries; None: the clean benign support rows. ``attack`` gives
    the optimiser (steps, rule, norm); its loss is replaced by the objective described in the module
    docstring.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    check_eps(eps)
    controlled = controlled_rows(support_y, fraction, seed)
    labels = (
        torch.where(controlled, torch.zeros_like(support_y), support_y)
        if mode != "clean-label"
        else support_y
    )
    if benign_ref is None:
        benign_ref = support_x[:, (support_y == 0)[0]]
    elif benign_ref.dim() == 2:
        benign_ref = benign_ref.expand(support_x.shape[0], *benign_ref.shape)
    t, d = support_x.shape[0], support_x.shape[-1]
    if (
        benign_ref.dim() != 3
        or benign_ref.shape[0] != t
        or benign_ref.shape[2] != d
        or not benign_ref.shape[1]
    ):
        raise ValueError(
            f"benign_ref must be [G, D] or [T, G, D] with G >= 1, T = {t}, D = {d}; "
            f"got {tuple(benign_ref.shape)}"
        )
    if mode == "flip" or eps == 0:
        return support_x, labels, controlled
    objective = _task_objective(adapt, predict, labels, own_x, benign_ref)
    poisoned, _ = perturb(
        objective, support_x, attack=attack, eps=eps, constraints=constraints, free=controlled, seed=seed
    )
    return poisoned, labels, controlled


def adaptive_query_attack(
    adapt: Adapt,
    predict: Predict,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    *,
    eps: float,
    constraints: Constraints,
    attack: Attack,
    slot: int | None = None,
    seed: int = 0,
) -> tuple[Tensor, Callable[[Tensor], dict[str, Tensor]]]:
    """Perturb malicious queries [T, A, D] that also sit, labelled malicious, in their task's support set.

    Each query replaces malicious support row ``slot`` (default: the last one) of its own copy of the task,
    so the T*A units adapt separately and the gradient of the query's score flows through its adaptation.
    Returns (adversarial queries [T, A, D], a function mapping queries to the per-unit adapted params, to
    score other inputs under exactly the model each adversarial query induced).
    """
    check_eps(eps)
    t, a, d = query_x.shape
    malicious = torch.nonzero(support_y[0] == 1).flatten()
    if malicious.numel() == 0:
        raise ValueError("support_y has no malicious row to hold the query")
    slot = int(malicious[-1]) if slot is None else slot
    if int(support_y[0, slot]) != 1:
        raise ValueError(f"slot {slot} is not a malicious support row")
    sx = support_x.unsqueeze(1).expand(t, a, *support_x.shape[1:])
    sy = support_y.unsqueeze(1).expand(t, a, support_y.shape[1]).reshape(t * a, -1)

    def adapted(q: Tensor) -> dict[str, Tensor]:
        rows = sx.clone()
        rows[:, :, slot] = q
        return adapt(rows.reshape(t * a, *support_x.shape[1:]), sy)

    ones = torch.ones(t, a, dtype=torch.int64, device=query_x.device)

    def objective(q: Tensor) -> tuple[Tensor, Tensor]:
        logits = predict(adapted(q), q.reshape(t * a, 1, d)).reshape(t, a, -1)
        m = margin(logits, ones)
        return -m, m

    adv, _ = perturb(objective, query_x, attack=attack, eps=eps, constraints=constraints, seed=seed)
    return adv, adapted
