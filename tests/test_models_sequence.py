"""SequenceCNN: padding cannot change a score, and MAML's second-order meta-gradient through it is exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metashield.meta import MAML, ProtoNet
from metashield.models.sequence import SequenceCNN

DT = torch.float64


def model(out_dim: int = 3) -> SequenceCNN:
    torch.manual_seed(0)
    return SequenceCNN(20, out_dim, embed_dim=4, channels=(5, 6), kernel=3).to(DT)


def tokens(*rows: list[int], length: int) -> torch.Tensor:
    """Rows of ids (1..20) padded with 0 to ``length``, as the float matrix episodes carry."""
    return torch.tensor([r + [0] * (length - len(r)) for r in rows], dtype=DT)


def test_padding_does_not_change_the_output() -> None:
    m = model()
    short = tokens([3, 7, 7, 1, 19], [2, 4], length=5)
    long = tokens([3, 7, 7, 1, 19], [2, 4], length=40)
    torch.testing.assert_close(m(short), m(long), rtol=0, atol=1e-12)
    # A real call where the padding was does change it: the mask is what keeps padding out.
    assert not torch.allclose(m(long), m(tokens([3, 7, 7, 1, 19], [2, 4, 9], length=40)))


def test_rejects_an_even_kernel() -> None:
    with pytest.raises(ValueError, match="kernel must be odd"):
        SequenceCNN(20, 3, kernel=4)


def _episode(seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    T, S, Q, L = 3, 6, 4, 9
    lengths = torch.randint(2, L + 1, (T, S + Q), generator=g)
    ids = torch.randint(1, 21, (T, S + Q, L), generator=g)
    ids = torch.where(torch.arange(L) < lengths.unsqueeze(-1), ids, 0).to(DT)
    labels = torch.randint(0, 3, (T, S + Q), generator=g)
    return ids[:, :S], labels[:, :S], ids[:, S:], labels[:, S:]


def test_maml_meta_gradient_through_the_cnn_matches_a_per_task_reference() -> None:
    """vmapped, batched MAML (2 second-order steps) against a plain autograd loop over tasks."""
    m, (sx, sy, qx, qy) = model(), _episode()
    learner = MAML(m, inner_lr=0.5, inner_steps=2)
    learner.outer_loss(sx, sy, qx, qy).backward()
    got = {n: p.grad for n, p in m.named_parameters()}

    theta = {n: p.detach().clone().requires_grad_() for n, p in m.named_parameters()}
    total = 0.0
    for t in range(sx.shape[0]):
        fast = dict(theta)
        for _ in range(2):
            loss = F.cross_entropy(functional_call(m, fast, (sx[t],)), sy[t])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {n: w - 0.5 * g for (n, w), g in zip(fast.items(), grads, strict=True)}
        total = total + F.cross_entropy(functional_call(m, fast, (qx[t],)), qy[t])
    want = torch.autograd.grad(total / sx.shape[0], list(theta.values()))
    for (name, g), w in zip(got.items(), want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-9, msg=name)
    # The embedding of a token that occurs gets a meta-gradient; the padding row never does.
    assert got["body.embed.weight"][0].abs().max() == 0
    assert got["body.embed.weight"][1:].abs().max() > 0


def test_protonet_embeds_token_rows_with_the_cnn_body() -> None:
    m, (sx, sy, qx, _) = model(), _episode()
    sy = torch.arange(3).repeat(2).expand(3, 6).contiguous()
    logits = ProtoNet(m).predict(ProtoNet(m).adapt(sx, sy), qx)
    emb = m.body(qx.reshape(-1, qx.shape[-1])).reshape(3, 4, -1)
    proto = torch.stack([m.body(sx[t])[sy[t] == c].mean(0) for t in range(3) for c in range(3)]).reshape(
        3, 3, -1
    )
    torch.testing.assert_close(logits, -(emb.unsqueeze(2) - proto.unsqueeze(1)).pow(2).sum(-1))
