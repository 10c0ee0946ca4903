"""The ``edits`` budget: whole raw edits chosen greedily, for binary and count features."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from metashield.attacks import compile_constraints, get_attack, perturb
from metashield.attacks.engine import classifier_objective
from metashield.data import FeaturePipeline, TabularData
from metashield.data.schema import FeatureSpec, ThreatSchema

DT = torch.float64


def schema_and_rows() -> tuple[FeaturePipeline, ThreatSchema, pd.DataFrame]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "flag_a": rng.integers(0, 2, 300),
            "flag_b": rng.integers(0, 2, 300),
            "flag_c": rng.integers(0, 2, 300),
            "words": rng.integers(0, 40, 300),
            "rate": rng.random(300),
            "frozen": rng.integers(0, 2, 300),
            "proto": rng.choice(["tcp", "udp"], 300),
        }
    )
    binary = FeatureSpec(lower=0, upper=1, integer=True)
    schema = ThreatSchema(
        features={
            "flag_a": binary,
            "flag_b": binary,
            "flag_c": binary,
            "words": FeatureSpec(lower=0, integer=True),
            "rate": FeatureSpec(lower=0.0, upper=1.0),
            "frozen": FeatureSpec(lower=0, upper=1, integer=True, mutable=False, why="needed to run"),
        }
    )
    data = TabularData(
        frame=frame,
        family=np.array(["benign"] * 300, dtype=object),
        categorical=["proto"],
        log_scaled=["words"],
        schema=schema,
    )
    return FeaturePipeline().fit(data), schema, frame


def encode(pipeline: FeaturePipeline, rows: list[dict]) -> torch.Tensor:
    return torch.tensor(pipeline.transform(pd.DataFrame(rows)), dtype=DT)


ROW = {"flag_a": 0, "flag_b": 1, "flag_c": 0, "words": 3, "rate": 0.4, "frozen": 1, "proto": "tcp"}


def test_one_edit_of_each_feature_in_raw_units() -> None:
    pipeline, schema, _ = schema_and_rows()
    c = compile_constraints(pipeline, schema).to(torch.zeros((), dtype=DT))
    x = encode(pipeline, [ROW])
    up, down = c.edit_steps(x)
    names = pipeline.feature_names

    def raw_of(z: torch.Tensor) -> dict[str, float]:
        return dict(zip(names, z[0].tolist(), strict=True))

    expect_up = encode(pipeline, [{**ROW, "flag_a": 1}])[0, names.index("flag_a")]
    assert raw_of(up)["flag_a"] == pytest.approx(float(expect_up))
    assert raw_of(up)["flag_b"] == raw_of(x)["flag_b"]  # already 1: no edit above the bound
    assert raw_of(down)["flag_a"] == raw_of(x)["flag_a"]  # already 0
    for count, side in ((4, up), (2, down)):  # log1p-scaled count: one word more or fewer, exactly
        want = encode(pipeline, [{**ROW, "words": count}])[0, names.index("words")]
        # pipeline.transform is float32: the reference is exact to float32 precision only.
        assert float(side[0, names.index("words")]) == pytest.approx(float(want), abs=1e-6)
    i = names.index("rate")
    assert float(up[0, i]) == pytest.approx(float(c.upper[i])) and float(down[0, i]) == pytest.approx(
        float(c.lower[i])
    )
    for frozen in ("frozen", "proto=tcp", "proto=udp"):  # immutable, and one-hot columns
        j = names.index(frozen)
        assert float(up[0, j]) == float(x[0, j]) == float(down[0, j])
    assert c.edit_count(up, x).tolist() == [4.0]  # flag_a, flag_c, one word, rate; flag_b is at its bound


def test_greedy_edits_find_the_best_k_edits_of_a_linear_detector() -> None:
    """With a linear score over flags and a continuous column, single edits do not interact, so the best k
    edits are the k most helpful ones: greedy must reach the minimum that brute force over every sequence
    of k edits finds."""
    pipeline, schema, _ = schema_and_rows()
    c = compile_constraints(pipeline, schema)
    names = pipeline.feature_names
    torch.manual_seed(0)
    # float32, the dtype of real inputs: the pipeline's z-values sit exactly on the integer grid only there.
    w = torch.randn(len(names))
    w[names.index("words")] = 0.0  # successive log-count edits differ in size: greedy is not exact there

    def forward(x: torch.Tensor) -> torch.Tensor:
        s = x @ w
        return torch.stack([torch.zeros_like(s), s], dim=-1)  # margin of class 1 = x·w

    x0 = encode(pipeline, [ROW, {**ROW, "flag_b": 0, "words": 0, "rate": 0.9}]).float()
    y = torch.ones(2, dtype=torch.int64)
    cd = c.to(x0)
    for k in (1, 2):
        x, score = perturb(
            classifier_objective(forward, y, "margin"), x0, attack=get_attack("edits"), eps=k, constraints=c
        )
        assert c.violations(x, x0, k, "edits") == dict.fromkeys(
            ["ball", "immutable", "bounds", "direction", "integer", "one_hot"], 0
        )
        assert (c.edit_count(x, x0) <= k).all()
        for r in range(2):
            best = float(x0[r] @ w)
            for seq in itertools.product(range(2 * len(names)), repeat=k):
                z = x0[r : r + 1].clone()
                for e in seq:
                    up, down = cd.edit_steps(z)
                    z = z.clone()
                    z[0, e % len(names)] = (up if e < len(names) else down)[0, e % len(names)]
                best = min(best, float(z[0] @ w))
            assert float(score[r]) == pytest.approx(best, abs=1e-5), (k, r)


def test_budget_is_counted_and_must_be_whole() -> None:
    pipeline, schema, _ = schema_and_rows()
    c = compile_constraints(pipeline, schema)
    x0 = encode(pipeline, [ROW])
    three = encode(pipeline, [{**ROW, "flag_a": 1, "words": 5}])  # one flag + two words
    assert c.edit_count(three, x0).tolist() == [3.0]
    assert (
        c.violations(three, x0, 2, "edits")["ball"] == 1 and c.violations(three, x0, 3, "edits")["ball"] == 0
    )
    with pytest.raises(ValueError, match="whole number of edits"):
        perturb(lambda x: (x.sum(-1), x.sum(-1)), x0, attack=get_attack("edits"), eps=1.5, constraints=c)
    with pytest.raises(ValueError, match="does not fit attack"):
        get_attack("pgd", norm="edits")
    with pytest.raises(ValueError, match="go together"):
        get_attack("edits").__class__("bad", rule="greedy", norm="linf")


def test_no_edit_is_spent_when_none_helps() -> None:
    pipeline, schema, _ = schema_and_rows()
    c = compile_constraints(pipeline, schema)
    x0 = encode(pipeline, [ROW])

    def flat(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zero = 0.0 * x.sum(-1)  # depends on x, so it has a gradient, and that gradient is 0
        return zero, zero

    x, _ = perturb(flat, x0, attack=get_attack("edits"), eps=5, constraints=c)
    assert torch.equal(x, x0)
