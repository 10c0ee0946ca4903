"""The one in-memory form every loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from metashield.data.schema import UNCONSTRAINED, ThreatSchema

BENIGN = "benign"
"""Family name every loader gives to benign rows, whatever the file calls them."""


@dataclass
class TabularData:
    """Raw (unscaled) feature rows with one family label per row.

    frame: the feature columns only, in raw units, one row per sample (index 0..n-1).
    family: object array [n] of family names; benign rows carry ``BENIGN``.
    categorical: columns of ``frame`` to one-hot encode.
    log_scaled: heavy-tailed numeric columns to pass through log1p before standardising.
    category: coarse category of each attack family (e.g. NSL-KDD's DoS/Probe/R2L/U2R), may be empty.
    name: where the data came from, for logs and checkpoint metadata.
    schema: what an attacker may change in each raw column (bounds, integers, immutable columns).
    timestamp: optional float array [n] ordering the rows in time (seconds, or months for YYYYMM dates), for
    temporal episodes; never a model feature.
    """

    frame: pd.DataFrame
    family: np.ndarray
    categorical: list[str] = field(default_factory=list)
    log_scaled: list[str] = field(default_factory=list)
    category: dict[str, str] = field(default_factory=dict)
    name: str = ""
    schema: ThreatSchema = UNCONSTRAINED
    timestamp: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.frame) != len(self.family):
            raise ValueError(f"{self.name}: {len(self.frame)} feature rows but {len(self.family)} labels")
        missing = [c for c in [*self.categorical, *self.log_scaled] if c not in self.frame.columns]
        if missing:
            raise ValueError(f"{self.name}: columns {missing} are declared but not in the frame")
        self.schema.check_columns(self.frame.columns, self.name)
        if self.timestamp is not None and len(self.timestamp) != len(self.frame):
            raise ValueError(f"{self.name}: {len(self.frame)} rows but {len(self.timestamp)} timestamps")

    @property
    def attack_families(self) -> list[str]:
        return sorted(set(self.family.tolist()) - {BENIGN})

    def subset(self, mask: np.ndarray) -> TabularData:
        """Rows where ``mask`` is true, re-indexed from 0."""
        return TabularData(
            frame=self.frame.loc[mask].reset_index(drop=True),
            family=self.family[mask],
            categorical=list(self.categorical),
            log_scaled=list(self.log_scaled),
            category=dict(self.category),
            name=self.name,
            schema=self.schema,
            timestamp=None if self.timestamp is None else self.timestamp[mask],
        )
