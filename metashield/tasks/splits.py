"""Which attack families are seen in meta-training, which tune hyper-parameters, which stay unseen."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from metashield.data.types import BENIGN

logger = logging.getLogger(__name__)


@dataclass
class FamilySplit:
    """Disjoint lists of attack family names: meta-train, validation (model selection), test (unseen)."""

    train: list[str]
    val: list[str]
    test: list[str]

    def to_dict(self) -> dict[str, list[str]]:
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test)}

    @classmethod
    def from_dict(cls, d: dict[str, Sequence[str]]) -> FamilySplit:
        missing = [k for k in ("train", "val", "test") if k not in d]
        if missing:
            raise ValueError(f"FamilySplit.from_dict: missing keys {missing}")
        return cls(train=list(d["train"]), val=list(d["val"]), test=list(d["test"]))


def split_families(
    families: Sequence[str],
    *,
    val: Sequence[str] | None = None,
    test: Sequence[str] | None = None,
    n_val: int = 0,
    n_test: int = 0,
    seed: int = 0,
    eligible: Collection[str] | None = None,
    never_test: Collection[str] = (),
) -> FamilySplit:
    """Split attack families into train / val / test.

    An explicit ``val`` or ``test`` list wins over the matching ``n_val`` / ``n_test`` (then ignored).
    The families not named explicitly are sorted, shuffled with ``seed``, and ``n_test`` then ``n_val``
    of them are drawn; the rest is train. Sorting first makes the result independent of the input
    order. Each returned list is sorted. ``eligible`` limits the random draw (e.g. to families with enough
    rows for the largest shot count); the other families stay in train.

    ``never_test``: families that may be meta-val or meta-train but never test, e.g. the ones hyper-parameters
    were tuned on. They are left out of the test draw, which is therefore the draw an explicit ``val`` equal
    to them would give; then, unless ``val`` is explicit, ``n_val`` meta-val families are drawn uniformly
    among the eligible non-test families (``never_test`` included) with a generator of their own
    (``default_rng([7, seed])``), so that meta-val is drawn like test and the test families do not depend
    on ``n_val``.
    """
    fams = list(families)
    dupes = sorted(f for f, c in Counter(fams).items() if c > 1)
    if dupes:
        raise ValueError(f"families: duplicated names {dupes}")
    if BENIGN in fams:
        raise ValueError(f"families: {BENIGN!r} is not an attack family and cannot be split")
    known = set(fams)
    for arg, names in (("val", val), ("test", test)):
        unknown = sorted(set(names or ()) - known)
        if unknown:
            raise ValueError(f"{arg}: unknown families {unknown}")
    overlap = sorted(set(val or ()) & set(test or ()))
    if overlap:
        raise ValueError(f"val and test both contain {overlap}")
    unknown = sorted(set(never_test) - known)
    if unknown:
        raise ValueError(f"never_test: unknown families {unknown}")
    overlap = sorted(set(never_test) & set(test or ()))
    if overlap:
        raise ValueError(f"never_test families {overlap} are listed as test families")
    for arg, n in (("n_val", n_val), ("n_test", n_test)):
        if n < 0:
            raise ValueError(f"{arg} must be >= 0, got {n}")

    held = set(val or ()) | set(never_test)
    rest = sorted(known - held - set(test or ()))
    rest = [rest[i] for i in np.random.default_rng(seed).permutation(len(rest))]
    allowed = known if eligible is None else set(eligible)
    # Stable partition: the draw order among eligible families does not depend on the others.
    rest = [f for f in rest if f in allowed] + [f for f in rest if f not in allowed]
    n_test_draw = 0 if test is not None else n_test
    n_val_draw = 0 if val is not None else n_val
    n_drawable = sum(f in allowed for f in rest)
    separate_val = bool(never_test) and val is None
    if n_test_draw + (0 if separate_val else n_val_draw) > n_drawable:
        raise ValueError(
            f"n_val={n_val_draw} + n_test={n_test_draw} exceed the {n_drawable} eligible families not named "
            "explicitly"
        )
    test_out = list(test) if test is not None else rest[:n_test_draw]
    if separate_val:
        candidates = sorted(f for f in known - set(test_out) if f in allowed)
        if n_val_draw > len(candidates):
            raise ValueError(f"n_val={n_val_draw} exceeds the {len(candidates)} eligible non-test families")
        val_out = np.random.default_rng([7, seed]).choice(candidates, n_val_draw, replace=False).tolist()
    else:
        val_out = list(val) if val is not None else rest[n_test_draw : n_test_draw + n_val_draw]
    train_out = sorted(known - set(test_out) - set(val_out))
    if not train_out:
        raise ValueError(f"no family left for training (val={sorted(val_out)}, test={sorted(test_out)})")
    return FamilySplit(train=train_out, val=sorted(val_out), test=sorted(test_out))


def drop_conflicting_rows(X: np.ndarray | pd.DataFrame, family: np.ndarray) -> tuple[np.ndarray, int]:
    """Mask out every copy of a feature vector that occurs with more than one label.

    X: [n, D] numpy array or DataFrame of raw features; rows are compared by exact value equality (NaN equals
    NaN). family: [n] labels. A duplicated row with a single label is kept, all copies of it.
    Returns (keep_mask [n] bool, n_dropped).
    """
    frame = X if isinstance(X, pd.DataFrame) else pd.DataFrame(np.asarray(X))
    family = np.asarray(family)
    if len(frame) != len(family):
        raise ValueError(f"X has {len(frame)} rows but family has {len(family)} labels")
    if len(frame) == 0:
        return np.ones(0, dtype=bool), 0
    frame = frame.set_axis(range(frame.shape[1]), axis=1)  # positional labels: duplicated names are fine
    labels = pd.factorize(family)[0]
    # A 64-bit row hash finds the candidates fast; hashing treats 0.0 == -0.0 and NaN == NaN like the exact
    # pass. Only rows whose hash shows several labels are re-checked exactly, so a hash collision can
    # never drop a row.
    row_hash = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    candidate = _n_labels(labels, row_hash) > 1
    n_labels = np.ones(len(frame), dtype=np.int64)
    if candidate.any():
        sub = frame.iloc[candidate]
        row_id = sub.groupby(list(sub.columns), dropna=False, sort=False).ngroup().to_numpy()
        n_labels[candidate] = _n_labels(labels[candidate], row_id)
    keep = n_labels <= 1
    n_dropped = int((~keep).sum())
    logger.info("dropped %d of %d rows whose features occur with more than one label", n_dropped, len(keep))
    return keep, n_dropped


def _n_labels(labels: np.ndarray, group: np.ndarray) -> np.ndarray:
    """For each row, the number of distinct ``labels`` among the rows sharing its ``group``."""
    return pd.Series(labels).groupby(group).transform("nunique").to_numpy()


def split_benign(
    benign_idx: np.ndarray, fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle benign row indices into disjoint (train, val, test) index arrays, each sorted.

    Sizes are round(fraction * n) for train and val, test gets the rest.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    idx = np.asarray(benign_idx)
    if len(np.unique(idx)) != len(idx):
        raise ValueError("benign_idx contains repeated indices")
    idx = idx[np.random.default_rng(seed).permutation(len(idx))]
    n_train = round(fractions[0] * len(idx))
    n_val = min(round(fractions[1] * len(idx)), len(idx) - n_train)
    parts = idx[:n_train], idx[n_train : n_train + n_val], idx[n_train + n_val :]
    return tuple(np.sort(p) for p in parts)  # type: ignore[return-value]
