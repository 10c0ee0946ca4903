"""The analyst's workflow on a synthetic run: adapt to a held-out family from raw rows, then score files."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_synthetic_flows
from test_workflow import TINY, tabular_overrides

from metashield import analyst, experiment
from metashield.checkpoint import load_checkpoint, save_checkpoint
from metashield.cli import main
from metashield.config import load_config
from metashield.data.schema import FeatureSpec, ThreatSchema
from metashield.evaluation.metrics import threshold_at_fpr
from metashield.experiment import Prepared
from metashield.workflow import load_run, train_run


@dataclass
class Trained:
    """A trained synthetic run and its source rows as the text the CSV holds (row i is ``prep`` row i)."""

    run: Path
    raw: pd.DataFrame
    prep: Prepared

    def family(self, name: str) -> pd.DataFrame:
        return self.raw.iloc[self.prep.family_rows(name)]

    def benign(self, part: str) -> pd.DataFrame:
        return self.raw.iloc[self.prep.benign[part]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    root = tmp_path_factory.mktemp("analyst")
    csv = write_synthetic_flows(root / "flows.csv")
    config = load_config(None, tabular_overrides(csv) + TINY + ["train.algorithms=[maml, fomaml, protonet]"])
    train_run(config, root / "run", progress=False)
    _, prep, _ = load_run(root / "run")
    raw = pd.read_csv(csv, dtype=str, keep_default_na=False)
    # No row of the synthetic data is dropped as conflicting, so the file's rows are the run's rows.
    assert np.array_equal(raw["label"].to_numpy(dtype=object), prep.family)
    return Trained(root / "run", raw, prep)


def write(path: Path, *frames: pd.DataFrame) -> Path:
    pd.concat(frames).to_csv(path, index=False)
    return path


def support_rows(t: Trained, family: str, shots: int = 5) -> pd.DataFrame:
    """``shots`` rows of ``family`` and 10 benign rows of the run's benign TRAIN slice."""
    return pd.concat([t.family(family).iloc[:shots], t.benign("train").iloc[:10]])


def read_scores(path: Path) -> pd.DataFrame:
    return pd.read_csv(path)


def test_adapted_maml_flags_each_held_out_family_and_few_benign_rows(trained, tmp_path):
    benign_test = trained.benign("test")
    for family in trained.prep.split.test:
        support = write(tmp_path / f"{family}.csv", support_rows(trained, family))
        record = analyst.adapt_run(trained.run, support, tmp_path / f"adapted-{family}")
        assert record["algorithm"] == "maml"  # no metrics.json: the first trained algorithm
        query = write(tmp_path / f"q-{family}.csv", trained.family(family).iloc[5:], benign_test)
        summary = analyst.predict_file(tmp_path / f"adapted-{family}", query, tmp_path / "scores.csv")
        # The threshold allows 1% of benign validation rows; benign test rows are other draws of the same.
        assert summary["benign"]["rows"] == len(benign_test)
        assert summary["benign"]["flagged"] / len(benign_test) <= 0.04, (family, summary)
        assert summary["new_family"]["flagged"] / summary["new_family"]["rows"] >= 0.8, (family, summary)


def test_protonet_prototypes_round_trip_through_the_adapted_run(trained, tmp_path):
    rates = []
    for family in trained.prep.split.test:
        support = write(tmp_path / f"{family}.csv", support_rows(trained, family))
        out = tmp_path / f"adapted-{family}"
        analyst.adapt_run(trained.run, support, out, algorithm="protonet")
        query = write(tmp_path / "q.csv", trained.family(family).iloc[5:])
        summary = analyst.predict_file(out, query, tmp_path / "scores.csv")
        rates.append(summary["flagged"] / summary["rows"])
    assert np.mean(rates) >= 0.7, rates


@pytest.fixture(scope="module")
def adapted(trained, tmp_path_factory) -> tuple[Path, Path, dict]:
    """(support file, adapted run, record) for the first held-out family."""
    root = tmp_path_factory.mktemp("adapted")
    support = write(root / "support.csv", support_rows(trained, trained.prep.split.test[0]))
    record = analyst.adapt_run(trained.run, support, root / "adapted")
    return support, root / "adapted", record


