"""Family splits, conflicting-row removal and the benign split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metashield.tasks.splits import FamilySplit, drop_conflicting_rows, split_benign, split_families

FAMS = [f"f{i}" for i in range(10)]


def test_split_families_draws_seeded_and_disjoint() -> None:
    s = split_families(FAMS, n_val=2, n_test=3, seed=1)
    assert (len(s.train), len(s.val), len(s.test)) == (5, 2, 3)
    assert sorted(s.train + s.val + s.test) == FAMS
    assert split_families(list(reversed(FAMS)), n_val=2, n_test=3, seed=1) == s
    others = [split_families(FAMS, n_val=2, n_test=3, seed=k).test for k in range(2, 8)]
    assert any(t != s.test for t in others)


def test_split_families_explicit_lists_win() -> None:
    s = split_families(FAMS, val=["f0"], test=["f1", "f2"], n_val=4, n_test=4)
    assert (s.val, s.test) == (["f0"], ["f1", "f2"])
    assert s.train == FAMS[3:]
    s = split_families(FAMS, test=["f9"], n_val=2, seed=0)
    assert s.test == ["f9"] and len(s.val) == 2 and "f9" not in s.val + s.train


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val": ["nope"]}, r"val: unknown families \['nope'\]"),
        ({"test": ["f1", "zzz"]}, r"test: unknown families \['zzz'\]"),
        ({"val": ["f1"], "test": ["f1"]}, r"val and test both contain \['f1'\]"),
        ({"n_val": 5, "n_test": 5}, "no family left for training"),
        ({"n_val": 6, "n_test": 5}, "exceed"),
        ({"n_val": -1}, "n_val"),
    ],
)
def test_split_families_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        split_families(FAMS, **kwargs)


def test_never_test_keeps_the_test_draw_and_draws_val_like_test() -> None:
    fams = [f"f{i:02d}" for i in range(30)]
    tuned = ["f03", "f11", "f17"]
    eligible = fams[:25]
    vals = set()
    for seed in range(20):
        s = split_families(fams, never_test=tuned, n_val=4, n_test=6, seed=seed, eligible=eligible)
        # The test draw is the one an explicit val list of the never_test families gives.
        fixed = split_families(fams, val=tuned, n_test=6, seed=seed, eligible=eligible)
        assert s.test == fixed.test and not set(tuned) & set(s.test)
        assert len(s.val) == 4 and set(s.val) <= set(eligible) - set(s.test)
        assert sorted(s.train + s.val + s.test) == fams
        # Meta-val has a generator of its own: the test families do not move with n_val.
        assert (
            split_families(fams, never_test=tuned, n_val=1, n_test=6, seed=seed, eligible=eligible).test
            == s.test
        )
        vals |= set(s.val)
    # Drawn uniformly among eligible non-test families: the never_test ones are among the picks, and so are
    # families that an explicit val list would have left in meta-train.
    assert set(tuned) & vals and len(vals - set(tuned)) > 5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"never_test": ["zzz"]}, r"never_test: unknown families \['zzz'\]"),
        ({"never_test": ["f1"], "test": ["f1", "f2"]}, r"never_test families \['f1'\] are listed as test"),
        ({"never_test": ["f1"], "n_test": 3, "n_val": 8}, "n_val=8 exceeds the 7 eligible non-test"),
    ],
)
def test_never_test_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        split_families(FAMS, **kwargs)


def test_family_split_round_trip() -> None:
    s = split_families(FAMS, n_val=1, n_test=2)
    assert FamilySplit.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="missing keys"):
        FamilySplit.from_dict({"train": []})


def test_drop_conflicting_rows_numpy() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((12, 3)).astype(np.float32)
    fam = np.array(["a"] * 6 + ["b"] * 6, dtype=object)
    X[[0, 1, 6]] = X[0]  # the same row with labels a, a, b: every copy goes
    X[[2, 3, 4]] = X[2]  # duplicated with one label: kept
    X[7] = X[8] = np.nan  # NaN rows compare equal; both labelled b, kept
    keep, n_dropped = drop_conflicting_rows(X, fam)
    assert n_dropped == 3
    assert not keep[[0, 1, 6]].any() and keep[[2, 3, 4, 5, 7, 8, 9, 10, 11]].all()


def test_drop_conflicting_rows_dataframe_and_zero_sign() -> None:
    frame = pd.DataFrame({"proto": ["tcp", "tcp", "udp", "udp", "tcp"], "bytes": [0.0, -0.0, 1.0, 1.0, 5.0]})
    fam = np.array(["a", "b", "a", "a", "b"], dtype=object)
    keep, n_dropped = drop_conflicting_rows(frame, fam)
    assert n_dropped == 2  # 0.0 == -0.0: rows 0 and 1 are the same vector with two labels
    assert keep.tolist() == [False, False, True, True, True]


def test_drop_conflicting_rows_length_mismatch() -> None:
    with pytest.raises(ValueError, match="family has 2 labels"):
        drop_conflicting_rows(np.zeros((3, 2)), np.array(["a", "b"]))


def test_split_benign() -> None:
    idx = np.arange(100, 200)
    tr, va, te = split_benign(idx, seed=3)
    assert (len(tr), len(va), len(te)) == (60, 20, 20)
    assert np.array_equal(np.sort(np.concatenate([tr, va, te])), idx)
    again = split_benign(idx, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again, strict=True))
    assert not np.array_equal(split_benign(idx, seed=4)[2], te)
    with pytest.raises(ValueError, match="fractions"):
        split_benign(idx, fractions=(0.5, 0.2, 0.2))
