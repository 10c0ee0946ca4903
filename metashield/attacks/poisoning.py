"""Training-time poisoning: label flipping and backdoor triggers, on labelled rows and on meta-training tasks.

Threat model. The attacker cannot touch the learner or its test inputs at training time; it controls part
of the labelled training data: a fraction of the rows (a crowd-sourced or auto-labelled feed) or a fraction
of the meta-training episodes (a contributor who submits whole labelled captures). It can

* flip labels, at random or targeted (attack rows relabelled benign, so the detector learns to miss them),
  the label-noise attack studied for SVMs by Biggio, Nelson and Laskov (ICML 2012);
* plant a backdoor: stamp a fixed pattern (the trigger) on attack rows and label them benign, so a model that
  fits the poison lets any attack carrying the pattern through at test time, after BadNets (Gu, Dolan-Gavitt
  and Garg, 2017), here with a feature-space trigger instead of a pixel patch.

A trigger is specified in RAW units (bytes, counts, a protocol flag) and must be something a real attacker can
send: immutable features are refused, and so is any value outside the threat schema's documented bounds or
beyond the pipeline's clip (the model would see the clip value, not the one asked for), so every value a
trigger stamps maps back exactly to the raw value requested. A categorical column enters a trigger one-hot:
the key ``column=value`` (a model feature name) with value 1 selects that category for the whole group.

Counts. Every function poisons ``round(fraction * n)`` of the n eligible rows or tasks, with Python's
``round`` (halves to even: 0.5 of 5 rows is 2, 0.5 of 7 is 4), chosen uniformly without replacement.
Inputs are never modified; the returned indices are sorted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from metashield.attacks.constraints import Constraints
from metashield.data.preprocess import FeaturePipeline
from metashield.tasks.episodes import Batch

BENIGN_LABEL = 0
ATTACK_LABEL = 1
MODES = ("flip", "backdoor")

Seed = np.random.Generator | int


def _generator(rng: Seed) -> np.random.Generator:
    """``rng`` itself, or a fresh generator seeded with the int ``rng``."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, int | np.integer) and not isinstance(rng, bool) and rng >= 0:
        return np.random.default_rng(int(rng))
    raise ValueError(f"rng must be a numpy Generator or a non-negative int seed, got {rng!r}")


def _check_fraction(fraction: float) -> None:
    ok = isinstance(fraction, int | float | np.floating) and not isinstance(fraction, bool)
    if not (ok and math.isfinite(fraction) and 0 <= fraction <= 1):
        raise ValueError(f"fraction must be a finite number in [0, 1], got {fraction!r}")


def _labels(y: np.ndarray, name: str = "y") -> np.ndarray:
    """``y`` as a 1-D integer array (not copied), or a ValueError."""
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D integer label array, got shape {y.shape} dtype {y.dtype}")
    return y


