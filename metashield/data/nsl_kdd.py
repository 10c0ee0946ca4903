"""NSL-KDD (Tavallaee et al., CISDA 2009): parse the four text files inside ``NSL_KDD.zip`` in place."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from metashield.data.archive import read_zip_member
from metashield.data.schema import FeatureSpec, ThreatSchema
from metashield.data.types import BENIGN, TabularData

logger = logging.getLogger(__name__)

NSL_KDD_ZIP = "NSL_KDD.zip"

PARTS: dict[str, str] = {
    "KDDTrain+": "KDDTrain+.txt",
    "KDDTrain+_20Percent": "KDDTrain+_20Percent.txt",
    "KDDTest+": "KDDTest+.txt",
    "KDDTest-21": "KDDTest-21.txt",
}
"""Part name -> member of ``NSL_KDD.zip``."""

_FEATURE_NAMES = """
    duration protocol_type service flag src_bytes dst_bytes land wrong_fragment urgent hot num_failed_logins
    logged_in num_compromised root_shell su_attempted num_root num_file_creations num_shells num_access_files
    num_outbound_cmds is_host_login is_guest_login count srv_count serror_rate srv_serror_rate rerror_rate
    srv_rerror_rate same_srv_rate diff_srv_rate srv_diff_host_rate dst_host_count dst_host_srv_count
    dst_host_same_srv_rate dst_host_diff_srv_rate dst_host_same_src_port_rate dst_host_srv_diff_host_rate
    dst_host_serror_rate dst_host_srv_serror_rate dst_host_rerror_rate dst_host_srv_rerror_rate
"""
FEATURES: tuple[str, ...] = tuple(_FEATURE_NAMES.split())
"""The 41 KDD features in file order (duration in seconds, src/dst_bytes in bytes, *_rate in [0, 1])."""

COLUMNS: tuple[str, ...] = (*FEATURES, "label", "difficulty")
"""All 43 columns of an NSL-KDD text file: the features, the attack-type label, the difficulty (0-21)."""

CATEGORICAL: tuple[str, ...] = ("protocol_type", "service", "flag")

_LOG_SCALED_NAMES = (
    "duration src_bytes dst_bytes hot num_compromised num_root num_file_creations count srv_count"
)
LOG_SCALED: tuple[str, ...] = tuple(_LOG_SCALED_NAMES.split())
"""Unbounded counts and volumes whose maximum is 100x or more their 99th percentile or that span 0..500+.

