"""Load any labelled CSV or Parquet table as ``TabularData``, with every bad row reported or dropped."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from metashield.data.types import BENIGN, TabularData

logger = logging.getLogger(__name__)

CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")


class BadRowError(ValueError):
    """A row of a table is malformed.

    path: the file; line: 1-based line of a CSV file (the header is line 1) or 1-based data row of a
    Parquet file; column: the offending column (None when the whole row is wrong); expected: what should
    have been there.
    """

    def __init__(self, message: str, *, path: Path, line: int, column: str | None, expected: str) -> None:
        super().__init__(message)
        self.path = path
        self.line = line
        self.column = column
        self.expected = expected


def _read_csv(path: Path, on_bad_rows: str) -> tuple[pd.DataFrame, np.ndarray, int]:
    """Cells of ``path`` as strings, the 1-based line where each row starts, and the count of dropped rows.

    Rows whose field count differs from the header's raise ``BadRowError`` or, with ``on_bad_rows="drop"``,
    are dropped. The csv module does the counting because pandas pads short rows with NaN and may turn an
    extra field into an index, and it knows the line numbers even when quoted fields span several lines.
    """
    starts: list[int] = []
    wrong_count = 0
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header:
                raise BadRowError(
                    f"{path}: line 1: empty, expected a header line naming the columns",
                    path=path,
                    line=1,
                    column=None,
                    expected="a header line",
                )
            duplicated = sorted({name for name in header if header.count(name) > 1})
            if duplicated:
                raise ValueError(f"{path}: line 1: the header names columns {duplicated} more than once")
            previous_end = reader.line_num
            for record in reader:
                start, previous_end = previous_end + 1, reader.line_num
                if not record:
                    continue  # a blank line, which pandas skips as well
                if len(record) == len(header):
                    starts.append(start)
                    continue
                expected = f"{len(header)} fields like the header"
                if on_bad_rows == "error":
                    raise BadRowError(
                        f"{path}: line {start}: {len(record)} fields, expected {expected}",
                        path=path,
                        line=start,
                        column=None,
                        expected=expected,
                    )
                wrong_count += 1
    except csv.Error as exc:
        raise ValueError(f"{path}: line {reader.line_num}: not valid CSV: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text: {exc}") from exc
    if wrong_count:
        # Re-read keeping only the good records; rare, so the memory of Python lists is acceptable here.
        with open(path, newline="", encoding="utf-8-sig") as fh:
            records = [record for record in csv.reader(fh) if len(record) == len(header)]
        frame = pd.DataFrame(records[1:], columns=header, dtype=str)
    else:
        frame = pd.read_csv(path, header=0, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    if len(frame) != len(starts):
        raise ValueError(
            f"{path}: pandas read {len(frame)} rows where the csv module found {len(starts)}; "
            "the file's quoting is not standard CSV"
        )
    return frame, np.asarray(starts, dtype=np.int64), wrong_count


def _as_numbers(values: pd.Series) -> np.ndarray:
    """``values`` as float64; anything that is not a number becomes NaN."""
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _is_missing(values: pd.Series) -> np.ndarray:
    """True where a cell is null or empty text."""
    missing = values.isna().to_numpy(copy=True)
    if not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)):
        missing |= values.astype(str).str.strip().eq("").to_numpy()
    return missing


def _labels(values: pd.Series) -> np.ndarray:
    """Labels as strings; integral numeric labels lose their ``.0`` so that ``benign_label=0`` matches."""
    if pd.api.types.is_float_dtype(values):
        finite = values.dropna()
        if (finite == np.floor(finite)).all():
            values = values.astype("Int64")
    return values.astype(str).to_numpy(dtype=object)


def _is_benign(labels: np.ndarray, benign_label: str | int) -> np.ndarray:
    """True where a label (``_labels``) is ``benign_label``.

    CSV cells are read as text, so an int ``benign_label`` is also compared as a number: a column written
    as ``0.0``/``1.0`` (e.g. exported from a float column) matches ``benign_label=0`` like Parquet's does.
    """
    benign = labels == str(benign_label)
    if isinstance(benign_label, int) and not isinstance(benign_label, bool):
        numbers = pd.to_numeric(pd.Series(labels, dtype=object), errors="coerce").to_numpy()
        benign |= numbers == benign_label
    return benign


def _check_columns(path: Path, present: list[str], role: str, names: Sequence[str]) -> None:
    unknown = [name for name in names if name not in present]
    if unknown:
        raise ValueError(f"{path}: no column {unknown[0]!r} (given in {role}); columns present: {present}")


def load_tabular(
    path: str | os.PathLike,
    *,
    label_column: str,
    benign_label: str | int,
    drop_columns: Sequence[str] = (),
    categorical_columns: Sequence[str] | None = None,
    log_columns: Sequence[str] = (),
    on_bad_rows: Literal["error", "drop"] = "error",
    name: str | None = None,
) -> TabularData:
    """Read a labelled ``.csv`` (with a header line) or ``.parquet`` table into raw ``TabularData``.

    label_column: the label; rows whose label equals ``benign_label`` get family ``BENIGN``, the others keep
    their label as the family name. drop_columns: columns that are not features (ids, timestamps, ...).
    categorical_columns: columns to one-hot; None detects them: a column is numeric when more than half of
    its non-empty cells parse as numbers, otherwise categorical. Every other feature column must hold finite
    numbers. log_columns: numeric columns to pass through log1p later. Empty categorical cells are kept as the
    category ``""``.
    on_bad_rows: a row with the wrong field count, a non-numeric, empty, NaN or infinite value in a numeric
    column, or no label raises ``BadRowError`` ("error") or is dropped with a logged warning ("drop").
    name: the dataset name in logs and checkpoints (default: the file name without suffix).
    """
    path = Path(path)
    if on_bad_rows not in ("error", "drop"):
        raise ValueError(f"on_bad_rows must be 'error' or 'drop', got {on_bad_rows!r}")
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        raw, starts, dropped = _read_csv(path, on_bad_rows)
        where: Callable[[int], tuple[str, int]] = lambda row: ("line", int(starts[row]))
    elif suffix in PARQUET_SUFFIXES:
        raw, dropped = pd.read_parquet(path), 0
        raw.columns = [str(column) for column in raw.columns]
        where = lambda row: ("row", row + 1)
    else:
        raise ValueError(
            f"{path}: unsupported file type {suffix!r}; expected one of {[*CSV_SUFFIXES, *PARQUET_SUFFIXES]}"
        )

    present = list(raw.columns)
    _check_columns(path, present, "label_column", [label_column])
    _check_columns(path, present, "drop_columns", drop_columns)
    features = [column for column in present if column != label_column and column not in drop_columns]
    if not features:
        raise ValueError(f"{path}: no feature columns left after removing the label and {list(drop_columns)}")
    _check_columns(path, features, "categorical_columns (features only)", categorical_columns or ())
    _check_columns(path, features, "log_columns (features only)", log_columns)

    numbers = {column: _as_numbers(raw[column]) for column in features}
    empty = {column: _is_missing(raw[column]) for column in features}
    if categorical_columns is None:
        categorical = []
        for column in features:
            filled = int((~empty[column]).sum())
            if np.isfinite(numbers[column]).sum() * 2 <= filled:
                categorical.append(column)
        logger.info("%s: detected categorical columns %s", path, categorical)
    else:
        categorical = [column for column in features if column in categorical_columns]
    log_categorical = [column for column in log_columns if column in categorical]
    if log_categorical:
        raise ValueError(f"{path}: log_columns {log_categorical} are categorical, expected numeric columns")

    # First problem of each row, checked in column order with the label first.
    bad = _is_missing(raw[label_column])  # a fresh array, updated in place below
    problem_column = np.where(bad, label_column, None).astype(object)
    for column in features:
        if column in categorical:
            continue
        wrong = ~np.isfinite(numbers[column]) & ~bad
        problem_column[wrong] = column
        bad |= wrong

    n_bad = int(bad.sum())
    if n_bad:
        row = int(np.flatnonzero(bad)[0])
        column = str(problem_column[row])
        if column == label_column:
            expected, found = "a label", "missing label"
        else:
            expected = "a finite number"
            cell = raw[column].iloc[row]
            found = "missing value" if empty[column][row] else f"{cell!r} is not a finite number"
        unit, position = where(row)
        first = f"{path}: {unit} {position}, column {column!r}: {found}, expected {expected}"
        if on_bad_rows == "error":
            more = f" ({n_bad - 1} more bad rows; on_bad_rows='drop' skips them)" if n_bad > 1 else ""
            raise BadRowError(first + more, path=path, line=position, column=column, expected=expected)
        logger.warning("%s: dropped %d bad rows; the first: %s", path, n_bad, first)
    if dropped:
        logger.warning("%s: dropped %d rows with the wrong number of fields", path, dropped)
    keep = ~bad
    if not keep.any():
        raise ValueError(f"{path}: no valid rows left after dropping {n_bad + dropped} bad rows")

    frame = pd.DataFrame(
        {
            column: (
                raw[column].fillna("").astype(str).to_numpy(dtype=object)[keep]
                if column in categorical
                else numbers[column][keep]
            )
            for column in features
        }
    )
    labels = _labels(raw[label_column])[keep]
    family = np.where(_is_benign(labels, benign_label), BENIGN, labels).astype(object)
    if not (family == BENIGN).any():
        logger.warning(
            "%s: no row has benign label %r; labels present include %s",
            path,
            benign_label,
            sorted(set(labels.tolist()))[:10],
        )
    return TabularData(
        frame=frame,
        family=family,
        categorical=categorical,
        log_scaled=list(log_columns),
        name=name if name is not None else path.stem,
    )
