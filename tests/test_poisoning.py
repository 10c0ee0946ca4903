"""Poisoning: exact counts, eligibility, reproducibility, trigger round trips and parameter validation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from metashield.attacks.constraints import Constraints, compile_constraints
from metashield.attacks.poisoning import (
    Trigger,
    apply_trigger,
    backdoor,
    flip_labels,
    make_trigger,
    poison_batch,
)
from metashield.data import BENIGN, FeaturePipeline, TabularData
from metashield.data.schema import FeatureSpec, ThreatSchema
from metashield.tasks.episodes import Batch, EpisodeSampler

SCHEMA = ThreatSchema(
    features={
        "proto": FeatureSpec(mutable=False, why="the transport the attack needs"),
        "count": FeatureSpec(lower=0, upper=1000, integer=True, why="connections in a window, capped"),
        "bytes": FeatureSpec(lower=0, integer=True, why="a byte count"),
        "rate": FeatureSpec(lower=0.0, upper=1.0, why="a fraction"),
        "host_login": FeatureSpec(lower=0, upper=1, integer=True, mutable=False, why="set by the victim"),
    },
    source="test schema",
)

TRIGGER = {"count": 250, "bytes": 5000, "rate": 0.75, "flag=S0": 1}


def make_data(n: int = 200, seed: int = 0) -> TabularData:
    """Raw rows: two categorical columns (proto immutable), log-scaled counts, a rate, an immutable flag."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "proto": rng.choice(["tcp", "udp", "icmp"], size=n),
            "flag": rng.choice(["SF", "S0", "REJ"], size=n),
            "count": rng.integers(0, 300, size=n),
            "bytes": rng.integers(0, 10**4, size=n),
            "rate": rng.random(n),
            "host_login": rng.integers(0, 2, size=n),
        }
    )
    family = rng.choice(np.array([BENIGN, "dos", "probe"], dtype=object), size=n)
    return TabularData(
        frame=frame,
        family=family,
        categorical=["proto", "flag"],
        log_scaled=["count", "bytes"],
        name="toy",
        schema=SCHEMA,
    )


@pytest.fixture(scope="module")
def fitted() -> tuple[TabularData, FeaturePipeline, Constraints]:
    data = make_data()
    pipeline = FeaturePipeline(clip=10.0).fit(data)
    return data, pipeline, compile_constraints(pipeline, data.schema)


def binary_labels(n: int = 40, n_attack: int = 10) -> np.ndarray:
    return np.array([0] * (n - n_attack) + [1] * n_attack, dtype=np.int64)


# --- label flipping -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "fraction", "expected"),
    [(10, 0.0, 0), (10, 0.25, 2), (10, 0.75, 8), (5, 0.5, 2), (7, 0.5, 4), (10, 1.0, 10)],
)
def test_random_flip_count_rounds_half_to_even(n: int, fraction: float, expected: int) -> None:
    y = np.arange(n, dtype=np.int64) % 2
    y_new, flipped = flip_labels(y, fraction, 0)
    assert len(flipped) == expected
    np.testing.assert_array_equal(np.flatnonzero(y_new != y), flipped)
    np.testing.assert_array_equal(y_new[flipped], 1 - y[flipped])


def test_random_flip_moves_to_each_other_class_and_keeps_input() -> None:
    y = np.arange(3000, dtype=np.int64) % 3
    before = y.copy()
    y_new, flipped = flip_labels(y, 0.5, 1, classes=(0, 1, 2))
    np.testing.assert_array_equal(y, before)
    assert len(flipped) == 1500 and np.all(np.diff(flipped) > 0)
    assert np.all(y_new[flipped] != y[flipped]) and set(np.unique(y_new)) == {0, 1, 2}
    # Uniform over the two other classes: about half each, for every original class.
    for c in (0, 1, 2):
        moved = y_new[flipped][y[flipped] == c]
        share = np.mean(moved == (c + 1) % 3)
        assert 0.4 < share < 0.6, (c, share)


def test_targeted_flip_only_touches_source_rows() -> None:
    y = binary_labels(n=40, n_attack=10)
    y_new, flipped = flip_labels(y, 0.5, np.random.default_rng(3), source=1, target=0)
    assert len(flipped) == 5
    assert np.all(y[flipped] == 1) and np.all(y_new[flipped] == 0)
    np.testing.assert_array_equal(np.flatnonzero(y_new != y), flipped)
    assert y_new.dtype == y.dtype


