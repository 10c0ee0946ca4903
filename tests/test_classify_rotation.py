"""Rotation folds, meta-val rows, pooling, and family classification of token sequences."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from metashield.classify import ClassifyConfig, classify_run, fold_split, pool_folds, prepare_families
from metashield.data.sequences import SequenceData
from metashield.tasks.fixed import make_episodes

MOTIF = (25, 26, 27)


def ordered_motif_families(per_family: int = 30, seed: int = 0) -> SequenceData:
    """Six families of random traces (ids 1..24, length 12..40), each carrying the SAME three calls 25, 26,
    27 in a family-specific ORDER at a random place: counts cannot tell the families apart, order can."""
    rng = np.random.default_rng(seed)
    calls, family = [], []
    for f, order in enumerate(itertools.permutations(MOTIF)):
        for _ in range(per_family):
            noise = rng.integers(1, 25, rng.integers(12, 41))
            at = rng.integers(0, len(noise))
            calls.append(np.concatenate([noise[:at], order, noise[at:]]).astype(np.int32))
            family.append(f"order{f}")
    vocab = [f"api{i}" for i in range(28)]
    return SequenceData(calls=calls, family=np.array(family, dtype=object), vocab=vocab, name="motifs")


ROTATE = {
    "device": "cpu",
    "representation": "tokens",
    "sequence": {"max_len": 48, "embed_dim": 8, "channels": [16], "kernel": 3},
    "ways": 3,
    "train_shots": 5,
    "eval_shots": [5],
    "queries": 5,
    "split": "rotate",
    "n_test": 3,
    "folds": [0],
    "algorithms": ["protonet"],
    "steps": 150,
    "tasks_per_batch": 4,
    "eval_every": 50,
    "patience": 2,
    "val_episodes": 10,
    "test_episodes": 20,
    "pretrain_steps": 0,
    "logreg_cs": [1.0],
}


def test_every_family_is_held_out_n_test_times_over_the_rotation() -> None:
    names = [f"f{i}" for i in range(8)]
    splits = [fold_split(names, 3, k) for k in range(8)]
    assert splits[0].test == ["f0", "f1", "f2"] and splits[7].test == ["f0", "f1", "f7"]
    for s in splits:
        assert sorted(s.train + s.test) == names and not set(s.train) & set(s.test) and s.val == []
    held = [f for s in splits for f in s.test]
    assert {f: held.count(f) for f in names} == dict.fromkeys(names, 3)
    with pytest.raises(ValueError, match="fold must be in 0..7"):
        fold_split(names, 3, 8)
    with pytest.raises(ValueError, match="leaves no meta-train family"):
        fold_split(names[:3], 3, 0)


def test_rotate_holds_out_meta_val_rows_of_meta_train_families_only() -> None:
    data = ordered_motif_families()
    cfg = ClassifyConfig.model_validate(ROTATE)
    prep = prepare_families(data, cfg, fold=1)
    assert prep.split.test == ["order1", "order2", "order3"]
    val = prep.val_family != ""
    assert set(prep.family[val]) == set(prep.split.train) == set(prep.val_families)
    assert not (val & prep.train_rows).any()
    assert set(prep.family[prep.train_rows]) == set(prep.split.train)
    for f in prep.split.train:
        assert (val & (prep.family == f)).sum() == round(0.3 * 30)
    episodes = make_episodes(prep.val_family, prep.val_families, ways=3, shots=5, queries=4, n=10, seed=[0])
    assert val[episodes.support_idx].all() and val[episodes.query_idx].all()
    # The baselines' window counts are standardised on meta-train rows only.
    np.testing.assert_allclose(prep.X_flat[prep.train_rows].mean(axis=0), 0.0, atol=1e-5)
    assert np.abs(prep.X_flat[~prep.train_rows].mean(axis=0)).max() > 0.05


def test_exact_duplicate_traces_are_kept_once() -> None:
    data = ordered_motif_families(per_family=12)
    doubled = SequenceData(
        calls=data.calls + data.calls[:5],
        family=np.concatenate([data.family, data.family[:5]]),
        vocab=data.vocab,
        name="dup",
    )
    cfg = ClassifyConfig.model_validate(ROTATE)
    assert len(prepare_families(doubled, cfg, fold=0).X) == len(data.calls)


def test_representation_must_fit_the_data() -> None:
    with pytest.raises(ValueError, match="holds call sequences"):
        prepare_families(
            ordered_motif_families(),
            ClassifyConfig.model_validate({**ROTATE, "representation": "features"}),
            0,
        )


def test_pool_folds_averages_each_family_over_the_folds_that_held_it_out() -> None:
    def fold(k: int, accs: dict[str, float]) -> dict:
        res = {"acc": float(np.mean(list(accs.values()))), "family_acc": accs}
        return {
            "fold": k,
            "split": {},
            "seconds": 1.0,
            "best_meta_learner": "maml",
            "results": {"5": {"maml": res}},
        }

    cfg = ClassifyConfig.model_validate({**ROTATE, "folds": None})
    first, second = fold(0, {"a": 0.2, "b": 0.6}), fold(1, {"b": 1.0, "c": 0.5})
    second["best_meta_learner"] = "protonet"
    second["results"]["5"]["protonet"] = {"acc": 0.25, "family_acc": {"b": 0.4, "c": 0.1}}
    first["results"]["5"]["protonet"] = {"acc": 0.0, "family_acc": {"a": 0.0, "b": 0.0}}
    pooled = pool_folds([first, second], cfg)
    r = pooled["results"]["5"]["maml"]
    assert r["family_acc"] == pytest.approx({"a": 0.2, "b": 0.8, "c": 0.5})
    assert r["acc"] == pytest.approx(0.5)
    assert r["ci_lo"] <= 0.5 <= r["ci_hi"] and r["fold_acc"] == pytest.approx([0.4, 0.75])
    # best-meta follows each fold's meta-val choice: maml in fold 0, protonet in fold 1.
    best = pooled["results"]["5"]["best-meta"]
    assert best["family_acc"] == pytest.approx({"a": 0.2, "b": 0.5, "c": 0.1})
    assert best["fold_acc"] == pytest.approx([0.4, 0.25])


@pytest.fixture(scope="module")
def motif_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("rotate")
    try:
        return classify_run(ROTATE, out, data=ordered_motif_families()), out
    finally:
        torch.set_num_threads(before)


def test_the_cnn_reads_call_order_that_counts_cannot(motif_report: tuple[dict, Path]) -> None:
    report, out = motif_report
    res = report["results"]["5"]
    # Held-out families differ only in the order of three calls: the CNN's kernel sees it, while 1-NN and
    # logistic regression on call counts are at chance (1/3) by construction.
    assert res["protonet"]["acc"] > 0.65, res["protonet"]
    assert res["logreg"]["acc"] < 0.5 and res["1-nn"]["acc"] < 0.5, (res["logreg"], res["1-nn"])
    assert set(res["protonet"]["family_acc"]) == {"order0", "order1", "order2"}
    assert (out / "fold0" / "classify.json").is_file() and (out / "classify.json").is_file()


def test_a_finished_fold_is_read_back_not_rerun(motif_report: tuple[dict, Path]) -> None:
    report, out = motif_report
    again = classify_run({**ROTATE, "steps": 1}, out, data=ordered_motif_families())  # different: reruns
    assert again["folds"][0]["seconds"] != report["folds"][0]["seconds"]
    classify_run(ROTATE, out / "copy", data=ordered_motif_families())
    written = (out / "copy" / "fold0" / "classify.json").read_text()
    reread = classify_run({**ROTATE, "folds": [0]}, out / "copy", data=ordered_motif_families())
    assert (out / "copy" / "fold0" / "classify.json").read_text() == written
    assert reread["results"]["5"]["protonet"]["acc"] == pytest.approx(
        report["results"]["5"]["protonet"]["acc"], abs=0.2
    )


def test_detection_refuses_a_sequence_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    from metashield import experiment
    from metashield.config import load_config

    monkeypatch.setattr(experiment, "load_dataset", lambda name: ordered_motif_families())
    with pytest.raises(ValueError, match="detection needs a tabular dataset.*metashield classify"):
        experiment.load_raw(load_config(None, ["data.dataset=mal-api"]))


def test_mal_api_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/mal_api.yaml's protocol on the real traces, one fold, tiny budgets."""
    import os

    from metashield.classify import load_classify_config
    from tests.conftest import shared_data

    data = shared_data()
    monkeypatch.setenv("METASHIELD_MIRROR", f"file://{data}")
    monkeypatch.setenv("METASHIELD_DATA", os.environ.get("METASHIELD_DATA", str(tmp_path / "cache")))
    cfg = load_classify_config(Path(__file__).parents[1] / "configs" / "mal_api.yaml").model_dump(mode="json")
    cfg.update(
        device="cpu",
        folds=[2],
        algorithms=["protonet"],
        steps=10,
        eval_every=5,
        val_episodes=5,
        test_episodes=10,
        pretrain_steps=0,
        representation="tokens",
        attacks=[],
        attack_eps=[],
        sequence={**cfg["sequence"], "max_len": 64},
    )
    report = classify_run(cfg, tmp_path / "run")
    fold = report["folds"][0]
    assert fold["split"]["test"] == ["Downloader", "Dropper", "Spyware"] and len(fold["split"]["train"]) == 5
    assert set(report["results"]["5"]["protonet"]["family_acc"]) == {"Downloader", "Dropper", "Spyware"}
    assert report["results"]["5"]["logreg"]["acc"] > 1 / 3  # call counts of the first 64 calls beat chance