duration reaches 57,715 s and src/dst_bytes 1.3e9 while their 99th percentiles are 8e3-5e4, and the
event counts hot/num_compromised/num_root/num_file_creations reach 100-7,479 while 99% of rows have at most 2;
count and srv_count (connections in the last 2 s, 0-511) are right-skewed. Without log1p a single row
would dominate their standardised scale. dst_host_count/dst_host_srv_count are capped at 255 and roughly
symmetric, the small counts (num_shells, wrong_fragment, ...) stay within 0-9, and the rates are already in
[0, 1], so those stay linear.
"""

_CATEGORY_LABELS: dict[str, str] = {
    "DoS": "back land neptune pod smurf teardrop apache2 mailbomb processtable udpstorm",
    "Probe": "ipsweep nmap portsweep satan mscan saint",
    "R2L": "ftp_write guess_passwd imap multihop phf spy warezclient warezmaster named sendmail "
    "snmpgetattack snmpguess xlock xsnoop worm",
    "U2R": "buffer_overflow loadmodule perl rootkit httptunnel ps sqlattack xterm",
}

LABEL_CATEGORY: dict[str, str] = {
    label: category for category, labels in _CATEGORY_LABELS.items() for label in labels.split()
}
"""Attack-type label -> category (DoS, Probe, R2L, U2R) for all 39 attack labels of train and test."""

NORMAL_LABEL = "normal"

_COUNT = FeatureSpec(lower=0, integer=True, why="an event or byte count: a non-negative whole number")
_FLAG = FeatureSpec(lower=0, upper=1, integer=True, why="documented as 1 or 0")
_RATE = FeatureSpec(lower=0.0, upper=1.0, why="a fraction of connections in the window")
_WINDOW_2S = FeatureSpec(
    lower=0,
    upper=511,
    integer=True,
    why="connections in the past 2 s, capped at 511 by the feature extractor",
)
_WINDOW_100 = FeatureSpec(
    lower=0, upper=255, integer=True, why="connections among the past 100 to the host, stored in one byte"
)
_IMMUTABLE_WHY = {
    "protocol_type": "the transport an attack needs (smurf is ICMP echo, teardrop is UDP "
    "fragments): changing it changes the attack, not its appearance",
    "service": "the target service is what the attack exploits (warezmaster needs ftp, phf needs http)",
    "is_host_login": "set by the victim's own list of host logins, which the attacker does not control",
}

THREAT_SCHEMA = ThreatSchema(
    features={
        "duration": FeatureSpec(lower=0, integer=True, why="whole seconds, non-negative"),
        "src_bytes": _COUNT,
        "dst_bytes": _COUNT,
        "land": _FLAG,
        "wrong_fragment": _COUNT,
        "urgent": _COUNT,
        "hot": _COUNT,
        "num_failed_logins": _COUNT,
        "logged_in": _FLAG,
        "num_compromised": _COUNT,
        "root_shell": _FLAG,
        # Documented as a 0/1 flag, but the published files hold the value 2 as well; a bound that
        # excluded real rows would make the original samples themselves invalid.
        "su_attempted": FeatureSpec(lower=0, upper=2, integer=True, why="0/1 flag; the files also hold 2"),
        "num_root": _COUNT,
        "num_file_creations": _COUNT,
        "num_shells": _COUNT,
        "num_access_files": _COUNT,
        "num_outbound_cmds": _COUNT,
        "is_host_login": FeatureSpec(
            lower=0, upper=1, integer=True, mutable=False, why=_IMMUTABLE_WHY["is_host_login"]
        ),
        "is_guest_login": _FLAG,
        "count": _WINDOW_2S,
        "srv_count": _WINDOW_2S,
        **{c: _RATE for c in FEATURES if c.endswith("_rate")},
        "dst_host_count": _WINDOW_100,
        "dst_host_srv_count": _WINDOW_100,
        "protocol_type": FeatureSpec(mutable=False, why=_IMMUTABLE_WHY["protocol_type"]),
        "service": FeatureSpec(mutable=False, why=_IMMUTABLE_WHY["service"]),
    },
    source="KDD Cup 1999 feature list (Stolfo et al., kddcup.names, task description), kept by NSL-KDD",
)
"""NSL-KDD threat model: 3 of the 41 columns are immutable (protocol_type, service, is_host_login); the
connection flag stays mutable because an attacker who completes or resets handshakes changes it."""


class KddFormatError(ValueError):
    """An NSL-KDD text file does not have the expected 43-column format."""


def read_kdd_text(data: bytes | str | os.PathLike, source_name: str | None = None) -> pd.DataFrame:
    """Parse one headerless KDD text file (bytes, or a path to read) into a frame of the 43 ``COLUMNS``.

    ``source_name`` names the file in error messages (defaults to the path). Raises ``KddFormatError``
    naming the file, the 1-based line and the column when a line does not have 43 fields, a numeric
    field is not a finite number, or a text field is empty.
    """
    if isinstance(data, bytes):
        raw, source = data, source_name or "<bytes>"
    else:
        raw, source = Path(data).read_bytes(), source_name or str(data)
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline ending the last line
    if not lines:
        raise KddFormatError(f"{source}: empty file, expected lines of {len(COLUMNS)} comma-separated fields")
    # Count fields ourselves: pandas would pad a short line with NaN and silently skip blank lines,
    # which would shift every later line number. The files have no quoting, so commas separate fields.
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise KddFormatError(f"{source}: line {number} is empty, expected {len(COLUMNS)} fields")
        fields = line.count(b",") + 1
        if fields != len(COLUMNS):
            raise KddFormatError(
                f"{source}: line {number} has {fields} fields, expected {len(COLUMNS)} "
                f"(41 features, label, difficulty)"
            )
    text_columns = [*CATEGORICAL, "label"]
    frame = pd.read_csv(
        io.BytesIO(raw),
        header=None,
        names=list(COLUMNS),
        dtype=dict.fromkeys(text_columns, str),
        keep_default_na=False,
        na_values=[""],
    )
    for column in text_columns:
        empty = frame[column].isna().to_numpy()
        if empty.any():
            row = int(np.flatnonzero(empty)[0])
            raise KddFormatError(f"{source}: line {row + 1}, column {column!r}: empty, expected a name")
    for column in COLUMNS:
        if column in text_columns:
            continue
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            # Quote the text as written: the parsed value would show "nan" for an empty field.
            text = lines[row].rstrip(b"\r").split(b",")[COLUMNS.index(column)].decode(errors="replace")
            found = f"{text!r} is not a finite number" if text.strip() else "empty, expected a number"
            raise KddFormatError(f"{source}: line {row + 1}, column {column!r}: {found}")
        if not pd.api.types.is_numeric_dtype(frame[column]):
            frame[column] = values
    return frame


def _read_part(folder: Path, part: str) -> tuple[pd.DataFrame, str]:
    """The 43-column frame of one part of ``folder/NSL_KDD.zip`` and its name for messages."""
    if part not in PARTS:
        raise ValueError(f"unknown NSL-KDD part {part!r}; parts are {list(PARTS)}")
    zip_path = Path(folder) / NSL_KDD_ZIP
    source = f"{zip_path}[{PARTS[part]}]"
    frame = read_kdd_text(read_zip_member(zip_path, PARTS[part]), source)
    known = frame["label"].isin([NORMAL_LABEL, *LABEL_CATEGORY]).to_numpy()
    if not known.all():
        row = int(np.flatnonzero(~known)[0])
        raise KddFormatError(
            f"{source}: line {row + 1}, column 'label': unknown label {frame['label'].iloc[row]!r}, expected "
            f"{NORMAL_LABEL!r} or one of the {len(LABEL_CATEGORY)} NSL-KDD attack types"
        )
    return frame, source


def _to_tabular(frame: pd.DataFrame, name: str) -> TabularData:
    """Features, families (``normal`` -> ``BENIGN``) and categories of a 43-column frame."""
    labels = frame["label"].to_numpy(dtype=object)
    family = np.where(labels == NORMAL_LABEL, BENIGN, labels).astype(object)
    return TabularData(
        frame=frame[list(FEATURES)].reset_index(drop=True),
        family=family,
        categorical=list(CATEGORICAL),
        log_scaled=list(LOG_SCALED),
        category={label: LABEL_CATEGORY[label] for label in sorted(set(labels) - {NORMAL_LABEL})},
        name=name,
        schema=THREAT_SCHEMA,
    )


def read_nsl_kdd_file(folder: str | os.PathLike, part: str) -> TabularData:
    """One part of NSL-KDD as is (no de-duplication), e.g. ``"KDDTest-21"`` or ``"KDDTrain+_20Percent"``.

    ``folder`` holds ``NSL_KDD.zip``; ``part`` is a key of ``PARTS``.
    """
    frame, source = _read_part(Path(folder), part)
    logger.info("%s: %d rows", source, len(frame))
    return _to_tabular(frame, f"nsl-kdd/{part}")


def load_nsl_kdd(folder: str | os.PathLike) -> TabularData:
    """The NSL-KDD family pool: KDDTrain+ and KDDTest+ together, exact duplicate rows removed.

    Pooling both files puts the 17 attack types seen only in KDDTest+ into the pool, so they can serve as
    novel families. A row is a duplicate when its 41 features and its label equal an earlier row's; the
    difficulty score is ignored there because it describes the benchmark, not the connection.
    """
    folder = Path(folder)
    train, train_source = _read_part(folder, "KDDTrain+")
    test, test_source = _read_part(folder, "KDDTest+")
    pool = pd.concat([train, test], ignore_index=True)
    deduplicated = pool.drop_duplicates(subset=[*FEATURES, "label"], keep="first")
    logger.info(
        "nsl-kdd: %d rows from %s and %d from %s; %d exact duplicates removed, %d rows left",
        len(train),
        train_source,
        len(test),
        test_source,
        len(pool) - len(deduplicated),
        len(deduplicated),
    )
    return _to_tabular(deduplicated, "nsl-kdd")