def test_flip_is_reproducible_per_seed() -> None:
    y = binary_labels(n=200, n_attack=100)
    _, a = flip_labels(y, 0.3, 7)
    _, b = flip_labels(y, 0.3, np.random.default_rng(7))
    _, c = flip_labels(y, 0.3, 8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("fraction", [-0.1, 1.5, math.nan, math.inf, "0.5", True])
def test_flip_rejects_bad_fraction(fraction: object) -> None:
    with pytest.raises(ValueError, match=r"fraction must be a finite number in \[0, 1\]"):
        flip_labels(binary_labels(), fraction, 0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"source": 1}, "source and target go together"),
        ({"source": 2, "target": 0}, "source label 2 is not a class"),
        ({"source": 1, "target": 5}, "target label 5 is not a class"),
        ({"source": 1, "target": 1}, "target must differ from source"),
        ({"classes": (0,)}, "classes must hold at least 2 distinct labels"),
    ],
)
def test_flip_rejects_bad_labels(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        flip_labels(binary_labels(), 0.5, 0, **kwargs)


def test_flip_rejects_absent_source_stray_labels_and_bad_rng() -> None:
    with pytest.raises(ValueError, match="label 1 is not present in y"):
        flip_labels(np.zeros(5, dtype=np.int64), 0.5, 0, source=1, target=0)
    with pytest.raises(ValueError, match=r"y holds labels \[3\] that are not in classes"):
        flip_labels(np.array([0, 1, 3]), 0.5, 0)
    with pytest.raises(ValueError, match="y must be a 1-D integer label array"):
        flip_labels(np.array([0.0, 1.0]), 0.5, 0)
    with pytest.raises(ValueError, match="rng must be a numpy Generator or a non-negative int seed"):
        flip_labels(binary_labels(), 0.5, -1)


# --- triggers -------------------------------------------------------------------------------------


def test_trigger_round_trips_to_the_requested_raw_values(fitted) -> None:
    data, pipeline, constraints = fitted
    trigger = make_trigger(TRIGGER, pipeline, constraints)
    x = pipeline.transform(data.frame.iloc[:20])
    stamped = apply_trigger(x, trigger)
    sources = pipeline.feature_sources()
    names = pipeline.feature_names
    for name in ("count", "bytes", "rate"):
        j = names.index(name)
        _, _, log, mean, std = sources[j]
        enc = stamped[:, j].astype(np.float64) * std + mean
        raw = np.expm1(enc) if log else enc
        np.testing.assert_allclose(raw, TRIGGER[name], rtol=1e-4)
    # The stamped row equals what the pipeline makes of a raw row carrying the trigger's values.
    row = data.frame.iloc[:1].assign(count=250, bytes=5000, rate=0.75, flag="S0")
    expected = pipeline.transform(row)[0]
    np.testing.assert_allclose(stamped[0, list(trigger.columns)], expected[list(trigger.columns)], atol=1e-6)
    assert trigger.values == {k: float(v) for k, v in TRIGGER.items()}


def test_apply_trigger_changes_only_trigger_columns(fitted) -> None:
    data, pipeline, constraints = fitted
    trigger = make_trigger({"rate": 0.5, "flag=REJ": 1}, pipeline, constraints)
    x = pipeline.transform(data.frame.iloc[:12]).reshape(3, 4, -1)
    before = x.copy()
    stamped = apply_trigger(x, trigger)
    np.testing.assert_array_equal(x, before)
    flag = [j for j, name in enumerate(pipeline.feature_names) if name.startswith("flag=")]
    assert sorted(trigger.columns) == sorted([*flag, pipeline.feature_names.index("rate")])
    others = [j for j in range(x.shape[-1]) if j not in trigger.columns]
    np.testing.assert_array_equal(stamped[..., others], x[..., others])
    assert np.all(stamped[..., list(trigger.columns)] == np.asarray(trigger.z, dtype=np.float32))
    with pytest.raises(ValueError, match=r"x must be \[\.\.\., \d+\]"):
        apply_trigger(x[..., :-1], trigger)


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"host_login": 1}, "'host_login' is immutable"),
        ({"proto=tcp": 1}, "'proto=tcp' is immutable"),
        ({"count": 5000}, r"value 5000.0 for 'count' is outside its feasible range \[0, 1000\]"),
        ({"count": -1}, "negative"),
        ({"rate": 1.5}, "1.5 for 'rate' is outside its feasible range"),
        ({"bytes": 1e30}, "clip"),
        ({"count": 2.5}, "must be a whole number"),
        ({"rate": math.nan}, "value for 'rate' must be a finite number"),
        ({"nope": 1}, r"unknown trigger feature 'nope'; the model's features are \[.*'rate'"),
        ({"flag": 1}, r"'flag' is categorical: .* one of \['flag=REJ', 'flag=S0', 'flag=SF'\]"),
        ({"flag=S0": 0}, "must be 1"),
        ({"flag=S0": 1, "flag=SF": 1}, "one-hot group"),
        ({}, "at least one feature"),
    ],
)
def test_make_trigger_refuses(fitted, values: dict, match: str) -> None:
    _, pipeline, constraints = fitted
    with pytest.raises(ValueError, match=match):
        make_trigger(values, pipeline, constraints)


