"""KDD Cup 1999, 10% training subset: parse ``kddcup.data_10_percent.gz`` in place, exact duplicates removed.

The 41 features, their threat model and the attack-type categories are NSL-KDD's (NSL-KDD is a cleaned
subset of these records), so they are imported from ``nsl_kdd`` rather than restated.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from metashield.data.delimited import parse_rows
from metashield.data.errors import DataFormatError
from metashield.data.gzip_file import read_gzip
from metashield.data.nsl_kdd import (
    CATEGORICAL,
    FEATURES,
    LABEL_CATEGORY,
    LOG_SCALED,
    NORMAL_LABEL,
    THREAT_SCHEMA,
)
from metashield.data.types import BENIGN, TabularData

logger = logging.getLogger(__name__)

KDD99_GZ = "kddcup.data_10_percent.gz"

COLUMNS: tuple[str, ...] = (*FEATURES, "label")
"""The 42 columns of a KDD'99 line: the 41 features and the label (``smurf.``); there is no difficulty."""

MAX_DECOMPRESSED_BYTES = 1 << 27
"""Largest decompressed file accepted (128 MiB; ``kddcup.data_10_percent`` is 74,889,749 bytes)."""


def _attack_types(labels: pd.Series, source: str) -> pd.Series:
    """``labels`` without their trailing dot; raises naming the line of a dotless or unknown label."""
    known = {NORMAL_LABEL, *LABEL_CATEGORY}
    # Check the few distinct values, not 494,021 strings, then find the first line holding a bad one.
    bad = [value for value in labels.unique() if not (value.endswith(".") and value[:-1] in known)]
    if bad:
        row = int(np.flatnonzero(labels.isin(bad).to_numpy())[0])
        value = labels.iloc[row]
        problem = (
            "lacks the trailing dot of KDD'99 labels (e.g. 'smurf.')"
            if not value.endswith(".")
            else f"is not {NORMAL_LABEL + '.'!r} or one of the {len(LABEL_CATEGORY)} KDD attack types"
        )
        raise DataFormatError(f"{source}: line {row + 1}, column 'label': {value!r} {problem}")
    return labels.str[:-1]


def read_kdd99_text(raw: bytes, source: str) -> pd.DataFrame:
    """Frame of the 42 ``COLUMNS`` of a headerless KDD'99 text, ``label`` without its trailing dot.

    ``source`` names the file in errors; each error names the file, the 1-based line and the column.
    """
    frame = parse_rows(raw, COLUMNS, [*CATEGORICAL, "label"], source, first_line=1)
    frame["label"] = _attack_types(frame["label"], source)
    return frame


def _to_tabular(frame: pd.DataFrame) -> TabularData:
    """Features, families (``normal`` -> ``BENIGN``) and the DoS/Probe/R2L/U2R categories of a frame."""
    labels = frame["label"].to_numpy(dtype=object)
    return TabularData(
        frame=frame[list(FEATURES)].reset_index(drop=True),
        family=np.where(labels == NORMAL_LABEL, BENIGN, labels).astype(object),
        categorical=list(CATEGORICAL),
        log_scaled=list(LOG_SCALED),
        category={label: LABEL_CATEGORY[label] for label in sorted(set(labels) - {NORMAL_LABEL})},
        name="kdd99",
        schema=THREAT_SCHEMA,
    )


def load_kdd99(folder: str | os.PathLike, max_bytes: int = MAX_DECOMPRESSED_BYTES) -> TabularData:
    """KDD'99 10% from ``folder/kddcup.data_10_percent.gz``, read in place, exact duplicate rows removed.

    A row is a duplicate when its 41 features and its label equal an earlier row's; KDD'99 repeats many
    connections verbatim (smurf and neptune floods above all), and a duplicate in both the support and the
    query set of an episode would measure recall, not detection. ``max_bytes`` caps the decompressed size
    (bytes) against decompression bombs.
    """
    path = Path(folder) / KDD99_GZ
    frame = read_kdd99_text(read_gzip(path, max_bytes), str(path))
    unique = frame.drop_duplicates(keep="first")
    logger.info(
        "kdd99: %d rows in %s; %d exact duplicates removed, %d rows left",
        len(frame),
        path,
        len(frame) - len(unique),
        len(unique),
    )
    return _to_tabular(unique)