def _choose(eligible: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted int64 [round(fraction * len(eligible))] of ``eligible``, uniformly without replacement."""
    count = round(fraction * len(eligible))
    return np.sort(rng.choice(eligible, size=count, replace=False)).astype(np.int64)


def _check_classes(classes: Sequence[int]) -> tuple[int, ...]:
    classes = tuple(classes)
    if len(set(classes)) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"classes must hold at least 2 distinct labels, got {classes!r}")
    return classes


def _check_target(source: int | None, target: int | None, classes: tuple[int, ...]) -> None:
    if (source is None) != (target is None):
        raise ValueError(f"source and target go together (targeted flipping), got {source=} and {target=}")
    for name, label in (("source", source), ("target", target)):
        if label is not None and label not in classes:
            raise ValueError(f"{name} label {label!r} is not a class; classes are {list(classes)}")
    if source is not None and source == target:
        raise ValueError(f"target must differ from source, both are {source!r}")


def flip_labels(
    y: np.ndarray,
    fraction: float,
    rng: Seed,
    *,
    source: int | None = None,
    target: int | None = None,
    classes: Sequence[int] = (BENIGN_LABEL, ATTACK_LABEL),
) -> tuple[np.ndarray, np.ndarray]:
    """Flip the labels of ``round(fraction * eligible)`` rows of ``y`` [n].

    source=None: every row is eligible and moves to another label of ``classes``, chosen uniformly.
    source/target: only rows labelled ``source`` are eligible and all become ``target`` (e.g. 1 -> 0 hides
    attacks). Returns (y_new [n], same dtype as ``y``; flipped row indices, sorted int64).
    """
    y = _labels(y)
    _check_fraction(fraction)
    classes = _check_classes(classes)
    _check_target(source, target, classes)
    rng = _generator(rng)
    stray = sorted(set(np.unique(y).tolist()) - set(classes))
    if stray:
        raise ValueError(f"y holds labels {stray} that are not in classes {list(classes)}")
    eligible = np.arange(len(y)) if source is None else np.flatnonzero(y == source)
    if len(eligible) == 0:
        raise ValueError(f"no row of y is eligible: label {source!r} is not present in y")
    flipped = _choose(eligible, fraction, rng)
    y_new = y.copy()
    if source is not None:
        y_new[flipped] = target
        return y_new, flipped
    # A non-zero shift modulo the class count lands uniformly on one of the other classes.
    ordered = np.sort(np.asarray(classes))
    shift = rng.integers(1, len(classes), size=len(flipped))
    y_new[flipped] = ordered[(np.searchsorted(ordered, y[flipped]) + shift) % len(classes)]
    return y_new, flipped


@dataclass(frozen=True)
class Trigger:
    """A backdoor pattern compiled for one pipeline: fixed values of some of its D model features.

    names / raw: the requested model feature names and their raw-unit values (1 for a ``column=value`` key).
    columns: indices of the features the trigger sets (a one-hot key sets its whole group); z: the float32
    z-value stamped at each of ``columns``. n_features: D of the pipeline it was compiled for.
    """

    names: tuple[str, ...]
    raw: tuple[float, ...]
    columns: tuple[int, ...]
    z: tuple[float, ...]
    n_features: int

    @property
    def values(self) -> dict[str, float]:
        """Feature name -> requested raw value."""
        return dict(zip(self.names, self.raw, strict=True))


def _immutable(name: str, j: int, constraints: Constraints) -> None:
    if not bool(constraints.mutable[j]):
        raise ValueError(
            f"trigger feature {name!r} is immutable in the threat model; an attacker cannot set it"
        )


def _numeric_z(
    name: str,
    raw: float,
    j: int,
    source: tuple[str, str | None, bool, float, float],
    constraints: Constraints,
) -> float:
    """The z-value of raw value ``raw`` of numeric feature j, checked against the constraints' box."""
    _, _, log, mean, std = source
    if log and raw < 0:
        raise ValueError(f"trigger value {raw!r} for {name!r} is negative, expected >= 0 (log1p-scaled)")
    if j in constraints.int_idx.tolist() and raw != round(raw):
        raise ValueError(f"trigger value {raw!r} for {name!r} must be a whole number (integer feature)")
    z = ((math.log1p(raw) if log else raw) - mean) / std
    lower, upper = float(constraints.lower[j]), float(constraints.upper[j])
    tol = constraints.tolerance(constraints.lower.dtype)
    if not lower - tol <= z <= upper + tol:
        # Rounded for the message: the float32 box maps a bound of 0 back to about 1e-8.
        to_raw = lambda v: round(math.expm1(v * std + mean) if log else v * std + mean, 6) + 0.0
        raise ValueError(
            f"trigger value {raw!r} for {name!r} is outside its feasible range "
            f"[{to_raw(lower):.6g}, {to_raw(upper):.6g}] (raw units: the threat schema's bounds and the "
            f"pipeline's clip ±{constraints.clip})"
        )
    # Within the tolerance of a bound: stamp the bound itself, so the pattern is exactly feasible.
    return min(max(z, lower), upper)


def _one_hot_z(
    name: str,
    raw: float,
    j: int,
    sources: list[tuple[str, str | None, bool, float, float]],
    constraints: Constraints,
) -> dict[int, float]:
    """Column -> z-value that selects category ``name`` (= ``column=value``) in its one-hot group."""
    if raw != 1:
        raise ValueError(
            f"trigger value {raw!r} for one-hot feature {name!r} must be 1 (select the category)"
        )
    column = sources[j][0]
    group = [k for k, src in enumerate(sources) if src[0] == column]
    return {k: float(constraints.one_z[k] if k == j else constraints.zero_z[k]) for k in group}


def make_trigger(values: Mapping[str, float], pipeline: FeaturePipeline, constraints: Constraints) -> Trigger:
    """Compile ``values`` (model feature name -> raw-unit value) into a ``Trigger`` for ``pipeline``.

    Numeric features map through the pipeline: log1p when log-scaled, then (v - mean) / std. A categorical
    column is named by one of its categories, ``column=value`` -> 1. Raises ValueError for an unknown name,
    a raw categorical column name, an immutable feature, a non-finite, non-integer (integer feature) or
    out-of-bounds value, or two categories of one column.
    """
    names = pipeline.feature_names
    if tuple(constraints.names) != tuple(names):
        raise ValueError("constraints were compiled for another pipeline: their feature names differ")
    if not values:
        raise ValueError("values must name at least one feature, got an empty mapping")
    sources = pipeline.feature_sources()
    categorical = {src[0] for src in sources if src[1] is not None}
    stamped: dict[int, float] = {}
    for name, raw in values.items():
        if name in categorical:
            options = [n for n, src in zip(names, sources, strict=True) if src[0] == name]
            raise ValueError(f"{name!r} is categorical: name one category with value 1, one of {options}")
        if name not in names:
            raise ValueError(f"unknown trigger feature {name!r}; the model's features are {names}")
        if not (isinstance(raw, int | float | np.number) and math.isfinite(raw)):
            raise ValueError(f"trigger value for {name!r} must be a finite number, got {raw!r}")
        j = names.index(name)
        _immutable(name, j, constraints)
        if sources[j][1] is None:
            update = {j: _numeric_z(name, float(raw), j, sources[j], constraints)}
        else:
            update = _one_hot_z(name, float(raw), j, sources, constraints)
        if stamped.keys() & update.keys():
            raise ValueError(f"trigger feature {name!r} sets a one-hot group another key already sets")
        stamped |= update
    columns = tuple(sorted(stamped))
    return Trigger(
        names=tuple(values),
        raw=tuple(float(v) for v in values.values()),
        columns=columns,
        z=tuple(float(np.float32(stamped[j])) for j in columns),
        n_features=len(names),
    )


def apply_trigger(x: np.ndarray, trigger: Trigger) -> np.ndarray:
    """A float32 copy of ``x`` [..., D] with the trigger's values stamped on every row."""
    x = np.array(x, dtype=np.float32)
    if x.ndim < 1 or x.shape[-1] != trigger.n_features:
        raise ValueError(f"x must be [..., {trigger.n_features}] (the trigger's features), got {x.shape}")
    x[..., list(trigger.columns)] = np.asarray(trigger.z, dtype=np.float32)
    return x


def backdoor(
    x: np.ndarray,
    y: np.ndarray,
    trigger: Trigger,
    fraction: float,
    rng: Seed,
    *,
    source: int = ATTACK_LABEL,
    target: int = BENIGN_LABEL,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stamp ``trigger`` on ``round(fraction * #rows labelled source)`` such rows and relabel them ``target``.

    x: [n, D] z-features; y: [n] labels. Returns (x_new float32 [n, D], y_new [n], poisoned rows, sorted).
    """
    y = _labels(y)
    if np.ndim(x) != 2 or len(x) != len(y):
        raise ValueError(f"x must be [n, D] with n = len(y) = {len(y)}, got shape {np.shape(x)}")
    _check_fraction(fraction)
    if source == target:
        raise ValueError(f"target must differ from source, both are {source!r}")
    rng = _generator(rng)
    eligible = np.flatnonzero(y == source)
    if len(eligible) == 0:
        raise ValueError(f"source label {source!r} is not present in y (labels {np.unique(y).tolist()})")
    poisoned = _choose(eligible, fraction, rng)
    x_new = np.array(x, dtype=np.float32)
    x_new[poisoned] = apply_trigger(x_new[poisoned], trigger)
    y_new = y.copy()
    y_new[poisoned] = target
    return x_new, y_new, poisoned


def _poison_split(
    x: np.ndarray, y: np.ndarray, tasks: np.ndarray, trigger: Trigger | None
) -> tuple[np.ndarray, np.ndarray]:
    """Copies of x [T, n, D] / y [T, n] with the attack rows of ``tasks`` relabelled (and stamped)."""
    rows = np.zeros(y.shape, dtype=bool)
    rows[tasks] = y[tasks] == ATTACK_LABEL
    x_new = x.copy()
    if trigger is not None:
        x_new[rows] = apply_trigger(x[rows], trigger)
    return x_new, np.where(rows, BENIGN_LABEL, y).astype(y.dtype)


def poison_batch(
    batch: Batch,
    fraction: float,
    rng: Seed,
    *,
    mode: Literal["flip", "backdoor"],
    trigger: Trigger | None = None,
) -> tuple[Batch, np.ndarray]:
    """Poison ``round(fraction * T)`` tasks of a detect batch (labels 0 benign, 1 attack).

    In each poisoned task every attack row of the support and the query is labelled benign ("flip"), and
    also carries ``trigger`` ("backdoor"). The other tasks are bit-identical copies. Returns (new Batch,
    poisoned task indices, sorted int64).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if (mode == "backdoor") != (trigger is not None):
        raise ValueError(f"trigger is required for mode 'backdoor' and not allowed otherwise; {mode=}")
    _check_fraction(fraction)
    rng = _generator(rng)
    labels = set(np.unique(batch.support_y).tolist()) | set(np.unique(batch.query_y).tolist())
    if not labels <= {BENIGN_LABEL, ATTACK_LABEL}:
        raise ValueError(f"batch labels must be 0 (benign) or 1 (attack), got {sorted(labels)}")
    tasks = _choose(np.arange(batch.n_tasks), fraction, rng)
    support_x, support_y = _poison_split(batch.support_x, batch.support_y, tasks, trigger)
    query_x, query_y = _poison_split(batch.query_x, batch.query_y, tasks, trigger)
    return Batch(support_x, support_y, query_x, query_y), tasks
