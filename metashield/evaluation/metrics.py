"""Detection metrics for one episode and bootstrap confidence intervals over episodes and families.

Conventions: ``y`` is 1 for attack and 0 for benign, a higher score means more malicious, and a sample is
flagged iff ``score > threshold`` (strictly).

ROC-AUC and F1 are computed here in numpy, not with ``sklearn.metrics``: an evaluation scores thousands of
episodes × methods, and scikit-learn's per-call input validation (~7 ms per episode for the two) was a third
of ``metashield evaluate``'s time. The tests check both against scikit-learn, ties included.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np


def _scores_labels(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated 1-d float scores and 0/1 labels holding both classes."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(y).ravel()
    if scores.shape != y.shape:
        raise ValueError(f"scores has {scores.size} values but y has {y.size}")
    if np.isnan(scores).any():
        raise ValueError("scores contains NaN")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y must contain only 0 (benign) and 1 (attack)")
    if y.min() == y.max():
        raise ValueError("y must contain both benign (0) and attack (1) samples")
    return scores, y.astype(np.int64)


def smallest_fpr_step(n_benign: int) -> float:
    """The FPR resolution of ``n_benign`` benign samples: an ``fpr`` below it behaves like fpr = 0."""
    if n_benign < 1:
        raise ValueError(f"n_benign must be >= 1, got {n_benign}")
    return 1.0 / n_benign


def threshold_at_fpr(benign_scores: np.ndarray, fpr: float) -> float:
    """The threshold τ at which at most m = floor(fpr * n_benign) benign scores are strictly above τ.

    τ is the (m+1)-th largest benign score, so a sample tied with it is NOT flagged: ties count against the
    model. When fpr < 1/n_benign, m = 0 and τ is the largest benign score (the metric becomes TPR at zero
    FPR); see ``smallest_fpr_step``. fpr = 1 gives τ = -inf (flag everything).
    """
    scores = np.asarray(benign_scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("benign_scores is empty")
    if np.isnan(scores).any():
        raise ValueError("benign_scores contains NaN")
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    # The small slack keeps e.g. 0.29 * 100 = 28.999999999999996 from flooring to 28.
    m = math.floor(fpr * scores.size + 1e-9)
    if m >= scores.size:
        return -math.inf
    k = scores.size - 1 - m  # ascending position of the (m+1)-th largest
    return float(np.partition(scores, k)[k])


def tpr_at_fpr(scores: np.ndarray, y: np.ndarray, fpr: float = 0.01) -> float:
    """Fraction of attacks scored strictly above ``threshold_at_fpr`` of the benign scores."""
    scores, y = _scores_labels(scores, y)
    tau = threshold_at_fpr(scores[y == 0], fpr)
    return float(np.mean(scores[y == 1] > tau))


def fpr_at_threshold(scores: np.ndarray, y: np.ndarray, threshold: float) -> float:
    """Fraction of benign samples flagged (score > threshold)."""
    scores, y = _scores_labels(scores, y)
    return float(np.mean(scores[y == 0] > threshold))


def roc_auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve: P(attack score > benign score) + ½ P(tie), as scikit-learn's
    ``roc_auc_score`` (the Mann–Whitney U statistic over n_attack · n_benign pairs, ties at mid-rank)."""
    scores, y = _scores_labels(scores, y)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # 1-based mid-rank of each distinct value: the mean of the ranks its tied copies occupy.
    mid = np.cumsum(counts) - (counts - 1) / 2.0
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    u = mid[inverse[pos]].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def f1_balanced(scores: np.ndarray, y: np.ndarray, threshold: float, rng: np.random.Generator | int) -> float:
    """F1 of ``score > threshold`` after subsampling the larger class to the smaller one's size.

    Episode queries are mostly benign; balancing keeps F1 comparable across families of different sizes.
    """
    scores, y = _scores_labels(scores, y)
    rng = np.random.default_rng(rng)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    n = min(len(pos), len(neg))
    keep = np.concatenate([rng.choice(pos, n, replace=False), rng.choice(neg, n, replace=False)])
    flagged, truth = scores[keep] > threshold, y[keep] == 1
    tp = int(np.sum(flagged & truth))
    wrong = int(np.sum(flagged != truth))  # false positives + false negatives
    return 2.0 * tp / (2.0 * tp + wrong) if tp else 0.0


