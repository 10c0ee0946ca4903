"""KDD'99 and UNSW-NB15 loaders: hand-made files in the published layouts, and the real KDD'99 10% file."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import pandas as pd
import pytest
from conftest import shared_data
from loader_checks import assert_pipeline_works, assert_within_schema

from metashield.data import BENIGN, TabularData
from metashield.data.archive import ArchiveError
from metashield.data.download import fetch
from metashield.data.errors import DataFormatError
from metashield.data.kdd99 import COLUMNS as KDD_COLUMNS
from metashield.data.kdd99 import KDD99_GZ, load_kdd99
from metashield.data.nsl_kdd import FEATURES as KDD_FEATURES
from metashield.data.nsl_kdd import THREAT_SCHEMA as NSL_SCHEMA
from metashield.data.registry import get_spec
from metashield.data.unsw_nb15 import COLUMNS as UNSW_COLUMNS
from metashield.data.unsw_nb15 import FEATURES as UNSW_FEATURES
from metashield.data.unsw_nb15 import load_unsw_nb15

# KDD'99 ---------------------------------------------------------------------------------------------

KDD_LINE = (
    "0,tcp,http,SF,181,5450,0,0,0,0,0,1,0,0,0,0,0,0,0,0,0,0,8,8,0.00,0.00,0.00,0.00,1.00,0.00,0.00,9,9,"
    "1.00,0.00,0.11,0.00,0.00,0.00,0.00,0.00,normal."
)
"""The first line of kddcup.data_10_percent."""


def kdd_row(label: str = "normal.", **changes: object) -> str:
    """One KDD'99 line: the base line with ``label`` and any feature changed."""
    fields = dict(zip(KDD_COLUMNS, KDD_LINE.split(","), strict=True))
    fields.update({column: str(value) for column, value in changes.items()}, label=label)
    return ",".join(fields[column] for column in KDD_COLUMNS)


