"""End to end on a synthetic flow file in the generic tabular format (no real data needed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_synthetic_flows
from safetensors.torch import load_file

from metashield.baseline_tuning import baseline_scorer
from metashield.checkpoint import load_checkpoint, versions
from metashield.cli import main
from metashield.config import load_config
from metashield.evaluation.baselines import learner_scorer
from metashield.evaluation.metrics import family_bootstrap_ci
from metashield.evaluation.protocol import mean_metric, run_protocol
from metashield.robustness import attack_run
from metashield.runs import episode_sets, held_out_episode_sets, load_model, load_run
from metashield.workflow import evaluate_run, train_run

TINY = [
    "train.steps=30",
    "train.eval_every=10",
    "train.patience=10",
    "train.val_episodes=3",
    "train.pretrain_steps=100",
    "train.tasks_per_batch=4",
    "model.hidden=[32, 32]",
    "split.n_val=3",
    "split.n_test=4",
    "evaluate.shots=[5]",
    "evaluate.episodes_per_family=4",
    "evaluate.tune_episodes=2",
    "evaluate.benign_queries=200",
    "evaluate.attack_queries=30",
    "device=cpu",
    "meta.inner_lr=0.1",
    "evaluate.finetune_lrs=[0.01, 0.1]",
    "evaluate.finetune_steps=[10]",
    "evaluate.scratch_lrs=[0.1]",
    "evaluate.scratch_steps=[50]",
]


def tabular_overrides(csv: Path) -> list[str]:
    return [
        "data.dataset=tabular",
        f"data.tabular={{path: '{csv}', label_column: label, benign_label: benign, log_columns: [bytes]}}",
    ]


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    csv = write_synthetic_flows(root / "flows.csv")
    config = load_config(None, tabular_overrides(csv) + TINY)
    run = root / "run"
    train_run(config, run, progress=False)
    return run, evaluate_run(run)


def test_every_method_beats_chance_on_held_out_families(synthetic_run):
    _, report = synthetic_run
    summary = report["shots"]["5"]["summary"]
    assert set(summary) == {
        "maml",
        "fomaml",
        "metasgd",
        "reptile",
        "anil",
        "protonet",
        "finetune",
        "scratch",
        "knn",
        "logreg",
        "logreg-replay",
    }
    for method, s in summary.items():
        # Clusters are well separated: a method that mixed up labels or leaked nothing useful scores ~0.5.
        assert s["auc"]["family_ci"][0] > 0.75, (method, s["auc"])
        assert s["tpr@5%fpr"]["mean"] > 0.5, (method, s["tpr@5%fpr"])


def test_report_is_complete_and_selection_uses_meta_val(synthetic_run, tmp_path):
    run, report = synthetic_run
    # run.json records the library versions as the checkpoints do; one written before that still loads.
    saved = json.loads((run / "run.json").read_text())
    assert saved["versions"] == versions()
    del saved["versions"]
    (tmp_path / "run.json").write_text(json.dumps(saved))
    assert load_run(tmp_path)[2] == saved
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["shots"]["5"]["best_meta_learner"] == report["shots"]["5"]["best_meta_learner"]
    entry = report["shots"]["5"]
    assert entry["best_meta_learner"] == max(
        ("maml", "fomaml", "metasgd", "reptile", "anil", "protonet"), key=lambda a: entry["val_tpr@1%fpr"][a]
    )
    assert set(report["protocol"]["test_families"]).isdisjoint(report["protocol"]["val_families"])
    assert entry["benign_queries_per_episode"] == 200
    assert "paired_best_meta_minus_best_baseline" in entry
    assert len(entry["tuned_baselines"]["logreg"]["searched"]) == 7
    assert len(entry["tuned_baselines"]["logreg-replay"]["searched"]) == 7
    # Every candidate's meta-val score is the mean of the per-family scores recorded beside it, on the
    # meta-val families; the choice's bootstrap shares sum to 1 on each side and favour the choice most.
    for method, score in entry["val_tpr@1%fpr"].items():
        per_family = entry["val_per_family"][method]
        assert set(per_family) == set(report["protocol"]["val_families"])
        assert score == pytest.approx(np.mean(list(per_family.values())), abs=1e-12), method
    for side, chosen in (
        ("meta_learners", entry["best_meta_learner"]),
        ("baselines", entry["best_baseline"]),
    ):
        shares = entry["val_choice_stability"][side]
        assert sum(shares.values()) == pytest.approx(1.0) and chosen in shares
        assert shares[chosen] == max(shares.values()), (side, shares)
    assert "chosen in" in report["table"]

    # Every method minus the val-chosen baseline, paired on the same test episodes; maml's by hand.
    best_base = entry["best_baseline"]
    pairs = entry["paired_minus_best_baseline"]["tpr@1%fpr"]
    assert set(pairs) == set(entry["summary"]) - {best_base}
    assert pairs[entry["best_meta_learner"]] == entry["paired_best_meta_minus_best_baseline"]["tpr@1%fpr"]
    assert f"paired TPR@1%FPR minus {best_base}" in report["table"]
    config, prep, meta = load_run(run)
    in_dim, device = int(meta["in_dim"]), torch.device("cpu")
    pretrained = load_model(config, in_dim, run, "pretrained")
    scorers = {
        "maml": learner_scorer(load_model(config, in_dim, run, "maml", "maml")),
        best_base: baseline_scorer(
            best_base, entry["tuned_baselines"][best_base]["params"], config, prep, pretrained, device
        ),
    }
    test_sets = held_out_episode_sets(config, prep, 5, config.evaluate.episodes_per_family, device)
    per_episode = run_protocol(scorers, test_sets, seed=config.seed, base_rate=config.evaluate.base_rate)
    diffs = {
        fam: np.array(
            [a["tpr@1%fpr"] - b["tpr@1%fpr"] for a, b in zip(eps, per_episode[best_base][fam], strict=True)]
        )
        for fam, eps in per_episode["maml"].items()
    }
    assert pairs["maml"]["mean"] == pytest.approx(np.mean([d.mean() for d in diffs.values()]), abs=1e-12)
    assert pairs["maml"]["family_ci"] == list(family_bootstrap_ci(diffs, seed=config.seed)[1:])


def test_train_refuses_a_non_empty_run_directory(synthetic_run, tmp_path):
    run, _ = synthetic_run
    config = load_config(None, TINY)
    with pytest.raises(FileExistsError, match="--resume"):
        train_run(config, run, progress=False)


def test_cli_reports_config_errors_without_traceback(capsys, tmp_path):
    code = main(["train", "--out", str(tmp_path / "r"), "--set", "train.stepz=3"])
    assert code == 2
    assert "train.stepz: unknown key" in capsys.readouterr().err


def _train_cmd(csv: Path, out: Path, *extra: str) -> list[str]:
    sets = [
        a
        for o in tabular_overrides(csv) + TINY + ["train.steps=200", "train.algorithms=[reptile, metasgd]"]
        for a in ("--set", o)
    ]
    return [
        sys.executable,
        "-m",
        "metashield.cli",
        "--threads",
        "1",
        "train",
        "--out",
        str(out),
        "-q",
        *sets,
        *extra,
    ]


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    csv = write_synthetic_flows(tmp_path / "flows.csv")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    full = tmp_path / "full"
    subprocess.run(_train_cmd(csv, full), check=True, env=env, capture_output=True)

    part = tmp_path / "part"
    proc = subprocess.Popen(
        _train_cmd(csv, part), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    # Killed inside the second algorithm: Reptile (plain outer step) is finished and must be kept, Meta-SGD
    # (Adam moments, learned step sizes) must continue from its last state.
    deadline = time.time() + 180
    while time.time() < deadline:
        last = part / "metasgd.last.json"
        if last.is_file() and json.loads(last.read_text())["state"]["step"] >= 50:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed; raise train.steps"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((part / "metasgd.last.json").read_text())["state"]["finished"] is False

    subprocess.run(_train_cmd(csv, part, "--resume"), check=True, env=env, capture_output=True)
    weights = sorted(f.name for f in full.glob("*.safetensors"))
    assert {"reptile.safetensors", "metasgd.safetensors", "pretrained.safetensors"} <= set(weights)
    assert sorted(f.name for f in part.glob("*.safetensors")) == weights
    for name in weights:
        a, b = load_file(str(full / name)), load_file(str(part / name))
        assert a.keys() == b.keys(), name
        for k in a:
            assert (a[k] == b[k]).all(), (name, k)
    for algo in ("reptile", "metasgd"):
        assert (
            json.loads((full / f"{algo}.json").read_text())["step"]
            == json.loads((part / f"{algo}.json").read_text())["step"]
        ), algo


def test_divergence_is_reported_with_the_step_and_what_to_lower(tmp_path, capsys):
    csv = write_synthetic_flows(tmp_path / "flows.csv")
    sets = [
        a
        for o in tabular_overrides(csv) + TINY + ["meta.inner_lr=1e6", "train.algorithms=[reptile]"]
        for a in ("--set", o)
    ]
    assert main(["train", "--out", str(tmp_path / "run"), "-q", *sets]) == 3
    err = capsys.readouterr().err
    assert "reptile: parameters became NaN/inf by step 10" in err and "lower the step sizes" in err


def test_cli_attack_lowers_detection_and_names_unattackable_methods(synthetic_run, capsys):
    run, _ = synthetic_run
    base = ["attack", "--run", str(run), "--episodes", "2", "--methods", "maml,finetune"]
    assert main([*base, "--attack", "pgd", "--eps", "0.3,3.0"]) == 0
    assert "eps in z-units" in capsys.readouterr().out
    report = json.loads((run / "attack.json").read_text())
    assert report["eps_units"].startswith("z-units")
    for method, r in report["methods"].items():
        assert sum(r["violations"].values()) == 0, method
        clean = r["clean_tpr@1%fpr"]["mean"]
        weak, strong = (r["robust_tpr@1%fpr"][e]["mean"] for e in ("0.3", "3.0"))
        assert strong <= weak <= clean and strong < clean - 0.2, (method, clean, weak, strong)
        # A single attack gets the sanity checks too; the gradient-free one needs Square in the ensemble.
        assert set(r["sanity"]) == {"more_steps", "large_eps"} and r["flags"] == [], method
    assert main([*base, "--attack", "pgd", "--eps", "0.3", "--no-sanity", "--out-name", "quick.json"]) == 0
    quick = json.loads((run / "quick.json").read_text())["methods"]
    assert all("sanity" not in r for r in quick.values())
    assert main(["attack", "--run", str(run), "--attack", "support", "--methods", "knn"]) == 2
    assert "scikit-learn's fit on the support set has no gradient" in capsys.readouterr().err
    assert main(["attack", "--run", str(run), "--eps", "-1"]) == 2
    assert "--eps: budgets must be finite numbers >= 0" in capsys.readouterr().err


def test_protonet_is_attacked_after_adaptation_but_not_through_it(synthetic_run, capsys):
    run, _ = synthetic_run
    base = ["attack", "--run", str(run), "--episodes", "2", "--methods", "protonet"]
    assert main([*base, "--attack", "pgd", "--eps", "3.0", "--out-name", "proto.json"]) == 0
    r = json.loads((run / "proto.json").read_text())["methods"]["protonet"]
    # Prototype distances are differentiable in the query: a 3-sigma L-inf budget must cost detections.
    assert r["robust_tpr@1%fpr"]["3.0"]["mean"] < r["clean_tpr@1%fpr"]["mean"] - 0.2, r
    assert sum(r["violations"].values()) == 0
    assert main([*base, "--attack", "end-to-end", "--eps", "1.0"]) == 2
    assert "ProtoNet has no inner loop to attack through" in capsys.readouterr().err


def test_knn_and_logreg_baselines_are_attacked_after_adaptation(synthetic_run, capsys):
    run, _ = synthetic_run
    base = ["attack", "--run", str(run), "--episodes", "2", "--methods", "knn,logreg,logreg-replay"]
    assert main([*base, "--attack", "pgd", "--eps", "0.3,3.0", "--out-name", "baselines.json"]) == 0
    report = json.loads((run / "baselines.json").read_text())["methods"]
    for method in ("knn", "logreg", "logreg-replay"):
        r = report[method]
        clean = r["clean_tpr@1%fpr"]["mean"]
        weak, strong = (r["robust_tpr@1%fpr"][e]["mean"] for e in ("0.3", "3.0"))
        # Both are differentiable in the query: a 3-sigma budget must cost detections.
        assert strong <= weak <= clean and strong < clean - 0.2, (method, clean, weak, strong)
        assert sum(r["violations"].values()) == 0, method


def test_cli_end_to_end_attack_through_adaptation(synthetic_run, capsys):
    run, _ = synthetic_run
    args = ["attack", "--run", str(run), "--episodes", "2", "--methods", "maml", "--attack", "end-to-end"]
    assert main([*args, "--eps", "0.5,3.0"]) == 0
    r = json.loads((run / "attack.json").read_text())["methods"]["maml"]
    clean = r["clean_tpr@1%fpr"]["mean"]
    weak, strong = (r["robust_tpr@1%fpr"][e]["mean"] for e in ("0.5", "3.0"))
    # Even though each query also teaches the model its own (perturbed) features as malicious, a large
    # budget still evades more than a small one.
    assert strong <= weak + 0.05 and strong < clean, (clean, weak, strong)
    assert r["violations"] and sum(r["violations"].values()) == 0
    assert "robust TPR@1%FPR" in capsys.readouterr().out


def test_poisoned_training_reaches_the_meta_learner_and_the_pretrain_baseline(tmp_path, caplog, monkeypatch):
    import numpy as np

    from metashield import workflow

    seen = {}
    real_pretrain, real_meta_train = workflow.pretrain, workflow.meta_train

    def spy_pretrain(model, x, y, **kw):
        seen["pretrain_y"] = y
        return real_pretrain(model, x, y, **kw)

    def spy_meta_train(*args, transform=None, **kw):
        seen["poison"] = transform
        return real_meta_train(*args, transform=transform, **kw)

    monkeypatch.setattr(workflow, "pretrain", spy_pretrain)
    monkeypatch.setattr(workflow, "meta_train", spy_meta_train)
    csv = write_synthetic_flows(tmp_path / "flows.csv")
    poisoned = [*tabular_overrides(csv), *TINY, "train.algorithms=[maml]", "train.steps=10"]
    config = load_config(None, [*poisoned, "train.poison={fraction: 0.5, mode: flip}"])
    train_run(config, tmp_path / "run", progress=False)
    assert "POISONED training" in caplog.text
    _, prep, _ = workflow.load_run(tmp_path / "run")
    fit = prep.fit_mask()
    clean_y = (prep.family[fit] != "benign").astype(np.int64)
    # Half of the pretrain baseline's attack rows were relabelled benign, and nothing else changed.
    flipped = (clean_y == 1) & (seen["pretrain_y"] == 0)
    assert flipped.sum() == round(0.5 * clean_y.sum())
    assert np.array_equal(seen["pretrain_y"][clean_y == 0], clean_y[clean_y == 0])
    # Meta-training batches went through the poisoner: half the tasks lose every attack label.
    from metashield.tasks import EpisodeSampler

    sampler = EpisodeSampler(prep.X, prep.family, prep.split.train, prep.benign["train"], shots=5, queries=5)
    batch = seen["poison"](sampler.sample(8, np.random.default_rng(0)), np.random.default_rng(1))
    all_benign = (batch.support_y.max(1) == 0) & (batch.query_y.max(1) == 0)
    assert all_benign.sum() == 4
    bad = load_config(None, [*poisoned, "train.poison={fraction: 0.5, mode: backdoor, trigger: {nope: 1}}"])
    with pytest.raises(ValueError, match="nope"):
        train_run(bad, tmp_path / "bad", progress=False)


def test_evaluate_scores_a_baseline_the_run_config_did_not_list(synthetic_run, tmp_path, capsys):
    """``evaluate --baselines`` tunes and scores the named baselines instead of the config's; every other
    method's figures stay those of the full evaluation (same episodes), and an unknown name is refused."""
    run, full = synthetic_run
    only_replay = ["--baselines", "logreg-replay", "--out-name", "only.json"]
    assert main(["evaluate", "--run", str(run), *only_replay]) == 0
    only = json.loads((run / "only.json").read_text())["shots"]["5"]
    assert set(only["tuned_baselines"]) == {"logreg-replay"} and only["best_baseline"] == "logreg-replay"
    for method in ("metasgd", "logreg-replay"):
        assert only["summary"][method] == full["shots"]["5"]["summary"][method], method
    assert main(["evaluate", "--run", str(run), "--baselines", "logreg,svm"]) == 2
    assert "baselines must be among" in capsys.readouterr().err


