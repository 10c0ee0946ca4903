"""For every dataset with a threat schema: attacked rows still satisfy it, checked back in raw units."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metashield.attacks import classifier_objective, compile_constraints, get_attack, perturb
from metashield.data import BENIGN, FeaturePipeline, load_dataset
from metashield.models import MLP

DATASETS = ("nsl-kdd", "kdd99", "spambase", "sms-spam", "phishing", "clamp", "tuandromd", "creditcard")


def _raw(pipeline: FeaturePipeline, z: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for j, (column, value, log, mean, std) in enumerate(pipeline.feature_sources()):
        enc = z[:, j].astype(np.float64) * std + mean
        out[f"{column}={value}" if value is not None else column] = np.expm1(enc) if log else enc
    return out


@pytest.mark.parametrize("attack,eps", [("pgd", 3.0), ("edits", 10)])
@pytest.mark.parametrize("name", DATASETS)
def test_attacks_under_the_schema_keep_rows_valid(name, attack, eps, nsl_kdd_mirror, monkeypatch):
    for key, value in nsl_kdd_mirror.items():
        monkeypatch.setenv(key, value)
    data = load_dataset(name)
    rng = np.random.default_rng(0)
    rows = rng.choice(np.flatnonzero(data.family != BENIGN), 300, replace=False)
    pipeline = FeaturePipeline().fit(data.subset(rng.random(len(data.family)) < 0.5))
    constraints = compile_constraints(pipeline, data.schema)
    x0 = torch.tensor(pipeline.transform(data.frame.iloc[rows]))
    torch.manual_seed(0)
    model = MLP(x0.shape[1], (32,), 2)
    y = torch.ones(len(rows), dtype=torch.int64)
    method = get_attack(attack)
    x, _ = perturb(
        classifier_objective(model, y, "margin"), x0, attack=method, eps=eps, constraints=constraints
    )
    assert constraints.violations(x, x0, eps, method.norm) == dict.fromkeys(
        ["ball", "immutable", "bounds", "direction", "integer", "one_hot"], 0
    )
    assert (x - x0).abs().amax() > 0.5, "the attack did not move"
    if attack == "edits":
        assert (constraints.edit_count(x, x0) <= eps).all() and constraints.edit_count(x, x0).max() >= 1
    raw = _raw(pipeline, x.numpy())
    inside = np.abs(x.numpy()) < pipeline.clip - 1e-4
    for j, (column, value, _, _, _) in enumerate(pipeline.feature_sources()):
        spec = data.schema.spec(column)
        key = f"{column}={value}" if value is not None else column
        if not spec.mutable:
            np.testing.assert_array_equal(x[:, j], x0[:, j], err_msg=f"{name}: immutable {column} moved")
            continue
        if value is not None:
            continue
        r = raw[key][inside[:, j]]
        if spec.integer:
            assert (np.abs(r - np.round(r)) <= 1e-3 * np.maximum(np.abs(r), 1)).all(), f"{name}: {column}"
        if spec.lower is not None:
            assert raw[key].min() >= spec.lower - 1e-3 * max(1.0, abs(spec.lower)), f"{name}: {column}"
        if spec.upper is not None and r.size:
            assert r.max() <= spec.upper + 1e-3 * max(1.0, abs(spec.upper)), f"{name}: {column}"
