"""Spambase (Hopkins, Reeber, Forman, Suermondt; HP Labs 1999): 4,601 e-mails as 57 numeric features.

Units and ranges are those of ``spambase.names`` and ``spambase.DOCUMENTATION`` shipped with the data: word
and character frequencies are percentages, capital-run lengths count letters.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from metashield.data.delimited import check_allowed, check_header, parse_rows, split_first_line
from metashield.data.schema import FeatureSpec, ThreatSchema
from metashield.data.types import BENIGN, TabularData

logger = logging.getLogger(__name__)

SPAMBASE_DATA = "spambase.data"

_WORDS = """
    make address all 3d our over remove internet order mail receive will people report addresses free
    business email you credit your font 000 money hp hpl george 650 lab labs telnet 857 data 415 85
    technology 1999 parts pm direct cs meeting original project re edu table conference
"""
_CHARS = ";([!$#"
WORD_FEATURES: tuple[str, ...] = tuple(f"word_freq_{word}" for word in _WORDS.split())
CHAR_FEATURES: tuple[str, ...] = tuple(f"char_freq_{char}" for char in _CHARS)
CAPITAL_FEATURES: tuple[str, ...] = (
    "capital_run_length_average",
    "capital_run_length_longest",
    "capital_run_length_total",
)
FEATURES: tuple[str, ...] = (*WORD_FEATURES, *CHAR_FEATURES, *CAPITAL_FEATURES)
"""The 57 features in file order, named as in ``spambase.names``."""

LABEL = "spam"
SPAM_FAMILY = "spam"

HEADER: tuple[str, ...] = (*("char_freq_bracket" if c == "char_freq_[" else c for c in FEATURES), LABEL)
"""The header line the pinned copy adds to UCI's headerless file (it spells ``char_freq_[`` as
``char_freq_bracket``)."""

LOG_SCALED: tuple[str, ...] = CAPITAL_FEATURES
"""Capital-run lengths are unbounded letter counts spanning 1 to 15,841 with medians of 2-95 letters, so
without log1p a single shouting e-mail would set their scale. The frequencies are percentages bounded by
[0, 100] whose 99th percentiles are at most 20, and the pipeline's clipping bounds their rare outliers, so
they stay linear."""

_PERCENT_WORDS = FeatureSpec(
    lower=0.0, upper=100.0, why="100 * occurrences of the word / words in the e-mail (spambase.names)"
)
_PERCENT_CHARS = FeatureSpec(
    lower=0.0, upper=100.0, why="100 * occurrences of the character / characters in the e-mail"
)

THREAT_SCHEMA = ThreatSchema(
    features={
        **dict.fromkeys(WORD_FEATURES, _PERCENT_WORDS),
        **dict.fromkeys(CHAR_FEATURES, _PERCENT_CHARS),
        "capital_run_length_average": FeatureSpec(
            lower=1.0, why="average length of runs of capital letters: a run has at least one letter"
        ),
        "capital_run_length_longest": FeatureSpec(
            lower=1, integer=True, why="letters in the longest run of capitals, documented as [1, ...]"
        ),
        "capital_run_length_total": FeatureSpec(
            lower=1, integer=True, why="capital letters in the e-mail, documented as [1, ...]"
        ),
    },
    source="spambase.names and spambase.DOCUMENTATION (UCI, 1999)",
)
"""Spambase threat model: every feature is mutable, because the spammer writes the whole e-mail. The bounds
are per column; the coupling between columns (frequencies share one word count, average <= longest <= total)
is not expressible in a ``ThreatSchema`` and is left to the attack's epsilon."""


def read_spambase(path: str | os.PathLike) -> pd.DataFrame:
    """The 57 ``FEATURES`` and the 0/1 ``spam`` label of a spambase file, with or without the header line.

    The pinned copy starts with ``HEADER``; UCI's original has no header, so a first line starting with a
    digit is read as data. Errors name the file, the 1-based line and the column.
    """
    source = str(path)
    raw = Path(path).read_bytes()
    first, rest = split_first_line(raw, source)
    if first[:1].isdigit():
        body, first_line = raw, 1
    else:
        check_header(first, HEADER, source)
        body, first_line = rest, 2
    frame = parse_rows(body, (*FEATURES, LABEL), (), source, first_line)
    check_allowed(frame, LABEL, [0, 1], source, first_line)
    return frame


def load_spambase(folder: str | os.PathLike) -> TabularData:
    """Spambase from ``folder/spambase.data``: spam rows are the family ``spam``, the others ``BENIGN``.

    All 4,601 rows are kept, exact repeats included (391 rows repeat an earlier one): each row is an e-mail
    as it was filed, and whether repeated e-mails may share an episode is the sampler's decision.
    """
    path = Path(folder) / SPAMBASE_DATA
    frame = read_spambase(path)
    spam = frame[LABEL].to_numpy() == 1
    logger.info("%s: %d rows, %d spam", path, len(frame), int(spam.sum()))
    return TabularData(
        frame=frame[list(FEATURES)],
        family=np.where(spam, SPAM_FAMILY, BENIGN).astype(object),
        log_scaled=list(LOG_SCALED),
        name="spambase",
        schema=THREAT_SCHEMA,
    )
