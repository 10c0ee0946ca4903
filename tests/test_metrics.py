"""Episode metrics and bootstrap confidence intervals."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score, roc_curve

from metashield.evaluation.metrics import (
    bootstrap_ci,
    episode_metrics,
    f1_balanced,
    family_bootstrap_ci,
    fpr_at_threshold,
    paired_difference_ci,
    roc_auc,
    smallest_fpr_step,
    threshold_at_fpr,
    tpr_at_fpr,
)


def test_threshold_is_the_m_plus_1_th_largest_benign_score() -> None:
    benign = np.arange(100, dtype=float)  # 0..99
    assert threshold_at_fpr(benign, 0.01) == 98.0  # m = 1: only 99 is above
    assert threshold_at_fpr(benign, 0.05) == 94.0
    assert threshold_at_fpr(benign, 0.29) == 70.0  # 0.29 * 100 floors to 29, not 28
    assert threshold_at_fpr(benign, 0.0) == 99.0
    assert threshold_at_fpr(benign, 0.001) == 99.0  # below 1/n: same as fpr = 0
    assert threshold_at_fpr(benign, 1.0) == -np.inf
    assert smallest_fpr_step(100) == 0.01


def test_tpr_at_fpr_hand_built_and_ties_count_against_model() -> None:
    benign = np.arange(100, dtype=float)
    attack = np.array([99.5, 98.5, 98.0, 97.0])
    scores = np.concatenate([benign, attack])
    y = np.r_[np.zeros(100), np.ones(4)]
    assert tpr_at_fpr(scores, y, 0.01) == 0.5  # τ = 98: the attack tied at 98 is missed
    assert tpr_at_fpr(scores, y, 0.0) == 0.25  # τ = 99
    assert tpr_at_fpr(scores, y, 0.05) == 1.0  # τ = 94
    # All scores tied: nothing is flagged, whatever the fpr below 1.
    assert tpr_at_fpr(np.ones(10), np.r_[np.zeros(5), np.ones(5)], 0.4) == 0.0


def test_tpr_at_fpr_matches_roc_curve_without_ties() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(1000), np.ones(300)]
    scores = rng.standard_normal(1300) + 1.5 * y
    fpr_curve, tpr_curve, _ = roc_curve(y, scores, drop_intermediate=False)
    for target in (0.01, 0.05, 0.2):
        expected = tpr_curve[fpr_curve <= target].max()
        assert tpr_at_fpr(scores, y, target) == pytest.approx(expected)


def test_auc_fpr_and_f1() -> None:
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(500), np.ones(50)]
    scores = rng.random(550) * 0.8 + 0.2 * y
    assert roc_auc(scores, y) == pytest.approx(roc_auc_score(y, scores))
    assert fpr_at_threshold(scores, y, 0.5) == pytest.approx(np.mean(scores[:500] > 0.5))
    perfect = np.r_[np.zeros(500), np.ones(50)]
    assert f1_balanced(perfect, y, 0.5, 0) == 1.0
    assert f1_balanced(scores, y, 0.5, 3) == f1_balanced(scores, y, 0.5, np.random.default_rng(3))
    m = episode_metrics(scores, y, threshold=0.5, seed=0)
    assert set(m) == {"tpr@1%fpr", "tpr@5%fpr", "tpr@0.1%fpr", "auc", "f1", "fpr@threshold"}
    assert m["tpr@0.1%fpr"] <= m["tpr@1%fpr"] <= m["tpr@5%fpr"]
    with_rate = episode_metrics(scores, y, threshold=0.5, seed=0, base_rate=0.01)
    assert 0.0 <= with_rate["precision@base_rate"] <= 1.0


@pytest.mark.parametrize("seed", range(6))
def test_auc_and_f1_equal_scikit_learn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_neg, n_pos = int(rng.integers(1, 300)), int(rng.integers(1, 60))
    y = rng.permutation(np.r_[np.zeros(n_neg), np.ones(n_pos)])
    # Few distinct values: most scores tie, within a class and across the classes.
    scores = rng.integers(0, 2 + seed * 3, size=y.size).astype(float) + 0.5 * y * (seed % 2)
    assert roc_auc(scores, y) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    threshold = float(np.median(scores))
    n = min(n_neg, n_pos)
    pick = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    keep = np.concatenate([pick.choice(pos, n, replace=False), pick.choice(neg, n, replace=False)])
    expected = f1_score(y[keep], scores[keep] > threshold, zero_division=0.0)
    assert f1_balanced(scores, y, threshold, seed) == pytest.approx(expected, abs=1e-12)
    # Nothing flagged: scikit-learn's zero_division=0 case.
    assert f1_balanced(scores, y, np.inf, seed) == 0.0


@pytest.mark.parametrize(
    ("scores", "y", "match"),
    [
        ([0.1, 0.2], [0, 0], "both"),
        ([0.1, np.nan], [0, 1], "NaN"),
        ([0.1, 0.2], [0, 2], "only 0"),
        ([0.1], [0, 1], "y has 2"),
    ],
)
def test_metric_input_errors(scores, y, match) -> None:
    with pytest.raises(ValueError, match=match):
        tpr_at_fpr(np.array(scores), np.array(y))


def test_bootstrap_ci_constant_and_normal() -> None:
    mean, lo, hi = bootstrap_ci(np.full(50, 0.7))
    assert mean == pytest.approx(0.7) and lo == pytest.approx(0.7) and hi == pytest.approx(0.7)
    v = np.random.default_rng(0).normal(3.0, 2.0, 400)
    mean, lo, hi = bootstrap_ci(v, n_boot=4000)
    assert lo < mean < hi and lo < 3.0 < hi
    assert hi - lo == pytest.approx(2 * 1.96 * v.std() / np.sqrt(len(v)), rel=0.15)
    assert bootstrap_ci(v, seed=5) == bootstrap_ci(v, seed=5)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(v, level=1.0)


def test_family_bootstrap_wider_when_families_differ() -> None:
    rng = np.random.default_rng(0)
    by_family = {f"f{i}": rng.normal(mu, 0.05, 30) for i, mu in enumerate([0.2, 0.5, 0.6, 0.9, 0.95])}
    mean, lo, hi = family_bootstrap_ci(by_family)
    assert mean == pytest.approx(np.mean([v.mean() for v in by_family.values()]))
    _, elo, ehi = bootstrap_ci(np.concatenate(list(by_family.values())))
    assert hi - lo > 3 * (ehi - elo)
    assert lo < mean < hi
    # Insertion order does not matter; a constant gives a zero-width interval.
    assert family_bootstrap_ci(dict(reversed(list(by_family.items())))) == (mean, lo, hi)
    assert family_bootstrap_ci({"a": np.ones(3), "b": np.ones(7)}) == pytest.approx((1.0, 1.0, 1.0))


def test_paired_difference_ci() -> None:
    rng = np.random.default_rng(2)
    base = {f"f{i}": rng.random(20) for i in range(6)}
    better = {k: v + 0.1 + rng.normal(0, 0.01, 20) for k, v in base.items()}
    mean, lo, hi = paired_difference_ci(better, base)
    assert 0.09 < lo < mean < hi < 0.11  # pairing removes the large between-episode spread
    with pytest.raises(ValueError, match="different families"):
        paired_difference_ci(better, {"f0": base["f0"]})
    with pytest.raises(ValueError, match="episodes"):
        paired_difference_ci({"a": np.ones(3)}, {"a": np.ones(4)})


def test_precision_at_base_rate_follows_bayes_rule():
    from metashield.evaluation.metrics import precision_at_base_rate

    # 1,000 benign scores 0..999 and 100 attacks: 60 above every benign score, 40 below all of them.
    benign = np.arange(1000.0)
    attacks = np.r_[np.full(60, 2000.0), np.full(40, -1.0)]
    scores, y = np.r_[benign, attacks], np.r_[np.zeros(1000), np.ones(100)]
    # The 1%-FPR threshold is the 11th largest benign score (989): 10 benign rows above it, TPR 0.6.
    pi = 0.00172
    expected = 0.6 * pi / (0.6 * pi + 0.01 * (1 - pi))
    assert precision_at_base_rate(scores, y, pi) == pytest.approx(expected)
    assert precision_at_base_rate(scores, y, 0.5) == pytest.approx(0.6 / (0.6 + 0.01))
    with pytest.raises(ValueError, match="base_rate must be in"):
        precision_at_base_rate(scores, y, 1.5)
