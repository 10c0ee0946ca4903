import numpy as np
import pytest

from metashield.evaluation.metrics import roc_auc, tpr_at_fpr
from metashield.evaluation.protocol import choice_stability, episode_seed, worst_case_scores


def test_non_finite_scores_count_against_the_method():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, np.nan, 0.2, 0.3, np.nan, np.inf, 5.0, -np.inf])
    fixed = worst_case_scores(scores, y)
    assert np.isfinite(fixed).all()
    # The NaN benign query ranks first, the NaN attack last.
    assert fixed[1] == fixed.max() and fixed[4] == fixed.min()
    assert tpr_at_fpr(fixed, y, fpr=0.0) == 0.0
    assert roc_auc(fixed, y) < roc_auc(np.nan_to_num(scores, nan=0.25), y)


def test_episode_seed_depends_on_family_and_shots_only():
    assert episode_seed(0, "neptune", 5) == episode_seed(0, "neptune", 5)
    seeds = {episode_seed(0, "neptune", 5), episode_seed(0, "neptune", 1), episode_seed(0, "smurf", 5)}
    assert len(seeds) == 3


def test_knn_and_logreg_learners_score_exactly_like_their_scikit_learn_baselines():
    """The attackable torch forms of 1-NN and logistic regression (with and without benign replay) must be the
    models ``evaluate`` scores."""
    import torch

    from metashield.evaluation.baselines import (
        LogisticRegressionLearner,
        NearestNeighbourLearner,
        ReplayLearner,
        benign_replay,
        knn_scorer,
        logreg_scorer,
    )

    gen = torch.Generator().manual_seed(0)
    sx = torch.randn(4, 10, 7, generator=gen, dtype=torch.float64)
    sy = torch.tensor([[0] * 5 + [1] * 5] * 4)
    sx[:, 5:] += 1.5  # a separable-ish attack class, so the fitted weights are far from 0
    qx = torch.randn(4, 30, 7, generator=gen, dtype=torch.float64)
    pool = torch.randn(50, 7, generator=gen, dtype=torch.float64)
    for learner, scorer in (
        (NearestNeighbourLearner(), knn_scorer()),
        (LogisticRegressionLearner(10.0), logreg_scorer(10.0)),
        (
            ReplayLearner(LogisticRegressionLearner(10.0), pool, 20, 1),
            benign_replay(logreg_scorer(10.0), pool, 20, 1),
        ),
    ):
        logits = learner.predict(learner.adapt(sx, sy), qx)
        margin = (logits[..., 1] - logits[..., 0]).numpy()
        np.testing.assert_allclose(margin, scorer(sx, sy, qx), rtol=0, atol=1e-9)
    # 1-NN's gradient is that of the distance to the nearest row of each class: for a query on the segment
    # between its nearest benign row b and nearest attack row a, d(d_b - d_a)/dx = (x-b)/|x-b| - (x-a)/|x-a|.
    knn = NearestNeighbourLearner()
    params = knn.adapt(sx[:1], sy[:1])
    b, a = sx[0, 0], sx[0, 5]
    x = (0.9 * b + 0.1 * a).reshape(1, 1, 7).requires_grad_(True)
    dist = (sx[0] - x.detach().reshape(7)).norm(dim=-1)
    assert int(dist[:5].argmin()) == 0 and int(dist[5:].argmin()) == 0  # b and a are the nearest rows
    logits = knn.predict(params, x)
    (grad,) = torch.autograd.grad((logits[..., 1] - logits[..., 0]).sum(), x)
    u = (a - b) / (a - b).norm()
    torch.testing.assert_close(grad.reshape(7), u + u, rtol=0, atol=1e-9)


