"""Website Phishing (Abdelhamid, Ayesh, Thabtah; ESWA 2014) as shipped by ``river``: ``phishing.csv.gz``.

river's file is UCI's ``PhishingData.arff`` without its 103 "suspicious" sites, rescaled: each feature
value is (UCI code + 1) / 2, except ``ip_in_url`` which keeps UCI's 0/1, and the label is
``is_phishing = (Result == 1)``. The first 37 non-suspicious UCI rows match river's first 37 rows exactly
under this mapping (checked against a public copy of the ARFF). UCI codes every feature and the class as
legitimate = 1, suspicious = 0, phishy = -1, so in this file 1.0 means "looks legitimate", 0.5
"suspicious" and 0.0 "looks phishy", whatever river's column name suggests (``long_url`` = 1 is a short URL).

The label: UCI documents Result 1 as legitimate and counts 548 legitimate and 702 phishing sites; river's
``is_phishing`` is 1 on exactly 548 rows, the UCI rows with Result 1. river's column name is therefore
inverted, and this loader follows UCI's documentation: ``is_phishing == 0`` (702 rows) is the family
``phishing``, ``is_phishing == 1`` (548 rows) is ``BENIGN``. river removed the suspicious class, so there is
no ``suspicious`` family.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from metashield.data.delimited import check_allowed, check_header, parse_rows, split_first_line
from metashield.data.gzip_file import read_gzip
from metashield.data.schema import FeatureSpec, ThreatSchema
from metashield.data.types import BENIGN, TabularData

logger = logging.getLogger(__name__)

PHISHING_GZ = "phishing.csv.gz"

TERNARY: tuple[str, ...] = (
    "empty_server_form_handler",
    "popup_window",
    "https",
    "request_from_other_domain",
    "anchor_from_other_domain",
    "is_popular",
    "long_url",
)
"""Features UCI codes as phishy/suspicious/legitimate, here 0, 0.5 or 1."""

BINARY: tuple[str, ...] = ("age_of_domain", "ip_in_url")
FEATURES: tuple[str, ...] = (*TERNARY, *BINARY)
"""The 9 features in file order."""

LABEL = "is_phishing"
PHISHING_FAMILY = "phishing"
PHISHING_LABEL_VALUE = 0
"""The ``is_phishing`` value of the phishing sites: UCI's Result -1 (see the module docstring)."""

MAX_DECOMPRESSED_BYTES = 1 << 20
"""Largest decompressed file accepted (1 MiB; river's file is 42,652 bytes)."""

_CODED = FeatureSpec(lower=0.0, upper=1.0, why="UCI's phishy/suspicious/legitimate code -1/0/1 as 0/0.5/1")

THREAT_SCHEMA = ThreatSchema(
    features={
        **dict.fromkeys(TERNARY, _CODED),
        "is_popular": FeatureSpec(
            lower=0.0,
            upper=1.0,
            mutable=False,
            why="the site's traffic rank, measured by a third party from real visitors, not set by the page",
        ),
        "age_of_domain": FeatureSpec(
            lower=0,
            upper=1,
            integer=True,
            mutable=False,
            why="the domain's WHOIS creation date is recorded by the registry and cannot be backdated",
        ),
        "ip_in_url": FeatureSpec(lower=0, upper=1, integer=True, why="UCI's 0/1 IP-address-in-URL flag"),
    },
    source="UCI Website Phishing documentation (Abdelhamid et al. 2014) and river's rescaling to [0, 1]",
)
"""Phishing threat model: 2 of the 9 columns are immutable (traffic rank, domain age); the page's forms,
pop-ups, certificate, embedded objects, anchors, URL length and host are the phisher's to change."""


def read_phishing(raw: bytes, source: str) -> pd.DataFrame:
    """The 9 ``FEATURES`` and the 0/1 label of river's decompressed CSV, every value checked against its code.

    ``source`` names the file in errors; each error names the file, the 1-based line and the column.
    """
    header, body = split_first_line(raw, source)
    check_header(header, (*FEATURES, LABEL), source)
    frame = parse_rows(body, (*FEATURES, LABEL), (), source, first_line=2)
    for column in TERNARY:
        check_allowed(frame, column, [0.0, 0.5, 1.0], source, first_line=2)
    for column in (*BINARY, LABEL):
        check_allowed(frame, column, [0, 1], source, first_line=2)
    return frame


def load_phishing(folder: str | os.PathLike, max_bytes: int = MAX_DECOMPRESSED_BYTES) -> TabularData:
    """Website Phishing from ``folder/phishing.csv.gz``, read in place (``max_bytes``: decompressed limit).

    All 1,250 rows are kept, repeated feature vectors included: with 9 features of 2-3 levels, distinct
    websites often share one vector, and a repeated vector is a repeated observation, not a copying error.
    """
    path = Path(folder) / PHISHING_GZ
    frame = read_phishing(read_gzip(path, max_bytes), str(path))
    phishing = frame[LABEL].to_numpy() == PHISHING_LABEL_VALUE
    logger.info("%s: %d rows, %d phishing", path, len(frame), int(phishing.sum()))
    return TabularData(
        frame=frame[list(FEATURES)],
        family=np.where(phishing, PHISHING_FAMILY, BENIGN).astype(object),
        name="phishing",
        schema=THREAT_SCHEMA,
    )
