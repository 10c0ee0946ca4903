"""Checks every dataset loader's output must pass: rows inside the declared threat schema, usable features."""

from __future__ import annotations

import numpy as np

from metashield.data import FeaturePipeline, TabularData


def assert_within_schema(data: TabularData) -> None:
    """Every row of every numeric schema column lies within its bounds, and integer columns are whole."""
    for column, spec in data.schema.features.items():
        if column in data.categorical:
            continue
        values = data.frame[column].to_numpy(dtype=np.float64)
        assert np.isfinite(values).all(), column
        if spec.lower is not None:
            assert values.min() >= spec.lower, f"{column}: {values.min()} < {spec.lower}"
        if spec.upper is not None:
            assert values.max() <= spec.upper, f"{column}: {values.max()} > {spec.upper}"
        if spec.integer:
            assert (values == np.round(values)).all(), f"{column}: non-integer values"


def assert_pipeline_works(data: TabularData) -> np.ndarray:
    """A ``FeaturePipeline`` fitted on all rows gives a finite float32 matrix; returns it."""
    matrix = FeaturePipeline().fit_transform(data)
    assert matrix.dtype == np.float32
    assert matrix.shape[0] == len(data.frame) and matrix.shape[1] > 0
    assert np.isfinite(matrix).all()
    return matrix
