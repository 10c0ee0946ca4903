"""Turn raw feature rows into a float32 matrix, with every statistic taken from the rows it was fitted on."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from metashield.data.types import TabularData

_FORMAT_VERSION = 1


class FeaturePipeline:
    """One-hot categorical columns, log1p heavy-tailed ones, drop constant columns, standardise the rest.

    ``fit`` takes statistics (category vocabularies, constant columns, means, standard deviations) from
    the rows it is given and nothing else, so passing only meta-training rows keeps the test families
    out of the preprocessing. The fitted state round-trips through ``to_dict``/``from_dict`` exactly.

    clip: standardised values are clipped to [-clip, clip] (None: no clipping). A feature that is nearly
    constant in the fit rows (a flag set once in 40,000 rows) otherwise maps a novel family's rows to
    hundreds of standard deviations, which dominates any model and makes gradient steps on those rows blow up.
    """

    def __init__(self, clip: float | None = 10.0) -> None:
        if clip is not None and not clip > 0:
            raise ValueError(f"clip must be positive or None, got {clip}")
        self.clip = clip
        self._columns: list[str] = []
        self._vocab: dict[str, list[str]] = {}
        self._log_scaled: list[str] = []
        self._encoded_names: list[str] = []
        self._keep: np.ndarray = np.zeros(0, dtype=bool)
        self._mean: np.ndarray = np.zeros(0)
        self._std: np.ndarray = np.zeros(0)
        self._fitted = False

    @property
    def input_columns(self) -> list[str]:
        """The raw columns ``transform`` needs, in the order they are encoded."""
        return list(self._columns)

    @property
    def feature_names(self) -> list[str]:
        """Output column names: a numeric column keeps its name, a one-hot column is ``column=value``."""
        self._require_fitted()
        return [name for name, keep in zip(self._encoded_names, self._keep, strict=True) if keep]

    @property
    def n_features(self) -> int:
        """Width D of the matrix ``transform`` returns."""
        self._require_fitted()
        return int(self._keep.sum())

    def feature_sources(self) -> list[tuple[str, str | None, bool, float, float]]:
        """For each output column: (raw column, category value or None, log1p-scaled, mean, std).

        Output = clip((encode(raw) - mean) / std), where encode is the one-hot indicator of the category,
        log1p for log-scaled columns and the identity otherwise; this is what maps raw-unit constraints to
        the standardised space.
        """
        self._require_fitted()
        sources: list[tuple[str, str | None]] = []
        for column in self._columns:
            if column in self._vocab:
                sources += [(column, value) for value in self._vocab[column]]
            else:
                sources.append((column, None))
        kept = [src for src, keep in zip(sources, self._keep, strict=True) if keep]
        return [
            (column, value, value is None and column in self._log_scaled, float(mean), float(std))
            for (column, value), mean, std in zip(kept, self._mean, self._std, strict=True)
        ]

    def _require_fitted(self) -> None:
        if not self._fitted:
            raise RuntimeError("FeaturePipeline is not fitted: call fit(data) or from_dict(d) first")

    def _names(self) -> list[str]:
        """Names of every encoded column, before constant ones are dropped."""
        names: list[str] = []
        for column in self._columns:
            if column in self._vocab:
                names += [f"{column}={value}" for value in self._vocab[column]]
            else:
                names.append(column)
        return names

    def _encode(self, frame: pd.DataFrame) -> np.ndarray:
        """float64 matrix of every encoded (one-hot, log1p) column, before dropping and scaling."""
        missing = [column for column in self._columns if column not in frame.columns]
        if missing:
            raise ValueError(
                f"frame lacks columns {missing} that the pipeline was fitted on; "
                f"expected columns {self._columns}, got {list(frame.columns)}"
            )
        blocks: list[np.ndarray] = []
        for column in self._columns:
            if column in self._vocab:
                # Codes index the fitted vocabulary; an unseen category gets -1 and so an all-zero row.
                codes = pd.Index(self._vocab[column]).get_indexer(frame[column].astype(str))
                block = np.zeros((len(frame), len(self._vocab[column])), dtype=np.float64)
                seen = codes >= 0
                block[np.flatnonzero(seen), codes[seen]] = 1.0
                blocks.append(block)
                continue
            if not (
                pd.api.types.is_numeric_dtype(frame[column]) or pd.api.types.is_bool_dtype(frame[column])
            ):
                raise TypeError(f"column {column!r} has dtype {frame[column].dtype}, expected numbers")
            values = frame[column].to_numpy(dtype=np.float64, na_value=np.nan)
            if not np.isfinite(values).all():
                row = int(np.flatnonzero(~np.isfinite(values))[0])
                raise ValueError(f"column {column!r}, row {row}: {values[row]}, expected a finite number")
            if column in self._log_scaled:
                if (values < 0).any():
                    row = int(np.flatnonzero(values < 0)[0])
                    raise ValueError(
                        f"column {column!r}, row {row}: {values[row]} is negative, expected >= 0 "
                        "for a log1p-scaled column"
                    )
                values = np.log1p(values)
            blocks.append(values[:, None])
        return np.concatenate(blocks, axis=1) if blocks else np.zeros((len(frame), 0))

    def fit(self, data: TabularData) -> FeaturePipeline:
        """Fit on the rows of ``data`` only (pass the meta-training rows); returns ``self``."""
        frame = data.frame
        if len(frame) == 0:
            raise ValueError(f"{data.name}: cannot fit a FeaturePipeline on 0 rows")
        self._columns = [str(column) for column in frame.columns]
        self._log_scaled = [column for column in data.log_scaled if column not in data.categorical]
        # Vocabulary in sorted order so the same rows always give the same columns, whatever their order.
        self._vocab = {
            column: sorted(frame[column].astype(str).unique().tolist()) for column in data.categorical
        }
        self._encoded_names = self._names()
        encoded = self._encode(frame)
        # max == min, not std == 0: the mean of equal float values can round, leaving a tiny non-zero std.
        self._keep = encoded.max(axis=0) > encoded.min(axis=0)
        kept = encoded[:, self._keep]
        self._mean = kept.mean(axis=0)
        self._std = kept.std(axis=0)
        self._fitted = True
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """float32 [n, D] matrix of the rows of ``frame``, scaled with the fitted statistics."""
        self._require_fitted()
        encoded = self._encode(frame)[:, self._keep]
        z = (encoded - self._mean) / self._std
        if self.clip is not None:
            np.clip(z, -self.clip, self.clip, out=z)
        return z.astype(np.float32)

    def fit_transform(self, data: TabularData) -> np.ndarray:
        """``fit(data)`` then ``transform(data.frame)``."""
        return self.fit(data).transform(data.frame)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fitted state (plain lists, strings and floats) for checkpoint metadata."""
        self._require_fitted()
        return {
            "version": _FORMAT_VERSION,
            "columns": list(self._columns),
            "vocab": {column: list(values) for column, values in self._vocab.items()},
            "log_scaled": list(self._log_scaled),
            "keep": [bool(flag) for flag in self._keep],
            # Python floats serialise to JSON with repr, which round-trips float64 exactly.
            "mean": [float(value) for value in self._mean],
            "std": [float(value) for value in self._std],
            "clip": self.clip,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> FeaturePipeline:
        """The pipeline ``to_dict`` described; its ``transform`` gives bit-identical output."""
        if state.get("version") != _FORMAT_VERSION:
            raise ValueError(
                f"FeaturePipeline state has version {state.get('version')!r}, expected {_FORMAT_VERSION}"
            )
        pipeline = cls(clip=state["clip"])
        pipeline._columns = list(state["columns"])
        pipeline._vocab = {column: list(values) for column, values in state["vocab"].items()}
        pipeline._log_scaled = list(state["log_scaled"])
        pipeline._encoded_names = pipeline._names()
        pipeline._keep = np.asarray(state["keep"], dtype=bool)
        pipeline._mean = np.asarray(state["mean"], dtype=np.float64)
        pipeline._std = np.asarray(state["std"], dtype=np.float64)
        if not (
            len(pipeline._keep) == len(pipeline._encoded_names)
            and len(pipeline._mean) == len(pipeline._std) == int(pipeline._keep.sum())
        ):
            raise ValueError(
                f"inconsistent FeaturePipeline state: {len(pipeline._encoded_names)} encoded columns, "
                f"{len(pipeline._keep)} keep flags, {len(pipeline._mean)} means, {len(pipeline._std)} stds"
            )
        pipeline._fitted = True
        return pipeline
