import numpy as np

from metashield.evaluation.metrics import roc_auc, tpr_at_fpr
from metashield.evaluation.protocol import episode_seed, worst_case_scores


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
    """The attackable torch forms of 1-NN and logistic regression must be the models ``evaluate`` scores."""
    import torch

    from metashield.evaluation.baselines import (
        LogisticRegressionLearner,
        NearestNeighbourLearner,
        knn_scorer,
        logreg_scorer,
    )

    gen = torch.Generator().manual_seed(0)
    sx = torch.randn(4, 10, 7, generator=gen, dtype=torch.float64)
    sy = torch.tensor([[0] * 5 + [1] * 5] * 4)
    sx[:, 5:] += 1.5  # a separable-ish attack class, so the fitted weights are far from 0
    qx = torch.randn(4, 30, 7, generator=gen, dtype=torch.float64)
    for learner, scorer in (
        (NearestNeighbourLearner(), knn_scorer()),
        (LogisticRegressionLearner(10.0), logreg_scorer(10.0)),
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
