"""UNSW-NB15 end to end on a file in the published partition layout (the real file is not distributed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_data_more_intrusion import unsw_row, write_unsw
from test_workflow import TINY

from metashield.config import load_config
from metashield.data.unsw_nb15 import FAMILIES
from metashield.workflow import evaluate_run, load_run, train_run


def _partition(path, seed: int = 0):
    """400 normal flows and 40 of each of the 9 attack categories, each category with its own traffic."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(400):
        lines.append(
            unsw_row(
                "Normal",
                dur=round(float(rng.exponential(1.0)), 6),
                sbytes=int(rng.integers(100, 2000)),
                dbytes=int(rng.integers(100, 5000)),
                sttl=int(rng.choice([31, 62])),
            )
        )
    for i, family in enumerate(FAMILIES):
        for _ in range(40):
            lines.append(
                unsw_row(
                    family,
                    dur=round(float(rng.exponential(0.01 * (i + 1))), 6),
                    sbytes=int(rng.integers(10_000 * (i + 1), 10_000 * (i + 2))),
                    dbytes=int(rng.integers(0, 50)),
                    sttl=254,
                )
            )
    return write_unsw(path, lines, bom=True)


@pytest.fixture(scope="module")
def unsw_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("unsw")
    csv = _partition(root / "UNSW_NB15_training-set.csv")
    config = load_config(
        None,
        [
            "data.dataset=unsw-nb15",
            f"data.paths=['{csv}']",
            "split.n_val=2",
            "split.n_test=3",
            *[o for o in TINY if not o.startswith("split.")],
        ],
    )
    run = root / "run"
    train_run(config, run, progress=False)
    return csv, run, evaluate_run(run)


def test_unsw_run_detects_held_out_categories_and_records_the_file(unsw_run):
    csv, run, report = unsw_run
    assert len(report["protocol"]["test_families"]) == 3
    for method, s in report["shots"]["5"]["summary"].items():
        assert s["auc"]["mean"] > 0.7, (method, s["auc"])
    recorded = json.loads((run / "run.json").read_text())["data_files"]
    assert list(recorded) == [str(csv.resolve())] and len(next(iter(recorded.values()))) == 64


def test_a_changed_data_file_is_refused(unsw_run, tmp_path):
    csv, run, _ = unsw_run
    original = csv.read_bytes()
    try:
        csv.write_bytes(original + unsw_row("Normal").encode() + b"\n")
        with pytest.raises(ValueError, match="changed since the run was trained"):
            load_run(run)
    finally:
        csv.write_bytes(original)
    load_run(run)


def test_unsw_without_paths_says_what_to_set():
    with pytest.raises(ValueError, match="set data.paths"):
        load_config(None, ["data.dataset=unsw-nb15"])
