"""The meta-training loop: early stopping on meta-val and what the checkpoints hold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metashield.checkpoint import load_checkpoint
from metashield.config import MetaConfig, TrainConfig
from metashield.data import BENIGN
from metashield.models import MLP
from metashield.tasks import EpisodeSampler
from metashield.train import build_learner, meta_train


def _sampler() -> EpisodeSampler:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4)).astype(np.float32)
    family = np.array([BENIGN] * 200 + ["a"] * 50 + ["b"] * 50, dtype=object)
    X[200:250] += 3
    X[250:] -= 3
    return EpisodeSampler(X, family, ["a", "b"], np.arange(200), shots=3, queries=4)


def _run(algorithm, out_dir, train, val_score=lambda _: 0.5, *, double=False, **kwargs):
    """meta_train ``algorithm`` on ``_sampler()`` from a seeded MLP(4, [8], 2); returns (learner, state)."""
    torch.manual_seed(0)
    model = MLP(4, [8], 2)
    learner = build_learner(algorithm, model.double() if double else model, MetaConfig(inner_lr=0.1))
    state = meta_train(
        learner,
        algorithm,
        _sampler(),
        val_score,
        train,
        MetaConfig(inner_lr=0.1),
        out_dir=out_dir,
        seed=0,
        device=torch.device("cpu"),
        metadata={},
        progress=False,
        **kwargs,
    )
    return learner, state


def _train_metasgd(out_dir, steps=6, val_score=lambda _: 0.5, *, resume=False, query_loss=None, **train):
    """Meta-SGD in float64, meta-val every 3 steps; ``train`` adds TrainConfig keys."""
    config = TrainConfig(steps=steps, eval_every=3, patience=10, tasks_per_batch=2, **train)
    learner, _ = _run(
        "metasgd", out_dir, config, val_score, double=True, resume=resume, query_loss=query_loss
    )
    return learner


def test_early_stopping_keeps_the_best_weights(tmp_path):
    scores = iter([0.5, 0.9, 0.8, 0.7, 0.6, 0.95])
    seen = []

    def val_score(learner):
        seen.append({k: v.clone() for k, v in learner.state_dict().items()})
        return next(scores)

    train = TrainConfig(steps=60, eval_every=5, patience=3, tasks_per_batch=2)
    _, state = _run("maml", tmp_path, train, val_score)
    # Best at the 2nd evaluation (step 10), then 3 worse ones: stop at step 25, never reaching the 0.95.
    assert state.step == 25 and state.finished and state.best_score == 0.9
    best, meta = load_checkpoint(tmp_path, "maml")
    assert meta["step"] == 10
    for k, v in seen[1].items():
        assert torch.equal(best[k], v)
    last, last_meta = load_checkpoint(tmp_path, "maml.last")
    assert last_meta["state"]["step"] == 25 and "torch_rng" in last
    assert any(k.startswith("optim.") for k in last)
    assert [h["step"] for h in state.history] == [5, 10, 15, 20, 25]


def test_reptile_trains_without_an_optimizer(tmp_path):
    torch.manual_seed(0)
    before = [
        p.clone() for p in build_learner("reptile", MLP(4, [8], 2), MetaConfig(inner_lr=0.1)).parameters()
    ]
    learner, state = _run("reptile", tmp_path, TrainConfig(steps=4, eval_every=2, tasks_per_batch=2))
    assert state.step == 4
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.parameters(), strict=True))
    _, meta = load_checkpoint(tmp_path, "reptile.last")
    assert meta["optimizer"] is None


def test_a_query_loss_replaces_the_learners_outer_loss(tmp_path):
    """meta_train's ``query_loss`` path (adapt, predict, then the given objective): with the tail objective
    over every benign query of balanced tasks it is the learner's own mean cross-entropy, so both runs end
    on the same weights; a tail over fewer benign rows trains differently."""
    from functools import partial

    from metashield.meta.objectives import tail_cross_entropy

    def train(query_loss, out):
        return _train_metasgd(tmp_path / out, query_loss=query_loss).state_dict()

    plain = train(None, "plain")
    same = train(partial(tail_cross_entropy, hard=4), "all")
    tail = train(partial(tail_cross_entropy, hard=1), "tail")
    for k, v in plain.items():
        torch.testing.assert_close(same[k], v, rtol=0, atol=1e-9)
    assert any(not torch.allclose(tail[k], v) for k, v in plain.items())


def test_ema_checkpoint_is_the_moving_average_of_the_trajectory(tmp_path):
    """With ``ema_decay`` d the best checkpoint after 3 updates is d³θ0 + d²(1−d)θ1 + d(1−d)θ2 + (1−d)θ3,
    where θk are the live weights after k updates (taken from plain runs of k steps), and the live weights
    train exactly as without averaging."""
    d = 0.6
    thetas = [
        {k: v.clone() for k, v in _train_metasgd(tmp_path / f"k{k}", k, lambda _: 1.0).state_dict().items()}
        for k in (1, 2, 3)
    ]
    torch.manual_seed(0)
    theta0 = build_learner("metasgd", MLP(4, [8], 2).double(), MetaConfig(inner_lr=0.1)).state_dict()
    averaged = _train_metasgd(tmp_path / "ema", 3, lambda _: 1.0, ema_decay=d)
    best, _ = load_checkpoint(tmp_path / "ema", "metasgd")
    for k, v in averaged.state_dict().items():
        torch.testing.assert_close(v, thetas[2][k], rtol=0, atol=0)
        expected = d**3 * theta0[k] + d**2 * (1 - d) * thetas[0][k] + d * (1 - d) * thetas[1][k]
        expected = expected + (1 - d) * thetas[2][k]
        torch.testing.assert_close(best[k], expected, rtol=0, atol=1e-12)
        assert not torch.allclose(best[k], v)


def test_ema_run_resumes_bit_for_bit(tmp_path):
    """A run killed after its first checkpoint (step 3) and resumed ends with the same live weights, moving
    average and best checkpoint as an uninterrupted one."""
    scores = {3: 0.5, 6: 0.7, 9: 0.6}
    seen = []

    def val_score(learner):
        seen.append(1)
        return scores[3 * len(seen)]

    full = _train_metasgd(tmp_path / "full", 9, val_score, ema_decay=0.9).state_dict()

    def killed(learner):
        if seen:
            raise KeyboardInterrupt
        seen.append(1)
        return scores[3]

    seen.clear()
    with pytest.raises(KeyboardInterrupt):
        _train_metasgd(tmp_path / "part", 9, killed, ema_decay=0.9)
    resumed = _train_metasgd(tmp_path / "part", 9, val_score, ema_decay=0.9, resume=True).state_dict()
    for name in ("metasgd", "metasgd.last"):
        a, _ = load_checkpoint(tmp_path / "full", name)
        b, _ = load_checkpoint(tmp_path / "part", name)
        assert sorted(a) == sorted(b)
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    for k, v in full.items():
        assert torch.equal(resumed[k], v)