def test_evaluate_and_attack_take_a_device_over_the_run_configs(synthetic_run, monkeypatch, capsys):
    import torch

    run, _ = synthetic_run
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for command in ("evaluate", "attack"):
        # The run's config says auto; the option must reach the device check and win over it.
        assert main([command, "--run", str(run), "--device", "cuda", "--out-name", "never.json"]) == 2
        assert "use --device auto or cpu" in capsys.readouterr().err
    assert not (run / "never.json").exists()


def test_evaluate_ensemble_averages_the_named_meta_learners_and_competes_on_meta_val(synthetic_run, capsys):
    """``evaluate --ensemble maml,metasgd``: the ``ensemble`` candidate's test figures are those of the two
    adapted models' margins averaged by hand on the same episodes, it joins the val choice of the best
    meta-learner, and bad member lists are refused naming the key."""
    import numpy as np

    from metashield.evaluation.report import summarise_method
    from metashield.runs import held_out_episode_sets

    run, full = synthetic_run
    assert (
        main(
            [
                "evaluate",
                "--run",
                str(run),
                "--ensemble",
                "maml,metasgd",
                "--baselines",
                "knn",
                "--out-name",
                "ens.json",
            ]
        )
        == 0
    )
    report = json.loads((run / "ens.json").read_text())
    entry = report["shots"]["5"]
    assert report["protocol"]["ensemble"] == ["maml", "metasgd"]
    candidates = ("maml", "fomaml", "metasgd", "reptile", "anil", "protonet", "ensemble")
    assert entry["best_meta_learner"] == max(candidates, key=lambda a: entry["val_tpr@1%fpr"][a])
    assert entry["summary"]["metasgd"] == full["shots"]["5"]["summary"]["metasgd"]

    config, prep, meta = load_run(run)
    maml, metasgd = (
        learner_scorer(load_model(config, int(meta["in_dim"]), run, a, a)) for a in ("maml", "metasgd")
    )

    def by_hand(sx, sy, qx):
        return (np.asarray(maml(sx, sy, qx)) + np.asarray(metasgd(sx, sy, qx))) / 2

    test_sets = held_out_episode_sets(
        config, prep, 5, config.evaluate.episodes_per_family, torch.device("cpu")
    )
    expected = summarise_method(
        run_protocol({"e": by_hand}, test_sets, seed=config.seed)["e"], seed=config.seed
    )
    got = entry["summary"]["ensemble"]["per_family"]
    assert got.keys() == expected["per_family"].keys()
    for fam, row in expected["per_family"].items():
        assert abs(got[fam]["tpr@1%fpr"] - row["tpr@1%fpr"]) < 1e-12, fam
    assert entry["summary"]["ensemble"]["auc"] != entry["summary"]["maml"]["auc"]

    for members, message in (
        ("maml", "two or more distinct"),
        ("maml,protonet", "protonet"),
        ("maml,metasgd,maml", "two or more distinct"),
    ):
        assert main(["evaluate", "--run", str(run), "--ensemble", members, "--out-name", "bad.json"]) == 2
        err = capsys.readouterr().err
        assert "evaluate.ensemble" in err and message in err, err
    assert not (run / "bad.json").exists()