def test_make_trigger_accepts_schema_bounds_and_refuses_other_pipeline(fitted) -> None:
    data, pipeline, constraints = fitted
    trigger = make_trigger({"count": 1000, "rate": 0.0}, pipeline, constraints)
    j = list(trigger.columns).index(pipeline.feature_names.index("count"))
    assert trigger.z[j] == pytest.approx(float(constraints.upper[pipeline.feature_names.index("count")]))
    other = FeaturePipeline().fit(data.subset(data.frame["proto"].to_numpy() != "icmp"))
    with pytest.raises(ValueError, match="constraints were compiled for another pipeline"):
        make_trigger({"rate": 0.5}, other, constraints)


# --- backdoor on rows -----------------------------------------------------------------------------


def test_backdoor_stamps_and_relabels_exactly_the_chosen_attack_rows(fitted) -> None:
    data, pipeline, constraints = fitted
    trigger = make_trigger(TRIGGER, pipeline, constraints)
    x = pipeline.transform(data.frame)
    y = (data.family != BENIGN).astype(np.int64)
    x0, y0 = x.copy(), y.copy()
    x_new, y_new, idx = backdoor(x, y, trigger, 0.5, 11)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)
    assert len(idx) == round(0.5 * y.sum()) and np.all(y[idx] == 1) and np.all(y_new[idx] == 0)
    np.testing.assert_array_equal(np.flatnonzero(y_new != y), idx)
    np.testing.assert_array_equal(np.flatnonzero((x_new != x).any(axis=1)), idx)
    np.testing.assert_array_equal(x_new[idx], apply_trigger(x[idx], trigger))
    again = backdoor(x, y, trigger, 0.5, 11)[2]
    np.testing.assert_array_equal(idx, again)
    assert not np.array_equal(idx, backdoor(x, y, trigger, 0.5, 12)[2])


def test_backdoor_validates(fitted) -> None:
    data, pipeline, constraints = fitted
    trigger = make_trigger({"rate": 0.5}, pipeline, constraints)
    x = pipeline.transform(data.frame.iloc[:10])
    y = np.zeros(10, dtype=np.int64)
    with pytest.raises(ValueError, match="source label 1 is not present in y"):
        backdoor(x, y, trigger, 0.5, 0)
    with pytest.raises(ValueError, match="fraction must be"):
        backdoor(x, y, trigger, 2.0, 0)
    with pytest.raises(ValueError, match="target must differ from source"):
        backdoor(x, y, trigger, 0.5, 0, source=0, target=0)
    with pytest.raises(ValueError, match=r"x must be \[n, D\] with n = len\(y\) = 9"):
        backdoor(x, y[:9], trigger, 0.5, 0)


# --- poisoned meta-training tasks -----------------------------------------------------------------


def make_batch(fitted, n_tasks: int = 12) -> Batch:
    data, pipeline, _ = fitted
    sampler = EpisodeSampler(
        pipeline.transform(data.frame),
        data.family,
        ["dos", "probe"],
        np.flatnonzero(data.family == BENIGN),
        shots=3,
        queries=4,
    )
    return sampler.sample(n_tasks, np.random.default_rng(0))


def copy_batch(batch: Batch) -> Batch:
    return Batch(*(getattr(batch, f).copy() for f in ("support_x", "support_y", "query_x", "query_y")))


def assert_tasks_equal(a: Batch, b: Batch, tasks: np.ndarray) -> None:
    for field in ("support_x", "support_y", "query_x", "query_y"):
        left, right = getattr(a, field)[tasks], getattr(b, field)[tasks]
        assert left.dtype == right.dtype and left.tobytes() == right.tobytes(), field


