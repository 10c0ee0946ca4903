"""NSL-KDD parsing on a tiny hand-made zip, and the real counts when the shared data is present."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from metashield.data import BENIGN, TabularData, load_nsl_kdd, read_nsl_kdd_file
from metashield.data.nsl_kdd import (
    CATEGORICAL,
    COLUMNS,
    FEATURES,
    LABEL_CATEGORY,
    LOG_SCALED,
    KddFormatError,
    read_kdd_text,
)

SHARED_NSL_KDD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nsl-kdd"

BASE_LINE = (
    "0,tcp,ftp_data,SF,491,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,2,2,0.00,0.00,0.00,0.00,1.00,0.00,0.00,150,25,"
    "0.17,0.03,0.17,0.00,0.00,0.00,0.05,0.00,normal,20"
)
"""The first line of KDDTrain+.txt."""


def row(label: str = "normal", **changes: object) -> str:
    """One KDD line: the base row with ``label`` and any feature changed."""
    fields = BASE_LINE.split(",")
    fields[COLUMNS.index("label")] = label
    for column, value in changes.items():
        fields[COLUMNS.index(column)] = str(value)
    return ",".join(fields)


def make_kdd_zip(folder: Path, parts: dict[str, list[str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "NSL_KDD.zip", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for member, lines in parts.items():
            archive.writestr(member, "".join(line + "\n" for line in lines))
    return folder


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    train = [row(), row(src_bytes=1), row("neptune", flag="S0"), row("neptune", flag="S0"), row("rootkit")]
    # The first test row repeats a train row exactly; the second differs from it only in difficulty.
    test = [
        row(src_bytes=1),
        row("neptune", flag="S0", difficulty=3),
        row("mscan"),
        row("apache2", service="x"),
    ]
    return make_kdd_zip(
        tmp_path / "nsl-kdd",
        {
            "KDDTrain+.txt": train,
            "KDDTest+.txt": test,
            "KDDTrain+_20Percent.txt": train[:2],
            "KDDTest-21.txt": test[2:],
        },
    )


def test_pool_joins_train_and_test_without_duplicates(tiny: Path) -> None:
    data = load_nsl_kdd(tiny)
    assert isinstance(data, TabularData)
    assert data.name == "nsl-kdd"
    assert list(data.frame.columns) == list(FEATURES)
    # 9 rows: train's repeated neptune row, test's copy of a train row and the row differing only in
    # difficulty are duplicates.
    assert data.family.tolist() == [BENIGN, BENIGN, "neptune", "rootkit", "mscan", "apache2"]
    assert data.category == {"neptune": "DoS", "rootkit": "U2R", "mscan": "Probe", "apache2": "DoS"}
    assert data.categorical == list(CATEGORICAL)
    assert data.log_scaled == list(LOG_SCALED)
    assert data.frame["src_bytes"].tolist() == [491, 1, 491, 491, 491, 491]
    assert data.frame["flag"].tolist() == ["SF", "SF", "S0", "SF", "SF", "SF"]
    assert data.frame["dst_host_count"].dtype.kind == "i"
    assert data.frame["same_srv_rate"].dtype.kind == "f"


def test_other_parts_are_read_as_they_are(tiny: Path) -> None:
    data = read_nsl_kdd_file(tiny, "KDDTest-21")
    assert data.family.tolist() == ["mscan", "apache2"]
    assert data.name == "nsl-kdd/KDDTest-21"
    assert len(read_nsl_kdd_file(tiny, "KDDTrain+_20Percent").frame) == 2
    with pytest.raises(ValueError, match="unknown NSL-KDD part 'KDDTest'; parts are"):
        read_nsl_kdd_file(tiny, "KDDTest")


def test_unknown_label_names_file_and_line(tmp_path: Path) -> None:
    folder = make_kdd_zip(tmp_path, {"KDDTrain+.txt": [row(), row("warezclient"), row("normal.")]})
    with pytest.raises(
        KddFormatError, match=r"NSL_KDD.zip\[KDDTrain\+.txt\]: line 3, column 'label': unknown"
    ):
        read_nsl_kdd_file(folder, "KDDTrain+")


def test_missing_member_is_a_clear_error(tmp_path: Path) -> None:
    folder = make_kdd_zip(tmp_path, {"KDDTrain+.txt": [row()]})
    with pytest.raises(ValueError, match=r"no member 'KDDTest\+.txt'"):
        load_nsl_kdd(folder)


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        ([row(), row() + ",extra"], "line 2 has 44 fields, expected 43"),
        ([row(), row().rsplit(",", 1)[0]], "line 2 has 42 fields, expected 43"),
        ([row(), "", row()], "line 2 is empty"),
        ([row(), row(src_bytes="12kB")], "line 2, column 'src_bytes': '12kB' is not a finite number"),
        ([row(duration="")], "line 1, column 'duration': empty, expected a number"),
        ([row(serror_rate="inf")], "line 1, column 'serror_rate': 'inf' is not a finite number"),
        ([row(), row(), row(service="")], "line 3, column 'service': empty, expected a name"),
        ([], "empty file"),
    ],
)
def test_malformed_text_names_file_line_and_column(lines: list[str], match: str) -> None:
    data = "".join(line + "\n" for line in lines).encode()
    with pytest.raises(KddFormatError, match=f"^bad.txt: {match}"):
        read_kdd_text(data, "bad.txt")


def test_reads_text_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "KDDTest-21.txt"
    path.write_text(row() + "\r\n" + row("smurf") + "\r\n")
    frame = read_kdd_text(path)
    assert list(frame.columns) == list(COLUMNS)
    assert frame["label"].tolist() == ["normal", "smurf"]
    assert frame["difficulty"].tolist() == [20, 20]


def test_label_categories_cover_all_39_attack_types() -> None:
    assert len(LABEL_CATEGORY) == 39
    assert set(LABEL_CATEGORY.values()) == {"DoS", "Probe", "R2L", "U2R"}
    for label, category in {
        "mscan": "Probe", "saint": "Probe", "apache2": "DoS", "mailbomb": "DoS", "processtable": "DoS",
        "udpstorm": "DoS", "httptunnel": "U2R", "ps": "U2R", "sqlattack": "U2R", "xterm": "U2R",
        "rootkit": "U2R", "perl": "U2R", "loadmodule": "U2R", "buffer_overflow": "U2R", "snmpguess": "R2L",
        "worm": "R2L", "named": "R2L", "guess_passwd": "R2L", "neptune": "DoS", "satan": "Probe",
    }.items():  # fmt: skip
        assert LABEL_CATEGORY[label] == category


def test_log_scaled_columns_are_numeric_features() -> None:
    assert set(LOG_SCALED) <= set(FEATURES) - set(CATEGORICAL)
    assert len(FEATURES) == 41 and len(set(FEATURES)) == 41


# Real files ------------------------------------------------------------------------------------------

TEST_ONLY = {
    "mscan", "apache2", "processtable", "snmpguess", "saint", "mailbomb", "snmpgetattack", "httptunnel",
    "named", "ps", "sendmail", "xterm", "xlock", "xsnoop", "worm", "sqlattack", "udpstorm",
}  # fmt: skip


@pytest.fixture(scope="module")
def real_folder() -> Path:
    if not (SHARED_NSL_KDD / "NSL_KDD.zip").is_file():
        pytest.skip(
            f"real NSL-KDD not found at {SHARED_NSL_KDD}/NSL_KDD.zip (needs the project's shared data)"
        )
    return SHARED_NSL_KDD


@pytest.fixture(scope="module")
def real_pool(real_folder: Path) -> TabularData:
    return load_nsl_kdd(real_folder)


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("part", "rows", "normal", "labels"),
    [
        ("KDDTrain+", 125_973, 67_343, 23),
        ("KDDTrain+_20Percent", 25_192, 13_449, 22),
        ("KDDTest+", 22_544, 9_711, 38),
        ("KDDTest-21", 11_850, 2_152, 38),
    ],
)
def test_real_file_counts(real_folder: Path, part: str, rows: int, normal: int, labels: int) -> None:
    data = read_nsl_kdd_file(real_folder, part)
    assert len(data.frame) == rows
    assert int((data.family == BENIGN).sum()) == normal
    assert len(set(data.family.tolist())) == labels


@pytest.mark.shared_data
def test_real_pool(real_pool: TabularData) -> None:
    families = set(real_pool.attack_families)
    assert families >= TEST_ONLY
    assert len(families) == 39
    assert set(real_pool.category) == families
    # 125,973 + 22,544 rows less 610 exact duplicates (same 41 features and label).
    assert len(real_pool.frame) == 147_907
    keyed = real_pool.frame.assign(label=real_pool.family)
    assert not keyed.duplicated().any()
    numeric = real_pool.frame.drop(columns=list(CATEGORICAL))
    assert np.isfinite(numeric.to_numpy(dtype=float)).all()
    assert (numeric[list(LOG_SCALED)] >= 0).all().all()
