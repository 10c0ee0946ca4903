"""UNSW-NB15 (Moustafa and Slay, MilCIS 2015): parse the published training/testing partition CSVs.

The files are not redistributed with metashield: the user supplies ``UNSW_NB15_training-set.csv`` and/or
``UNSW_NB15_testing-set.csv``. Bounds and units follow the feature table ``UNSW-NB15_features.csv`` published
with the dataset (times in seconds, inter-packet times and jitter in milliseconds, loads in bits per second).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from metashield.data.delimited import check_allowed, check_header, parse_rows, split_first_line
from metashield.data.errors import DataFormatError
from metashield.data.schema import FeatureSpec, ThreatSchema
from metashield.data.types import BENIGN, TabularData

logger = logging.getLogger(__name__)

_COLUMN_NAMES = """
    id dur proto service state spkts dpkts sbytes dbytes rate sttl dttl sload dload sloss dloss sinpkt dinpkt
    sjit djit swin stcpb dtcpb dwin tcprtt synack ackdat smean dmean trans_depth response_body_len ct_srv_src
    ct_state_ttl ct_dst_ltm ct_src_dport_ltm ct_dst_sport_ltm ct_dst_src_ltm is_ftp_login ct_ftp_cmd
    ct_flw_http_mthd ct_src_ltm ct_srv_dst is_sm_ips_ports attack_cat label
"""
COLUMNS: tuple[str, ...] = tuple(_COLUMN_NAMES.split())
"""The 45 header names of a partition file, in order."""

FEATURES: tuple[str, ...] = COLUMNS[1:-2]
"""The 42 feature columns: all but the record ``id`` (a row number, not a property of the flow) and labels."""

CATEGORICAL: tuple[str, ...] = ("proto", "service", "state")

NORMAL = "Normal"
FAMILIES: tuple[str, ...] = (
    "Analysis",
    "Backdoor",
    "DoS",
    "Exploits",
    "Fuzzers",
    "Generic",
    "Reconnaissance",
    "Shellcode",
    "Worms",
)
"""The 9 attack categories of ``attack_cat``; each becomes a family under its published name."""

_LOG_SCALED_NAMES = """
    dur spkts dpkts sbytes dbytes rate sload dload sloss dloss sinpkt dinpkt sjit djit tcprtt synack ackdat
    response_body_len
"""
LOG_SCALED: tuple[str, ...] = tuple(_LOG_SCALED_NAMES.split())
"""Unbounded flow volumes (packets, bytes, losses), rates (bit/s, packets/s) and times (s, ms).

