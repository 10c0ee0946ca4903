"""Generic CSV/Parquet loading: column roles, bad rows reported by line and column, or dropped."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metashield.data import BENIGN, BadRowError, load_tabular

HEADER = "id,proto,bytes,rate,label"
GOOD = ["1,tcp,100,0.5,normal", "2,udp,0,0.25,dos", "3,tcp,7,1.0,probe"]


def write_csv(tmp_path: Path, lines: list[str], name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def load(path: Path, **kwargs: object):
    options: dict[str, object] = {"label_column": "label", "benign_label": "normal", "drop_columns": ["id"]}
    options.update(kwargs)
    return load_tabular(path, **options)


def test_csv_roles_and_families(tmp_path: Path) -> None:
    data = load(write_csv(tmp_path, [HEADER, *GOOD]), log_columns=["bytes"])
    assert list(data.frame.columns) == ["proto", "bytes", "rate"]
    assert data.categorical == ["proto"]
    assert data.log_scaled == ["bytes"]
    assert data.family.tolist() == [BENIGN, "dos", "probe"]
    assert data.frame["bytes"].tolist() == [100, 0, 7]
    assert data.frame["proto"].tolist() == ["tcp", "udp", "tcp"]
    assert data.name == "t"


def test_explicit_categorical_columns_override_detection(tmp_path: Path) -> None:
    data = load(write_csv(tmp_path, [HEADER, *GOOD]), drop_columns=(), categorical_columns=["id", "proto"])
    assert data.categorical == ["id", "proto"]
    assert data.frame["id"].tolist() == ["1", "2", "3"]


@pytest.mark.parametrize(
    ("bad_line", "match", "column"),
    [
        ("4,tcp,5,0.5", r"line 3: 4 fields, expected 5 fields like the header", None),
        ("4,tcp,5,0.5,dos,extra", r"line 3: 6 fields, expected 5", None),
        (
            "4,tcp,5kB,0.5,dos",
            r"line 3, column 'bytes': '5kB' is not a finite number, expected a finite number",
            "bytes",
        ),
        ("4,tcp,,0.5,dos", r"line 3, column 'bytes': missing value, expected a finite number", "bytes"),
        ("4,tcp,5,nan,dos", r"line 3, column 'rate': 'nan' is not a finite number", "rate"),
        ("4,tcp,5,-inf,dos", r"line 3, column 'rate': '-inf' is not a finite number", "rate"),
        ("4,tcp,5,0.5,", r"line 3, column 'label': missing label, expected a label", "label"),
    ],
)
def test_bad_rows_name_file_line_and_column(
    tmp_path: Path, bad_line: str, match: str, column: str | None
) -> None:
    path = write_csv(tmp_path, [HEADER, GOOD[0], bad_line, *GOOD[1:]])
    with pytest.raises(BadRowError, match=f"^{path}: {match}") as caught:
        load(path)
    assert (caught.value.path, caught.value.line, caught.value.column) == (path, 3, column)


def test_line_numbers_count_quoted_newlines_and_blank_lines(tmp_path: Path) -> None:
    lines = [HEADER, '1,"tcp\nover two lines",1,0.5,normal', "", "2,tcp,x,0.5,dos", *GOOD]
    with pytest.raises(BadRowError, match=r"line 5, column 'bytes': 'x'"):
        load(write_csv(tmp_path, lines))


def test_error_counts_further_bad_rows(tmp_path: Path) -> None:
    path = write_csv(tmp_path, [HEADER, "1,tcp,x,0.5,dos", "2,tcp,y,0.5,dos", *GOOD])
    with pytest.raises(BadRowError, match=r"line 2, .*\(1 more bad rows; on_bad_rows='drop' skips them\)"):
        load(path)


def test_drop_mode_drops_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = [
        HEADER,
        GOOD[0],
        "9,tcp,5",
        "8,tcp,5kB,0.5,dos",
        GOOD[1],
        "7,tcp,1,inf,dos",
        "6,tcp,1,0.5,",
        GOOD[2],
    ]
    with caplog.at_level(logging.WARNING, logger="metashield.data.tabular"):
        data = load(write_csv(tmp_path, lines), on_bad_rows="drop")
    assert data.family.tolist() == [BENIGN, "dos", "probe"]
    assert data.frame["bytes"].tolist() == [100, 0, 7]
    assert "dropped 3 bad rows; the first: " in caplog.text
    assert "line 4, column 'bytes'" in caplog.text
    assert "dropped 1 rows with the wrong number of fields" in caplog.text


def test_drop_mode_with_nothing_left_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no valid rows left after dropping 2 bad rows"):
        load(
            write_csv(tmp_path, [HEADER, "1,tcp,x,0.5,dos", "2,tcp,1,0.5"]),
            categorical_columns=["proto"],
            on_bad_rows="drop",
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"label_column": "class"}, r"no column 'class' \(given in label_column\); columns present: \['id'"),
        ({"drop_columns": ["id", "time"]}, r"no column 'time' \(given in drop_columns\)"),
        ({"categorical_columns": ["label"]}, r"no column 'label' \(given in categorical_columns"),
        ({"log_columns": ["proto"]}, r"log_columns \['proto'\] are categorical"),
        ({"on_bad_rows": "skip"}, "on_bad_rows must be 'error' or 'drop'"),
    ],
)
def test_bad_arguments_name_the_column(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load(write_csv(tmp_path, [HEADER, *GOOD]), **kwargs)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(BadRowError, match="line 1: empty, expected a header line"):
        load(write_csv(tmp_path, []))
    with pytest.raises(ValueError, match=r"line 1: the header names columns \['a'\] more than once"):
        load(write_csv(tmp_path, ["a,a,label", "1,2,x"]))
    with pytest.raises(ValueError, match=r"unsupported file type '.xlsx'"):
        load(tmp_path / "t.xlsx")
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(b"id,proto,bytes,rate,label\n1,caf\xe9,1,1,x\n")
    with pytest.raises(ValueError, match="latin1.csv: not UTF-8 text"):
        load(latin1)


def test_parquet(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("pyarrow")
    frame = pd.DataFrame(
        {
            "proto": ["tcp", "udp", None, "tcp"],
            "bytes": np.array([1, 2, 3, 4], dtype=np.int64),
            "flag": [True, False, True, False],
            "rate": [0.5, np.nan, 0.1, 0.2],
            "label": [0, 1, 0, 2],
        }
    )
    path = tmp_path / "t.parquet"
    frame.to_parquet(path)
    with pytest.raises(BadRowError, match=r"t.parquet: row 2, column 'rate': missing value") as caught:
        load_tabular(path, label_column="label", benign_label=0)
    assert caught.value.line == 2
    data = load_tabular(path, label_column="label", benign_label=0, on_bad_rows="drop")
    assert data.family.tolist() == [BENIGN, BENIGN, "2"]
    assert data.categorical == ["proto"]
    assert data.frame["proto"].tolist() == ["tcp", "", "tcp"]
    assert data.frame["flag"].tolist() == [1.0, 1.0, 0.0]


def test_float_labels_match_an_integer_benign_label(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("pyarrow")
    path = tmp_path / "t.pq"
    pd.DataFrame({"x": [1.0, 2.0], "Class": [0.0, 1.0]}).to_parquet(path)
    assert load_tabular(path, label_column="Class", benign_label=0).family.tolist() == [BENIGN, "1"]
    with caplog.at_level(logging.WARNING, logger="metashield.data.tabular"):
        load_tabular(path, label_column="Class", benign_label="benign")
    assert "no row has benign label 'benign'; labels present include ['0', '1']" in caplog.text
