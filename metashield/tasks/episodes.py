"""Few-shot tasks as stacked numpy arrays: random meta-training batches and fixed evaluation episodes.

Every task lays its rows out class by class: the support holds the K rows of label 0, then the K rows of
label 1, and so on; the query does the same with its rows per class. Models must not rely on that order
(nothing here shuffles within a task), it only makes the arrays easy to read and to check.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import pandas as pd

from metashield.data.types import BENIGN

if TYPE_CHECKING:
    import torch


class TorchBatch(NamedTuple):
    """``Batch`` as torch tensors; unpacks as (support_x, support_y, query_x, query_y)."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor


@dataclass
class Batch:
    """T tasks stacked for vmap.

    support_x: float32 [T, S, D]; support_y: int64 [T, S]; query_x: float32 [T, Q, D]; query_y: int64 [T, Q].
    """

    support_x: np.ndarray
    support_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray

    def __post_init__(self) -> None:
        t, s = self.support_y.shape
        tq, q = self.query_y.shape
        if self.support_x.shape[:2] != (t, s) or self.query_x.shape[:2] != (tq, q) or tq != t:
            raise ValueError(
                f"inconsistent shapes: support_x {self.support_x.shape}, support_y {self.support_y.shape}, "
                f"query_x {self.query_x.shape}, query_y {self.query_y.shape}"
            )

    @property
    def n_tasks(self) -> int:
        return self.support_y.shape[0]

    def to_torch(self, device: Any = None, dtype: Any = None) -> TorchBatch:
        """Tensors on ``device``; features as ``dtype`` (default float32), labels as int64."""
        import torch  # lazily: tasks/ is numpy-only otherwise

        dtype = dtype or torch.float32
        return TorchBatch(
            torch.as_tensor(self.support_x, dtype=dtype, device=device),
            torch.as_tensor(self.support_y, dtype=torch.int64, device=device),
            torch.as_tensor(self.query_x, dtype=dtype, device=device),
            torch.as_tensor(self.query_y, dtype=torch.int64, device=device),
        )


def _split_pool(pool: np.ndarray, shots: int, queries: int, rng: np.random.Generator) -> np.ndarray:
    """``shots`` support rows then ``queries`` query rows from ``pool`` (needs len(pool) > shots).

    Support and query never share a row. When fewer than ``queries`` rows remain after the support, the
    queries are drawn with replacement from that remainder, so small families still fill the fixed query size.
    """
    if len(pool) >= shots + queries:
        return pool[rng.choice(len(pool), shots + queries, replace=False)]
    perm = pool[rng.permutation(len(pool))]
    rest = perm[shots:]
    return np.concatenate([perm[:shots], rest[rng.integers(0, len(rest), queries)]])


