"""Families for datasets that have none: k-means campaigns of the malicious rows, or time windows.

Binary datasets (spam/ham, fraud/legit, malware/benign) still need "new attacks" to hold out:

- ``campaigns``: k-means on the malicious rows (seeded), k chosen among candidates (all >= 8) by the mean
  silhouette on a seeded subsample; each cluster becomes a pseudo-family ``c00``, ``c01``, … A campaign is a
  group of attacks that look alike, so holding clusters out asks the same question as holding families out.
  The clustering is the definition of the families and uses no label beyond malicious/benign; the model's
  preprocessing is still fitted on the meta-train clusters and the benign train slice only.
- ``windows``: the malicious rows ordered by time and cut into equal-count windows ``t00`` (earliest), …;
  ``window_split`` puts the latest windows in test and the ones before them in val, so the model is always
  meta-trained on the past and adapts to the future.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from metashield.tasks.splits import FamilySplit

MIN_CLUSTERS = 8


def _cluster_space(X: np.ndarray) -> np.ndarray:
    """Columns z-scored over the malicious rows (constant columns dropped) so no feature dominates k-means."""
    X = np.asarray(X, dtype=np.float64)
    std = X.std(axis=0)
    keep = std > 0
    return (X[:, keep] - X[:, keep].mean(axis=0)) / std[keep]


def campaign_families(
    X_malicious: np.ndarray,
    *,
    k_candidates: Sequence[int] = (8, 10, 12, 16),
    seed: int = 0,
    sample: int = 5000,
) -> tuple[np.ndarray, int, dict[int, float]]:
    """Pseudo-family names [n] for malicious rows [n, D] (numeric encoding), the chosen k, and the silhouette
    of every candidate (mean over a seeded subsample of at most ``sample`` rows; higher is better)."""
    ks = sorted(set(int(k) for k in k_candidates))
    if not ks or ks[0] < MIN_CLUSTERS:
        raise ValueError(f"k_candidates must all be >= {MIN_CLUSTERS}, got {list(k_candidates)}")
    n = len(X_malicious)
    if n < 2 * ks[-1]:
        raise ValueError(f"{n} malicious rows are too few for {ks[-1]} clusters; give smaller k_candidates")
    Z = _cluster_space(X_malicious)
    rng = np.random.default_rng(seed)
    probe = rng.choice(n, min(sample, n), replace=False)
    scores: dict[int, float] = {}
    fits: dict[int, np.ndarray] = {}
    for k in ks:
        labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(Z)
        fits[k] = labels
        scores[k] = float(silhouette_score(Z[probe], labels[probe])) if len(set(labels[probe])) > 1 else -1.0
    best = max(ks, key=lambda k: (scores[k], -k))
    names = np.array([f"c{c:02d}" for c in fits[best]], dtype=object)
    return names, best, scores


def window_families(timestamp: np.ndarray, n_windows: int) -> np.ndarray:
    """Window names ``t00``… [n] for malicious rows with timestamps [n]: equal-count windows in time order
    (ties keep their order, so equal times may straddle a boundary)."""
    if n_windows < 6:
        raise ValueError(f"n_windows must be >= 6 (meta-train needs several past windows), got {n_windows}")
    ts = np.asarray(timestamp, dtype=np.float64)
    if len(ts) < n_windows or not np.isfinite(ts).all():
        raise ValueError(f"need at least {n_windows} finite timestamps, got {len(ts)}")
    order = np.argsort(ts, kind="stable")
    window = np.empty(len(ts), dtype=np.int64)
    window[order] = np.arange(len(ts)) * n_windows // len(ts)
    return np.array([f"t{w:02d}" for w in window], dtype=object)


def window_split(names: Sequence[str], n_val: int, n_test: int) -> FamilySplit:
    """The latest ``n_test`` windows for test, the ``n_val`` before them for val, the earlier ones train."""
    ordered = sorted(set(names))
    if n_val + n_test >= len(ordered):
        raise ValueError(
            f"{len(ordered)} windows cannot hold n_val={n_val} + n_test={n_test} and a train window"
        )
    test = ordered[len(ordered) - n_test :] if n_test else []
    val = ordered[len(ordered) - n_test - n_val : len(ordered) - n_test]
    return FamilySplit(train=ordered[: len(ordered) - n_test - n_val], val=val, test=test)


def time_ordered_benign(benign_idx: np.ndarray, timestamp: np.ndarray, fractions: Sequence[float]):
    """Benign rows cut in time order into train / val / test slices (earliest first) with ``fractions``."""
    idx = np.asarray(benign_idx)[np.argsort(np.asarray(timestamp)[benign_idx], kind="stable")]
    a = int(round(fractions[0] * len(idx)))
    b = a + int(round(fractions[1] * len(idx)))
    return idx[:a], idx[a:b], idx[b:]
