"""Drebin Android malware families (Arp et al., NDSS 2014) as binary static features, in the format of the
few-shot family detection files of ``qWe1aSd/fewShotMalPre`` (``drebin_input.csv`` + ``drebin_count.csv``).

There is NO benign class: every row is a malware sample, so the dataset serves N-way family classification
(few-shot family detection). ``family`` holds each row's family name and no row is ``BENIGN``; pair it with
a malware-vs-benign set (e.g. TUANDROMD) for detection. Sample names carry the corpus date ``YYYYMM``,
parsed into ``timestamp`` as months since year 0 (``year * 12 + month - 1``) for temporal splits; the rows
are not in date order.

Threat model: see ``metashield.data.android``. Three of the 221 columns are frozen (``FROZEN``): they are
present in 94-97% of the samples, so freezing them forbids almost no additions, and removing them breaks
the malware. All other features are mutable integers in [0, 1].
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from metashield.data.android import binary_feature_schema
from metashield.data.errors import DataFormatError
from metashield.data.strict_csv import CsvCells, binary_block, check_names, number_column, read_csv_cells
from metashield.data.types import TabularData

logger = logging.getLogger(__name__)

DREBIN_INPUT = "drebin_input.csv"
DREBIN_COUNT = "drebin_count.csv"

FAMILY_COLUMN = "family"
NAME_COLUMN = "name"
"""The last two columns of an input file: the integer family id (the label) and the sample name."""

COUNT_HEADER: tuple[str, ...] = ("index", "family", "number")
"""Header of the count file: family id, family name, number of samples with that id."""

SAMPLE_NAME = re.compile(
    r"^(?P<corpus>[^_]+)_(?P<family>.+)_(?P<year>\d{4})(?P<month>\d{2})_(?P<digest>[0-9A-Fa-f]+)\.txt$"
)
"""A sample name: ``<corpus>_<family>_<YYYYMM>_<hash>.txt`` (the family may itself contain ``_``)."""

FROZEN: dict[str, str] = {
    "android.permission.INTERNET": "the channel of command and control, exfiltration and payload "
    "download; Android enforces it at run time, so removing it breaks the malware",
    "android.intent.action.MAIN": "with LAUNCHER, the entry point the victim taps: fake installers and "
    "repackaged apps need the victim to start them",
    "android.intent.category.LAUNCHER": "with MAIN, the home-screen entry point the victim starts the lure "
    "from",
}
"""Frozen columns and why; each is present in 94-97% of the Drebin samples."""

SOURCE = "Android permissions, intents and API calls (Drebin, Arp et al. NDSS 2014): binary presence flags"


def months(year: np.ndarray, month: np.ndarray) -> np.ndarray:
    """float64 months since year 0 of ``YYYY`` and ``MM`` (``year * 12 + month - 1``)."""
    return (year * 12 + month - 1).astype(np.float64)


def read_family_counts(path: str | os.PathLike) -> dict[int, tuple[str, int]]:
    """Family id -> (family name, number of samples) from a ``drebin_count.csv``-format file.

    Raises ``DataFormatError`` naming the file, line and column for another header, an id that is not a
    unique whole number >= 0, an empty or repeated family name, or a count that is not a whole number >= 0.
    """
    table = read_csv_cells(Path(path).read_bytes(), str(path))
    if table.header != COUNT_HEADER:
        raise DataFormatError(f"{path}: line 1 is {list(table.header)}, expected {list(COUNT_HEADER)}")
    ids = number_column(table, 0, integer=True)
    numbers = number_column(table, 2, integer=True)
    counts: dict[int, tuple[str, int]] = {}
    seen_names: set[str] = set()
    for row, (family_id, name, number) in enumerate(zip(ids, table.cells[:, 1], numbers, strict=True)):
        if family_id < 0 or int(family_id) in counts:
            raise table.error(row, 0, f"{int(family_id)} is negative or repeated, expected a new id >= 0")
        if not name.strip() or name in seen_names:
            raise table.error(row, 1, f"{name!r} is empty or repeated, expected a new family name")
        if number < 0:
            raise table.error(row, 2, f"{int(number)} is negative, expected a sample count")
        counts[int(family_id)] = (name, int(number))
        seen_names.add(name)
    return counts


def _family_names(
    table: CsvCells, ids: np.ndarray, counts: dict[int, tuple[str, int]], count_source: str
) -> np.ndarray:
    """object [n] family name of each row's id; raises for an id the count file does not list."""
    column = table.header.index(FAMILY_COLUMN)
    known = np.isin(ids, list(counts))
    if not known.all():
        row = int(np.flatnonzero(~known)[0])
        raise table.error(row, column, f"family id {int(ids[row])} is not an index of {count_source}")
    return np.array([counts[int(i)][0] for i in ids], dtype=object)