def test_evaluate_novelty_blends_each_listed_method_on_its_own_side(synthetic_run, capsys):
    """``evaluate --novelty metasgd,finetune``: each method gets a ``+novelty`` candidate on its side of the
    val choice, whose test figures are the blend recomputed by hand with scikit-learn's neighbour distances
    to the benign training rows outside the reference rows; other methods keep their figures."""
    from sklearn.neighbors import NearestNeighbors

    from metashield.evaluation.report import summarise_method
    from metashield.runs import held_out_episode_sets, novelty_rows

    run, full = synthetic_run
    args = ["--novelty", "metasgd,finetune", "--baselines", "finetune,knn", "--out-name", "nov.json"]
    assert main(["evaluate", "--run", str(run), *args]) == 0
    report = json.loads((run / "nov.json").read_text())
    entry = report["shots"]["5"]
    assert report["protocol"]["novelty"]["methods"] == ["metasgd", "finetune"]
    assert set(entry["novelty"]) == {"metasgd+novelty", "finetune+novelty"}
    meta = ("maml", "fomaml", "metasgd", "reptile", "anil", "protonet", "metasgd+novelty")
    assert entry["best_meta_learner"] == max(meta, key=lambda a: entry["val_tpr@1%fpr"][a])
    base = ("finetune", "knn", "finetune+novelty")
    assert entry["best_baseline"] == max(base, key=lambda a: entry["val_tpr@1%fpr"][a])
    assert entry["summary"]["metasgd"] == full["shots"]["5"]["summary"]["metasgd"]

    config, prep, meta_json = load_run(run)
    blend = entry["novelty"]["metasgd+novelty"]
    assert len(blend["searched"]) == 9 and blend["method"] == "metasgd"
    index, reference = novelty_rows(config, prep, report["protocol"]["novelty"]["reference_rows"])
    assert len(index) + len(reference) == len(prep.benign["train"])
    neighbours = NearestNeighbors(n_neighbors=blend["k"]).fit(index)
    ref_distance = neighbours.kneighbors(reference)[0][:, -1]
    assert blend["novelty_scale"] == pytest.approx(ref_distance.std(), rel=1e-5)
    metasgd = learner_scorer(load_model(config, int(meta_json["in_dim"]), run, "metasgd", "metasgd"))

    def by_hand(sx, sy, qx):
        e, m, d = qx.shape
        scores = metasgd(sx, sy, torch.cat([qx, torch.from_numpy(reference).expand(e, -1, -1)], dim=1))
        distance = neighbours.kneighbors(qx.reshape(-1, d).numpy())[0][:, -1].reshape(e, m)
        w = blend["weight"]
        return (
            w * scores[:, :m] / scores[:, m:].std(axis=1, keepdims=True)
            + (1 - w) * distance / ref_distance.std()
        )

    test_sets = held_out_episode_sets(
        config, prep, 5, config.evaluate.episodes_per_family, torch.device("cpu")
    )
    expected = summarise_method(
        run_protocol({"e": by_hand}, test_sets, seed=config.seed)["e"], seed=config.seed
    )
    got = entry["summary"]["metasgd+novelty"]["per_family"]
    for fam, row in expected["per_family"].items():
        assert abs(got[fam]["tpr@1%fpr"] - row["tpr@1%fpr"]) < 1e-9, fam
        assert abs(got[fam]["auc"] - row["auc"]) < 1e-6, fam

    bad = ["--novelty", "logreg", "--baselines", "finetune", "--out-name", "bad.json"]
    assert main(["evaluate", "--run", str(run), *bad]) == 2
    assert "evaluate.novelty.methods" in capsys.readouterr().err
    assert not (run / "bad.json").exists()