def test_benign_replay_adds_pool_rows_and_balances_the_classes():
    """``benign_replay`` hands the scorer the support set plus ``rows`` rows of the benign pool, with the
    attack rows repeated to the benign count; draws are seeded per call; bad input is refused."""
    import pytest
    import torch

    from metashield.evaluation.baselines import benign_replay

    seen = []

    def recorder(sx, sy, qx):
        seen.append((sx.clone(), sy.clone()))
        return np.zeros(qx.shape[:2])

    gen = torch.Generator().manual_seed(0)
    pool = 100.0 + torch.arange(40 * 3, dtype=torch.float32).reshape(40, 3)  # rows no episode holds
    sx = torch.randn(2, 4, 3, generator=gen)
    sy = torch.tensor([[0, 1, 0, 1]] * 2)
    qx = torch.randn(2, 6, 3, generator=gen)
    score = benign_replay(recorder, pool, rows=6, seed=3)
    score(sx, sy, qx)
    score(sx, sy, qx)
    x, y = seen[0]
    # 2 own benign + 6 replayed benign rows; the 2 attack rows repeated (2 + 6) // 2 = 4 times.
    assert y.tolist() == [[0] * 8 + [1] * 8] * 2
    torch.testing.assert_close(x[:, :2], sx[:, [0, 2]])
    replayed = x[:, 2:8].reshape(-1, 3)
    assert all(bool((pool == r).all(-1).any()) for r in replayed)
    torch.testing.assert_close(x[:, 8:], sx[:, [1, 3]].repeat(1, 4, 1))
    torch.testing.assert_close(seen[1][0], x)  # the same seed draws the same rows
    with pytest.raises(ValueError, match="rows must be >= 1"):
        benign_replay(recorder, pool, rows=0)
    with pytest.raises(ValueError, match="both classes"):
        score(sx, torch.ones_like(sy), qx)


def test_replayed_benign_rows_lift_logistic_regression_at_1_percent_fpr():
    """With one benign support row, the 1%-FPR threshold of a support-only model sits in the dark: benign
    traffic spread along a direction the support does not show yields false positives. Replaying benign
    rows from the training pool shows that spread, so the attack is detected at far higher TPR."""
    import torch

    from metashield.evaluation.baselines import benign_replay, logreg_scorer
    from metashield.evaluation.metrics import tpr_at_fpr

    gen = torch.Generator().manual_seed(0)
    d = 8

    def benign(n):
        x = torch.randn(n, d, generator=gen, dtype=torch.float64)
        x[:, 0] *= 6.0  # benign traffic varies a lot along feature 0
        return x

    def attack(n):
        x = torch.randn(n, d, generator=gen, dtype=torch.float64) * 0.5
        x[:, 0] += 8.0  # attacks sit at the high end of feature 0 ...
        x[:, 1] += 3.0  # ... but differ from benign along feature 1
        return x

    episodes = 20
    sx = torch.stack([torch.cat([benign(1), attack(1)]) for _ in range(episodes)])
    sy = torch.tensor([[0, 1]] * episodes)
    qx = torch.stack([torch.cat([benign(500), attack(50)]) for _ in range(episodes)])
    qy = np.array([0] * 500 + [1] * 50)
    plain = logreg_scorer(1.0)(sx, sy, qx)
    replayed = benign_replay(logreg_scorer(1.0), benign(2000), rows=500, seed=0)(sx, sy, qx)
    tpr_plain = np.mean([tpr_at_fpr(s, qy, 0.01) for s in plain])
    tpr_replay = np.mean([tpr_at_fpr(s, qy, 0.01) for s in replayed])
    assert tpr_plain < 0.1 and tpr_replay > 0.8, (tpr_plain, tpr_replay)  # 0.01 and 0.90 at this seed


def test_family_table_prints_long_method_names_whole_and_aligned():
    from metashield.evaluation.report import format_family_table

    summary = {
        "maml": {"per_family": {"a": {"tpr@1%fpr": 0.5}}},
        "logreg-replay-long": {"per_family": {"a": {"tpr@1%fpr": 1.0}}},
    }
    header, line = format_family_table(summary).splitlines()[1:]
    assert header.split() == ["family", "maml", "logreg-replay-long"]
    assert line.split() == ["a", "50.0", "100.0"]
    assert len(header) == len(line)  # every column as wide as its longest name


def test_choice_stability_counts_bootstrap_wins_over_families():
    # Two families: resamples (f1,f1), (f1,f2), (f2,f1) make a the best (means 1, 0.5, 0.5 against 0, 0.45,
    # 0.45) and (f2,f2) makes b the best, so a wins 3/4 of them in expectation.
    per_family = {"a": {"f1": 1.0, "f2": 0.0}, "b": {"f1": 0.0, "f2": 0.9}}
    shares = choice_stability(per_family, n_boot=40000, seed=1)
    assert shares["a"] == pytest.approx(0.75, abs=0.01) and shares["a"] + shares["b"] == pytest.approx(1.0)
    # Ties go to the first candidate, as the choice itself does.
    assert choice_stability({"a": {"f": 0.5}, "b": {"f": 0.5}}) == {"a": 1.0, "b": 0.0}
    with pytest.raises(ValueError, match="same families"):
        choice_stability({"a": {"f1": 1.0}, "b": {"f2": 1.0}})
