"""Meta-training query objectives beyond a learner's own mean loss (``outer_loss``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def tail_cross_entropy(logits: Tensor, y: Tensor, hard: int) -> Tensor:
    """Cross-entropy aimed at detection at a low false-positive rate.

    logits [T, Q, 2] after adaptation, y [T, Q] (0 benign, 1 attack). Per task: the mean cross-entropy of
    the attack queries plus that of the ``hard`` benign queries the model scores most like attacks, halved;
    then the mean over tasks. The benign rows with the highest scores are the ones that set a low-FPR
    threshold, and a plain mean spends most of its gradient on benign rows far below it. With ``hard`` equal
    to the number of benign queries it is the class-balanced mean cross-entropy.
    """
    if logits.dim() != 3 or logits.shape[-1] != 2 or logits.shape[:2] != y.shape:
        raise ValueError(
            f"need logits [T, Q, 2] and y [T, Q], got {tuple(logits.shape)} and {tuple(y.shape)}"
        )
    benign = y == 0
    n_benign, n_attack = benign.sum(-1), (~benign).sum(-1)
    if int(n_attack.min()) < 1 or not 1 <= hard <= int(n_benign.min()):
        raise ValueError(
            f"every task needs an attack query and at least hard = {hard} >= 1 benign queries; got "
            f"{int(n_attack.min())} attack and {int(n_benign.min())} benign in the poorest task"
        )
    ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y)
    # A benign row's cross-entropy, softplus(z_attack - z_benign), grows with its attack score.
    top = torch.where(benign, ce, -torch.inf).topk(hard, dim=-1).values
    attack = torch.where(benign, 0.0, ce).sum(-1) / n_attack
    return ((attack + top.mean(-1)) / 2).mean()