def test_attack_follows_a_novelty_blend_through_its_neighbour_distances(synthetic_run, tmp_path):
    """``attack --methods metasgd+novelty`` attacks the blend ``evaluate`` scored: ``NoveltyLearner``'s
    margins are the blend's scores on the same episodes, and the attack lowers its detection with no
    violation."""
    import shutil

    from metashield.attack_targets import attack_targets
    from metashield.config import config_from_dict
    from metashield.evaluation.novelty import NoveltyLearner, novelty_scorer
    from metashield.runs import held_out_episode_sets, novelty_table

    run = tmp_path / "run"
    shutil.copytree(synthetic_run[0], run)
    evaluate_run(run, baselines=["finetune"], novelty=["metasgd", "finetune"])
    config, prep, meta = load_run(run)
    blend = json.loads((run / "metrics.json").read_text())["shots"]["5"]["novelty"]["metasgd+novelty"]
    chosen = attack_targets(run, config, prep, meta, ["metasgd+novelty"], 5, torch.device("cpu"), "query")
    learner = chosen["metasgd+novelty"]
    assert isinstance(learner, NoveltyLearner)

    es = next(iter(held_out_episode_sets(config, prep, 5, 3, torch.device("cpu")).values()))
    tree = config.model_dump()
    tree["evaluate"]["novelty"] = {"methods": ["metasgd"]}
    table, reference = novelty_table(config_from_dict(tree, "test"), prep)
    metasgd = load_model(config, int(meta["in_dim"]), run, "metasgd", "metasgd")
    scorer = novelty_scorer(
        learner_scorer(metasgd), table.column(blend["k"]), blend["novelty_scale"], reference, blend["weight"]
    )
    with torch.no_grad():
        logits = learner.predict(learner.adapt(es.support_x, es.support_y), es.query_x)
    np.testing.assert_allclose(
        (logits[..., 1] - logits[..., 0]).numpy(),
        scorer(es.support_x, es.support_y, es.query_x),
        rtol=1e-4,
        atol=1e-4,
    )

    report = attack_run(run, methods=["metasgd+novelty"], eps=[3.0], episodes=2, out_name="blend_attack.json")
    r = report["methods"]["metasgd+novelty"]
    assert sum(r["violations"].values()) == 0
    assert r["robust_tpr@1%fpr"]["3.0"]["mean"] < r["clean_tpr@1%fpr"]["mean"] - 0.2, r


