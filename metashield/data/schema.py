"""What an attacker may change in a dataset's raw columns: the threat model declared next to the loader.

A schema is plain data in RAW units (bytes, seconds, counts, rates), taken from the dataset's documentation,
never from the range a sample happens to show. ``metashield.attacks.constraints`` compiles it, together with a
fitted ``FeaturePipeline``, into projections in the model's standardised feature space.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FeatureSpec:
    """One raw column.

    lower/upper: documented bounds in raw units (None: unbounded on that side).
    integer: the raw value is a whole number (counts, flags, byte volumes).
    mutable: False when a real attacker cannot change the value; ``why`` must then say why.
    increase_only: the attacker may raise the value but never lower it below the sample's own (calls
    inserted into a trace: removing one changes what the program does); ``why`` must then say why.
    why: the justification of the bounds, of immutability or of the one direction.
    """

    lower: float | None = None
    upper: float | None = None
    integer: bool = False
    mutable: bool = True
    increase_only: bool = False
    why: str = ""

    def __post_init__(self) -> None:
        for name in ("lower", "upper"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number or None, got {value}")
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError(f"lower {self.lower} > upper {self.upper}")
        if self.integer:
            for name in ("lower", "upper"):
                value = getattr(self, name)
                if value is not None and value != int(value):
                    raise ValueError(f"integer feature with non-integer {name} bound {value}")
        if not self.mutable and not self.why:
            raise ValueError("an immutable feature needs a justification in `why`")
        if self.increase_only and not self.mutable:
            raise ValueError("increase_only applies to mutable features; an immutable one cannot move at all")
        if self.increase_only and not self.why:
            raise ValueError("an increase-only feature needs a justification in `why`")


@dataclass(frozen=True)
class ThreatSchema:
    """Per-column ``FeatureSpec`` of a dataset; columns not listed are continuous, unbounded and mutable.

    Categorical columns (one-hot encoded by the pipeline) take only ``mutable``: an attack that changes a
    mutable categorical value moves the sample to another valid category, never to a blend of two.
    source: where the ranges come from.
    """

    features: Mapping[str, FeatureSpec] = field(default_factory=dict)
    source: str = ""

    def spec(self, column: str) -> FeatureSpec:
        return self.features.get(column, FeatureSpec())

    @property
    def immutable(self) -> list[str]:
        return [c for c, s in self.features.items() if not s.mutable]

    def check_columns(self, columns: Iterable[str], where: str = "") -> None:
        """Every column the schema names must exist in the data; a typo would silently free a feature."""
        present = set(columns)
        unknown = sorted(set(self.features) - present)
        if unknown:
            raise ValueError(
                f"{where or 'threat schema'}: declares columns {unknown} that the data does not have; "
                f"columns are {sorted(present)}"
            )


UNCONSTRAINED = ThreatSchema(source="no declared threat model: only the epsilon-ball and one-hot validity")
