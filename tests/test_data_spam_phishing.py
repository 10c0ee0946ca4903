"""Spambase and Website Phishing loaders: hand-made files in the published layouts, and the real files."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import shared_data
from loader_checks import assert_pipeline_works, assert_within_schema

from metashield.data import BENIGN, TabularData
from metashield.data.archive import ArchiveError
from metashield.data.download import load_dataset
from metashield.data.errors import DataFormatError
from metashield.data.phishing import FEATURES as PHISHING_FEATURES
from metashield.data.phishing import PHISHING_GZ, load_phishing
from metashield.data.registry import get_spec
from metashield.data.spambase import FEATURES as SPAM_FEATURES
from metashield.data.spambase import HEADER, SPAMBASE_DATA, load_spambase

# Spambase -------------------------------------------------------------------------------------------

SPAM_LINE = (
    "0,0.64,0.64,0,0.32,0,0,0,0,0,0,0.64,0,0,0,0.32,0,1.29,1.93,0,0.96,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,"
    "0,0,0,0,0,0,0,0,0,0,0,0,0.778,0,0,3.756,61,278,1"
)
"""The first data line of spambase.data (a spam e-mail)."""

SPAM_COLUMNS = (*SPAM_FEATURES, "spam")


def spam_row(spam: object = 1, **changes: object) -> str:
    """One spambase line: the base e-mail with the label ``spam`` and any column changed."""
    fields = dict(zip(SPAM_COLUMNS, SPAM_LINE.split(","), strict=True))
    fields.update({column: str(value) for column, value in changes.items()}, spam=str(spam))
    return ",".join(fields[column] for column in SPAM_COLUMNS)


def write_spambase(folder: Path, lines: list[str], *, header: bool = True) -> Path:
    """``folder/spambase.data`` with CRLF line endings like the pinned copy; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [",".join(HEADER), *lines] if header else lines
    (folder / SPAMBASE_DATA).write_bytes("".join(line + "\r\n" for line in rows).encode())
    return folder


def test_spambase_with_and_without_the_header_line(tmp_path: Path) -> None:
    lines = [spam_row(), spam_row(0, capital_run_length_total=5, **{"char_freq_[": 2.5})]
    for header in (True, False):
        data = load_spambase(write_spambase(tmp_path / str(header), lines, header=header))
        assert data.name == "spambase"
        assert list(data.frame.columns) == list(SPAM_FEATURES)
        assert data.family.tolist() == ["spam", BENIGN]
        assert data.frame["char_freq_["].tolist() == [0.0, 2.5]
        assert data.frame["capital_run_length_total"].tolist() == [278, 5]
        assert data.log_scaled == [
            "capital_run_length_average",
            "capital_run_length_longest",
            "capital_run_length_total",
        ]
        assert data.schema.immutable == []
        assert_within_schema(data)


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        ([spam_row(), spam_row(2)], r"line 3, column 'spam': 2 is not one of \[0, 1\]"),
        ([spam_row(word_freq_you="1,5")], "line 2 has 59 fields, expected 58"),
        (
            [spam_row(), spam_row(word_freq_free="n/a")],
            "line 3, column 'word_freq_free': 'n/a' is not a finite",
        ),
        ([spam_row(), "", spam_row()], "line 3 is empty, expected 58 fields"),
        ([], r"no data lines after line 1"),
    ],
)
def test_spambase_malformed_names_file_line_and_column(tmp_path: Path, lines: list[str], match: str) -> None:
    folder = write_spambase(tmp_path, lines)
    with pytest.raises(DataFormatError, match=f"^{folder / SPAMBASE_DATA}: {match}"):
        load_spambase(folder)


def test_spambase_header_must_be_the_pinned_one(tmp_path: Path) -> None:
    path = tmp_path / SPAMBASE_DATA
    path.write_text(",".join(SPAM_COLUMNS) + "\n" + spam_row() + "\n")
    with pytest.raises(DataFormatError, match=r"line 1 \(header\), column 51: 'char_freq_\[', expected"):
        load_spambase(tmp_path)


@pytest.fixture(scope="module")
def real_spambase() -> TabularData:
    return load_spambase(shared_data() / get_spec("spambase").folder)


@pytest.mark.shared_data
def test_real_spambase_counts_names_and_schema(real_spambase: TabularData) -> None:
    # spambase.DOCUMENTATION: 4601 instances, 1813 spam, 2788 non-spam (also SOURCE.md and an awk count).
    assert len(real_spambase.frame) == 4_601
    assert pd.Series(real_spambase.family).value_counts().to_dict() == {BENIGN: 2_788, "spam": 1_813}
    names = (shared_data() / "spambase" / "spambase.names").read_text()
    assert list(SPAM_FEATURES) == re.findall(r"^(\S+):\s+continuous\.", names, flags=re.MULTILINE)
    assert_within_schema(real_spambase)
    assert_pipeline_works(real_spambase)