def test_attack_defaults_to_the_val_choice_the_ensemble_included(synthetic_run, tmp_path):
    """`attack` without --methods attacks metrics.json's best meta-learner: the ensemble candidate as one
    model (its members as evaluated), attacked through all of them; where the threat cannot attack the
    choice (ProtoNet through adaptation), the attackable learner with the best meta-val score stands in."""
    import shutil

    from metashield.attack_targets import attack_targets
    from metashield.meta import Ensemble

    run = tmp_path / "run"
    shutil.copytree(synthetic_run[0], run)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["protocol"]["ensemble"] = ["maml", "metasgd"]
    entry = metrics["shots"]["5"]
    entry["best_meta_learner"] = "ensemble"
    entry["val_tpr@1%fpr"].update({a: 0.5 for a in ("maml", "metasgd", "reptile", "anil", "protonet")})
    entry["val_tpr@1%fpr"].update({"fomaml": 0.6, "ensemble": 0.9})
    (run / "metrics.json").write_text(json.dumps(metrics))
    config, prep, meta = load_run(run)
    chosen = attack_targets(run, config, prep, meta, None, 5, torch.device("cpu"), "query")
    assert list(chosen) == ["ensemble", "finetune"] and isinstance(chosen["ensemble"], Ensemble)
    assert list(chosen["ensemble"].members) == ["maml", "metasgd"]

    report = attack_run(run, methods=["ensemble"], eps=[3.0], episodes=2, out_name="ens_attack.json")
    r = report["methods"]["ensemble"]
    assert sum(r["violations"].values()) == 0
    assert r["robust_tpr@1%fpr"]["3.0"]["mean"] < r["clean_tpr@1%fpr"]["mean"] - 0.2, r

    entry["best_meta_learner"] = "protonet"
    for val_ensemble, stand_in in ((0.9, "ensemble"), (0.55, "fomaml")):
        entry["val_tpr@1%fpr"]["ensemble"] = val_ensemble
        (run / "metrics.json").write_text(json.dumps(metrics))
        chosen = attack_targets(run, config, prep, meta, None, 5, torch.device("cpu"), "support")
        assert list(chosen) == [stand_in, "finetune"]


