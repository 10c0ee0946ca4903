"""Parsers of the ``metashield`` command's option values: each checks its range, so that a bad value is an
argparse error naming the option at once, before any data is loaded."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from metashield.config import BASELINES


def count(minimum: int) -> Callable[[str], int]:
    """An integer option that must be at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def fraction(text: str) -> float:
    """A share in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value:g}")
    return value


def csv_counts(text: str) -> list[int]:
    """Comma-separated integers >= 1, e.g. shot counts."""
    parts = [v.strip() for v in text.split(",") if v.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return [count(1)(v) for v in parts]


def csv_names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def csv_baselines(text: str) -> list[str]:
    names = csv_names(text)
    unknown = [n for n in names if n not in BASELINES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"baselines must be among {', '.join(BASELINES)}, got {text!r}")
    return names


def csv_floats(text: str) -> list[float]:
    """Comma-separated numbers."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def csv_budgets(text: str) -> list[float]:
    """Comma-separated attack budgets: finite numbers >= 0."""
    values = csv_floats(text)
    bad = [v for v in values if not (math.isfinite(v) and v >= 0)]
    if bad:
        raise argparse.ArgumentTypeError(f"budgets must be finite numbers >= 0, got {text!r}")
    return values
