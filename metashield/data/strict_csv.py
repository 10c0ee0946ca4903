"""Read quoted CSV files whose format is documented exactly: cells kept as text, each row's line known.

The Drebin, ClaMP, TUANDROMD and credit-card loaders check every cell against their documented format and
report the first problem with the file, the 1-based line and the column, so a corrupt or foreign file fails
loudly instead of being parsed into plausible numbers. Unlike ``metashield.data.delimited`` this reader
honours CSV quoting: Drebin's header quotes API signatures that contain commas, and the credit-card files
quote every header name.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from metashield.data.errors import DataFormatError


@dataclass(frozen=True)
class CsvCells:
    """The cells of a CSV file as text.

    source: the file's name in messages. header: the names on line 1, as written (duplicates kept).
    cells: object array [n, len(header)] of ``str``. lines: int64 [n], the 1-based line where each row
    starts (the header is line 1). blank_lines: how many blank lines were skipped.
    """

    source: str
    header: tuple[str, ...]
    cells: np.ndarray
    lines: np.ndarray
    blank_lines: int

    def error(self, row: int, column: int, problem: str) -> DataFormatError:
        """A ``DataFormatError`` for data row ``row`` (0-based) and header position ``column``."""
        return DataFormatError(
            f"{self.source}: line {int(self.lines[row])}, column {self.header[column]!r}: {problem}"
        )


def read_csv_cells(raw: bytes, source: str, *, skip_blank_lines: bool = False) -> CsvCells:
    """Split ``raw`` (UTF-8 CSV text with a header line) into cells, checking every row's field count.

    skip_blank_lines: skip empty lines (some published files contain them) instead of raising.
    Raises ``DataFormatError`` naming ``source`` and the line for text that is not UTF-8, an empty header,
    no data rows, a row whose field count differs from the header's, a blank line (unless skipped) or
    broken quoting.
    """
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{source}: not UTF-8 text (byte {exc.start}): {exc.reason}") from exc
    # The csv module rather than pandas: pandas pads short rows with NaN and skips blank lines silently,
    # and only the csv module knows where each record starts when a quoted field spans lines.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records: list[list[str]] = []
    starts: list[int] = []
    blank = 0
    try:
        header = next(reader, None)
        if not header or not any(name.strip() for name in header):
            raise DataFormatError(f"{source}: line 1 is empty, expected a header naming the columns")
        previous_end = reader.line_num
        for record in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if not record:
                if not skip_blank_lines:
                    raise DataFormatError(f"{source}: line {start} is empty, expected {len(header)} fields")
                blank += 1
                continue
            if len(record) != len(header):
                raise DataFormatError(
                    f"{source}: line {start} has {len(record)} fields, expected {len(header)} like the header"
                )
            records.append(record)
            starts.append(start)
    except csv.Error as exc:
        raise DataFormatError(f"{source}: line {reader.line_num}: not valid CSV: {exc}") from exc
    if not records:
        raise DataFormatError(f"{source}: no data rows after the header")
    # dtype=object: a fixed-width str array would give every cell the width of the longest one.
    cells = np.empty((len(records), len(header)), dtype=object)
    cells[:] = records
    return CsvCells(source, tuple(header), cells, np.asarray(starts, dtype=np.int64), blank)


def binary_block(table: CsvCells, columns: Sequence[int]) -> np.ndarray:
    """int8 [n, len(columns)] of the header positions ``columns``, each cell exactly ``0`` or ``1``."""
    columns = list(columns)
    block = table.cells[:, columns]
    ones = block == "1"
    valid = ones | (block == "0")
    if not valid.all():
        row, position = (int(i) for i in np.argwhere(~valid)[0])
        raise table.error(row, columns[position], f"{block[row, position]!r} is not 0 or 1")
    return ones.astype(np.int8)


def number_column(table: CsvCells, column: int, *, integer: bool = False) -> np.ndarray:
    """float64 [n] of header position ``column``: every cell a finite number (a whole one if ``integer``)."""
    text = table.cells[:, column]
    values = pd.to_numeric(pd.Series(text, dtype=object), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        found = f"{text[row]!r} is not a finite number" if text[row].strip() else "empty, expected a number"
        raise table.error(row, column, found)
    if integer:
        fractional = values != np.floor(values)
        if fractional.any():
            row = int(np.flatnonzero(fractional)[0])
            raise table.error(row, column, f"{text[row]!r} is not a whole number")
    return values


def check_header(table: CsvCells, expected: Sequence[str]) -> None:
    """Raise unless line 1 names exactly the ``expected`` columns, in order; the message names the first
    difference."""
    if table.header == tuple(expected):
        return
    if len(table.header) != len(expected):
        raise DataFormatError(
            f"{table.source}: line 1 (header) has {len(table.header)} columns, expected {len(expected)}"
        )
    position = next(
        i for i, (got, want) in enumerate(zip(table.header, expected, strict=True)) if got != want
    )
    raise DataFormatError(
        f"{table.source}: line 1 (header), column {position + 1}: {table.header[position]!r}, "
        f"expected {expected[position]!r}"
    )


def check_names(header: Sequence[str], source: str) -> None:
    """Every header name non-empty and unique; raises ``DataFormatError`` naming the first offender."""
    for position, name in enumerate(header, start=1):
        if not name.strip():
            raise DataFormatError(f"{source}: line 1 (header), column {position}: empty column name")
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise DataFormatError(f"{source}: line 1 (header) names columns {duplicated} more than once")
