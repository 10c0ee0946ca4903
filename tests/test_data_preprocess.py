"""FeaturePipeline: encoding, scaling, exact serialisation and the no-leakage guarantee."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from metashield.data import BENIGN, FeaturePipeline, TabularData


def make_data(n: int = 40, seed: int = 0) -> TabularData:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "proto": rng.choice(["tcp", "udp", "icmp"], size=n),
            "bytes": rng.integers(0, 10**6, size=n),
            "rate": rng.random(n),
            "const": np.full(n, 3.0),
        }
    )
    family = np.where(rng.random(n) < 0.5, BENIGN, "dos").astype(object)
    return TabularData(frame=frame, family=family, categorical=["proto"], log_scaled=["bytes"], name="toy")


def test_fit_transform_standardises_the_fit_rows() -> None:
    data = make_data()
    pipeline = FeaturePipeline().fit(data)
    features = pipeline.transform(data.frame)
    assert features.dtype == np.float32
    assert features.shape == (40, pipeline.n_features)
    # One-hot in sorted vocabulary order, then the numeric columns; the constant column is dropped.
    assert pipeline.feature_names == ["proto=icmp", "proto=tcp", "proto=udp", "bytes", "rate"]
    np.testing.assert_allclose(features.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(features.std(axis=0), 1.0, atol=1e-5)
    log_bytes = np.log1p(data.frame["bytes"].to_numpy(dtype=float))
    expected = (log_bytes - log_bytes.mean()) / log_bytes.std()
    np.testing.assert_allclose(features[:, 3], expected, rtol=1e-5, atol=1e-5)


def test_unseen_category_encodes_as_all_zeros() -> None:
    data = make_data()
    pipeline = FeaturePipeline().fit(data)
    state = pipeline.to_dict()
    frame = data.frame.iloc[:1].assign(proto="sctp")
    onehot = pipeline.transform(frame)[0, :3]
    # A zero in every one-hot column, standardised with the fit statistics.
    mean, std = np.array(state["mean"][:3]), np.array(state["std"][:3])
    np.testing.assert_allclose(onehot, (0.0 - mean) / std, rtol=1e-6)


def test_column_constant_in_fit_rows_is_dropped_even_if_it_varies_later() -> None:
    data = make_data()
    frame = data.frame.assign(proto="tcp")  # a single category: its one-hot column is constant too
    pipeline = FeaturePipeline().fit(TabularData(frame, data.family, ["proto"], ["bytes"]))
    assert pipeline.feature_names == ["bytes", "rate"]
    varied = frame.assign(const=np.arange(40.0), proto="udp")
    assert pipeline.transform(varied).shape == (40, 2)


def test_negative_value_in_log_column_names_the_column() -> None:
    data = make_data()
    bad = data.frame.copy()
    bad.loc[5, "bytes"] = -1
    with pytest.raises(ValueError, match=r"column 'bytes', row 5: -1.0 is negative"):
        FeaturePipeline().fit(TabularData(bad, data.family, ["proto"], ["bytes"]))
    pipeline = FeaturePipeline().fit(data)
    with pytest.raises(ValueError, match=r"column 'bytes', row 5: -1.0 is negative"):
        pipeline.transform(bad)


def test_bad_frames_at_transform() -> None:
    data = make_data()
    pipeline = FeaturePipeline().fit(data)
    with pytest.raises(ValueError, match=r"lacks columns \['rate'\]"):
        pipeline.transform(data.frame.drop(columns=["rate"]))
    with pytest.raises(ValueError, match=r"column 'rate', row 2: nan, expected a finite number"):
        pipeline.transform(data.frame.assign(rate=[0.1, 0.2, np.nan] + [0.3] * 37))
    with pytest.raises(TypeError, match=r"column 'rate' has dtype .*expected numbers"):
        pipeline.transform(data.frame.assign(rate="high"))
    # Extra columns and a different column order are fine.
    shuffled = data.frame.assign(extra=1)[["extra", "rate", "const", "proto", "bytes"]]
    np.testing.assert_array_equal(pipeline.transform(shuffled), pipeline.transform(data.frame))


def test_unfitted_and_empty() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        FeaturePipeline().transform(make_data().frame)
    with pytest.raises(ValueError, match="toy: cannot fit a FeaturePipeline on 0 rows"):
        FeaturePipeline().fit(make_data().subset(np.zeros(40, dtype=bool)))


def test_dict_round_trip_is_exact() -> None:
    data = make_data()
    pipeline = FeaturePipeline().fit(data)
    restored = FeaturePipeline.from_dict(json.loads(json.dumps(pipeline.to_dict())))
    other = make_data(seed=1).frame
    np.testing.assert_array_equal(restored.transform(other), pipeline.transform(other))
    assert restored.feature_names == pipeline.feature_names
    assert restored.to_dict() == pipeline.to_dict()
    with pytest.raises(ValueError, match="version 99"):
        FeaturePipeline.from_dict({**pipeline.to_dict(), "version": 99})
    with pytest.raises(ValueError, match="inconsistent FeaturePipeline state"):
        FeaturePipeline.from_dict({**pipeline.to_dict(), "mean": [0.0]})


def test_fit_sees_only_the_rows_it_is_given() -> None:
    """Leakage guard: the statistics depend on the fit rows alone, however wild the other rows are."""
    data = make_data(n=200)
    train = np.arange(200) < 120
    pipeline = FeaturePipeline().fit(data.subset(train))

    wild = data.frame.copy()
    wild["proto"] = wild["proto"].astype(object)
    wild.loc[~train, "proto"] = "never-seen"
    wild.loc[~train, "bytes"] = 10**12
    wild.loc[~train, "rate"] = -1e6
    wild.loc[~train, "const"] = np.arange(80.0)
    changed = TabularData(wild, data.family, ["proto"], ["bytes"], name="toy")
    again = FeaturePipeline().fit(changed.subset(train))
    assert again.to_dict() == pipeline.to_dict()
    np.testing.assert_array_equal(again.transform(wild), pipeline.transform(wild))
    # The held-out rows are far outside the fit distribution; the fit rows are standardised.
    assert np.abs(pipeline.transform(wild[~train])[:, -1]).min() == pipeline.clip


def test_standardised_values_are_clipped_and_the_clip_round_trips() -> None:
    data = make_data()
    far = data.frame.iloc[:1].copy()
    far["rate"] = 1e6  # rate lies in [0, 1) in the fit rows: ~3e6 standard deviations away
    rate = FeaturePipeline(clip=None).fit(data).feature_names.index("rate")
    assert FeaturePipeline(clip=None).fit(data).transform(far)[0, rate] > 1e5
    pipeline = FeaturePipeline(clip=4.0).fit(data)
    assert pipeline.transform(far)[0, rate] == 4.0
    restored = FeaturePipeline.from_dict(json.loads(json.dumps(pipeline.to_dict())))
    assert restored.clip == 4.0 and restored.transform(far)[0, rate] == 4.0
    with pytest.raises(ValueError, match="clip"):
        FeaturePipeline(clip=0.0)
