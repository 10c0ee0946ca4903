"""SMS Spam Collection loader: hand-made files in the published layout, the featuriser, the real file."""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import shared_data
from loader_checks import assert_pipeline_works, assert_within_schema

from metashield.data import BENIGN, TabularData
from metashield.data.download import load_dataset
from metashield.data.errors import DataFormatError
from metashield.data.registry import get_spec
from metashield.data.sms_spam import SMS_SPAM_FILE, hash_features, load_sms_spam, read_sms_spam

QUOTED = 'He said "call me" & left \' '
"""A text with both quote characters and a trailing space, all part of the message."""


def write_sms(folder: Path, raw: bytes) -> Path:
    """``folder/SMSSpamCollection`` holding ``raw``; returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SMS_SPAM_FILE
    path.write_bytes(raw)
    return path


def test_read_keeps_texts_verbatim(tmp_path: Path) -> None:
    path = write_sms(tmp_path, f"ham\t{QUOTED}\nspam\tWIN £100 now!".encode())
    labels, texts = read_sms_spam(path)
    assert labels == ["ham", "spam"]
    assert texts == [QUOTED, "WIN £100 now!"]


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"ham\tok\nspam no tab\n", r"line 2 has 0 TABs, expected 1"),
        (b"ham\tok\nham\tone\ttwo\n", r"line 2 has 2 TABs, expected 1"),
        (b"ham\tok\nham\tok\nSpam\tWIN\n", r"line 3, column 'label': 'Spam' is not one of \['ham', 'spam'\]"),
        (b"", r"empty file"),
        (b"ham\tok\nspam\tbad \xff byte\n", r"line 2: not UTF-8 text"),
        (b"ham\tok\n\nham\tok\n", r"line 2 has 0 TABs"),
        (b"ham\tok\nspam\t\n", r"line 2, column 'text': empty"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path: Path, raw: bytes, match: str) -> None:
    path = write_sms(tmp_path, raw)
    with pytest.raises(DataFormatError, match=re.escape(str(path)) + ": " + match):
        read_sms_spam(path)


def test_hash_features_are_plain_counts() -> None:
    frame = hash_features(["free free", "FREE Free"], n_word=16, n_char=8)
    assert list(frame.columns) == [f"w{i:04d}" for i in range(16)] + [f"c{i:04d}" for i in range(8)]
    words, chars = frame.filter(regex="^w"), frame.filter(regex="^c")
    # 2 unigrams + 1 bigram; 9 characters give 7 + 6 + 5 character 3- to 5-grams.
    assert words.sum(axis=1).tolist() == [3, 3] and chars.sum(axis=1).tolist() == [18, 18]
    assert (frame.iloc[0] == frame.iloc[1]).all(), "lower-casing makes both texts equal"


def test_hash_features_row_depends_on_its_text_only() -> None:
    # The no-leakage property: a row is the same whatever other texts share the batch.
    text = "Ok lar... Joking wif u oni..."
    alone = hash_features([text]).iloc[0]
    batch = hash_features(["Free entry in 2 a wkly comp", text, "U dun say so early hor"])
    assert (batch.iloc[1] == alone).all()
    assert (hash_features([text]).iloc[0] == alone).all()


def test_load_drops_repeated_pairs_and_labels_families(tmp_path: Path) -> None:
    raw = b"ham\thi\nspam\tWIN\nham\thi\nspam\thi\nspam\tWIN\n"
    write_sms(tmp_path, raw)
    data = load_sms_spam(tmp_path)
    assert data.family.tolist() == [BENIGN, "spam", "spam"], "first of each (label, text) pair, in order"
    assert data.log_scaled == list(data.frame.columns) and data.frame.shape == (3, 2048)
    assert data.schema.immutable == []
    assert_within_schema(data)


@pytest.fixture(scope="module")
def real_sms() -> TabularData:
    return load_sms_spam(shared_data() / get_spec("sms-spam").folder)


@pytest.mark.shared_data
def test_real_file_counts_and_duplicates(real_sms: TabularData) -> None:
    path = shared_data() / get_spec("sms-spam").folder / SMS_SPAM_FILE
    raw = path.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == get_spec("sms-spam").files[0].sha256
    assert raw.count(b"\n") == 5_574
    labels, _ = read_sms_spam(path)
    # SOURCE.md and the authors' readme: 4,827 ham and 747 spam.
    assert pd.Series(labels).value_counts().to_dict() == {"ham": 4_827, "spam": 747}
    # An independent count of exact repeats (pandas' own reader; `sort -u | wc -l` also gives 5,171).
    table = pd.read_csv(path, sep="\t", header=None, quoting=csv.QUOTE_NONE, encoding="utf-8")
    assert int(table.duplicated().sum()) == 403
    assert pd.Series(real_sms.family).value_counts().to_dict() == {BENIGN: 4_518, "spam": 653}


@pytest.mark.shared_data
def test_real_rows_inside_schema_and_pipeline_finite(real_sms: TabularData) -> None:
    assert_within_schema(real_sms)
    assert_pipeline_works(real_sms)


@pytest.mark.shared_data
def test_registry_entry_fetches_and_loads_the_shared_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # load_dataset copies the file from the local mirror, checks size and sha256, then runs the loader.
    monkeypatch.setenv("METASHIELD_MIRROR", f"file://{shared_data()}")
    assert len(load_dataset("sms-spam", home=tmp_path, progress=False).frame) == 5_171
    assert get_spec("sms-spam").urls[SMS_SPAM_FILE]
