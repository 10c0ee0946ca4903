"""Meta-training query objectives (``metashield.meta.objectives``)."""

from __future__ import annotations

import math

import pytest
import torch

from metashield.meta import MetaSGD
from metashield.meta.objectives import tail_cross_entropy
from metashield.models.mlp import MLP

DT = torch.float64


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def logits_with_margins(margins: list[list[float]]) -> torch.Tensor:
    """[T, Q, 2] logits whose attack margin z1 - z0 is the given value, with z0 = 0."""
    m = torch.tensor(margins, dtype=DT)
    return torch.stack([torch.zeros_like(m), m], dim=-1).requires_grad_(True)


def test_tail_keeps_the_benign_rows_scored_most_like_attacks_and_ignores_the_rest() -> None:
    # One task: benign margins -3, 2, 0.5, -1; attack margins 1, -2. With hard = 2 the benign rows at 2 and
    # 0.5 count, each with cross-entropy softplus(margin); an attack row's is softplus(-margin).
    logits = logits_with_margins([[-3.0, 2.0, 0.5, -1.0, 1.0, -2.0]])
    y = torch.tensor([[0, 0, 0, 0, 1, 1]])
    loss = tail_cross_entropy(logits, y, hard=2)
    attack = (softplus(-1.0) + softplus(2.0)) / 2
    benign = (softplus(2.0) + softplus(0.5)) / 2
    assert loss.item() == pytest.approx((attack + benign) / 2, abs=1e-12)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.all(grad[0, [0, 3]] == 0), "benign rows below the tail must get no gradient"
    assert torch.all(grad[0, [1, 2, 4, 5]].abs().sum(-1) > 0)


def test_tail_over_every_benign_row_is_the_learners_own_loss_on_balanced_queries() -> None:
    """With hard = all benign queries and as many attack queries, the tail objective is the mean
    cross-entropy, so the meta-gradient through ``adapt`` and ``predict`` equals ``outer_loss``'s."""
    torch.manual_seed(0)
    learner = MetaSGD(MLP(5, (8, 8), 2).to(DT), inner_lr=0.1, inner_steps=2)
    g = torch.Generator().manual_seed(1)
    sx, qx = torch.randn(3, 6, 5, generator=g, dtype=DT), torch.randn(3, 8, 5, generator=g, dtype=DT)
    sy, qy = torch.tensor([[0, 0, 0, 1, 1, 1]] * 3), torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]] * 3)
    want = torch.autograd.grad(learner.outer_loss(sx, sy, qx, qy), list(learner.parameters()))
    loss = tail_cross_entropy(learner.predict(learner.adapt(sx, sy), qx), qy, hard=4)
    got = torch.autograd.grad(loss, list(learner.parameters()))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("shape", "labels", "hard", "match"),
    [
        ((1, 4, 3), [[0, 0, 1, 1]], 1, r"logits \[T, Q, 2\]"),
        ((1, 4, 2), [[0, 0, 0, 0]], 1, "attack query"),
        ((1, 4, 2), [[0, 0, 1, 1]], 3, "hard = 3"),
        ((1, 4, 2), [[0, 0, 1, 1]], 0, "hard = 0"),
    ],
)
def test_tail_rejects_bad_inputs(shape, labels, hard, match) -> None:
    with pytest.raises(ValueError, match=match):
        tail_cross_entropy(torch.zeros(shape), torch.tensor(labels), hard=hard)