def precision_at_base_rate(scores: np.ndarray, y: np.ndarray, base_rate: float, fpr: float = 0.01) -> float:
    """Precision at the ``fpr`` operating threshold if attacks made up ``base_rate`` of the traffic.

    Episodes hold far more attacks than a deployment sees (fraud is 0.172% of card transactions, the
    subsample 1.2%), so precision is computed from the measured TPR and FPR at that threshold:
    TPR·π / (TPR·π + FPR·(1 − π)). A threshold that flags nothing scores 0.
    """
    if not 0.0 < base_rate < 1.0:
        raise ValueError(f"base_rate must be in (0, 1), got {base_rate}")
    scores, y = _scores_labels(scores, y)
    tau = threshold_at_fpr(scores[y == 0], fpr)
    tpr = float(np.mean(scores[y == 1] > tau))
    false = float(np.mean(scores[y == 0] > tau))
    flagged = tpr * base_rate + false * (1.0 - base_rate)
    return tpr * base_rate / flagged if flagged > 0 else 0.0


def episode_metrics(
    scores: np.ndarray,
    y: np.ndarray,
    *,
    threshold: float = 0.5,
    seed: int = 0,
    base_rate: float | None = None,
) -> dict[str, float]:
    """All per-episode metrics; ``threshold`` applies to probability-like scores (F1 and fpr@threshold).

    tpr@0.1%fpr is TPR at zero FPR when an episode has under 1,000 benign queries (``smallest_fpr_step``).
    With ``base_rate``, also the precision at the 1%-FPR threshold at that share of attacks.
    """
    out = {
        "tpr@1%fpr": tpr_at_fpr(scores, y, 0.01),
        "tpr@5%fpr": tpr_at_fpr(scores, y, 0.05),
        "tpr@0.1%fpr": tpr_at_fpr(scores, y, 0.001),
        "auc": roc_auc(scores, y),
        "f1": f1_balanced(scores, y, threshold, seed),
        "fpr@threshold": fpr_at_threshold(scores, y, threshold),
    }
    if base_rate is not None:
        out["precision@base_rate"] = precision_at_base_rate(scores, y, base_rate)
    return out


def _check_ci_args(n_boot: int, level: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _as_values(values: np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError(f"{name} is empty")
    if np.isnan(v).any():
        raise ValueError(f"{name} contains NaN")
    return v


def _resampled_means(v: np.ndarray, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """[n_draws] means of ``v`` resampled with replacement, in chunks of ~2**22 indices to bound memory."""
    rows = max(1, 2**22 // v.size)
    out = np.empty(n_draws)
    for start in range(0, n_draws, rows):
        n = min(rows, n_draws - start)
        out[start : start + n] = v[rng.integers(0, v.size, (n, v.size))].mean(axis=1)
    return out


def _percentiles(stats: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_ci(
    values: np.ndarray, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, lo, hi): percentile bootstrap of the mean, resampling episodes with replacement."""
    _check_ci_args(n_boot, level)
    v = _as_values(values, "values")
    stats = _resampled_means(v, n_boot, np.random.default_rng(seed))
    return (float(v.mean()), *_percentiles(stats, level))


def family_bootstrap_ci(
    values_by_family: Mapping[str, np.ndarray], *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean of family means, lo, hi) by a two-level percentile bootstrap.

    Each replicate draws F families with replacement, then resamples the episodes of every drawn family
    (independently for each draw, also when a family is drawn twice) and averages the family means. With few
    families, which families were held out dominates the uncertainty, and this interval shows it.
    """
    _check_ci_args(n_boot, level)
    if not values_by_family:
        raise ValueError("values_by_family is empty")
    # Sorted names: the result does not depend on the dict's insertion order.
    fams = [
        _as_values(values_by_family[name], f"values_by_family[{name!r}]") for name in sorted(values_by_family)
    ]
    n_fam = len(fams)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_fam, (n_boot, n_fam))
    fam_means = np.empty((n_boot, n_fam))
    # One vectorised resample per family over all the slots that drew it: a loop over families, not draws.
    for i, v in enumerate(fams):
        slots = drawn == i
        fam_means[slots] = _resampled_means(v, int(slots.sum()), rng)
    point = float(np.mean([v.mean() for v in fams]))
    return (point, *_percentiles(fam_means.mean(axis=1), level))


def paired_difference_ci(
    a_by_family: Mapping[str, np.ndarray],
    b_by_family: Mapping[str, np.ndarray],
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``family_bootstrap_ci`` of a - b, episodes paired by position within each family."""
    if set(a_by_family) != set(b_by_family):
        raise ValueError(
            "a_by_family and b_by_family name different families: "
            f"{sorted(set(a_by_family) ^ set(b_by_family))}"
        )
    diffs = {}
    for name, a in a_by_family.items():
        a, b = (
            np.asarray(a, dtype=np.float64).ravel(),
            np.asarray(b_by_family[name], dtype=np.float64).ravel(),
        )
        if a.shape != b.shape:
            raise ValueError(f"family {name!r}: {a.size} episodes in a_by_family but {b.size} in b_by_family")
        diffs[name] = a - b
    return family_bootstrap_ci(diffs, n_boot=n_boot, level=level, seed=seed)