def write_kdd(folder: Path, lines: list[str]) -> Path:
    """``folder/kddcup.data_10_percent.gz`` holding ``lines``; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / KDD99_GZ, "wb") as fh:
        fh.write("".join(line + "\n" for line in lines).encode())
    return folder


def test_kdd99_removes_exact_duplicates_and_maps_labels(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines = [
        kdd_row(),
        kdd_row("smurf.", protocol_type="icmp", service="ecr_i"),
        kdd_row("smurf.", protocol_type="icmp", service="ecr_i"),
        kdd_row(),
        kdd_row("neptune.", flag="S0"),
        kdd_row("smurf.", protocol_type="icmp", service="ecr_i", src_bytes=520),
        # Same features as line 1 but another label: not a duplicate.
        kdd_row("back."),
    ]
    with caplog.at_level(logging.INFO, logger="metashield.data.kdd99"):
        data = load_kdd99(write_kdd(tmp_path, lines))
    assert "7 rows" in caplog.text and "2 exact duplicates removed, 5 rows left" in caplog.text
    assert data.name == "kdd99"
    assert list(data.frame.columns) == list(KDD_FEATURES)
    assert data.family.tolist() == [BENIGN, "smurf", "neptune", "smurf", "back"]
    assert data.category == {"smurf": "DoS", "neptune": "DoS", "back": "DoS"}
    assert data.frame["src_bytes"].tolist() == [181, 181, 181, 520, 181]
    assert data.schema is NSL_SCHEMA
    assert not data.frame.assign(label=data.family).duplicated().any()


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        ([kdd_row(), kdd_row("smurf")], "line 2, column 'label': 'smurf' lacks the trailing dot"),
        ([kdd_row(), kdd_row(), kdd_row("teardrops.")], "line 3, column 'label': 'teardrops.' is not"),
        ([kdd_row(), kdd_row() + ",extra"], "line 2 has 43 fields, expected 42"),
        (
            [kdd_row("smurf.", src_bytes="1e3kB")],
            "line 1, column 'src_bytes': '1e3kB' is not a finite number",
        ),
        ([kdd_row(), kdd_row(serror_rate="")], "line 2, column 'serror_rate': empty, expected a number"),
        ([kdd_row(service="")], "line 1, column 'service': empty, expected a name"),
        ([kdd_row(), ""], "line 2 is empty, expected 42 fields"),
        ([], r"no data lines \(empty file\)"),
    ],
)
def test_kdd99_malformed_names_file_line_and_column(tmp_path: Path, lines: list[str], match: str) -> None:
    folder = write_kdd(tmp_path / "kdd", lines)
    with pytest.raises(DataFormatError, match=f"^{folder / KDD99_GZ}: {match}"):
        load_kdd99(folder)


def test_kdd99_refuses_a_decompression_bomb_and_corrupt_gzip(tmp_path: Path) -> None:
    folder = write_kdd(tmp_path / "big", [kdd_row()] * 100)
    size = len(kdd_row()) + 1
    assert len(load_kdd99(folder, max_bytes=100 * size).frame) == 1
    with pytest.raises(ArchiveError, match=f"decompresses to more than the limit of {100 * size - 1} bytes"):
        load_kdd99(folder, max_bytes=100 * size - 1)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / KDD99_GZ).write_bytes(kdd_row().encode())
    with pytest.raises(ArchiveError, match="corrupt gzip file"):
        load_kdd99(corrupt)


# The 23 labels of the 494,021 lines, counted after de-duplication with
# `zcat kddcup.data_10_percent.gz | sort -u | awk -F, '{print $42}' | sort | uniq -c`.
KDD_UNIQUE_COUNTS = {
    BENIGN: 87_832, "neptune": 51_820, "back": 968, "teardrop": 918, "satan": 906, "warezclient": 893,
    "ipsweep": 651, "smurf": 641, "portsweep": 416, "pod": 206, "nmap": 158, "guess_passwd": 53,
    "buffer_overflow": 30, "warezmaster": 20, "land": 19, "imap": 12, "rootkit": 10, "loadmodule": 9,
    "ftp_write": 8, "multihop": 7, "phf": 4, "perl": 3, "spy": 2,
}  # fmt: skip


@pytest.fixture(scope="module")
def real_kdd99() -> TabularData:
    return load_kdd99(shared_data() / get_spec("kdd99").folder)


@pytest.mark.shared_data
def test_real_kdd99_counts_after_deduplication(real_kdd99: TabularData) -> None:
    # 494,021 lines (SOURCE.md) less 348,435 exact duplicates.
    assert len(real_kdd99.frame) == 145_586
    assert pd.Series(real_kdd99.family).value_counts().to_dict() == KDD_UNIQUE_COUNTS
    assert set(real_kdd99.category.values()) == {"DoS", "Probe", "R2L", "U2R"}
    assert not real_kdd99.frame.assign(label=real_kdd99.family).duplicated().any()


@pytest.mark.shared_data
def test_real_kdd99_rows_fit_the_schema_and_the_pipeline(real_kdd99: TabularData) -> None:
    assert_within_schema(real_kdd99)
    assert_pipeline_works(real_kdd99)


@pytest.mark.shared_data
def test_kdd99_registry_entry_fetches_the_shared_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fetch copies the file from the local mirror and checks its size and sha256 against the entry.
    monkeypatch.setenv("METASHIELD_MIRROR", f"file://{shared_data()}")
    folder = fetch("kdd99", home=tmp_path, progress=False)
    assert folder.name == "kddcup99-10percent" and (folder / KDD99_GZ).is_file()
    assert get_spec("kdd99").loader is load_kdd99


# UNSW-NB15 ------------------------------------------------------------------------------------------

UNSW_LINE = (
    "1,0.121478,tcp,-,FIN,6,4,258,172,74.08749,252,254,14158.94238,8495.365234,0,0,24.2956,8.375,30.177547,"
    "11.830604,255,621772692,2202533631,255,0,0,0,43,43,0,0,1,0,1,1,1,1,0,0,0,1,1,0,Normal,0"
)
"""A normal TCP flow in the layout of UNSW_NB15_training-set.csv."""

UNSW_HEADER = ",".join(UNSW_COLUMNS)


def unsw_row(attack_cat: str = "Normal", label: int | None = None, **changes: object) -> str:
    """One partition line: the base flow with ``attack_cat`` (label 0 iff Normal unless given) and changes."""
    fields = dict(zip(UNSW_COLUMNS, UNSW_LINE.split(","), strict=True))
    fields.update({column: str(value) for column, value in changes.items()}, attack_cat=attack_cat)
    fields["label"] = str(int(attack_cat.strip() != "Normal") if label is None else label)
    return ",".join(fields[column] for column in UNSW_COLUMNS)


def write_unsw(path: Path, lines: list[str], *, bom: bool = False, newline: str = "\n") -> Path:
    """A partition CSV at ``path``: header, then ``lines``."""
    text = newline.join([UNSW_HEADER, *lines]) + newline
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def test_unsw_partitions_concatenate_with_bom_and_padded_categories(tmp_path: Path) -> None:
    train = write_unsw(
        tmp_path / "UNSW_NB15_training-set.csv",
        [unsw_row(), unsw_row(" Fuzzers ", proto="udp", service="dns", state="INT"), unsw_row("Exploits")],
        bom=True,
        newline="\r\n",
    )
    test = write_unsw(tmp_path / "UNSW_NB15_testing-set.csv", [unsw_row("Worms", id=7, sbytes=1_000_000)])
    data = load_unsw_nb15([train, test])
    assert data.name == "unsw-nb15"
    assert list(data.frame.columns) == list(UNSW_FEATURES) and "id" not in data.frame.columns
    assert data.family.tolist() == [BENIGN, "Fuzzers", "Exploits", "Worms"]
    assert data.frame["proto"].tolist() == ["tcp", "udp", "tcp", "tcp"]
    assert data.frame["sbytes"].tolist() == [258, 258, 258, 1_000_000]
    assert data.categorical == ["proto", "service", "state"]
    assert set(data.schema.immutable) == {"proto", "service", "dttl", "dwin", "dtcpb"}
    assert_within_schema(data)
    assert_pipeline_works(data)
    assert load_unsw_nb15(str(test)).family.tolist() == ["Worms"]


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (
            [unsw_row(), unsw_row("Exploits", label=0)],
            "line 3, column 'label': 0 contradicts attack_cat 'Exploits'",
        ),
        ([unsw_row("Normal", label=1)], "line 2, column 'label': 1 contradicts attack_cat 'Normal'"),
        ([unsw_row(label=2)], r"line 2, column 'label': 2 is not one of \[0, 1\]"),
        ([unsw_row("Botnet")], "line 2, column 'attack_cat': 'Botnet' is not one of"),
        ([unsw_row(), unsw_row().rsplit(",", 1)[0]], "line 3 has 44 fields, expected 45"),
        (
            [unsw_row(), unsw_row(), unsw_row(sbytes="12kB")],
            "line 4, column 'sbytes': '12kB' is not a finite",
        ),
        ([unsw_row(attack_cat="")], "line 2, column 'attack_cat': empty, expected a name"),
        ([], "no data lines after line 1"),
    ],
)
def test_unsw_malformed_names_file_line_and_column(tmp_path: Path, lines: list[str], match: str) -> None:
    path = write_unsw(tmp_path / "UNSW_NB15_training-set.csv", lines)
    with pytest.raises(DataFormatError, match=f"^{path}: {match}"):
        load_unsw_nb15(path)


def test_unsw_wrong_header_names_the_column(tmp_path: Path) -> None:
    path = tmp_path / "UNSW_NB15_testing-set.csv"
    path.write_text(UNSW_HEADER.replace("sbytes", "sbyte") + "\n" + unsw_row() + "\n")
    with pytest.raises(DataFormatError, match=r"line 1 \(header\), column 8: 'sbyte', expected 'sbytes'"):
        load_unsw_nb15(path)
    path.write_text(UNSW_HEADER.removesuffix(",label") + "\n")
    with pytest.raises(DataFormatError, match=r"line 1 \(header\) has 44 columns, expected 45"):
        load_unsw_nb15(path)
    with pytest.raises(ValueError, match="at least one partition file"):
        load_unsw_nb15([])


def test_unsw_is_not_a_registered_download() -> None:
    with pytest.raises(KeyError, match="unknown dataset 'unsw-nb15'"):
        get_spec("unsw-nb15")
    assert UNSW_COLUMNS[1:-2] == UNSW_FEATURES and len(UNSW_FEATURES) == 42
