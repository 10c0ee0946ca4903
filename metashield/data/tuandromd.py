"""TUANDROMD, the Tezpur University Android Malware Dataset (Borah, Bhattacharyya, Kalita, CICT 2020; UCI):
Android apps as 241 binary permission and API-call features, labelled ``malware`` or ``goodware``.

Format quirks kept from the published file: three class-name columns appear twice in the header
(``Ljava/lang/System``, ``Landroid/hardware/Camera``, ``Landroid/telephony/SmsManager``, each followed by a
different method column); the k-th repeat of a name becomes ``<name>.<k>``, as pandas names it. Some names
read ``goodware`` where ``NO`` was meant (``BIND_goodwareTIFICATION_LISTENER_SERVICE``), an upstream
find-and-replace artefact; they are kept as written. UCI lists one more instance than this copy holds,
possibly a row with missing values: rows with an empty field are dropped, counted and logged.

Threat model: see ``metashield.data.android``. The four SMS permissions are frozen (``FROZEN``): they are
the payload of premium-SMS fraud and of SMS interception, Android enforces them, and adding them to a
malware sample only adds a malware indicator (1-3% of goodware hold them), so freezing takes no useful move
away from an evader. API calls stay mutable (reflection hides them), as do all other permissions.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from metashield.data.android import binary_feature_schema
from metashield.data.errors import DataFormatError
from metashield.data.strict_csv import binary_block, read_csv_cells
from metashield.data.types import BENIGN, TabularData

logger = logging.getLogger(__name__)

TUANDROMD_CSV = "TUANDROMD.csv"

LABEL = "Label"
MALWARE = "malware"
GOODWARE = "goodware"
"""Label values; ``goodware`` rows get family ``BENIGN``, ``malware`` rows keep ``malware``."""

N_FEATURES = 241

_SMS_WHY = "Android enforces it at run time, so an SMS-fraud or SMS-stealing payload needs it"
FROZEN: dict[str, str] = {
    "SEND_SMS": "sends premium-rate SMS; " + _SMS_WHY,
    "RECEIVE_SMS": "intercepts incoming SMS (confirmation codes, mTANs); " + _SMS_WHY,
    "READ_SMS": "reads stored SMS; " + _SMS_WHY,
    "WRITE_SMS": "deletes the evidence of sent or intercepted SMS; " + _SMS_WHY,
}
"""Frozen columns and why; the permissions held by 11-19% of malware and 1-3% of goodware."""

SOURCE = "Android permissions and API calls (TUANDROMD, Borah et al. CICT 2020): binary presence flags"


def feature_names(header: Sequence[str], source: str) -> list[str]:
    """The header's feature names with the k-th repeat of a name renamed ``<name>.<k>`` (as pandas does).

    Raises ``DataFormatError`` for an empty name, or a renamed repeat that equals another column's name
    (the two columns would become indistinguishable).
    """
    seen: dict[str, int] = {}
    names = []
    for position, name in enumerate(header, start=1):
        if not name.strip():
            raise DataFormatError(f"{source}: line 1 (header), column {position}: empty column name")
        repeat = seen.get(name, 0)
        seen[name] = repeat + 1
        names.append(f"{name}.{repeat}" if repeat else name)
    if len(set(names)) < len(names):
        clash = next(name for name in names if names.count(name) > 1)
        raise DataFormatError(
            f"{source}: line 1 (header): renaming a repeated column name gives {clash!r}, which another "
            "column already has"
        )
    return names


def read_tuandromd_csv(path: str | os.PathLike) -> TabularData:
    """A CSV file in the TUANDROMD format as ``TabularData`` (family ``malware`` or ``BENIGN``).

    The header names 241 features then ``Label``; feature cells are 0 or 1, labels ``malware`` or
    ``goodware``. Rows with an empty field are dropped and counted in a logged warning. Raises
    ``DataFormatError`` naming the file, line and column for any other header or cell.
    """
    source = str(path)
    table = read_csv_cells(Path(path).read_bytes(), source)
    header = table.header
    if len(header) != N_FEATURES + 1 or header[-1] != LABEL:
        raise DataFormatError(
            f"{source}: line 1 (header) has {len(header)} columns ending with {header[-1]!r}, expected "
            f"{N_FEATURES} features then {LABEL!r}"
        )
    features = feature_names(header[:-1], source)
    missing = (table.cells == "").any(axis=1)
    if missing.all():
        raise DataFormatError(f"{source}: every one of the {len(missing)} data rows has an empty field")
    if missing.any():
        first_line = int(table.lines[np.flatnonzero(missing)[0]])
        logger.warning(
            "%s: dropped %d rows with missing values (the first at line %d)",
            source,
            missing.sum(),
            first_line,
        )
        table = replace(table, cells=table.cells[~missing], lines=table.lines[~missing])
    values = binary_block(table, range(N_FEATURES))
    label = table.cells[:, N_FEATURES]
    unknown = (label != MALWARE) & (label != GOODWARE)
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise table.error(row, N_FEATURES, f"{label[row]!r} is not {MALWARE!r} or {GOODWARE!r}")
    family = np.where(label == GOODWARE, BENIGN, MALWARE).astype(object)
    logger.info(
        "%s: %d rows (%d malware, %d goodware), %d dropped for missing values",
        source,
        len(family),
        int((family == MALWARE).sum()),
        int((family == BENIGN).sum()),
        int(missing.sum()),
    )
    return TabularData(
        frame=pd.DataFrame(values, columns=features),
        family=family,
        name="tuandromd",
        schema=binary_feature_schema(features, FROZEN, SOURCE),
    )


def load_tuandromd(folder: str | os.PathLike) -> TabularData:
    """TUANDROMD from ``folder`` holding ``TUANDROMD.csv``."""
    return read_tuandromd_csv(Path(folder) / TUANDROMD_CSV)
