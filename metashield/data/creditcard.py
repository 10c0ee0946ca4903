"""Credit card fraud (ULB / Worldline, Dal Pozzolo et al., CIDM 2015): European card transactions over two
days of September 2013, as the project's subsample that keeps all 492 frauds and 40,000 uniformly drawn
legitimate rows, in three gzip parts read in place.

Each part is a CSV with the header ``row_id, Time, V1..V28, Amount, Class``: ``row_id`` is the row's
0-based index in the original ``creditcard.csv``, ``Time`` the seconds since the first transaction, V1-V28
PCA components of confidential features, ``Amount`` the transaction amount and ``Class`` 1 for fraud.
Fraud rows get family ``fraud``, legitimate ones ``BENIGN``. ``Time`` becomes ``timestamp`` (seconds) and
is not a feature; ``row_id`` is dropped. The subsample's fraud rate (1.215%) is 7x the original's: report
precision at ``BASE_RATE`` as well.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from metashield.data.errors import DataFormatError
from metashield.data.gzip_file import read_gzip
from metashield.data.schema import FeatureSpec, ThreatSchema
from metashield.data.strict_csv import check_header, number_column, read_csv_cells
from metashield.data.types import BENIGN, TabularData

logger = logging.getLogger(__name__)

PARTS: tuple[str, ...] = tuple(f"creditcard_subsample_part{i}of3.csv.gz" for i in (1, 2, 3))
"""The three gzip parts, in ``row_id`` order."""

PCA_COLUMNS: tuple[str, ...] = tuple(f"V{i}" for i in range(1, 29))
FEATURES: tuple[str, ...] = (*PCA_COLUMNS, "Amount")
COLUMNS: tuple[str, ...] = ("row_id", "Time", *FEATURES, "Class")
"""The 32 columns of a part: row id, time, the 29 features and the label."""

FRAUD = "fraud"

BASE_RATE = 492 / 284807
"""Fraud rate of the full original file (492 of 284,807 transactions, 0.172%), for precision and alert
rates at the real base rate; the subsample's own rate (492 of 40,492) is 7x higher."""

MAX_PART_BYTES = 64 << 20
"""Largest decompressed part accepted (64 MiB; the real parts are 7.2 MB each), against gzip bombs."""

LOG_SCALED: tuple[str, ...] = ("Amount",)
"""Amount runs from 0 to 25,691 (12,911 in the subsample) with a 99th percentile near 1,000: heavy-tailed.
The PCA components are already centred and near unit scale, so they stay linear."""

_PCA_WHY = (
    "a PCA component of confidential transaction features, unbounded; letting the attacker move it "
    "directly is an abstraction of changing the underlying transaction"
)

THREAT_SCHEMA = ThreatSchema(
    features={
        **{c: FeatureSpec(why=_PCA_WHY) for c in PCA_COLUMNS},
        "Amount": FeatureSpec(
            lower=0.0, why="the transaction amount, which the fraudster chooses; never negative"
        ),
    },
    source="ULB/Worldline creditcard.csv documentation (Kaggle mlg-ulb/creditcardfraud)",
)
"""Credit-card threat model: no column is frozen (the fraudster chooses the amount, and the PCA components
are an abstraction of the transaction's other properties); Amount is bounded below by 0."""


def read_creditcard_part(raw: bytes, source: str) -> pd.DataFrame:
    """The 32 columns of one part (decompressed CSV bytes) as a frame; ``source`` names it in errors.

    Raises ``DataFormatError`` naming the part, line and column for another header, a field that is not a
    finite number, a ``row_id`` that is not a whole number above the previous row's, a ``Time`` that is
    negative or earlier than the previous row's, a negative ``Amount`` or a ``Class`` other than 0 and 1.
    """
    table = read_csv_cells(raw, source)
    check_header(table, COLUMNS)
    frame = pd.DataFrame(
        {
            name: number_column(table, position, integer=name in ("row_id", "Class"))
            for position, name in enumerate(COLUMNS)
        }
    )
    # The original file is in time order and the parts are sorted by row_id, so both only increase.
    checks = {
        "row_id": (np.diff(frame["row_id"], prepend=-1) <= 0, "not above the previous row's row_id"),
        "Time": (np.diff(frame["Time"], prepend=0.0) < 0, "negative or earlier than the previous row's Time"),
        "Amount": (frame["Amount"].to_numpy() < 0, "a negative amount"),
        "Class": (~frame["Class"].isin([0, 1]).to_numpy(), "not 1 (fraud) or 0 (legitimate)"),
    }
    for name, (bad, problem) in checks.items():
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise table.error(
                row, COLUMNS.index(name), f"{table.cells[row, COLUMNS.index(name)]!r} is {problem}"
            )
    return frame


def _check_order(previous: pd.DataFrame, frame: pd.DataFrame, source: str) -> None:
    """A part must continue the previous one: a larger first ``row_id`` and no earlier first ``Time``."""
    for name in ("row_id", "Time"):
        last, first = previous[name].iloc[-1], frame[name].iloc[0]
        if first < last or (name == "row_id" and first == last):
            raise DataFormatError(
                f"{source}: line 2, column {name!r}: {first:g} does not follow {last:g} at the end of the "
                "previous part"
            )


def load_creditcard(folder: str | os.PathLike) -> TabularData:
    """The credit-card subsample from ``folder`` holding the three ``PARTS``, concatenated in order.

    Each part is decompressed in memory (at most ``MAX_PART_BYTES``); ``timestamp`` is ``Time`` in seconds.
    """
    folder = Path(folder)
    frames: list[pd.DataFrame] = []
    for part in PARTS:
        path = folder / part
        frame = read_creditcard_part(read_gzip(path, MAX_PART_BYTES), str(path))
        if frames:
            _check_order(frames[-1], frame, str(path))
        frames.append(frame)
    pool = pd.concat(frames, ignore_index=True)
    fraud = pool["Class"].to_numpy() == 1
    logger.info(
        "creditcard: %d transactions from %d parts, %d frauds (%.3f%%), %.1f h",
        len(pool),
        len(PARTS),
        int(fraud.sum()),
        100 * fraud.mean(),
        pool["Time"].iloc[-1] / 3600,
    )
    return TabularData(
        frame=pool[list(FEATURES)],
        family=np.where(fraud, FRAUD, BENIGN).astype(object),
        log_scaled=list(LOG_SCALED),
        name="creditcard",
        schema=THREAT_SCHEMA,
        timestamp=pool["Time"].to_numpy(dtype=np.float64),
    )