# Website Phishing -----------------------------------------------------------------------------------

PHISHING_HEADER = ",".join((*PHISHING_FEATURES, "is_phishing"))


def write_phishing(folder: Path, lines: list[str], header: str = PHISHING_HEADER) -> Path:
    """``folder/phishing.csv.gz`` holding a header and ``lines``; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / PHISHING_GZ, "wb") as fh:
        fh.write("".join(line + "\n" for line in [header, *lines]).encode())
    return folder


def test_phishing_label_zero_is_the_phishing_family(tmp_path: Path) -> None:
    # The first two lines of river's file: is_phishing 1 is UCI's Result 1, a legitimate site.
    lines = ["0.0,0.0,0.0,0.0,0.0,0.5,1.0,1,1,1", "1.0,0.0,0.5,0.5,0.0,0.5,0.0,1,0,0"]
    data = load_phishing(write_phishing(tmp_path, lines))
    assert data.name == "phishing"
    assert list(data.frame.columns) == list(PHISHING_FEATURES)
    assert data.family.tolist() == [BENIGN, "phishing"]
    assert data.frame["https"].tolist() == [0.0, 0.5]
    assert sorted(data.schema.immutable) == ["age_of_domain", "is_popular"]
    assert data.categorical == [] and data.log_scaled == []
    assert_within_schema(data)


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (["0,0,0,0,0,0.5,1,1,1,1", "0,0,0.3,0,0,0.5,1,1,1,1"], r"line 3, column 'https': 0.3 is not one of"),
        (["0,0,0,0,0,0.5,1,0.5,1,1"], r"line 2, column 'age_of_domain': 0.5 is not one of \[0, 1\]"),
        (["0,0,0,0,0,0.5,1,1,1,-1"], r"line 2, column 'is_phishing': -1 is not one of \[0, 1\]"),
        (["0,0,0,0,0,0.5,1,1,1"], "line 2 has 9 fields, expected 10"),
        (["0,0,0,0,0,0.5,yes,1,1,1"], "line 2, column 'long_url': 'yes' is not a finite number"),
    ],
)
def test_phishing_malformed_names_file_line_and_column(tmp_path: Path, lines: list[str], match: str) -> None:
    folder = write_phishing(tmp_path, lines)
    with pytest.raises(DataFormatError, match=f"^{folder / PHISHING_GZ}: {match}"):
        load_phishing(folder)


def test_phishing_header_bomb_and_corrupt_gzip(tmp_path: Path) -> None:
    folder = write_phishing(
        tmp_path / "renamed", ["0,0,0,0,0,0.5,1,1,1,1"], PHISHING_HEADER.replace("https", "ssl")
    )
    with pytest.raises(DataFormatError, match=r"line 1 \(header\), column 3: 'ssl', expected 'https'"):
        load_phishing(folder)
    big = write_phishing(tmp_path / "big", ["0,0,0,0,0,0.5,1,1,1,1"] * 1000)
    with pytest.raises(ArchiveError, match="decompresses to more than the limit of 1000 bytes"):
        load_phishing(big, max_bytes=1000)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / PHISHING_GZ).write_text(PHISHING_HEADER + "\n")
    with pytest.raises(ArchiveError, match="corrupt gzip file"):
        load_phishing(tmp_path / "plain")


@pytest.fixture(scope="module")
def real_phishing() -> TabularData:
    return load_phishing(shared_data() / get_spec("phishing").folder)


@pytest.mark.shared_data
def test_real_phishing_counts_and_schema(real_phishing: TabularData) -> None:
    # SOURCE.md: is_phishing 0 = 702, 1 = 548; UCI: 702 phishing and 548 legitimate sites.
    assert len(real_phishing.frame) == 1_250
    assert pd.Series(real_phishing.family).value_counts().to_dict() == {"phishing": 702, BENIGN: 548}
    assert_within_schema(real_phishing)
    assert_pipeline_works(real_phishing)


@pytest.mark.shared_data
@pytest.mark.parametrize(("name", "rows"), [("spambase", 4_601), ("phishing", 1_250)])
def test_registry_entries_fetch_and_load_the_shared_files(
    name: str, rows: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # load_dataset copies the files from the local mirror, checks size and sha256, then runs the loader.
    monkeypatch.setenv("METASHIELD_MIRROR", f"file://{shared_data()}")
    assert len(load_dataset(name, home=tmp_path, progress=False).frame) == rows
    assert all(get_spec(name).urls[remote.name] for remote in get_spec(name).files)
