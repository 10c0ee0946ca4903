"""Attacks through adaptation: gradients through the inner loop, controlled rows, validity of the result."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metashield.attacks.constraints import box_constraints
from metashield.attacks.presets import get_attack
from metashield.attacks.support import (
    _task_objective,
    adaptive_query_attack,
    controlled_rows,
    poison_support,
    threshold_rows,
)
from metashield.evaluation.metrics import threshold_at_fpr
from metashield.meta import MAML, MetaSGD
from metashield.robustness import attack_run


def _learner(cls=MAML, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    return cls(model, inner_lr=0.3, inner_steps=2, **kw)


def _episode(t: int = 2, k: int = 5, a: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    sx = torch.cat(
        [torch.randn(t, k, 4, generator=gen) - 1, torch.randn(t, k, 4, generator=gen) + 1], 1
    ).double()
    sy = torch.cat([torch.zeros(t, k), torch.ones(t, k)], 1).long()
    own = (torch.randn(t, a, 4, generator=gen) + 1).double()
    return sx, sy, own


@pytest.mark.parametrize("cls", [MAML, MetaSGD])
def test_gradient_through_the_inner_loop_matches_finite_differences(cls):
    learner = _learner(cls)
    sx, sy, own = _episode()
    objective = _task_objective(learner.adapt, learner.predict, sy, own, sx[:, :5])
    x = sx.clone().requires_grad_(True)
    loss, _ = objective(x)
    (g,) = torch.autograd.grad(loss.sum(), x)
    h = 1e-6
    for row, col in [(7, 0), (9, 3), (2, 1)]:  # two malicious rows and a benign one of task 0
        plus, minus = sx.clone(), sx.clone()
        plus[0, row, col] += h
        minus[0, row, col] -= h
        fd = (objective(plus)[0][0] - objective(minus)[0][0]) / (2 * h)
        assert g[0, row, col].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-8)
    # The gradient w.r.t. the support rows exists only because adaptation depends on them.
    assert g[0, 7].abs().sum() > 1e-6


@pytest.mark.parametrize("n", [1, 5, 99, 100, 101, 2000, 2099])
def test_threshold_rows_counts_the_benign_scores_at_or_above_the_1pct_threshold(n):
    scores = torch.randperm(n).double().numpy()
    assert threshold_rows(n) == int((scores >= threshold_at_fpr(scores, 0.01)).sum())


def test_a_held_benign_sample_sets_the_threshold_the_attacker_aims_below():
    learner = _learner()
    sx, sy, own = _episode()
    gen = torch.Generator().manual_seed(4)
    held = (torch.randn(250, 4, generator=gen) - 1).double()
    objective = _task_objective(learner.adapt, learner.predict, sy, own, held.expand(2, 250, 4))
    with torch.no_grad():
        params = learner.adapt(sx, sy)
        own_scores = learner.predict(params, own).diff(dim=-1).squeeze(-1)
        held_scores = learner.predict(params, held.expand(2, 250, 4)).diff(dim=-1).squeeze(-1)
        top3 = held_scores.sort(-1, descending=True).values[:, :3].mean(-1)  # floor(2.5) + 1 rows
        torch.testing.assert_close(objective(sx)[1], own_scores.mean(-1) - top3)
    box = box_constraints(4, dtype=torch.float64)
    common = dict(
        fraction=0.2, mode="flip-optimised", eps=0.5, constraints=box, attack=get_attack("pgd", steps=5)
    )
    shared = poison_support(learner.adapt, learner.predict, sx, sy, own, benign_ref=held, **common)
    per_task = poison_support(
        learner.adapt, learner.predict, sx, sy, own, benign_ref=held.expand(2, 250, 4), **common
    )
    assert all(torch.equal(a, b) for a, b in zip(shared, per_task, strict=True))
    default = poison_support(learner.adapt, learner.predict, sx, sy, own, **common)
    assert not torch.equal(shared[0], default[0])  # the reference changes what the optimiser does
    for bad in (held[:, :3], held.expand(3, 250, 4), held[:0], held[0]):
        with pytest.raises(ValueError, match="benign_ref must be"):
            poison_support(learner.adapt, learner.predict, sx, sy, own, benign_ref=bad, **common)


def test_controlled_rows_take_ceil_of_the_fraction_of_malicious_rows_only():
    _, sy, _ = _episode(t=50, k=5)
    for fraction, n in [(0.2, 1), (0.21, 2), (0.01, 1), (1.0, 5)]:
        rows = controlled_rows(sy, fraction, seed=0)
        assert rows.sum(-1).tolist() == [n] * 50
        assert bool((sy[rows] == 1).all())
    assert torch.equal(controlled_rows(sy, 0.4, 3), controlled_rows(sy, 0.4, 3))
    assert not torch.equal(controlled_rows(sy, 0.4, 3), controlled_rows(sy, 0.4, 4))
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction must be in"):
            controlled_rows(sy, bad, 0)


def test_poisoned_supports_touch_only_the_controlled_rows_within_the_budget():
    learner = _learner()
    sx, sy, own = _episode()
    box = box_constraints(4, dtype=torch.float64)
    attack = get_attack("pgd", steps=10)
    fx, fy, ctl = poison_support(
        learner.adapt,
        learner.predict,
        sx,
        sy,
        own,
        fraction=0.2,
        mode="flip",
        eps=0.0,
        constraints=box,
        attack=attack,
    )
    assert torch.equal(fx, sx) and bool((fy[ctl] == 0).all()) and torch.equal(fy[~ctl], sy[~ctl])
    cx, cy, ctl = poison_support(
        learner.adapt,
        learner.predict,
        sx,
        sy,
        own,
        fraction=0.2,
        mode="clean-label",
        eps=0.5,
        constraints=box,
        attack=attack,
    )
    assert torch.equal(cy, sy) and torch.equal(cx[~ctl], sx[~ctl])
    assert (cx - sx).abs().max() <= 0.5 + 1e-12
    ox, oy, ctl = poison_support(
        learner.adapt,
        learner.predict,
        sx,
        sy,
        own,
        fraction=0.2,
        mode="flip-optimised",
        eps=0.5,
        constraints=box,
        attack=attack,
    )
    objective = _task_objective(learner.adapt, learner.predict, oy, own, sx[:, :5])
    with torch.no_grad():
        # The optimiser never leaves the attacker worse off than the plain flip it starts from.
        assert bool((objective(ox)[1] <= objective(sx)[1] + 1e-12).all())
        assert bool((objective(ox)[1] < objective(sx)[1]).any())
    with pytest.raises(ValueError, match="mode must be one of"):
        poison_support(
            learner.adapt,
            learner.predict,
            sx,
            sy,
            own,
            fraction=0.2,
            mode="swap",
            eps=0.5,
            constraints=box,
            attack=attack,
        )


def test_adaptive_query_attack_differentiates_through_the_adaptation_it_triggers():
    learner = _learner()
    sx, sy, own = _episode()
    box = box_constraints(4, dtype=torch.float64)
    adv, adapted = adaptive_query_attack(
        learner.adapt, learner.predict, sx, sy, own, eps=0.4, constraints=box, attack=get_attack("pgd")
    )
    assert adv.shape == own.shape and (adv - own).abs().max() <= 0.4 + 1e-12
    with torch.no_grad():
        score = learner.predict(adapted(adv), adv.reshape(12, 1, 4)).reshape(2, 6, 2)
        clean = learner.predict(adapted(own), own.reshape(12, 1, 4)).reshape(2, 6, 2)
    margin_adv = score[..., 1] - score[..., 0]
    margin_clean = clean[..., 1] - clean[..., 0]
    assert bool((margin_adv <= margin_clean + 1e-12).all()) and bool((margin_adv < margin_clean).any())
    with pytest.raises(ValueError, match="not a malicious support row"):
        adaptive_query_attack(
            learner.adapt,
            learner.predict,
            sx,
            sy,
            own,
            eps=0.4,
            constraints=box,
            attack=get_attack("pgd"),
            slot=0,
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eps": [0.1, -1.0]}, "eps must be a finite number >= 0"),
        ({"eps": [float("inf")]}, "eps must be a finite number >= 0"),
        ({"eps": []}, "eps is empty"),
        ({"attack": "edits", "eps": [1.5]}, "whole number of edits"),
        ({"attack": "nope"}, "unknown attack 'nope'"),
        ({"threat": "support", "attack": "mimicry"}, "the support threat cannot use 'mimicry'"),
        ({"threat": "end-to-end", "attack": "mimicry"}, "the end-to-end threat cannot use 'mimicry'"),
    ],
)
def test_attack_run_refuses_bad_settings_before_it_loads_the_run(tmp_path, kwargs, message):
    # The run directory does not exist: each setting must be refused before it is looked for.
    with pytest.raises(ValueError, match=message):
        attack_run(tmp_path / "missing", **kwargs)