def test_threshold_is_the_1pct_fpr_threshold_of_benign_validation_scores(trained, adapted, tmp_path):
    _, out, record = adapted
    # Independently: the benign validation rows as raw text, through predict, then the metrics module.
    val = write(tmp_path / "val.csv", trained.benign("val"))
    analyst.predict_file(out, val, tmp_path / "val_scores.csv")
    scores = read_scores(tmp_path / "val_scores.csv")["score"].to_numpy()
    t = record["threshold"]
    assert t["value"] == threshold_at_fpr(scores, 0.01)
    assert t["benign_val_rows"] == len(trained.prep.benign["val"]) == len(scores)
    assert t["fpr_resolution"] == 1 / len(scores)
    assert t["benign_val_fpr"] == np.mean(scores > t["value"]) <= 0.01


def test_record_names_its_evidence_and_predict_is_deterministic(trained, adapted, tmp_path):
    support, out, record = adapted
    on_disk = json.loads((out / "adapted.json").read_text())
    assert on_disk["support"]["sha256"] == hashlib.sha256(support.read_bytes()).hexdigest()
    assert on_disk["source_run"] == str(trained.run.resolve())
    assert on_disk["algorithm"] == record["algorithm"] == "maml" and on_disk["members"] == ["maml"]
    assert on_disk["source_checkpoint_sha256"] == {
        "maml": hashlib.sha256((trained.run / "maml.safetensors").read_bytes()).hexdigest()
    }
    assert on_disk["support"]["new_family_rows"] == 5 and on_disk["support"]["benign_rows"] == 10
    assert sorted(p.name for p in out.iterdir()) == [
        "adapted.json",
        "adapted.safetensors",
        "maml.json",
        "maml.safetensors",
    ]
    assert not list(out.parent.glob(".*.tmp"))

    family = trained.family(trained.prep.split.test[0])
    query = write(tmp_path / "q.csv", trained.benign("test").iloc[:50], family.iloc[5:])
    analyst.predict_file(out, query, tmp_path / "a.csv")
    analyst.predict_file(out, query, tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    scores = read_scores(tmp_path / "a.csv")
    assert scores["row"].tolist() == list(range(1, 86))
    assert scores["line"].tolist() == list(range(2, 87))
    assert np.array_equal(scores["flagged"], (scores["score"] > record["threshold"]["value"]).astype(int))


def test_metrics_json_picks_the_best_meta_learner_at_the_nearest_shot_count(tmp_path):
    shots = {"1": {"best_meta_learner": "anil"}, "5": {"best_meta_learner": "maml"}, "10": {}}
    (tmp_path / "metrics.json").write_text(json.dumps({"shots": shots}))
    trained = ["maml", "anil"]
    assert analyst.choose_algorithm(tmp_path, trained, 2, None, [])[:2] == ("anil", ["anil"])
    assert analyst.choose_algorithm(tmp_path, trained, 3, None, [])[0] == "anil"  # tie: the smaller count
    assert analyst.choose_algorithm(tmp_path, trained, 4, None, [])[0] == "maml"
    assert analyst.choose_algorithm(tmp_path, trained, 4, "anil", []) == ("anil", ["anil"], "requested")
    with pytest.raises(ValueError, match=r"--algorithm 'reptile': .* has checkpoints for \['maml', 'anil'\]"):
        analyst.choose_algorithm(tmp_path, trained, 4, "reptile", [])


def test_an_ensemble_chosen_on_meta_val_deploys_the_members_it_was_evaluated_with(tmp_path):
    shots = {"5": {"best_meta_learner": "ensemble"}}
    metrics = {"protocol": {"ensemble": ["anil", "maml"]}, "shots": shots}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    # The report's members win over the run config's (evaluate --ensemble may have replaced them).
    algorithm, members, why = analyst.choose_algorithm(
        tmp_path, ["maml", "anil"], 5, None, ["maml", "fomaml"]
    )
    assert (algorithm, members) == ("ensemble", ["anil", "maml"]) and "['anil', 'maml']" in why
    with pytest.raises(FileNotFoundError, match=r"members \['anil'\] have no checkpoint"):
        analyst.choose_algorithm(tmp_path, ["maml"], 5, None, [])
    (tmp_path / "metrics.json").unlink()
    assert analyst.choose_algorithm(tmp_path, ["maml", "fomaml"], 5, "ensemble", ["maml", "fomaml"])[:2] == (
        "ensemble",
        ["maml", "fomaml"],
    )
    with pytest.raises(ValueError, match="evaluated without evaluate.ensemble"):
        analyst.choose_algorithm(tmp_path, ["maml"], 5, "ensemble", [])
    for text in ("[1]", '{"shots": 3}', "{"):
        (tmp_path / "metrics.json").write_text(text)
        with pytest.raises(
            ValueError, match="metrics.json: expected the JSON report of `metashield evaluate`"
        ):
            analyst.choose_algorithm(tmp_path, ["maml"], 5, None, [])


def test_adapted_ensemble_scores_are_the_mean_of_its_members(trained, tmp_path):
    """The deployed ensemble is what `evaluate` scored: each member adapted on the support set on its own,
    then their logit margins averaged; its threshold is the 1%-FPR threshold of those averages."""
    run = tmp_path / "run"
    shutil.copytree(trained.run, run)
    metrics = {
        "protocol": {"ensemble": ["maml", "fomaml"]},
        "shots": {"5": {"best_meta_learner": "ensemble"}},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    family = trained.prep.split.test[0]
    support = write(tmp_path / "s.csv", support_rows(trained, family))
    query = write(tmp_path / "q.csv", trained.benign("val"), trained.family(family).iloc[5:])
    scores = {}
    for name in ("ensemble", "maml", "fomaml"):
        record = analyst.adapt_run(
            run, support, tmp_path / name, algorithm=None if name == "ensemble" else name
        )
        analyst.predict_file(tmp_path / name, query, tmp_path / f"{name}.csv")
        scores[name] = read_scores(tmp_path / f"{name}.csv")["score"].to_numpy()
    assert record["members"] == ["fomaml"] and not np.allclose(scores["maml"], scores["fomaml"])
    np.testing.assert_allclose(
        scores["ensemble"], (scores["maml"] + scores["fomaml"]) / 2, rtol=1e-6, atol=1e-6
    )
    ensemble = json.loads((tmp_path / "ensemble" / "adapted.json").read_text())
    assert ensemble["algorithm"] == "ensemble" and ensemble["members"] == ["maml", "fomaml"]
    n_val = len(trained.prep.benign["val"])
    assert ensemble["threshold"]["value"] == threshold_at_fpr(scores["ensemble"][:n_val], 0.01)
    assert sorted(p.name for p in (tmp_path / "ensemble").iterdir()) == [
        "adapted.json",
        "adapted.safetensors",
        "fomaml.json",
        "fomaml.safetensors",
        "maml.json",
        "maml.safetensors",
    ]


def test_adapted_novelty_blend_scores_as_evaluate_chose_it(trained, tmp_path):
    """A ``<method>+novelty`` choice deploys the method blended with its distance to the benign training rows
    outside the reference rows, with the weight, k and novelty scale metrics.json recorded and the margin
    scaled by its standard deviation on the reference rows; the threshold is set on the blended scores."""
    from sklearn.neighbors import NearestNeighbors

    run = tmp_path / "run"
    shutil.copytree(trained.run, run)
    blend = {"method": "maml", "weight": 0.6, "k": 3, "novelty_scale": 1.7, "val_tpr@1%fpr": 0.9}
    metrics = {
        "protocol": {"novelty": {"methods": ["maml"], "reference_rows": 100}},
        "shots": {"5": {"best_meta_learner": "maml+novelty", "novelty": {"maml+novelty": blend}}},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    family = trained.prep.split.test[0]
    support = write(tmp_path / "s.csv", support_rows(trained, family))
    record = analyst.adapt_run(run, support, tmp_path / "blend")
    analyst.adapt_run(run, support, tmp_path / "plain", algorithm="maml")
    assert record["algorithm"] == "maml+novelty" and record["members"] == ["maml"]
    assert "blended with benign novelty" in record["algorithm_choice"]
    assert (tmp_path / "blend" / "novelty.safetensors").is_file()

    prep = trained.prep
    index = load_checkpoint(tmp_path / "blend", "novelty")[0]["benign"].numpy()
    train_rows = prep.X[prep.benign["train"]]
    assert len(index) == len(train_rows) - 100 == record["novelty"]["index_rows"]
    in_index = {r.tobytes() for r in index}
    reference = np.array([r for r in train_rows if r.tobytes() not in in_index])
    reference_raw = write(
        tmp_path / "ref.csv", trained.benign("train").iloc[[r.tobytes() not in in_index for r in train_rows]]
    )
    analyst.predict_file(tmp_path / "plain", reference_raw, tmp_path / "ref_scores.csv")
    margin_scale = read_scores(tmp_path / "ref_scores.csv")["score"].std(ddof=0)
    assert len(reference) == 100 and record["novelty"]["margin_scale"] == pytest.approx(
        margin_scale, rel=1e-5
    )

    rows = np.r_[prep.benign["val"], prep.family_rows(family)[5:]]
    query = write(tmp_path / "q.csv", trained.raw.iloc[rows])
    for name in ("blend", "plain"):
        analyst.predict_file(tmp_path / name, query, tmp_path / f"{name}.csv")
    margins = read_scores(tmp_path / "plain.csv")["score"].to_numpy()
    distance = NearestNeighbors(n_neighbors=3).fit(index).kneighbors(prep.X[rows])[0][:, -1]
    expected = 0.6 * margins / margin_scale + 0.4 * distance / 1.7
    got = read_scores(tmp_path / "blend.csv")["score"].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    n_val = len(prep.benign["val"])
    assert record["threshold"]["value"] == threshold_at_fpr(got[:n_val], 0.01)
    assert "(distance to the 3rd nearest benign training row) / 1.7" in record["threshold"]["score"]

    with pytest.raises(ValueError, match="no such blend"):
        analyst.adapt_run(run, support, tmp_path / "other", algorithm="fomaml+novelty")
    (tmp_path / "blend" / "novelty.json").unlink()
    with pytest.raises(FileNotFoundError, match="novelty.safetensors"):
        analyst.load_adapted(tmp_path / "blend")


def test_adapted_runs_of_format_1_are_still_read(trained, adapted, tmp_path):
    """Version 1 stored one model under plain parameter names and no ``members``; version 2 (ensembles, keys
    ``<member>/<name>``, no blends) is read as it is."""
    support, out, _ = adapted
    old = tmp_path / "old"
    shutil.copytree(out, old)
    tensors, record = load_checkpoint(old, analyst.ADAPTED)
    save_checkpoint(old, analyst.ADAPTED, tensors, record | {"format": "metashield-adapted/2"})
    v2_query = write(tmp_path / "q2.csv", trained.benign("test").iloc[:40])
    analyst.predict_file(out, v2_query, tmp_path / "v3.csv")
    analyst.predict_file(old, v2_query, tmp_path / "v2.csv")
    assert (tmp_path / "v3.csv").read_bytes() == (tmp_path / "v2.csv").read_bytes()
    record = {k: v for k, v in record.items() if k != "members"} | {"format": "metashield-adapted/1"}
    save_checkpoint(old, analyst.ADAPTED, {k.removeprefix("maml/"): v for k, v in tensors.items()}, record)
    query = write(tmp_path / "q.csv", trained.benign("test").iloc[:40])
    analyst.predict_file(out, query, tmp_path / "new.csv")
    analyst.predict_file(old, query, tmp_path / "old.csv")
    assert (tmp_path / "new.csv").read_bytes() == (tmp_path / "old.csv").read_bytes()
    record["format"] = "metashield-adapted/0"
    save_checkpoint(old, analyst.ADAPTED, tensors, record)
    with pytest.raises(ValueError, match="format 'metashield-adapted/0', expected one of"):
        analyst.load_adapted(old)
    record |= {"format": analyst.FORMAT, "members": ["maml", "fomaml"]}
    save_checkpoint(old, analyst.ADAPTED, tensors, record)
    with pytest.raises(
        ValueError, match=r"adapted.safetensors: no adapted parameters for members \['fomaml'\]"
    ):
        analyst.load_adapted(old)


def _bad_support(trained: Trained, tmp_path: Path, edit) -> Path:
    frame = support_rows(trained, trained.prep.split.test[0]).reset_index(drop=True)
    return write(tmp_path / "bad.csv", edit(frame))


def _set(row: int, column: str, value: str):
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[row, column] = value
        return frame

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.drop(columns=["f3"]), r"line 1 \(header\): missing columns \['f3'\]"),
        (lambda f: f.assign(id="7"), r"line 1 \(header\): unexpected columns \['id'\]"),
        (lambda f: f.drop(columns=["label"]), r"missing columns \['label'\]"),
        (_set(2, "f2", "abc"), r"bad.csv: line 4, column 'f2': 'abc' is not a finite number"),
        (_set(0, "f0", ""), r"bad.csv: line 2, column 'f0': empty, expected a number"),
        (_set(3, "bytes", "-5"), r"line 5, column 'bytes': '-5' is negative, expected >= 0"),
        (_set(6, "label", " "), r"line 8, column 'label': ' ' is empty, expected a label"),
        (lambda f: f[f.label != "benign"], r"no row has the benign label 'benign' in column 'label'"),
        (
            lambda f: f[f.label == "benign"],
            r"every row has the benign label 'benign'.*at least 1 row of the new",
        ),
    ],
)
def test_adapt_rejects_bad_support_files_naming_line_and_column(trained, tmp_path, edit, message):
    bad = _bad_support(trained, tmp_path, edit)
    with pytest.raises(ValueError, match=message):
        analyst.adapt_run(trained.run, bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_schema_bounds_are_checked_in_adapt_and_travel_to_predict(trained, tmp_path, monkeypatch):
    # The synthetic dataset declares no threat schema; give it one the way a registry loader does.
    schema = ThreatSchema({"bytes": FeatureSpec(lower=0, upper=1e7, why="a byte count")}, source="test")
    real = experiment.load_raw
    monkeypatch.setattr(experiment, "load_raw", lambda config: replace(real(config), schema=schema))
    bad = _bad_support(trained, tmp_path, _set(1, "bytes", "2e9"))
    with pytest.raises(
        ValueError, match=r"line 3, column 'bytes': '2e9' is above the documented upper bound"
    ):
        analyst.adapt_run(trained.run, bad, tmp_path / "out")
    good = write(tmp_path / "good.csv", support_rows(trained, trained.prep.split.test[0]))
    analyst.adapt_run(trained.run, good, tmp_path / "out")
    # predict needs nothing from the source run: its schema and pipeline travel in the adapted run.
    monkeypatch.setattr(experiment, "load_raw", lambda config: pytest.fail("predict loaded the data"))
    query = write(tmp_path / "q.csv", trained.benign("test").iloc[:3].assign(bytes=["10", "1e8", "20"]))
    with pytest.raises(
        ValueError,
        match=r"q.csv: line 3, column 'bytes': '1e8' is above the documented upper bound 1e\+07 \(a byte",
    ):
        analyst.predict_file(tmp_path / "out", query, tmp_path / "scores.csv")
    assert not (tmp_path / "scores.csv").exists()


def test_integer_columns_must_hold_whole_numbers(trained, tmp_path):
    schema = ThreatSchema({"f0": FeatureSpec(integer=True)})
    path = write(tmp_path / "q.csv", trained.benign("test").iloc[:2].assign(f0=["3", "0.5"]))
    with pytest.raises(ValueError, match=r"q.csv: line 3, column 'f0': '0.5' is not a whole number"):
        analyst.read_rows(path, trained.prep.pipeline, schema, "label", label_required=False)


def test_unseen_categories_are_allowed_with_a_warning(trained, tmp_path, caplog):
    path = write(tmp_path / "q.csv", trained.benign("test").iloc[:3].assign(proto=["tcp", "icmp", "udp"]))
    rows = analyst.read_rows(path, trained.prep.pipeline, ThreatSchema(), "label", label_required=True)
    assert rows.frame["proto"].tolist() == ["tcp", "icmp", "udp"]
    assert (
        "column 'proto': 1 rows hold categories the run never saw (['icmp']; first at line 3)" in caplog.text
    )


def test_adapt_never_overwrites_and_a_crash_leaves_no_partial_run(trained, adapted, tmp_path, monkeypatch):
    support, out, _ = adapted
    before = (out / "adapted.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="already exists: choose another --out"):
        analyst.adapt_run(trained.run, support, out)
    assert (out / "adapted.safetensors").read_bytes() == before

    real = analyst.save_checkpoint

    def crash_on_second(directory, name, *args):
        if name == analyst.ADAPTED:
            raise OSError("disk full")
        real(directory, name, *args)

    monkeypatch.setattr(analyst, "save_checkpoint", crash_on_second)
    with pytest.raises(OSError, match="disk full"):
        analyst.adapt_run(trained.run, support, tmp_path / "crashed")
    assert list(tmp_path.iterdir()) == []


def test_cli_adapt_predict_and_errors(trained, tmp_path, capsys):
    family = trained.prep.split.test[1]
    support = write(tmp_path / "s.csv", support_rows(trained, family))
    out = tmp_path / "adapted"
    assert main(["adapt", "--run", str(trained.run), "--support", str(support), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "maml (first trained algorithm" in printed and "benign validation rows" in printed

    query = write(tmp_path / "q.csv", trained.family(family).iloc[5:], trained.benign("test"))
    args = ["predict", "--run", str(out), "--input", str(query), "--out", str(tmp_path / "scores.csv")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"of {len(trained.family(family)) - 5 + len(trained.benign('test'))} rows flagged" in printed
    assert "TPR " in printed and "FPR " in printed

    assert main(["adapt", "--run", str(trained.run), "--support", str(support), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    bad = write(tmp_path / "bad.csv", trained.benign("test").iloc[:2].drop(columns=["f1"]))
    assert main(["predict", "--run", str(out), "--input", str(bad), "--out", str(tmp_path / "x.csv")]) == 2
    assert "bad.csv: line 1 (header): missing columns ['f1']" in capsys.readouterr().err
    assert main(["predict", "--run", str(trained.run), "--input", str(query), "--out", "x.csv"]) == 2
    assert "no adapted model" in capsys.readouterr().err
