"""Pseudo-families for binary datasets: k-means campaigns, time windows, and what prepare does with them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from metashield.config import load_config
from metashield.data import BENIGN, TabularData
from metashield.experiment import prepare
from metashield.tasks.families import (
    campaign_families,
    time_ordered_benign,
    window_families,
    window_split,
)


def _blobs(k: int = 8, per: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, size=(k, 5))
    truth = np.repeat(np.arange(k), per)
    return centres[truth] + rng.normal(0, 0.3, size=(k * per, 5)), truth


def test_campaigns_recover_well_separated_clusters_and_pick_k_by_silhouette():
    X, truth = _blobs(k=10)
    names, k, scores = campaign_families(X, k_candidates=[8, 10, 12], seed=0)
    assert k == 10 and scores[10] > scores[8] and scores[10] > scores[12]
    assert adjusted_rand_score(truth, names) == pytest.approx(1.0)
    again, _, _ = campaign_families(X, k_candidates=[8, 10, 12], seed=0)
    assert np.array_equal(names, again)
    with pytest.raises(ValueError, match="must all be >= 8"):
        campaign_families(X, k_candidates=[4, 8])
    with pytest.raises(ValueError, match="too few"):
        campaign_families(X[:20], k_candidates=[16])


def test_windows_are_equal_count_in_time_order_and_the_latest_are_held_out():
    ts = np.random.default_rng(0).permutation(800).astype(float)
    names = window_families(ts, 8)
    counts = pd.Series(names).value_counts()
    assert set(counts) == {100}
    for w in range(7):
        assert ts[names == f"t{w:02d}"].max() < ts[names == f"t{w + 1:02d}"].min()
    split = window_split(names, n_val=1, n_test=2)
    assert split.test == ["t06", "t07"] and split.val == ["t05"] and split.train[-1] == "t04"
    with pytest.raises(ValueError, match=">= 6"):
        window_families(ts, 4)
    with pytest.raises(ValueError, match="cannot hold"):
        window_split(names, n_val=4, n_test=4)


def test_benign_slices_follow_time():
    ts = np.arange(100.0)[::-1]  # row 0 is the latest
    train, val, test = time_ordered_benign(np.arange(100), ts, (0.6, 0.2, 0.2))
    assert ts[train].max() < ts[val].min() and ts[val].max() < ts[test].min()
    assert (len(train), len(val), len(test)) == (60, 20, 20)


def _timed_data(n_benign: int = 600, n_bad: int = 480, seed: int = 0) -> TabularData:
    rng = np.random.default_rng(seed)
    X, _ = _blobs(k=8, per=n_bad // 8, seed=seed)
    frame = pd.DataFrame(np.vstack([rng.normal(0, 1, (n_benign, 5)), X]), columns=[f"f{j}" for j in range(5)])
    family = np.array([BENIGN] * n_benign + ["bad"] * len(X), dtype=object)
    return TabularData(frame=frame, family=family, name="timed", timestamp=rng.permutation(len(frame)) * 1.0)


@pytest.mark.parametrize("kind", ["campaigns", "windows"])
def test_prepare_holds_out_pseudo_families_and_fits_the_pipeline_on_meta_train_rows_only(kind):
    data = _timed_data()
    config = load_config(
        None,
        [
            f"data.families={{kind: {kind}, windows: 8}}",
            "split.n_val=2",
            "split.n_test=2",
            "split.min_rows=5",
        ],
    )
    prep = prepare(config, data=data)
    attack_families = sorted(set(prep.family) - {BENIGN})
    assert len(attack_families) == 8 and "bad" not in attack_families
    assert len(prep.split.test) == 2 and len(prep.split.val) == 2
    fit = prep.fit_mask()
    assert not np.isin(prep.family[fit], prep.split.test + prep.split.val).any()
    # The pipeline's means are those of the meta-train rows (test families never enter preprocessing).
    np.testing.assert_allclose(prep.pipeline.to_dict()["mean"], data.frame[fit].mean().to_numpy(), atol=1e-9)
    if kind == "windows":
        ts = data.timestamp
        latest_train = max(ts[prep.family == f].max() for f in prep.split.train)
        earliest_test = min(ts[prep.family == f].min() for f in prep.split.test)
        assert latest_train < earliest_test
        assert ts[prep.benign["train"]].max() < ts[prep.benign["test"]].min()


def test_windows_without_timestamps_is_a_clear_error():
    data = _timed_data()
    data = TabularData(frame=data.frame, family=data.family, name="untimed")
    config = load_config(None, ["data.families={kind: windows}", "split.n_val=1", "split.n_test=1"])
    with pytest.raises(ValueError, match="needs per-row timestamps"):
        prepare(config, data=data)


def test_never_test_is_refused_for_time_windows():
    config = load_config(
        None,
        [
            "data.families={kind: windows, windows: 8}",
            "split.n_val=1",
            "split.n_test=1",
            "split.never_test=[w0]",
        ],
    )
    with pytest.raises(ValueError, match="split.never_test: time windows"):
        prepare(config, data=_timed_data())
