"""Credit-card fraud loader: hand-made gzip parts (valid and malformed) in the published format, and the real
subsample when the shared data is present."""

from __future__ import annotations

import gzip
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import shared_data
from loader_checks import assert_pipeline_works, assert_within_schema

from metashield.data import BENIGN, TabularData
from metashield.data import creditcard as cc
from metashield.data.archive import ArchiveError
from metashield.data.download import fetch, file_sha256
from metashield.data.errors import DataFormatError
from metashield.data.registry import get_spec

HEADER = ",".join(f'"{name}"' for name in cc.COLUMNS)
"""The published header: every name in double quotes."""


def line(row_id: int, time: float, amount: str = "2.69", label: str = '"0"', v3: str = "0.5") -> str:
    """One data line: V3 as given, the other components 0.1, the label quoted as in the original file."""
    components = ["0.1"] * 28
    components[2] = v3
    return ",".join([str(row_id), f"{time:g}", *components, amount, label])


def write_parts(folder: Path, parts: list[list[str]]) -> Path:
    """The three gzip parts of ``parts`` (data lines each) under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in zip(cc.PARTS, parts, strict=True):
        (folder / name).write_bytes(gzip.compress("".join(f"{x}\n" for x in [HEADER, *lines]).encode()))
    return folder


VALID = [
    [line(1, 0), line(4, 0, label='"1"')],
    [line(10, 5, amount="0"), line(11, 7)],
    [line(20, 7, amount="12910.93"), line(30, 172771, label='"1"')],
]


def test_parts_concatenate_with_time_as_timestamp_and_fraud_family(tmp_path: Path) -> None:
    data = cc.load_creditcard(write_parts(tmp_path / "cc", VALID))
    assert list(data.frame.columns) == list(cc.FEATURES)
    assert "Time" not in data.frame.columns and "row_id" not in data.frame.columns
    assert data.family.tolist() == [BENIGN, cc.FRAUD, BENIGN, BENIGN, BENIGN, cc.FRAUD]
    assert data.timestamp.tolist() == [0, 0, 5, 7, 7, 172771]
    assert data.frame["Amount"].tolist() == [2.69, 2.69, 0.0, 2.69, 12910.93, 2.69]
    assert data.log_scaled == ["Amount"] and data.schema.immutable == []


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (line(3, 2, v3="abc"), r"line 4, column 'V3': 'abc' is not a finite number"),
        (line(3, 2, v3=""), r"line 4, column 'V3': empty, expected a number"),
        (line(3, 2, amount="-1"), r"line 4, column 'Amount': '-1' is a negative amount"),
        (line(3, 2, label='"2"'), r"line 4, column 'Class': '2' is not 1 \(fraud\) or 0 \(legitimate\)"),
        (line(2, 2), r"line 4, column 'row_id': '2' is not above the previous row's row_id"),
        (line(3, -1), r"line 4, column 'Time': '-1' is negative or earlier than the previous row's Time"),
        (line(3, 2).replace(",", ",1,", 1), r"line 4 has 33 fields, expected 32"),
    ],
)
def test_malformed_line_names_part_line_and_column(tmp_path: Path, bad: str, match: str) -> None:
    first = [line(1, 0), line(2, 1), bad]
    folder = write_parts(tmp_path / "cc", [first, *VALID[1:]])
    with pytest.raises(DataFormatError, match=re.escape(str(folder / cc.PARTS[0])) + ": " + match):
        cc.load_creditcard(folder)


def test_time_going_back_within_a_part_is_an_error(tmp_path: Path) -> None:
    folder = write_parts(tmp_path / "cc", [[line(1, 5), line(2, 4)], *VALID[1:]])
    with pytest.raises(DataFormatError, match=r"line 3, column 'Time': '4' is negative or earlier"):
        cc.load_creditcard(folder)


@pytest.mark.parametrize(
    ("second", "match"),
    [
        ([line(4, 9), line(11, 9)], r"line 2, column 'row_id': 4 does not follow 4"),
        ([line(10, 0), line(11, 9)], r"line 2, column 'Time': 0 does not follow 5"),
    ],
)
def test_a_part_must_continue_the_previous_one(tmp_path: Path, second: list[str], match: str) -> None:
    first = [line(1, 0), line(4, 5)]
    folder = write_parts(tmp_path / "cc", [first, second, [line(20, 9)]])
    with pytest.raises(DataFormatError, match=re.escape(str(folder / cc.PARTS[1])) + ": " + match):
        cc.load_creditcard(folder)


def test_header_must_be_exact(tmp_path: Path) -> None:
    folder = write_parts(tmp_path / "cc", VALID)
    text = HEADER.replace('"Amount"', '"amount"') + "\n" + line(1, 0) + "\n"
    (folder / cc.PARTS[2]).write_bytes(gzip.compress(text.encode()))
    with pytest.raises(DataFormatError, match=r"line 1 \(header\), column 31: 'amount', expected 'Amount'"):
        cc.load_creditcard(folder)


def test_gzip_bombs_and_corrupt_parts_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_parts(tmp_path / "cc", VALID)
    monkeypatch.setattr(cc, "MAX_PART_BYTES", 100)
    with pytest.raises(
        ArchiveError, match=r"part1of3.csv.gz: decompresses to more than the limit of 100 bytes"
    ):
        cc.load_creditcard(folder)
    monkeypatch.undo()
    (folder / cc.PARTS[1]).write_bytes(b"not gzip at all")
    with pytest.raises(ArchiveError, match=r"part2of3.csv.gz: corrupt gzip file"):
        cc.load_creditcard(folder)
    (folder / cc.PARTS[1]).write_bytes(gzip.compress(b"x" * 1000)[:-20])
    with pytest.raises(ArchiveError, match=r"part2of3.csv.gz: corrupt gzip file"):
        cc.load_creditcard(folder)


def test_base_rate_is_the_original_fraud_rate() -> None:
    assert cc.BASE_RATE == 492 / 284807
    assert f"{cc.BASE_RATE:.3%}" == "0.173%"


@pytest.fixture(scope="module")
def real() -> tuple[Path, TabularData]:
    folder = shared_data() / "creditcard-fraud"
    return folder, cc.load_creditcard(folder)


def test_real_counts_match_an_independent_parse_and_source_md(real: tuple[Path, TabularData]) -> None:
    folder, data = real
    parts = [pd.read_csv(folder / name) for name in cc.PARTS]
    assert [(len(p), int(p["Class"].sum())) for p in parts] == [(13498, 217), (13497, 154), (13497, 121)]
    raw = pd.concat(parts, ignore_index=True)
    assert data.frame.shape == (40492, 29)
    assert Counter(data.family.tolist()) == {BENIGN: 40000, cc.FRAUD: 492}
    assert np.array_equal(data.family == cc.FRAUD, raw["Class"].to_numpy() == 1)
    assert np.allclose(data.frame.to_numpy(), raw[list(cc.FEATURES)].to_numpy(), rtol=1e-15, atol=0)
    assert (
        raw["row_id"].iloc[[0, 13497, 13498, 26994, 26995, -1]] == [1, 94341, 94343, 190350, 190351, 284790]
    ).all()


def test_real_timestamps_are_seconds_over_two_days_in_order(real: tuple[Path, TabularData]) -> None:
    _, data = real
    assert data.timestamp.dtype == np.float64
    assert data.timestamp[0] == 0 and (np.diff(data.timestamp) >= 0).all()
    assert 47 * 3600 < data.timestamp[-1] <= 48 * 3600


def test_real_schema_pipeline_and_registry(real: tuple[Path, TabularData]) -> None:
    folder, data = real
    assert data.frame["Amount"].min() == 0 and data.schema.spec("Amount").lower == 0
    assert all("abstraction" in data.schema.spec(c).why for c in cc.PCA_COLUMNS)
    assert_within_schema(data)
    assert_pipeline_works(data)
    spec = get_spec("creditcard")
    assert spec.loader is cc.load_creditcard and spec.folder == folder.name
    assert [f.name for f in spec.files] == list(cc.PARTS)
    for remote in spec.files:
        assert (folder / remote.name).stat().st_size == remote.size
        assert file_sha256(folder / remote.name) == remote.sha256


def test_real_parts_come_from_a_mirror_only(data_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No public URL serves the subsample, so the registry lists none and the mirror must provide it.
    data = shared_data()
    assert get_spec("creditcard").urls == {}
    monkeypatch.setenv("METASHIELD_MIRROR", f"file://{data}")
    folder = fetch("creditcard", progress=False)
    assert folder == data_home / "creditcard-fraud"
    assert sorted(p.name for p in folder.iterdir()) == sorted(cc.PARTS)
