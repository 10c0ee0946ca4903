"""SMS Spam Collection v.1 (Almeida, Gómez Hidalgo, Yamakami; DocEng 2011): 5,574 English SMS, ham or spam.

Format (the authors' ``readme``): one message per line, ``label<TAB>text``, label ``ham`` or ``spam``, UTF-8,
no header and no quoting: texts contain double quotes, which are part of the message.

Features: ``hash_features`` maps each message to hashed counts of its lower-cased word unigrams and bigrams
(``w`` columns) and character 3- to 5-grams (``c`` columns). Hashing fits no vocabulary on any rows, so
nothing about held-out rows can enter the features; the ``FeaturePipeline``'s log1p and standardisation,
fitted on meta-training rows only, come after it.

Duplicates: 403 lines repeat an earlier (label, text) pair exactly (309 ham, 94 spam; no text carries both
labels). ``load_sms_spam`` keeps the first of each pair, leaving 5,171 messages (4,518 ham, 653 spam), so a
message can never be both a support and a query row of an episode.

Threat model (``THREAT_SCHEMA``): FEATURE-SPACE only. Every column is a whole count >= 0 without an upper
bound (concatenated SMS have no fixed length), and every column is mutable because the sender writes the
whole message. Character and word edits are not modelled: an attack moves the counts directly, so a
perturbed row need not be the features of any real text (inserting one word changes its unigram, the bigrams
around it and character n-grams together, and hashing ties unrelated n-grams to one column; a ``ThreatSchema``
expresses neither coupling). The feature-space attacker can therefore reach every point a text attacker
reaches within the same budget, and more: robust numbers on this dataset bound the attacker's power within
the budget from above (robust accuracy is pessimistic for real text edits of that size), and say nothing
about text edits that move the features farther than the budget.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import HashingVectorizer

from metashield.data.errors import DataFormatError
from metashield.data.schema import FeatureSpec, ThreatSchema
from metashield.data.types import BENIGN, TabularData

logger = logging.getLogger(__name__)

SMS_SPAM_FILE = "SMSSpamCollection"
LABELS: tuple[str, ...] = ("ham", "spam")
SPAM_FAMILY = "spam"

N_WORD = 2**10
"""Default number of hashed word-n-gram count columns."""
N_CHAR = 2**10
"""Default number of hashed character-n-gram count columns."""

WORD_TOKENS = r"(?u)\b\w+\b"
"""Words are runs of letters and digits, single characters included: "u", "r" and "2" carry meaning in SMS,
and scikit-learn's default pattern would drop them."""


def _decode(raw: bytes, source: str) -> str:
    """``raw`` as UTF-8 text; an undecodable byte raises ``DataFormatError`` naming its line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataFormatError(
            f"{source}: line {line}: not UTF-8 text (byte {exc.start}): {exc.reason}"
        ) from exc


def _split_line(line: str, number: int, source: str) -> tuple[str, str]:
    """(label, text) of line ``number`` (1-based), checked against the documented ``label<TAB>text``."""
    tabs = line.count("\t")
    if tabs != 1:
        raise DataFormatError(f"{source}: line {number} has {tabs} TABs, expected 1 (label<TAB>text)")
    label, text = line.split("\t")
    if label not in LABELS:
        raise DataFormatError(
            f"{source}: line {number}, column 'label': {label!r} is not one of {list(LABELS)}"
        )
    if not text:
        raise DataFormatError(f"{source}: line {number}, column 'text': empty, expected a message")
    return label, text


def read_sms_spam(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Labels (``ham``/``spam``) and texts of every line of an SMS Spam Collection file, in file order.

    Texts are kept verbatim, quotes and surrounding spaces included. Errors name the file and the 1-based
    line.
    """
    source = str(path)
    # The csv readers of metashield.data.delimited and .strict_csv split on commas or honour quoting; this
    # format needs neither, and splitting on "\n" alone (not str.splitlines) keeps any other line
    # separator a message may contain inside that message.
    lines = _decode(Path(path).read_bytes(), source).split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline ending the last line
    if not lines:
        raise DataFormatError(f"{source}: empty file")
    pairs = [_split_line(line, number, source) for number, line in enumerate(lines, start=1)]
    return [label for label, _ in pairs], [text for _, text in pairs]


def feature_names(n_word: int = N_WORD, n_char: int = N_CHAR) -> list[str]:
    """Column names of ``hash_features``: ``w0000``... for word buckets, then ``c0000``... for characters."""
    return [f"w{i:04d}" for i in range(n_word)] + [f"c{i:04d}" for i in range(n_char)]


def hash_features(texts: Sequence[str], n_word: int = N_WORD, n_char: int = N_CHAR) -> pd.DataFrame:
    """Hashed n-gram counts of each text: float32 [len(texts), n_word + n_char], whole numbers >= 0.

    Word unigrams and bigrams go to ``n_word`` buckets, character 3- to 5-grams to ``n_char`` buckets, both
    lower-cased. Nothing is fitted, so a text's row depends on that text alone, whatever else is in the batch.
    """
    # alternate_sign=False and norm=None keep the cells plain counts, which the schema declares as such.
    common = {"alternate_sign": False, "norm": None, "lowercase": True, "dtype": np.float32}
    word = HashingVectorizer(
        analyzer="word", ngram_range=(1, 2), token_pattern=WORD_TOKENS, n_features=n_word, **common
    )
    char = HashingVectorizer(analyzer="char", ngram_range=(3, 5), n_features=n_char, **common)
    counts = np.hstack([word.transform(texts).toarray(), char.transform(texts).toarray()])
    return pd.DataFrame(counts, columns=feature_names(n_word, n_char))


COLUMNS: tuple[str, ...] = tuple(feature_names())
"""The count columns ``load_sms_spam`` returns."""

THREAT_SCHEMA = ThreatSchema(
    features=dict.fromkeys(
        COLUMNS,
        FeatureSpec(lower=0, integer=True, why="hashed n-gram count of a message the sender writes"),
    ),
    source="feature space of hash_features; text edits are not modelled (see the module docstring)",
)


def load_sms_spam(folder: str | os.PathLike) -> TabularData:
    """``folder/SMSSpamCollection`` as hashed n-gram counts; spam rows are the family ``spam``.

    Exact repeats of a (label, text) pair are dropped, the first kept. Every count column is log1p-scaled:
    counts are heavy-tailed (on the pinned file 97% of word and 82% of character cells are 0, the median
    non-zero cell is 1 and the largest are 18 and 37).
    """
    path = Path(folder) / SMS_SPAM_FILE
    labels, texts = read_sms_spam(path)
    # dict keys keep the first occurrence of each pair, in file order.
    unique = list(dict.fromkeys(zip(labels, texts, strict=True)))
    spam = np.array([label == "spam" for label, _ in unique])
    logger.info(
        "%s: %d lines, %d exact (label, text) repeats dropped, %d messages kept, %d spam",
        path,
        len(labels),
        len(labels) - len(unique),
        len(unique),
        int(spam.sum()),
    )
    frame = hash_features([text for _, text in unique])
    return TabularData(
        frame=frame,
        family=np.where(spam, SPAM_FAMILY, BENIGN).astype(object),
        log_scaled=list(frame.columns),
        name="sms-spam",
        schema=THREAT_SCHEMA,
    )
