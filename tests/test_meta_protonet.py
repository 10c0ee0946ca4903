"""ProtoNet: prototypes, logits and gradients against a hand-written episode (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from metashield.meta import ProtoNet
from metashield.models.mlp import MLP

T, SHOTS, Q, D, C = 3, 4, 5, 6, 3
DT = torch.float64


def make_model() -> MLP:
    torch.manual_seed(0)
    return MLP(D, (8, 7), 2).to(DT)


def episode() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    support_y = torch.stack([torch.randperm(C * SHOTS, generator=g) % C for _ in range(T)])
    return (
        torch.randn(T, C * SHOTS, D, generator=g, dtype=DT),
        support_y,
        torch.randn(T, Q, D, generator=g, dtype=DT),
        torch.randint(0, C, (T, Q), generator=g),
    )


def test_prototypes_logits_and_loss_match_hand_computation() -> None:
    model, (sx, sy, qx, qy) = make_model(), episode()
    net = ProtoNet(model, backbone="body")
    protos = net.adapt(sx, sy)["prototypes"]
    assert protos.shape == (T, C, 7) and protos.dtype == DT

    loss = 0.0
    for t in range(T):
        emb = model.body(sx[t])
        expected = torch.stack([emb[sy[t] == c].mean(0) for c in range(C)])
        torch.testing.assert_close(protos[t], expected)
        logits = -((model.body(qx[t])[:, None, :] - expected[None]) ** 2).sum(-1)
        torch.testing.assert_close(net.predict({"prototypes": protos}, qx)[t], logits)
        loss = loss + F.cross_entropy(logits, qy[t]) / T
    torch.testing.assert_close(net.outer_loss(sx, sy, qx, qy), loss)


def test_gradient_reaches_backbone_only() -> None:
    model, data = make_model(), episode()
    ProtoNet(model).outer_loss(*data).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.body.parameters())
    assert all(p.grad is None for p in model.head.parameters())


def test_adapt_under_no_grad_is_detached() -> None:
    model, (sx, sy, qx, _) = make_model(), episode()
    net = ProtoNet(model)
    with torch.no_grad():
        params = net.adapt(sx, sy)
        assert not params["prototypes"].requires_grad
        assert net.predict(params, qx).shape == (T, Q, C)


def test_rejects_bad_labels_and_backbone() -> None:
    model, (sx, sy, qx, qy) = make_model(), episode()
    net = ProtoNet(model)
    with pytest.raises(ValueError, match="support_y"):
        net.adapt(sx, sy.float())
    with pytest.raises(ValueError, match="every class"):
        net.adapt(sx, torch.where(sy == 1, 0, sy))
    with pytest.raises(ValueError, match="query_y"):
        net.outer_loss(sx, sy, qx, qy + C)
    with pytest.raises(ValueError, match="query_x"):
        net.outer_loss(sx, sy, qx[:, :, :-1], qy)
    with pytest.raises(ValueError, match="encoder"):
        ProtoNet(model, backbone="encoder")
