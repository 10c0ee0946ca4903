"""The in-memory form of loaders whose samples are token sequences (API calls) rather than feature rows."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from metashield.data.schema import FeatureSpec, ThreatSchema
from metashield.data.types import TabularData

CALL_COUNT = FeatureSpec(
    lower=0,
    integer=True,
    increase_only=True,
    why="calls of one API in the whole trace: an attacker inserts calls that do nothing (a common evasion of "
    "API-call classifiers, e.g. Rosenberg et al., RAID 2018), but removing a call the program makes changes "
    "what it does",
)
CALL_SOURCE = "API-call traces: per-API call counts over the whole trace (insertions only)"


@dataclass
class SequenceData:
    """Token (API-call) sequences with one family label each.

    calls: list of n int32 arrays, each one sample's FULL sequence of token ids in [0, len(vocab)).
    family: object array [n] of family names. vocab: token names, index = id. name: for logs.
    """

    calls: list[np.ndarray]
    family: np.ndarray
    vocab: list[str]
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.calls) != len(self.family):
            raise ValueError(f"{self.name}: {len(self.calls)} sequences but {len(self.family)} labels")
        # Each name becomes a bag_of_calls column, so a repeat would make two columns with one name.
        repeated = sorted(token for token, count in Counter(self.vocab).items() if count > 1)
        if repeated:
            raise ValueError(f"{self.name}: vocab names {repeated} more than once")
        self.calls = [self._checked(row, seq) for row, seq in enumerate(self.calls)]

    def _checked(self, row: int, seq: np.ndarray) -> np.ndarray:
        """``seq`` as int32 [k]; raises naming ``row`` for an empty sequence or an id outside the vocab."""
        seq = np.asarray(seq)
        if seq.ndim != 1 or not np.issubdtype(seq.dtype, np.integer):
            raise ValueError(f"{self.name}: row {row} is {seq.dtype} of shape {seq.shape}, expected 1-d ids")
        if len(seq) == 0:
            raise ValueError(f"{self.name}: row {row} is an empty sequence, expected at least one token")
        outside = (seq < 0) | (seq >= len(self.vocab))
        if outside.any():
            raise ValueError(
                f"{self.name}: row {row} has token id {int(seq[outside.argmax()])}, outside "
                f"[0, {len(self.vocab)}) of the vocab"
            )
        return seq.astype(np.int32, copy=False)

    @property
    def lengths(self) -> np.ndarray:
        """int64 [n] number of tokens in each sequence."""
        return np.array([len(seq) for seq in self.calls], dtype=np.int64)

    def subset(self, mask: np.ndarray) -> SequenceData:
        """Rows where the boolean ``mask`` [n] is true, in order."""
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != (len(self.calls),):
            raise ValueError(
                f"{self.name}: mask is {mask.dtype} {mask.shape}, expected bool ({len(self.calls)},)"
            )
        rows = np.flatnonzero(mask)
        return SequenceData(
            calls=[self.calls[row] for row in rows],
            family=self.family[mask],
            vocab=list(self.vocab),
            name=self.name,
        )

    def tokens(self, max_len: int) -> np.ndarray:
        """int64 [n, max_len]: the first max_len calls of each sequence as id + 1; 0 pads shorter ones."""
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        out = np.zeros((len(self.calls), max_len), dtype=np.int64)
        for row, seq in enumerate(self.calls):
            head = seq[:max_len]
            # + 1 keeps 0 free for padding, as embedding layers with padding_idx=0 expect.
            out[row, : len(head)] = head.astype(np.int64) + 1
        return out

    def bag_of_calls(self) -> TabularData:
        """Counts [n, len(vocab)] of each token over the whole sequence, as columns ``calls:<vocab name>``.

        Every column is log-scaled (call counts span 0 to over a million). Threat model (``CALL_COUNT``):
        each count is a whole number >= 0 that an attacker can raise by inserting calls but not lower.
        """
        counts = np.zeros((len(self.calls), len(self.vocab)), dtype=np.int64)
        for row, seq in enumerate(self.calls):
            counts[row] = np.bincount(seq, minlength=len(self.vocab))
        columns = [f"calls:{token}" for token in self.vocab]
        return TabularData(
            frame=pd.DataFrame(counts, columns=columns),
            family=self.family.copy(),
            log_scaled=list(columns),
            name=self.name,
            schema=ThreatSchema(features=dict.fromkeys(columns, CALL_COUNT), source=CALL_SOURCE),
        )