class EpisodeSampler:
    """Random meta-training tasks, stacked into a ``Batch``.

    kind="detect": benign (label 0, rows of ``benign_idx``) vs one attack family (label 1) drawn uniformly
    from ``families``; S = 2K support and 2Q query rows per task (Qb + Q with ``benign_queries`` = Qb: more
    benign queries, for objectives that look at the benign tail). ``ways`` must be 2.
    kind="classify": ``ways`` distinct attack families per task, labelled 0..N-1 in random order;
    S = N*K, Q = N*queries. ``benign_idx`` is not used and may be None.
    ``shots`` may be a list: each batch then draws its K from it (one K per batch, so the batch still stacks),
    to meta-train one model for several deployed shot counts.
    Families with fewer than K + 1 rows are skipped with one warning listing them. Queries are drawn with
    replacement from what the support leaves when a family has fewer than K + Q rows.

    X: float32 [n, D] preprocessed features; family: [n] family names; families: attack families to sample.
    """

    def __init__(
        self,
        X: np.ndarray,
        family: np.ndarray,
        families: Sequence[str],
        benign_idx: np.ndarray | None,
        *,
        kind: Literal["detect", "classify"] = "detect",
        ways: int = 2,
        shots: int | Sequence[int] = 5,
        queries: int = 15,
        benign_queries: int | None = None,
    ) -> None:
        self.shot_choices = [int(k) for k in np.atleast_1d(shots)]
        if not self.shot_choices or len(set(self.shot_choices)) != len(self.shot_choices):
            raise ValueError(f"shots must be an int or a non-empty list of distinct ints, got {shots!r}")
        # Every family must serve the largest K, so the set of sampled families does not depend on the draw.
        shots = max(self.shot_choices)
        self.X = np.asarray(X, dtype=np.float32)
        family = np.asarray(family)
        if self.X.ndim != 2 or len(self.X) != len(family):
            raise ValueError(f"X must be [n, D] with n = len(family) = {len(family)}, got {self.X.shape}")
        if kind not in ("detect", "classify"):
            raise ValueError(f"kind must be 'detect' or 'classify', got {kind!r}")
        if kind == "detect" and ways != 2:
            raise ValueError(f"ways must be 2 for kind='detect' (benign vs one family), got {ways}")
        if ways < 2 or min(self.shot_choices) < 1 or queries < 1:
            raise ValueError(
                f"need ways >= 2, shots >= 1, queries >= 1; got {ways}, {self.shot_choices}, {queries}"
            )
        if BENIGN in families:
            raise ValueError(f"families must be attack families, got {BENIGN!r} among them")
        if benign_queries is not None and (kind != "detect" or benign_queries < 1):
            raise ValueError(f"benign_queries must be >= 1 and needs kind='detect', got {benign_queries}")
        self.kind, self.ways, self.queries = kind, ways, queries
        self.benign_queries = queries if benign_queries is None else benign_queries

        # One pass over the labels instead of one comparison per family.
        rows = pd.Series(family).groupby(family).indices
        empty = np.zeros(0, dtype=np.int64)
        pools = {f: np.asarray(rows.get(f, empty), dtype=np.int64) for f in sorted(set(families))}
        small = [f for f, p in pools.items() if len(p) < shots + 1]
        if small:
            sizes = ", ".join(f"{f} ({len(pools[f])})" for f in small)
            warnings.warn(
                f"skipping families with fewer than shots + 1 = {shots + 1} rows: {sizes}", stacklevel=2
            )
        self.families = [f for f in pools if f not in small]  # the families actually sampled, sorted
        self._pools = [pools[f] for f in self.families]
        if not self.families:
            raise ValueError(f"no family in families has at least shots + 1 = {shots + 1} rows")
        if kind == "classify" and len(self.families) < ways:
            raise ValueError(
                f"classify needs ways = {ways} usable families, only {self.families} have enough rows"
            )

        self._benign = empty
        if kind == "detect":
            if benign_idx is None:
                raise ValueError("benign_idx is required for kind='detect'")
            self._benign = np.asarray(benign_idx, dtype=np.int64)
            if len(self._benign) < shots + 1:
                raise ValueError(
                    f"benign_idx has {len(self._benign)} rows, need at least shots + 1 = {shots + 1}"
                )
            if not np.all(family[self._benign] == BENIGN):
                raise ValueError(f"benign_idx points at rows whose family is not {BENIGN!r}")

    def sample(self, n_tasks: int, rng: np.random.Generator) -> Batch:
        """``n_tasks`` tasks; the same ``rng`` state gives the same batch."""
        if n_tasks < 1:
            raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
        q = self.queries
        # A single K draws nothing, so fixed-K runs keep the episode stream they always had.
        k = self.shot_choices[0]
        if len(self.shot_choices) > 1:
            k = self.shot_choices[rng.integers(len(self.shot_choices))]
        if self.kind == "detect":
            chosen = [(self._benign, self._pools[rng.integers(len(self._pools))]) for _ in range(n_tasks)]
        else:
            chosen = [
                tuple(self._pools[i] for i in rng.choice(len(self._pools), self.ways, replace=False))
                for _ in range(n_tasks)
            ]
        # Class c of every task: K support rows then sizes[c] query rows (benign is class 0 of detect tasks).
        sizes = [self.benign_queries, q] if self.kind == "detect" else [q] * self.ways
        rows = [[_split_pool(p, k, sizes[c], rng) for c, p in enumerate(task)] for task in chosen]
        support_idx = np.stack([np.concatenate([r[:k] for r in task]) for task in rows])
        query_idx = np.stack([np.concatenate([r[k:] for r in task]) for task in rows])
        labels = np.arange(len(sizes), dtype=np.int64)
        return Batch(
            support_x=self.X[support_idx],
            support_y=np.broadcast_to(np.repeat(labels, k), support_idx.shape).copy(),
            query_x=self.X[query_idx],
            query_y=np.broadcast_to(np.repeat(labels, sizes), query_idx.shape).copy(),
        )


