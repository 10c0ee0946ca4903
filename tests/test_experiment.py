"""The preparation step: leave-families-out bookkeeping and no leakage of held-out rows into preprocessing."""

from __future__ import annotations

import numpy as np
from conftest import write_synthetic_flows

from metashield.config import load_config
from metashield.data import BENIGN, load_tabular
from metashield.experiment import prepare


def _config(csv):
    return load_config(
        None,
        [
            "data.dataset=tabular",
            f"data.tabular={{path: '{csv}', label_column: label, benign_label: benign, "
            "log_columns: [bytes]}",
            "split.n_val=3",
            "split.n_test=4",
        ],
    )


def test_held_out_rows_never_reach_the_feature_pipeline(tmp_path):
    csv = write_synthetic_flows(tmp_path / "flows.csv")
    config = _config(csv)
    data = load_tabular(csv, label_column="label", benign_label="benign", log_columns=["bytes"])
    first = prepare(config, data=data)
    held_out = np.isin(data.family, first.split.test + first.split.val)
    held_out[first.benign["val"]] = True
    held_out[first.benign["test"]] = True

    # Rewrite every held-out row wildly: new categories, huge values. Nothing fitted may change.
    frame = data.frame.copy()
    numeric = [c for c in frame.columns if c != "proto"]
    frame.loc[held_out, numeric] = frame.loc[held_out, numeric] * 1e6 + 7
    frame.loc[held_out, "proto"] = "never-seen"
    data.frame = frame
    second = prepare(config, data=data, split=first.split)
    assert second.pipeline.to_dict() == first.pipeline.to_dict()
    assert np.array_equal(second.X[~held_out], first.X[~held_out])
    # An unseen category encodes as all zeros before standardisation: the same one-hot block for every row.
    onehot = [i for i, n in enumerate(second.pipeline.feature_names) if n.startswith("proto")]
    assert onehot and len(np.unique(second.X[held_out][:, onehot], axis=0)) == 1


def test_split_is_leave_families_out_and_benign_slices_are_disjoint(tmp_path):
    prep = prepare(_config(write_synthetic_flows(tmp_path / "flows.csv")))
    s = prep.split
    assert not set(s.train) & set(s.val) and not set(s.train) & set(s.test) and not set(s.val) & set(s.test)
    assert len(s.val) == 3 and len(s.test) == 4
    slices = [set(prep.benign[k].tolist()) for k in ("train", "val", "test")]
    assert not (slices[0] & slices[1]) and not (slices[0] & slices[2]) and not (slices[1] & slices[2])
    assert all((prep.family[list(sl)] == BENIGN).all() for sl in slices)
    fit = prep.fit_mask()
    assert set(np.unique(prep.family[fit])) == set(s.train) | {BENIGN}
    # Standardised on meta-training rows: those have mean ~0, not the whole table.
    assert np.allclose(prep.X[fit].mean(axis=0), 0, atol=1e-4)
