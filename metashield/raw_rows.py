"""Raw-unit CSV rows checked against a run's columns and threat schema, for ``adapt`` and ``predict``.

Every cell must be a finite number (a whole one where the schema says integer) inside the schema's documented
bounds, non-negative in log-scaled columns; categories the run never saw are accepted with a warning. Errors
name the file, the line and the column.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from metashield.data import FeaturePipeline
from metashield.data.errors import DataFormatError
from metashield.data.schema import FeatureSpec, ThreatSchema
from metashield.data.strict_csv import CsvCells, check_names, number_column, read_csv_cells

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RawRows:
    """Rows of a CSV file checked against a run's raw columns and threat schema.

    frame: the pipeline's input columns in raw units (numbers as float64, categories as text), [n rows].
    labels: object [n] label cells, or None when the file has no label column.
    lines: int64 [n], the 1-based line where each row starts (the header is line 1).
    sha256: hex digest of the file's bytes, exactly the bytes that were parsed.
    """

    frame: pd.DataFrame
    labels: np.ndarray | None
    lines: np.ndarray
    sha256: str


def schema_to_dict(schema: ThreatSchema) -> dict:
    """JSON-safe form of ``schema`` (per-column bounds, integer flags, justifications)."""
    return {
        "source": schema.source,
        "features": {c: dataclasses.asdict(s) for c, s in schema.features.items()},
    }


def schema_from_dict(state: dict) -> ThreatSchema:
    return ThreatSchema(
        features={c: FeatureSpec(**s) for c, s in state["features"].items()}, source=state["source"]
    )


def _read_table(path: Path) -> tuple[CsvCells, str]:
    """The cells of ``path`` and the sha256 of the very bytes parsed (no second read that could differ)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file, expected a CSV file with a header line")
    raw = path.read_bytes()
    # Blank lines (a trailing one is common) carry no row, so skipping them changes no row's line number.
    table = read_csv_cells(raw, str(path), skip_blank_lines=True)
    check_names(table.header, str(path))
    return table, hashlib.sha256(raw).hexdigest()


def _check_header(table: CsvCells, columns: list[str], label_column: str, label_required: bool) -> None:
    """Raise naming every missing and every unexpected column; an extra column usually means a wrong file."""
    header = set(table.header)
    wanted = [*columns, label_column] if label_required else columns
    missing = [c for c in wanted if c not in header]
    extra = [c for c in table.header if c not in columns and c != label_column]
    problems = []
    if missing:
        problems.append(f"missing columns {missing}")
    if extra:
        problems.append(f"unexpected columns {extra}")
    if not problems:
        return
    label = f"the label column {label_column!r}" + ("" if label_required else " (optional)")
    raise DataFormatError(
        f"{table.source}: line 1 (header): {'; '.join(problems)}; expected the run's raw feature columns "
        f"{columns} and {label}"
    )


def _first_bad(table: CsvCells, position: int, bad: np.ndarray, problem: str) -> None:
    """Raise for the first row where ``bad`` holds, quoting the cell as written."""
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise table.error(row, position, f"{table.cells[row, position]!r} {problem}")


def _numbers(table: CsvCells, position: int, spec: FeatureSpec, log_scaled: bool) -> np.ndarray:
    """float64 [n] of one numeric column: finite, whole where declared, inside the documented bounds."""
    values = number_column(table, position, integer=spec.integer)
    why = f" ({spec.why})" if spec.why else ""
    if spec.lower is not None:
        _first_bad(
            table, position, values < spec.lower, f"is below the documented lower bound {spec.lower:g}{why}"
        )
    if spec.upper is not None:
        _first_bad(
            table, position, values > spec.upper, f"is above the documented upper bound {spec.upper:g}{why}"
        )
    if log_scaled:
        _first_bad(
            table, position, values < 0, "is negative, expected >= 0 (the run log1p-scales this column)"
        )
    return values


def _categories(table: CsvCells, position: int, vocab: list[str]) -> np.ndarray:
    """object [n] of one categorical column; categories the run never saw are allowed but warned about."""
    values = table.cells[:, position]
    unseen = ~pd.Series(values, dtype=object).isin(vocab).to_numpy()
    if unseen.any():
        names = sorted(set(values[unseen].tolist()))
        log.warning(
            "%s: column %r: %d rows hold categories the run never saw (%s; first at line %d); "
            "they are encoded as no known category",
            table.source,
            table.header[position],
            int(unseen.sum()),
            names[:5],
            int(table.lines[np.flatnonzero(unseen)[0]]),
        )
    return values


def _labels(table: CsvCells, position: int) -> np.ndarray:
    labels = table.cells[:, position]
    _first_bad(
        table, position, np.array([not v.strip() for v in labels], dtype=bool), "is empty, expected a label"
    )
    return labels


def read_rows(
    path: str | os.PathLike,
    pipeline: FeaturePipeline,
    schema: ThreatSchema,
    label_column: str,
    *,
    label_required: bool,
) -> RawRows:
    """Read ``path`` strictly; every error names the file, the line, the column and what was expected."""
    table, sha256 = _read_table(Path(path))
    columns = pipeline.input_columns
    if label_column in columns:
        raise ValueError(f"label column {label_column!r} is one of the run's feature columns {columns}")
    _check_header(table, columns, label_column, label_required)
    state = pipeline.to_dict()
    position = {name: i for i, name in enumerate(table.header)}
    frame = pd.DataFrame(
        {
            c: (
                _categories(table, position[c], state["vocab"][c])
                if c in state["vocab"]
                else _numbers(table, position[c], schema.spec(c), c in state["log_scaled"])
            )
            for c in columns
        }
    )
    labels = _labels(table, position[label_column]) if label_column in position else None
    return RawRows(frame, labels, table.lines, sha256)
