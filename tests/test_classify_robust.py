"""Robust N-way accuracy (metashield.classify.robust) and the attackable N-way baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from torch import nn

from metashield.attacks.constraints import box_constraints
from metashield.attacks.presets import get_attack
from metashield.classify import ClassifyConfig, classify_run, pool_folds, prepare_families
from metashield.classify.robust import robust_predictions
from metashield.evaluation.baselines import LogisticRegressionLearner, NearestNeighbourLearner
from metashield.tasks.fixed import Episodes
from tests.test_classify import TINY, gaussian_families
from tests.test_classify_rotation import ROTATE, ordered_motif_families


def test_n_way_torch_forms_predict_like_scikit_learn() -> None:
    """The models 1-NN and logistic regression are attacked through must be the ones scored clean."""
    gen = torch.Generator().manual_seed(0)
    sy = torch.arange(4).repeat_interleave(5).repeat(3, 1)  # 3 episodes, 4 classes x 5 shots
    sx = torch.randn(3, 20, 6, generator=gen, dtype=torch.float64) + 1.5 * sy.unsqueeze(-1)
    qx = torch.randn(3, 40, 6, generator=gen, dtype=torch.float64) * 2
    knn, logreg = NearestNeighbourLearner(), LogisticRegressionLearner(3.0)
    knn_pred = knn.predict(knn.adapt(sx, sy), qx).argmax(-1).numpy()
    logits = logreg.predict(logreg.adapt(sx, sy), qx).numpy()
    for e in range(3):
        s, y, q = sx[e].numpy(), sy[e].numpy(), qx[e].numpy()
        np.testing.assert_array_equal(knn_pred[e], KNeighborsClassifier(n_neighbors=1).fit(s, y).predict(q))
        reference = LogisticRegression(C=3.0, max_iter=1000).fit(s, y)
        np.testing.assert_allclose(logits[e], reference.decision_function(q), rtol=0, atol=1e-9)


class FixedLinear(nn.Module):
    """logits = x W^T + b whatever the support set: a classifier whose robustness has a closed form."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> dict:
        return {}

    def predict(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T + self.bias


def test_robust_accuracy_of_a_linear_classifier_matches_its_closed_form() -> None:
    """Under an L-inf ball, query (x, y) of a linear classifier stays right iff for every other class j,
    (w_y - w_j)·x + b_y - b_j - eps·|w_y - w_j|_1 > 0."""
    rng = np.random.default_rng(0)
    weight = torch.tensor(rng.normal(size=(3, 4)))
    bias = torch.tensor(rng.normal(size=3))
    X = rng.normal(size=(300, 4))
    label = (torch.tensor(X) @ weight.T + bias).argmax(-1).numpy()
    query = np.arange(300).reshape(10, 30)
    episodes = Episodes(
        support_idx=np.zeros((10, 3), dtype=np.int64),
        support_y=np.tile(np.arange(3), (10, 1)),
        query_idx=query,
        query_y=label[query],
    )
    attacks = [get_attack("pgd", steps=50), get_attack("apgd-margin")]
    eps = [0.1, 0.3]
    right, _, violations = robust_predictions(
        FixedLinear(weight, bias), episodes, X, box_constraints(4), attacks, eps, torch.device("cpu"), seed=0
    )
    z = torch.tensor(X) @ weight.T + bias
    for e in eps:
        expected = np.ones(300, dtype=bool)
        for j in range(3):
            w = weight[torch.as_tensor(label)] - weight[j]
            m = z.gather(1, torch.as_tensor(label).unsqueeze(1)).squeeze(1) - z[:, j] - e * w.abs().sum(-1)
            expected &= (torch.as_tensor(label) == j).numpy() | (m > 0).numpy()
        np.testing.assert_array_equal(right[str(e)].ravel(), expected[query.ravel()])
        assert set(violations[str(e)].values()) == {0}
    assert right["0.3"].mean() < right["0.1"].mean() < 1.0


def test_classify_run_reports_robust_accuracy(tmp_path: Path) -> None:
    cfg = {
        **TINY,
        **{"algorithms": ["protonet"], "steps": 20, "eval_shots": [5], "pretrain_steps": 20},
        **{"attacks": ["pgd"], "attack_eps": [0.25, 3.0]},
    }
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = classify_run(cfg, tmp_path, data=gaussian_families())
    finally:
        torch.set_num_threads(before)
    res = report["results"]["5"]
    assert set(res) == {"protonet", "1-nn", "logreg", "pretrain+finetune"}
    for method, r in res.items():
        robust = r["robust"]
        assert set(robust) == {"0.25", "3.0"}
        assert all(set(robust[e]["violations"].values()) == {0} for e in robust)
        # Clusters ~4.5 z-units apart, 0.13 wide: a quarter z-unit moves no query across, three move all.
        assert robust["0.25"]["acc"] > 0.6, (method, robust)
        assert robust["3.0"]["acc"] < 0.2, (method, robust)
    table = report["table"]
    assert "robust accuracy under pgd" in table and table.index("eps=0.25") < table.index("eps=3")


def test_pooling_keeps_the_robust_accuracy_per_budget() -> None:
    def fold(k: int, clean: dict[str, float], robust: dict[str, float]) -> dict:
        entry = {
            "acc": float(np.mean(list(clean.values()))),
            "family_acc": clean,
            "robust": {
                "1": {
                    "acc": float(np.mean(list(robust.values()))),
                    "family_acc": robust,
                    "violations": {"ball": k},
                    "per_attack_acc": {"edits": 0.5 - 0.25 * k},
                }
            },
        }
        return {
            "fold": k,
            "split": {},
            "seconds": 1.0,
            "best_meta_learner": "maml",
            "results": {"5": {"maml": entry}},
        }

    cfg = ClassifyConfig.model_validate({**ROTATE, "folds": None})
    pooled = pool_folds(
        [fold(0, {"a": 1.0, "b": 0.8}, {"a": 0.5, "b": 0.0}), fold(1, {"b": 0.6}, {"b": 0.2})], cfg
    )
    robust = pooled["results"]["5"]["maml"]["robust"]["1"]
    assert robust["family_acc"] == pytest.approx({"a": 0.5, "b": 0.1})
    assert robust["acc"] == pytest.approx(0.3) and robust["violations"] == {"ball": 1}
    assert robust["per_attack_acc"] == pytest.approx({"edits": 0.375})
    assert pooled["results"]["5"]["best-meta"]["robust"]["1"]["acc"] == pytest.approx(0.3)


def test_call_counts_may_only_rise() -> None:
    """Bag of calls: whole counts >= 0 that an attacker raises by inserting calls, never lowers."""
    prep = prepare_families(
        ordered_motif_families(), ClassifyConfig.model_validate({**ROTATE, "representation": "bag"}), 0
    )
    c = prep.constraints
    assert c is not None and bool(c.increase_only.all()) and c.int_idx.numel() == prep.X.shape[1]
    x0 = torch.as_tensor(prep.X[:4])
    up, down = c.edit_steps(x0)
    assert bool((up >= x0).all()) and torch.equal(down, x0)
    assert (
        prepare_families(ordered_motif_families(), ClassifyConfig.model_validate(ROTATE), 0).constraints
        is None
    )  # token inputs: no threat schema, so no attack


def test_attack_settings_are_validated() -> None:
    base = {"ways": 5, "n_val": 5, "n_test": 5}
    for bad, message in (
        ({"attacks": ["pgd"]}, "go together"),
        ({"attacks": ["nope"], "attack_eps": [1]}, "unknown"),
        ({"attacks": ["edits"], "attack_eps": [1.5]}, "whole edits"),
        ({"attacks": ["edits", "pgd"], "attack_eps": [1]}, "mixes"),
        ({"attacks": ["pgd"], "attack_eps": [0]}, "> 0"),
        ({"attacks": ["edits"], "attack_eps": [1], "representation": "tokens"}, "token sequences"),
    ):
        with pytest.raises(ValueError, match=message):
            ClassifyConfig.model_validate({**base, **bad})


def _binary_constraints(frozen: set[int], d: int):
    """z = 2·raw − 1 on every binary column (fitted on a balanced design), ``frozen`` columns immutable."""
    from metashield.attacks.constraints import compile_constraints
    from metashield.data import FeaturePipeline, TabularData
    from metashield.data.schema import FeatureSpec, ThreatSchema

    names = [f"b{j}" for j in range(d)]
    frame = pd.DataFrame(np.tile([[0] * d, [1] * d], (10, 1)), columns=names)
    schema = ThreatSchema(
        features={
            n: FeatureSpec(lower=0, upper=1, integer=True, mutable=j not in frozen, why="needed")
            for j, n in enumerate(names)
        }
    )
    data = TabularData(frame=frame, family=np.array(["a"] * 20, dtype=object), schema=schema)
    pipeline = FeaturePipeline(clip=None).fit(data)
    return pipeline, compile_constraints(pipeline, schema)


def test_nearest_neighbour_edits_reach_a_target_the_gradient_does_not() -> None:
    """x = 0…0 (class 0); own row r = 1100000000; the nearest other row s1 = 0011100000 differs only in
    frozen columns, so the gradient of 1-NN's margin (towards s1) has no useful edit. s2 = 0000011110 is
    reached in 2 edits (distance² 2 < 4 to r), not in 1 (a tie, 3 = 3, which 1-NN does not lose)."""
    from metashield.attacks.engine import classifier_objective, perturb
    from metashield.attacks.nearest import nearest_neighbour_edits

    pipeline, c = _binary_constraints({2, 3, 4}, 10)
    rows = ["0000000000", "1100000000", "0011100000", "0000011110"]
    raw = pd.DataFrame([[int(ch) for ch in r] for r in rows], columns=pipeline.input_columns)
    z = torch.tensor(pipeline.transform(raw))
    x, support = z[:1].unsqueeze(0), z[1:].unsqueeze(0)
    sy, y = torch.tensor([[0, 1, 1]]), torch.tensor([[0]])
    knn = NearestNeighbourLearner()
    params = knn.adapt(support, sy)
    out = nearest_neighbour_edits(support, sy, x, y, c, [1, 2])
    assert int(knn.predict(params, out[1]).argmax(-1)) == 0
    assert int(knn.predict(params, out[2]).argmax(-1)) == 1
    assert c.edit_count(out[2], x).item() == 2 and set(c.violations(out[2], x, 2, "edits").values()) == {0}
    objective = classifier_objective(lambda q: knn.predict(params, q), y, "margin")
    greedy, _ = perturb(objective, x, attack=get_attack("edits"), eps=2, constraints=c)
    assert int(knn.predict(params, greedy).argmax(-1)) == 0


def test_exact_greedy_edits_against_a_loop_over_every_edit() -> None:
    """The vectorised search against loops over every column, on a random MLP and binary rows."""
    from metashield.classify.robust import _exact_greedy

    torch.manual_seed(0)
    pipeline, c = _binary_constraints({0}, 7)
    raw = pd.DataFrame(np.random.default_rng(0).integers(0, 2, (2 * 9, 7)), columns=pipeline.input_columns)
    x0 = torch.tensor(pipeline.transform(raw)).view(2, 9, 7)
    net = nn.Sequential(nn.Linear(7, 16), nn.ReLU(), nn.Linear(16, 3)).requires_grad_(False)
    y = net(x0).argmax(-1)
    got, after_two = _exact_greedy(net, x0, y, c, rounds=2, block=3)
    expected = torch.ones(2, 9, dtype=torch.bool)
    for j in range(1, 7):  # column 0 is frozen
        flipped = x0.clone()
        flipped[..., j] = -flipped[..., j]  # z = ±1: one edit flips the bit
        expected &= net(flipped).argmax(-1) == y
    assert torch.equal(got, expected) and 0 < int(got.sum()) < 18
    # Two edits: the best first edit (lowest true margin), then every second one; never better than one.
    pairs = torch.ones(2, 9, dtype=torch.bool)
    for t in range(2):
        for m in range(9):
            if not got[t, m]:
                pairs[t, m] = False
                continue
            margins = []
            for j in range(1, 7):
                one = x0[t, m].clone()
                one[j] = -one[j]
                z = net(one)
                margins.append((float(z[y[t, m]] - z[torch.arange(3) != y[t, m]].max()), j, one))
            _, _, first = min(margins, key=lambda item: item[0])
            for j in range(1, 7):  # flipping the first edit back is a candidate too (it gives x0)
                two = first.clone()
                two[j] = -two[j]
                pairs[t, m] &= bool(net(two).argmax() == y[t, m])
    assert torch.equal(after_two, pairs) and bool((after_two <= got).all())