@dataclass
class DetectEpisode:
    """One evaluation episode of a held-out family; indices are rows of the full X.

    support_idx / support_y: [2K], K benign rows (label 0) then K attack rows (label 1).
    query_idx / query_y: [Qb + Qa], Qb benign rows then Qa attack rows, none of them in the support.
    """

    family: str
    support_idx: np.ndarray
    support_y: np.ndarray
    query_idx: np.ndarray
    query_y: np.ndarray


def make_detect_episodes(
    family_idx: np.ndarray,
    benign_idx: np.ndarray,
    *,
    family: str,
    shots: int,
    n_episodes: int,
    max_attack_queries: int = 200,
    benign_queries: int = 2000,
    seed: int,
) -> list[DetectEpisode]:
    """Fixed K-shot detection episodes for one held-out family.

    family_idx: row indices of that family. benign_idx: the benign test rows (never used in training).
    Each episode draws K attack + K benign support rows; its queries are Qa = min(max_attack_queries,
    len(family_idx) - K) attack rows and Qb = min(benign_queries, len(benign_idx) - K) benign rows outside
    the support, so all episodes of a family have the same shapes and stack for vmap.
    The random stream is keyed on (seed, family, shots): the same arguments give identical episodes, another
    shot count gives independent draws (no nesting between 1-shot and 5-shot episodes), and a family's
    episodes do not depend on which other families are evaluated.
    """
    family_idx = np.asarray(family_idx, dtype=np.int64)
    benign_idx = np.asarray(benign_idx, dtype=np.int64)
    if shots < 1 or n_episodes < 1 or max_attack_queries < 1 or benign_queries < 1:
        raise ValueError(
            f"shots, n_episodes, max_attack_queries and benign_queries must be >= 1, got "
            f"{shots}, {n_episodes}, {max_attack_queries}, {benign_queries}"
        )
    if len(family_idx) < shots + 1:
        raise ValueError(
            f"family {family!r}: family_idx has {len(family_idx)} rows, need at least shots + 1 = {shots + 1}"
        )
    if len(benign_idx) < shots + 1:
        raise ValueError(f"benign_idx has {len(benign_idx)} rows, need at least shots + 1 = {shots + 1}")
    n_attack_q = min(max_attack_queries, len(family_idx) - shots)
    n_benign_q = min(benign_queries, len(benign_idx) - shots)
    rng = np.random.default_rng([seed, shots, zlib.crc32(family.encode())])
    support_y = np.repeat(np.array([0, 1], dtype=np.int64), shots)
    query_y = np.repeat(np.array([0, 1], dtype=np.int64), [n_benign_q, n_attack_q])
    episodes = []
    for _ in range(n_episodes):
        b = benign_idx[rng.choice(len(benign_idx), shots + n_benign_q, replace=False)]
        a = family_idx[rng.choice(len(family_idx), shots + n_attack_q, replace=False)]
        episodes.append(
            DetectEpisode(
                family=family,
                support_idx=np.concatenate([b[:shots], a[:shots]]),
                support_y=support_y.copy(),
                query_idx=np.concatenate([b[shots:], a[shots:]]),
                query_y=query_y.copy(),
            )
        )
    return episodes


def stack_episodes(X: np.ndarray, episodes: Sequence[DetectEpisode]) -> Batch:
    """Gather episodes of equal sizes (e.g. one family's) into a Batch: support_x [E, 2K, D] etc."""
    if not episodes:
        raise ValueError("episodes is empty")
    shapes = {(len(e.support_idx), len(e.query_idx)) for e in episodes}
    if len(shapes) != 1:
        raise ValueError(
            f"episodes differ in (support, query) sizes {sorted(shapes)}; stack one family at a time"
        )
    X = np.asarray(X, dtype=np.float32)
    return Batch(
        support_x=X[np.stack([e.support_idx for e in episodes])],
        support_y=np.stack([e.support_y for e in episodes]),
        query_x=X[np.stack([e.query_idx for e in episodes])],
        query_y=np.stack([e.query_y for e in episodes]),
    )
