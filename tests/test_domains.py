"""Every domain config: it loads, agrees with the demo defaults, and prepares a leave-families-out split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from metashield.config import DATASET_DEFAULTS, load_config
from metashield.data import BENIGN
from metashield.experiment import prepare

# Detection configs; drebin_families.yaml configures N-way family classification (tests/test_classify.py).
CLASSIFY_CONFIGS = ("drebin_families", "mal_api")
"""Family-classification configs (``metashield classify``); every other config is a detection config."""
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml") if p.stem not in CLASSIFY_CONFIGS)


@pytest.mark.parametrize("stem", CLASSIFY_CONFIGS)
def test_classify_configs_are_valid_and_name_a_registered_dataset(stem: str):
    from metashield.classify import load_classify_config
    from metashield.data import REGISTRY

    assert load_classify_config(REPO / "configs" / f"{stem}.yaml").dataset in REGISTRY


def test_every_registered_detection_dataset_has_a_config():
    names = {load_config(path).data.dataset for path in CONFIGS}
    assert set(DATASET_DEFAULTS) <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_matches_the_demo_defaults(path: Path):
    config = load_config(path)
    defaults = load_config(None, DATASET_DEFAULTS[config.data.dataset])
    assert config.data.families.kind == defaults.data.families.kind
    assert config.evaluate.ensemble == defaults.evaluate.ensemble
    assert config.evaluate.novelty == defaults.evaluate.novelty
    # NSL-KDD names its meta-val families explicitly (docs/tuning.md); the others draw them.
    if config.data.dataset != "nsl-kdd":
        assert (config.split.n_val, config.split.n_test) == (defaults.split.n_val, defaults.split.n_test)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_prepares_held_out_families_on_the_real_data(path: Path, nsl_kdd_mirror, monkeypatch):
    for key, value in nsl_kdd_mirror.items():
        monkeypatch.setenv(key, value)
    config = load_config(path)
    missing = [p for p in config.data.paths if not p.is_file()]
    if missing:
        pytest.skip(f"{config.data.dataset}: user-supplied files {missing} are not here (not distributed)")
    prep = prepare(config)
    assert prep.split.test and prep.split.val and prep.split.train
    fit = prep.fit_mask()
    assert not np.isin(prep.family[fit], prep.split.test + prep.split.val).any()
    for fam in prep.split.test:
        assert (prep.family == fam).sum() >= config.split.min_rows
    assert np.isfinite(prep.X).all() and (prep.family == BENIGN).any()
