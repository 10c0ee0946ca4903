"""Train + evaluate on the real NSL-KDD files with a tiny budget (skipped when ../shared/data is absent)."""

from __future__ import annotations

import json

import pytest

from metashield.cli import main
from metashield.config import load_config
from metashield.workflow import evaluate_run, train_run

TINY = [
    "train.steps=40",
    "train.eval_every=20",
    "train.val_episodes=3",
    "train.pretrain_steps=300",
    "train.tasks_per_batch=8",
    "model.hidden=[64, 64]",
    "meta.inner_steps=3",
    "meta.inner_lr=0.05",
    "evaluate.shots=[5]",
    "evaluate.episodes_per_family=4",
    "evaluate.tune_episodes=2",
    "evaluate.finetune_lrs=[0.01, 0.1]",
    "evaluate.finetune_steps=[10]",
    "evaluate.scratch_lrs=[0.1]",
    "evaluate.scratch_steps=[50]",
    "evaluate.logreg_cs=[0.1, 10.0]",
    "device=cpu",
]


@pytest.fixture(scope="module")
def nsl_run(nsl_kdd_mirror, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        for key, value in nsl_kdd_mirror.items():
            mp.setenv(key, value)
        run = tmp_path_factory.mktemp("nsl") / "run"
        config = load_config(None, ["data.dataset=nsl-kdd", *TINY])
        train_run(config, run, progress=False)
        yield run, evaluate_run(run)


def test_every_method_beats_chance_on_held_out_nsl_kdd_families(nsl_run):
    _, report = nsl_run
    entry = report["shots"]["5"]
    assert len(report["protocol"]["test_families"]) == 10
    for method, s in entry["summary"].items():
        assert s["auc"]["mean"] > 0.7, (method, s["auc"])
        assert s["auc"]["family_ci"][0] > 0.5, (method, s["auc"])
        assert s["tpr@5%fpr"]["mean"] > 0.3, (method, s["tpr@5%fpr"])
    # 2,000 benign queries per episode: 1% FPR is 20 false positives, as the protocol requires.
    assert entry["benign_queries_per_episode"] == 2000


def test_cli_evaluate_prints_the_tables_and_writes_metrics(nsl_run, nsl_kdd_mirror, monkeypatch, capsys):
    run, _ = nsl_run
    for key, value in nsl_kdd_mirror.items():
        monkeypatch.setenv(key, value)
    assert main(["evaluate", "--run", str(run), "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "5-shot detection of held-out families" in out and "per-family tpr@1%fpr" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["protocol"]["episodes_per_family"] == 2
    fams = metrics["shots"]["5"]["summary"]["maml"]["per_family"]
    assert set(fams) == set(metrics["protocol"]["test_families"])