By construction they run from 0 for a one-packet probe to many orders of magnitude above their median for a
bulk transfer or a long-lived session, so without log1p a single flow would set their standardised scale.
TTLs, TCP windows and base sequence numbers are bounded header fields, the ct_* counts are capped at 100,
the mean packet sizes are capped by the MTU, and the flags are 0/1: those stay linear.
"""

_COUNT = FeatureSpec(lower=0, integer=True, why="a packet, byte or flow count: a non-negative whole number")
_SECONDS = FeatureSpec(lower=0.0, why="a duration in seconds")
_MILLISECONDS = FeatureSpec(lower=0.0, why="an inter-packet time or jitter in milliseconds")
_BITS_PER_S = FeatureSpec(lower=0.0, why="a load in bits per second")
_TTL = FeatureSpec(lower=0, upper=255, integer=True, why="the 8-bit IP time-to-live field")
_WINDOW = FeatureSpec(lower=0, upper=65_535, integer=True, why="the 16-bit TCP window field")
_SEQUENCE = FeatureSpec(lower=0, upper=2**32 - 1, integer=True, why="the 32-bit TCP sequence number field")
_MEAN_SIZE = FeatureSpec(
    lower=0, upper=65_535, integer=True, why="mean packet size in bytes; an IP packet is at most 65,535 bytes"
)
_LAST_100 = FeatureSpec(
    lower=0, upper=100, integer=True, why="connections among the last 100 connections, by definition"
)
_VICTIM_SIDE = (
    "set by the victim's TCP/IP stack in its replies (its initial TTL, window, random initial sequence "
    "number), not by the traffic the attacker sends"
)

THREAT_SCHEMA = ThreatSchema(
    features={
        "dur": _SECONDS,
        "proto": FeatureSpec(
            mutable=False,
            why="the transport an attack needs (a UDP flood, an ICMP sweep): changing it changes the attack",
        ),
        "service": FeatureSpec(
            mutable=False, why="the target service is what the attack exploits (an HTTP exploit needs http)"
        ),
        "spkts": _COUNT,
        "dpkts": _COUNT,
        "sbytes": _COUNT,
        "dbytes": _COUNT,
        "rate": FeatureSpec(lower=0.0, why="packets per second: a non-negative rate"),
        "sttl": _TTL,
        "dttl": FeatureSpec(lower=0, upper=255, integer=True, mutable=False, why=_VICTIM_SIDE),
        "sload": _BITS_PER_S,
        "dload": _BITS_PER_S,
        "sloss": _COUNT,
        "dloss": _COUNT,
        "sinpkt": _MILLISECONDS,
        "dinpkt": _MILLISECONDS,
        "sjit": _MILLISECONDS,
        "djit": _MILLISECONDS,
        "swin": _WINDOW,
        "stcpb": _SEQUENCE,
        "dtcpb": FeatureSpec(lower=0, upper=2**32 - 1, integer=True, mutable=False, why=_VICTIM_SIDE),
        "dwin": FeatureSpec(lower=0, upper=65_535, integer=True, mutable=False, why=_VICTIM_SIDE),
        "tcprtt": _SECONDS,
        "synack": _SECONDS,
        "ackdat": _SECONDS,
        "smean": _MEAN_SIZE,
        "dmean": _MEAN_SIZE,
        "trans_depth": _COUNT,
        "response_body_len": _COUNT,
        "ct_srv_src": _LAST_100,
        "ct_state_ttl": FeatureSpec(lower=0, integer=True, why="a count of states per TTL range"),
        "ct_dst_ltm": _LAST_100,
        "ct_src_dport_ltm": _LAST_100,
        "ct_dst_sport_ltm": _LAST_100,
        "ct_dst_src_ltm": _LAST_100,
        # Documented as a 0/1 flag, but copies of the partition files also hold 2 and 4 (it tracks
        # ct_ftp_cmd there); an upper bound of 1 would make real rows invalid.
        "is_ftp_login": FeatureSpec(lower=0, integer=True, why="0/1 flag; the partitions also hold 2 and 4"),
        "ct_ftp_cmd": _COUNT,
        "ct_flw_http_mthd": _COUNT,
        "ct_src_ltm": _LAST_100,
        "ct_srv_dst": _LAST_100,
        "is_sm_ips_ports": FeatureSpec(lower=0, upper=1, integer=True, why="documented as 1 or 0"),
    },
    source="UNSW-NB15_features.csv (Moustafa and Slay, MilCIS 2015) and the IP/TCP header field widths",
)
"""UNSW-NB15 threat model: 5 of the 42 columns are immutable (proto, service and the victim-side dttl, dwin,
dtcpb); the connection ``state`` stays mutable because an attacker who completes or resets handshakes
changes it."""


def _read_partition(path: Path) -> pd.DataFrame:
    """The 45-column frame of one partition file, ``attack_cat`` stripped and checked against ``label``."""
    source = str(path)
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM some copies start with
    header, body = split_first_line(raw, source)
    check_header(header, COLUMNS, source)
    frame = parse_rows(body, COLUMNS, [*CATEGORICAL, "attack_cat"], source, first_line=2)
    # Some copies pad the category with spaces (" Fuzzers"); the name, not the padding, is the label.
    frame["attack_cat"] = frame["attack_cat"].str.strip()
    check_allowed(frame, "attack_cat", [NORMAL, *FAMILIES], source, first_line=2)
    check_allowed(frame, "label", [0, 1], source, first_line=2)
    disagree = (frame["label"].to_numpy() == 0) != (frame["attack_cat"].to_numpy() == NORMAL)
    if disagree.any():
        row = int(np.flatnonzero(disagree)[0])
        raise DataFormatError(
            f"{source}: line {row + 2}, column 'label': {int(frame['label'].iloc[row])} contradicts "
            f"attack_cat {frame['attack_cat'].iloc[row]!r} (label is 0 exactly for {NORMAL!r})"
        )
    logger.info("%s: %d rows", source, len(frame))
    return frame


def load_unsw_nb15(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> TabularData:
    """UNSW-NB15 from one partition CSV or several (training and testing set), rows concatenated in order.

    Each file has the published 45-column header (a UTF-8 BOM may precede it); ``id`` is dropped, ``Normal``
    rows become ``BENIGN`` and the 9 attack categories become families. Errors name the file, the 1-based
    line and the column. No registry entry pins these user-supplied files, so their integrity is not checked
    here: the run records each file's sha256 in its metadata instead.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise ValueError("load_unsw_nb15 needs at least one partition file")
    frame = pd.concat([_read_partition(Path(path)) for path in paths], ignore_index=True)
    cats = frame["attack_cat"].to_numpy(dtype=object)
    return TabularData(
        frame=frame[list(FEATURES)],
        family=np.where(cats == NORMAL, BENIGN, cats).astype(object),
        categorical=list(CATEGORICAL),
        log_scaled=list(LOG_SCALED),
        name="unsw-nb15",
        schema=THREAT_SCHEMA,
    )
