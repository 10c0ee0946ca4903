"""Task augmentation for meta-training: new detection tasks interpolated between the known families.

With a few dozen attack families, meta-training sees few distinct tasks, and a meta-learner can fit the
families rather than learn to adapt. Task interpolation (after MLTI: Yao et al., "Meta-learning with fewer
tasks through task interpolation", ICLR 2021) makes new ones: the attack rows of a task are mixed with those
of another task of the same batch, λ·x + (1−λ)·x', λ ~ Beta(α, α) per task, support and query alike, so the
interpolated "family" lies between two real ones; the benign rows stay as they are.
"""

from __future__ import annotations

import numpy as np

from metashield.tasks.episodes import Batch


def interpolate_tasks(batch: Batch, fraction: float, rng: np.random.Generator, alpha: float = 0.5) -> Batch:
    """A copy of a detection ``batch`` in which ``fraction`` of the tasks (rounded) are interpolated.

    Each chosen task t takes a partner t' ≠ t from the batch and one λ ~ Beta(alpha, alpha); its k-th attack
    row (label 1) in support and in query becomes λ·x_t,k + (1−λ)·x_t',k. Needs every task to have the same
    number of attack rows in support and in query (meta-training batches do). Labels are unchanged.
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"task interpolation fraction must be in [0, 1], got {fraction}")
    if not alpha > 0:
        raise ValueError(f"task interpolation alpha must be > 0, got {alpha}")
    t = batch.n_tasks
    n = round(fraction * t)
    if n == 0 or t < 2:
        return batch
    chosen = rng.choice(t, size=n, replace=False)
    # A partner drawn from the other t - 1 tasks: shift a draw in [0, t-1) past the task itself.
    partner = rng.integers(0, t - 1, size=n)
    partner += partner >= chosen
    lam = rng.beta(alpha, alpha, size=n).astype(batch.support_x.dtype)
    out = []
    for x, y in ((batch.support_x, batch.support_y), (batch.query_x, batch.query_y)):
        attack = y == 1
        counts = attack.sum(1)
        if (counts != counts[0]).any():
            raise ValueError(f"task interpolation needs as many attack rows in every task, got {counts}")
        rows = x[attack].reshape(t, int(counts[0]), x.shape[-1])
        mixed = rows.copy()
        mixed[chosen] = lam[:, None, None] * rows[chosen] + (1 - lam[:, None, None]) * rows[partner]
        x = x.copy()
        x[attack] = mixed.reshape(-1, x.shape[-1])
        out.append(x)
    return Batch(support_x=out[0], support_y=batch.support_y, query_x=out[1], query_y=batch.query_y)
