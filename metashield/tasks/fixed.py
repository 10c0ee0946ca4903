"""Fixed, seeded evaluation episodes as row indices, so every method is scored on the very same rows."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from metashield.tasks.episodes import EpisodeSampler


@dataclass
class Episodes:
    """Fixed N-way episodes as row indices of a feature matrix.

    support_idx [E, N*K], support_y [E, N*K]; query_idx [E, N*Q], query_y [E, N*Q]; labels 0..N-1.
    """

    support_idx: np.ndarray
    support_y: np.ndarray
    query_idx: np.ndarray
    query_y: np.ndarray

    def tensors(self, X: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(support_x [E,S,D], support_y [E,S], query_x [E,M,D]) of ``X``'s rows on ``device``."""
        return (
            torch.as_tensor(X[self.support_idx], device=device),
            torch.as_tensor(self.support_y, device=device),
            torch.as_tensor(X[self.query_idx], device=device),
        )

    def digest(self) -> str:
        """sha256 of the rows and labels, to show that two evaluations used the same episodes."""
        h = hashlib.sha256()
        for a in (self.support_idx, self.support_y, self.query_idx, self.query_y):
            h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        return h.hexdigest()


def make_episodes(
    family: np.ndarray, families: list[str], *, ways: int, shots: int, queries: int, n: int, seed: list[int]
) -> Episodes:
    """``n`` seeded N-way episodes over the rows of ``families``, drawn by the classify sampler.

    The sampler is run on a one-column "feature" holding each row's index, so it returns the indices it chose
    (float32 holds integers exactly below 2**24 rows) and every method can be given the very same rows. Rows
    whose ``family`` is not in ``families`` are never drawn, which is how a caller keeps rows out.
    """
    rows = np.arange(len(family), dtype=np.float32)[:, None]
    sampler = EpisodeSampler(
        rows, family, families, None, kind="classify", ways=ways, shots=shots, queries=queries
    )
    batch = sampler.sample(n, np.random.default_rng(seed))
    return Episodes(
        support_idx=batch.support_x[..., 0].astype(np.int64),
        support_y=batch.support_y,
        query_idx=batch.query_x[..., 0].astype(np.int64),
        query_y=batch.query_y,
    )
