"""Train + evaluate on the real NSL-KDD files with a tiny budget (skipped when ../shared/data is absent)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from metashield.attacks import compile_constraints
from metashield.cli import main
from metashield.config import load_config
from metashield.robustness import attack_run
from metashield.workflow import evaluate_run, load_run, train_run

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


def test_constrained_attacks_keep_real_nsl_kdd_rows_valid_in_raw_units(nsl_run, nsl_kdd_mirror, monkeypatch):
    run, _ = nsl_run
    for key, value in nsl_kdd_mirror.items():
        monkeypatch.setenv(key, value)
    _, prep, _ = load_run(run)
    c = compile_constraints(prep.pipeline, prep.schema)
    rows = np.random.default_rng(0).choice(len(prep.X), 3000, replace=False)
    x0 = torch.tensor(prep.X[rows])
    gen = torch.Generator().manual_seed(0)
    for norm, eps in [("linf", 0.3), ("linf", 10.0), ("l2", 8.0)]:
        x = c.project(x0 + 6 * torch.randn(x0.shape, generator=gen), x0, eps, norm)
        assert c.violations(x, x0, eps, norm) == dict.fromkeys(
            ["ball", "immutable", "bounds", "direction", "integer", "one_hot"], 0
        )
        changed = set()
        for j, (column, value, log, mean, std) in enumerate(prep.pipeline.feature_sources()):
            enc = x[:, j].double().numpy() * std + mean
            raw = np.expm1(enc) if log else enc
            spec = prep.schema.spec(column)
            if not spec.mutable:
                np.testing.assert_array_equal(x[:, j], x0[:, j], err_msg=column)
                continue
            inside = np.abs(x[:, j].numpy()) < prep.pipeline.clip - 1e-4
            if value is None and spec.integer:
                gap = np.abs(raw - np.round(raw))[inside]
                assert (gap <= 1e-3 * np.maximum(np.abs(raw[inside]), 1)).all(), column
            if value is None and spec.lower is not None:
                assert raw.min() >= spec.lower - 1e-3, column
            if value is None and spec.upper is not None:
                assert raw[inside].max() <= spec.upper * (1 + 1e-5) + 1e-5, column
            if (x[:, j] != x0[:, j]).any():
                changed.add(column)
        if eps >= 10:
            # 37 of the 41 columns are free (3 immutable, num_outbound_cmds is constant); a few rare 0/1
            # flags lie more than 10 z-units from their other value. A schema that froze most columns would
            # make every robustness number vacuous.
            assert len(changed) >= 25, sorted(changed)


def test_cli_attack_ensemble_and_support_on_nsl_kdd(nsl_run, nsl_kdd_mirror, monkeypatch, capsys):
    run, _ = nsl_run
    for key, value in nsl_kdd_mirror.items():
        monkeypatch.setenv(key, value)
    args = ["attack", "--run", str(run), "--episodes", "1", "--methods", "maml,finetune"]
    assert main([*args, "--attack", "ensemble", "--eps", "0.1,1.0"]) == 0
    out = capsys.readouterr().out
    assert "robust TPR@1%FPR" in out and "sanity gradient_free" in out and "per family, clean->robust" in out
    report = json.loads((run / "attack.json").read_text())
    for method, r in report["methods"].items():
        assert sum(r["violations"].values()) == 0, method
        clean, weak, strong = (
            r["clean_tpr@1%fpr"]["mean"],
            r["robust_tpr@1%fpr"]["0.1"]["mean"],
            r["robust_tpr@1%fpr"]["1.0"]["mean"],
        )
        # The worst case over attacks that start at the input can only lower detection, more with more eps.
        assert strong <= weak <= clean, (method, clean, weak, strong)
        assert strong < clean - 0.05, (method, clean, strong)
        large = r["sanity"]["large_eps"]
        assert large["robust_tpr"] < large["clean_tpr"]
        # Per family (one episode each): the clean rate is that episode's TPR, and the families pool to
        # the overall rates.
        assert set(large["per_family"]) == set(report["families"])
        for fam, v in large["per_family"].items():
            assert v["clean_tpr"] == pytest.approx(report["per_episode"][method]["clean"][fam][0], abs=1e-12)
        for key in ("clean_tpr", "robust_tpr"):
            pooled = np.mean([v[key] for v in large["per_family"].values()])
            assert pooled == pytest.approx(large[key], abs=1e-12), key
        # The worst case over the ensemble detects no more than any one of its attacks.
        for e, alone in r["per_attack_tpr@1%fpr"].items():
            assert set(alone) == set(report["attacks"]) and "mimicry" in alone
            assert all(r["robust_tpr@1%fpr"][e]["mean"] <= c["mean"] + 1e-12 for c in alone.values())
    # Paired on the same episodes: the family mean of the per-episode differences, clean and per eps.
    per_episode = report["per_episode"]
    assert set(report["paired"]) == {"clean", "0.1", "1.0"}
    for key, pairs in report["paired"].items():
        maml, finetune = per_episode["maml"][key], per_episode["finetune"][key]
        by_hand = np.mean([np.mean(np.subtract(maml[f], finetune[f])) for f in maml])
        assert pairs["maml - finetune"]["mean"] == pytest.approx(by_hand, abs=1e-12)
    assert "paired TPR@1%FPR maml - finetune, eps=1.0" in out
    assert main([*args[:-2], "--methods", "maml", "--attack", "support", "--eps", "1.0"]) == 0
    support_report = json.loads((run / "attack.json").read_text())
    assert 0 < support_report["attacker_benign"] <= 2000  # rows of the benign validation slice
    support = support_report["methods"]["maml"]["1.0"]
    assert set(support) >= {"clean_tpr@1%fpr", "random_flip_tpr@1%fpr", "attacked_tpr@1%fpr"}
    assert support["clean_tpr@1%fpr"]["mean"] > 0.2
    # The controlled rows, relabelled and perturbed through the inner loop, still obey the NSL-KDD schema.
    assert support["violations"] and sum(support["violations"].values()) == 0
    # The library checks what the CLI's option parsers refuse earlier (tests/test_cli.py).
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        attack_run(run, threat="support", attack="pgd", eps=[1.0], methods=["maml"], episodes=1, fraction=1.5)
    with pytest.raises(ValueError, match="attacker_benign must be >= 0"):
        attack_run(
            run, threat="support", attack="pgd", eps=[1.0], methods=["maml"], episodes=1, attacker_benign=-1
        )
