"""N-way family classification of held-out families (metashield.classify)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from metashield.classify import ClassifyConfig, classify_run, prepare_families
from metashield.data import TabularData
from metashield.tasks.fixed import make_episodes
from tests.conftest import shared_data

TINY = {
    "device": "cpu",
    "ways": 5,
    "train_shots": 5,
    "eval_shots": [1, 5],
    "queries": 5,
    "n_val": 5,
    "n_test": 5,
    "hidden": [32],
    "meta": {"inner_steps": 2},
    "steps": 60,
    "tasks_per_batch": 4,
    "eval_every": 20,
    "patience": 1,
    "val_episodes": 10,
    "test_episodes": 20,
    "pretrain_steps": 50,
    "finetune_lrs": [0.1],
    "finetune_steps": [20],
    "logreg_cs": [1.0],
}


def gaussian_families(
    n_families: int = 20, per_family: int = 30, dim: int = 10, seed: int = 0
) -> TabularData:
    """One well-separated Gaussian cluster per family in ``dim`` dimensions; no benign rows."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, size=(n_families, dim))
    X = np.concatenate([c + rng.normal(0, 0.5, size=(per_family, dim)) for c in centres])
    family = np.repeat([f"fam{i:02d}" for i in range(n_families)], per_family).astype(object)
    return TabularData(
        frame=pd.DataFrame(X, columns=[f"f{j}" for j in range(dim)]), family=family, name="gauss"
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these models are tiny, and thread hand-offs dominate on a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return classify_run(TINY, tmp_path_factory.mktemp("classify"), data=gaussian_families())


def test_every_method_beats_chance_on_held_out_families(report: dict) -> None:
    for shots in ("1", "5"):
        res = report["results"][shots]
        assert set(res) == {"maml", "metasgd", "protonet", "1-nn", "logreg", "pretrain+finetune"}
        for method, r in res.items():
            # chance is 20%; the clusters are far apart, so every method should be well above it.
            assert r["acc"] > 0.6, (shots, method, r)
            assert r["ci_lo"] <= r["acc"] <= r["ci_hi"]
    assert report["best_meta_learner"] in {"maml", "metasgd", "protonet"}
    assert "5-way 5-shot" in report["table"]


def test_report_is_written_and_splits_are_disjoint(
    report: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    split = report["split"]
    assert not set(split["train"]) & set(split["test"]) and not set(split["val"]) & set(split["test"])
    assert (len(split["val"]), len(split["test"])) == (5, 5)


def test_written_json_matches(tmp_path: Path, report: dict) -> None:
    cfg = {**TINY, "algorithms": ["protonet"], "steps": 20, "pretrain_steps": 0, "eval_shots": [5]}
    rep = classify_run(cfg, tmp_path, data=gaussian_families())
    saved = json.loads((tmp_path / "classify.json").read_text())
    assert saved["results"]["5"]["protonet"]["acc"] == pytest.approx(rep["results"]["5"]["protonet"]["acc"])
    assert "pretrain+finetune" not in saved["results"]["5"]
    # the test episodes depend on the seed only, not on which methods were run
    assert saved["test_episodes_sha256"]["5"] == report["test_episodes_sha256"]["5"]


def test_episodes_are_seeded_and_within_the_test_families() -> None:
    data = gaussian_families()
    prep = prepare_families(data, ClassifyConfig.model_validate(TINY))
    kw = {"ways": 5, "shots": 5, "queries": 5, "n": 30, "seed": [0, 2, 1, 5]}
    a = make_episodes(prep.family, prep.split.test, **kw)
    b = make_episodes(prep.family, prep.split.test, **kw)
    np.testing.assert_array_equal(a.support_idx, b.support_idx)
    np.testing.assert_array_equal(a.query_idx, b.query_idx)
    c = make_episodes(prep.family, prep.split.test, **{**kw, "seed": [1, 2, 1, 5]})
    assert not np.array_equal(a.support_idx, c.support_idx)
    assert set(prep.family[a.query_idx].ravel()) <= set(prep.split.test)
    for e in range(30):
        assert not set(a.support_idx[e]) & set(a.query_idx[e])
        # each label maps to exactly one family within an episode
        for y in range(5):
            assert len(set(prep.family[a.support_idx[e][a.support_y[e] == y]])) == 1
            assert set(prep.family[a.query_idx[e][a.query_y[e] == y]]) == set(
                prep.family[a.support_idx[e][a.support_y[e] == y]]
            )


def test_pipeline_is_fitted_on_meta_train_families_only() -> None:
    data = gaussian_families()
    prep = prepare_families(data, ClassifyConfig.model_validate(TINY))
    train = np.isin(prep.family, prep.split.train)
    np.testing.assert_allclose(prep.X[train].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(prep.X[train].std(axis=0), 1.0, atol=1e-4)
    assert np.abs(prep.X[~train].mean(axis=0)).max() > 0.1  # held-out families did not set the statistics


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="n_val must be >= ways"):
        ClassifyConfig.model_validate({"ways": 5, "n_val": 3})
    with pytest.raises(ValueError, match="n_test must be >= ways"):
        ClassifyConfig.model_validate({"ways": 5, "n_test": 3})
    with pytest.raises(ValueError, match="folds only applies"):
        ClassifyConfig.model_validate({"folds": [0]})
    with pytest.raises(ValueError, match="extra"):
        ClassifyConfig.model_validate({"unknown": 1})


def test_drebin_families_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = shared_data()
    monkeypatch.setenv("METASHIELD_MIRROR", f"file://{data}")
    monkeypatch.setenv("METASHIELD_DATA", os.environ.get("METASHIELD_DATA", str(tmp_path / "cache")))
    cfg = {
        **TINY,
        **{"n_val": 5, "n_test": 8, "queries": 15, "algorithms": ["protonet"], "steps": 10},
        **{"eval_shots": [5], "val_episodes": 5, "test_episodes": 10, "pretrain_steps": 20},
    }
    rep = classify_run({**cfg, "dataset": "drebin-families"}, tmp_path / "run")
    assert rep["input_shape"][0] <= 221 and len(rep["split"]["test"]) == 8
    assert rep["results"]["5"]["protonet"]["acc"] > 0.2


def test_cli_reports_an_invalid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from metashield.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("ways: 5\nn_val: 2\n")
    assert main(["classify", "--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert "n_val must be >= ways" in capsys.readouterr().err