def test_scratch_baseline_scores_the_same_whatever_ran_before(synthetic_run):
    """Training from scratch starts from a fixed initialisation, not from the process's global RNG: a later
    `metashield evaluate` must reproduce the evaluation that ran right after training."""
    import numpy as np
    import torch

    from metashield.baseline_tuning import baseline_scorer
    from metashield.runs import load_run, tuning_episode_sets

    run, _ = synthetic_run
    config, prep, _ = load_run(run)
    es = next(iter(tuning_episode_sets(config, prep, 5, torch.device("cpu")).values()))
    scores = []
    for seed in (1, 2):
        torch.manual_seed(seed)  # what training or another baseline would have left behind
        scorer = baseline_scorer("scratch", {"lr": 0.1, "steps": 20}, config, prep, None, torch.device("cpu"))
        scores.append(scorer(es.support_x, es.support_y, es.query_x))
    np.testing.assert_array_equal(scores[0], scores[1])
    with pytest.raises(ValueError, match="needs the run's pretrained model"):
        baseline_scorer("finetune", {"lr": 0.1, "steps": 5, "head_only": False}, config, prep, None, "cpu")


def test_a_list_of_train_shots_early_stops_on_the_mean_meta_val_score_over_them(tmp_path):
    csv = write_synthetic_flows(tmp_path / "flows.csv")
    overrides = tabular_overrides(csv) + TINY + ["train.shots=[1, 5]", "train.algorithms=[metasgd]"]
    config = load_config(None, overrides)
    run = tmp_path / "run"
    train_run(config, run, progress=False)
    config, prep, _ = load_run(run)
    learner = load_model(config, prep.X.shape[1], run, "metasgd", "metasgd")
    _, saved = load_checkpoint(run, "metasgd")
    device = torch.device("cpu")
    per_shot = [
        mean_metric(
            run_protocol(
                {"m": learner_scorer(learner)},
                episode_sets(config, prep, "val", k, config.train.val_episodes, config.seed + 7, device),
            )["m"]
        )
        for k in (1, 5)
    ]
    assert per_shot[0] != per_shot[1]
    assert saved["val_tpr@1%fpr"] == pytest.approx(np.mean(per_shot), abs=1e-12)