@pytest.mark.parametrize("mode", ["flip", "backdoor"])
@pytest.mark.parametrize(("fraction", "expected"), [(0.0, 0), (0.25, 3), (0.5, 6), (1.0, 12)])
def test_poison_batch_poisons_exact_task_count(fitted, mode: str, fraction: float, expected: int) -> None:
    _, pipeline, constraints = fitted
    trigger = make_trigger(TRIGGER, pipeline, constraints) if mode == "backdoor" else None
    batch = make_batch(fitted)
    original = copy_batch(batch)
    poisoned, tasks = poison_batch(batch, fraction, 5, mode=mode, trigger=trigger)  # type: ignore[arg-type]
    assert_tasks_equal(batch, original, np.arange(12))
    assert len(tasks) == expected and len(set(tasks.tolist())) == expected
    clean = np.setdiff1d(np.arange(12), tasks)
    assert_tasks_equal(poisoned, batch, clean)
    for x, y, px, py in (
        (batch.support_x, batch.support_y, poisoned.support_x, poisoned.support_y),
        (batch.query_x, batch.query_y, poisoned.query_x, poisoned.query_y),
    ):
        assert np.all(py[tasks] == 0)
        attack = np.zeros(y.shape, dtype=bool)
        attack[tasks] = y[tasks] == 1
        # Benign rows of poisoned tasks never change; attack rows carry the trigger in backdoor mode.
        np.testing.assert_array_equal(px[~attack], x[~attack])
        stamped = apply_trigger(x[attack], trigger) if trigger is not None else x[attack]
        np.testing.assert_array_equal(px[attack], stamped)
        if trigger is not None and expected:
            assert not np.array_equal(px[attack], x[attack])


def test_poison_batch_is_reproducible_and_validates(fitted) -> None:
    _, pipeline, constraints = fitted
    batch = make_batch(fitted)
    a = poison_batch(batch, 0.5, 3, mode="flip")[1]
    np.testing.assert_array_equal(a, poison_batch(batch, 0.5, np.random.default_rng(3), mode="flip")[1])
    assert not np.array_equal(a, poison_batch(batch, 0.5, 4, mode="flip")[1])
    trigger = make_trigger({"rate": 0.5}, pipeline, constraints)
    with pytest.raises(ValueError, match="mode must be one of"):
        poison_batch(batch, 0.5, 0, mode="swap")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="trigger is required for mode 'backdoor'"):
        poison_batch(batch, 0.5, 0, mode="backdoor")
    with pytest.raises(ValueError, match="not allowed otherwise"):
        poison_batch(batch, 0.5, 0, mode="flip", trigger=trigger)
    with pytest.raises(ValueError, match="fraction must be"):
        poison_batch(batch, -0.5, 0, mode="flip")
    multi = copy_batch(batch)
    multi.support_y[0, 0] = 2
    with pytest.raises(
        ValueError, match=r"batch labels must be 0 \(benign\) or 1 \(attack\), got \[0, 1, 2\]"
    ):
        poison_batch(multi, 0.5, 0, mode="flip")
    narrow = Trigger(names=("rate",), raw=(0.5,), columns=(0,), z=(0.0,), n_features=3)
    with pytest.raises(ValueError, match=r"x must be \[\.\.\., 3\]"):
        poison_batch(batch, 0.5, 0, mode="backdoor", trigger=narrow)


# --- the real NSL-KDD threat schema ---------------------------------------------------------------


def test_nsl_kdd_schema_trigger() -> None:
    """A pipeline fitted on a synthetic frame with NSL-KDD's columns, compiled with its real schema."""
    from metashield.data.nsl_kdd import CATEGORICAL, FEATURES, LOG_SCALED, THREAT_SCHEMA

    categories = {
        "protocol_type": ["tcp", "udp", "icmp"],
        "service": ["http", "ftp"],
        "flag": ["SF", "S0", "SH"],
    }
    rng = np.random.default_rng(0)
    n = 300
    columns = {}
    for name in FEATURES:
        if name in CATEGORICAL:
            columns[name] = rng.choice(categories[name], n)
        elif name.endswith("_rate"):
            columns[name] = rng.random(n)
        else:
            columns[name] = rng.integers(0, 2, n)
    data = TabularData(
        frame=pd.DataFrame(columns),
        family=rng.choice(np.array([BENIGN, "neptune"], dtype=object), n),
        categorical=list(CATEGORICAL),
        log_scaled=list(LOG_SCALED),
        schema=THREAT_SCHEMA,
    )
    pipeline = FeaturePipeline().fit(data)
    constraints = compile_constraints(pipeline, THREAT_SCHEMA)
    trigger = make_trigger({"urgent": 1, "src_bytes": 3, "flag=SH": 1}, pipeline, constraints)
    assert len(trigger.columns) == 2 + 3  # urgent, src_bytes and the three flag categories
    for values, match in (
        ({"service=http": 1}, "'service=http' is immutable"),
        ({"protocol_type=tcp": 1}, "immutable"),
        ({"is_host_login": 1}, "'is_host_login' is immutable"),
        ({"logged_in": 2}, r"outside its feasible range \[0, 1\]"),
    ):
        with pytest.raises(ValueError, match=match):
            make_trigger(values, pipeline, constraints)