def _parse_names(table: CsvCells, family: np.ndarray) -> np.ndarray:
    """Months since year 0 [n] from the sample names, checking format, uniqueness, family and month."""
    column = table.header.index(NAME_COLUMN)
    names = pd.Series(table.cells[:, column], dtype=object)
    parts = names.str.extract(SAMPLE_NAME)
    unmatched = parts["corpus"].isna().to_numpy()
    if unmatched.any():
        row = int(np.flatnonzero(unmatched)[0])
        raise table.error(
            row, column, f"{names[row]!r} is not a sample name <corpus>_<family>_<YYYYMM>_<hash>.txt"
        )
    repeated = names.duplicated().to_numpy()
    if repeated.any():
        row = int(np.flatnonzero(repeated)[0])
        raise table.error(row, column, f"{names[row]!r} repeats an earlier sample name")
    mismatch = parts["family"].to_numpy(dtype=object) != family
    if mismatch.any():
        row = int(np.flatnonzero(mismatch)[0])
        raise table.error(
            row,
            column,
            f"{names[row]!r} names family {parts['family'][row]!r}, but its id is {family[row]!r}",
        )
    month = parts["month"].astype(int).to_numpy()
    invalid = (month < 1) | (month > 12)
    if invalid.any():
        row = int(np.flatnonzero(invalid)[0])
        raise table.error(row, column, f"{names[row]!r} has month {month[row]:02d}, expected a YYYYMM date")
    return months(parts["year"].astype(int).to_numpy(), month)


def _check_numbers(family_ids: np.ndarray, counts: dict[int, tuple[str, int]], count_source: str) -> None:
    """Each family's row count must equal its ``number``: otherwise the two files do not belong together."""
    ids, found = np.unique(family_ids, return_counts=True)
    observed = dict(zip(ids.astype(int).tolist(), found.tolist(), strict=True))
    for line, (family_id, (name, number)) in enumerate(counts.items(), start=2):
        if observed.get(family_id, 0) != number:
            raise DataFormatError(
                f"{count_source}: line {line}, column 'number': family {name!r} (index {family_id}) has "
                f"number {number}, but the input file has {observed.get(family_id, 0)} rows with that id"
            )


def read_drebin_families(input_path: str | os.PathLike, count_path: str | os.PathLike) -> TabularData:
    """Any input/count file pair in the ``drebin_input.csv``/``drebin_count.csv`` format, as ``TabularData``.

    The input file has a header of feature names followed by ``family`` (the integer id) and ``name``
    (``<corpus>_<family>_<YYYYMM>_<hash>.txt``); every feature cell is 0 or 1. Raises ``DataFormatError``
    naming the file, line and column when a cell breaks that format, an id is not in the count file, a
    name's family differs from its id's, a name repeats, or a family's row count differs from its number.
    """
    counts = read_family_counts(count_path)
    source = str(input_path)
    table = read_csv_cells(Path(input_path).read_bytes(), source)
    header = table.header
    if len(header) < 3 or header[-2:] != (FAMILY_COLUMN, NAME_COLUMN):
        raise DataFormatError(
            f"{source}: line 1 ends with {list(header[-2:])}, expected feature columns then "
            f"{[FAMILY_COLUMN, NAME_COLUMN]}"
        )
    check_names(header, source)
    features = list(header[:-2])
    values = binary_block(table, range(len(features)))
    ids = number_column(table, header.index(FAMILY_COLUMN), integer=True)
    family = _family_names(table, ids, counts, str(count_path))
    timestamp = _parse_names(table, family)
    _check_numbers(ids, counts, str(count_path))
    logger.info(
        "%s: %d samples of %d families, %d features, dates %d-%d",
        source,
        len(family),
        len(counts),
        len(features),
        int(timestamp.min() // 12),
        int(timestamp.max() // 12),
    )
    return TabularData(
        frame=pd.DataFrame(values, columns=features),
        family=family,
        name="drebin-families",
        schema=binary_feature_schema(features, FROZEN, SOURCE),
        timestamp=timestamp,
    )


def load_drebin_families(folder: str | os.PathLike) -> TabularData:
    """The Drebin family set from ``folder`` holding ``drebin_input.csv`` and ``drebin_count.csv``."""
    folder = Path(folder)
    return read_drebin_families(folder / DREBIN_INPUT, folder / DREBIN_COUNT)
