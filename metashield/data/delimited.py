"""Strict reading of comma-separated data files for the dataset loaders.

Every error names the file, the 1-based line and the column: a bad field deep in a 500,000-line file is
otherwise found only by bisecting it. The files these loaders read have no quoting, so commas always separate
fields and a line's field count is its comma count plus one.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Collection, Sequence

import numpy as np
import pandas as pd

from metashield.data.errors import DataFormatError


def split_first_line(raw: bytes, source: str) -> tuple[bytes, bytes]:
    """Line 1 of ``raw`` (without its line ending) and the bytes after it; raises on an empty file."""
    if not raw.strip():
        raise DataFormatError(f"{source}: empty file")
    first, _, rest = raw.partition(b"\n")
    return first.rstrip(b"\r"), rest


def check_header(line: bytes, expected: Sequence[str], source: str) -> None:
    """Raise unless the header ``line`` names exactly the ``expected`` columns, in order."""
    found = line.decode(errors="replace").split(",")
    if found == list(expected):
        return
    if len(found) != len(expected):
        raise DataFormatError(
            f"{source}: line 1 (header) has {len(found)} columns, expected {len(expected)}: {list(expected)}"
        )
    position = next(i for i, (got, want) in enumerate(zip(found, expected, strict=True)) if got != want)
    raise DataFormatError(
        f"{source}: line 1 (header), column {position + 1}: {found[position]!r}, "
        f"expected {expected[position]!r}"
    )


def _first(mask: np.ndarray) -> int:
    """Index of the first true entry of ``mask``."""
    return int(np.flatnonzero(mask)[0])


def _lines(body: bytes, n_fields: int, source: str, first_line: int) -> list[bytes]:
    """The lines of ``body``, each checked to hold ``n_fields`` fields; ``first_line`` numbers the first."""
    lines = body.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the newline ending the last line
    if not lines:
        after = f"after line {first_line - 1}" if first_line > 1 else "(empty file)"
        raise DataFormatError(f"{source}: no data lines {after}")
    # Count fields ourselves: pandas would pad a short line with NaN and silently skip blank lines, which
    # would shift every later line number.
    for number, line in enumerate(lines, start=first_line):
        if not line.strip():
            raise DataFormatError(f"{source}: line {number} is empty, expected {n_fields} fields")
        fields = line.count(b",") + 1
        if fields != n_fields:
            raise DataFormatError(f"{source}: line {number} has {fields} fields, expected {n_fields}")
    return lines


def _numeric(frame: pd.DataFrame, column: str, lines: list[bytes], source: str, first_line: int) -> pd.Series:
    """``frame[column]`` as numbers; raises naming the first cell that is not a finite number."""
    series = frame[column]
    if not pd.api.types.is_numeric_dtype(series):
        series = pd.to_numeric(series, errors="coerce")
    bad = ~np.isfinite(series.to_numpy(dtype=np.float64, na_value=np.nan))
    if bad.any():
        row = _first(bad)
        # Quote the text as written: the parsed value would show "nan" for an empty field or for "12kB".
        text = lines[row].rstrip(b"\r").split(b",")[frame.columns.get_loc(column)].decode(errors="replace")
        found = f"{text!r} is not a finite number" if text.strip() else "empty, expected a number"
        raise DataFormatError(f"{source}: line {first_line + row}, column {column!r}: {found}")
    return series


def parse_rows(
    body: bytes, columns: Sequence[str], text_columns: Collection[str], source: str, first_line: int
) -> pd.DataFrame:
    """Frame of ``columns`` from the data lines in ``body``, the first of them being line ``first_line``.

    ``text_columns`` stay strings and must not be empty; every other column must hold finite numbers.
    """
    lines = _lines(body, len(columns), source, first_line)
    frame = pd.read_csv(
        io.BytesIO(body),
        header=None,
        names=list(columns),
        dtype=dict.fromkeys(text_columns, str),
        keep_default_na=False,
        na_values=[""],
        quoting=csv.QUOTE_NONE,
    )
    for column in columns:
        if column not in text_columns:
            frame[column] = _numeric(frame, column, lines, source, first_line)
            continue
        empty = frame[column].isna().to_numpy()
        if empty.any():
            row = _first(empty)
            raise DataFormatError(
                f"{source}: line {first_line + row}, column {column!r}: empty, expected a name"
            )
    return frame


def check_allowed(
    frame: pd.DataFrame, column: str, allowed: Collection[object], source: str, first_line: int
) -> None:
    """Raise naming the first row whose ``column`` is not in ``allowed`` (row 0 is line ``first_line``)."""
    ok = frame[column].isin(list(allowed)).to_numpy()
    if not ok.all():
        row = _first(~ok)
        value = frame[column].to_numpy(dtype=object)[row]
        raise DataFormatError(
            f"{source}: line {first_line + row}, column {column!r}: {value!r} is not one of {list(allowed)}"
        )
