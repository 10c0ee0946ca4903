"""The evasion engine, its constraint projection and the robust evaluation, on cases with known answers."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from metashield.attacks.constraints import box_constraints, compile_constraints
from metashield.attacks.engine import Attack, classifier_objective, margin, perturb
from metashield.attacks.presets import get_attack
from metashield.attacks.rules import apgd_checkpoints
from metashield.attacks.starts import GUIDE_CANDIDATES, guide_starts
from metashield.attacks.state import AttackRun
from metashield.data import FeaturePipeline, TabularData
from metashield.data.schema import FeatureSpec, ThreatSchema
from metashield.evaluation.robust import LARGE_EDITS, detected, large_eps, robust_evaluate, worst_case

SCHEMA = ThreatSchema(
    features={
        "count": FeatureSpec(lower=0, upper=500, integer=True),
        "bytes": FeatureSpec(lower=0, integer=True),
        "rate": FeatureSpec(lower=0.0, upper=1.0),
        "proto": FeatureSpec(mutable=False, why="the transport the attack needs"),
    }
)


def _data(n: int = 400, seed: int = 0) -> TabularData:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "count": rng.integers(0, 500, n),
            "bytes": rng.integers(0, 10**6, n),
            "rate": rng.random(n),
            "proto": rng.choice(["tcp", "udp", "icmp"], n),
            "flag": rng.choice(["SF", "S0", "REJ", "RSTO"], n),
            "free": rng.normal(size=n),
        }
    )
    return TabularData(
        frame=frame,
        family=np.array(["benign"] * n, dtype=object),
        categorical=["proto", "flag"],
        log_scaled=["bytes"],
        name="synthetic",
        schema=SCHEMA,
    )


@pytest.fixture(scope="module")
def fitted():
    data = _data()
    pipeline = FeaturePipeline(clip=10.0).fit(data)
    return data, pipeline, compile_constraints(pipeline, SCHEMA)


def _raw(pipeline: FeaturePipeline, z: np.ndarray) -> dict[str, np.ndarray]:
    """Invert the pipeline per output column: raw values of numeric columns, indicators of one-hot ones."""
    out = {}
    for j, (column, value, log, mean, std) in enumerate(pipeline.feature_sources()):
        enc = z[..., j].astype(np.float64) * std + mean
        out[f"{column}={value}" if value is not None else column] = np.expm1(enc) if log else enc
    return out


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_gives_valid_raw_rows_for_any_candidate(fitted, norm):
    data, pipeline, c = fitted
    x0 = torch.tensor(pipeline.transform(data.frame))
    gen = torch.Generator().manual_seed(1)
    eps = 3.0
    x = c.project(x0 + 4 * torch.randn(x0.shape, generator=gen), x0, eps, norm)
    assert c.violations(x, x0, eps, norm) == dict.fromkeys(
        ["ball", "immutable", "bounds", "direction", "integer", "one_hot"], 0
    )
    raw, raw0 = _raw(pipeline, x.numpy()), _raw(pipeline, x0.numpy())
    assert np.abs(raw["count"] - np.round(raw["count"])).max() < 1e-3
    assert raw["count"].min() >= -1e-6 and raw["count"].max() <= 500 + 1e-3
    assert raw["rate"].min() >= -1e-6 and raw["rate"].max() <= 1 + 1e-6
    # bytes spans six orders of magnitude: integrality holds to float32's relative precision.
    assert np.all(np.abs(raw["bytes"] - np.round(raw["bytes"])) <= 1e-3 * np.maximum(raw["bytes"], 1))
    for value in ("icmp", "tcp", "udp"):
        np.testing.assert_allclose(raw[f"proto={value}"], raw0[f"proto={value}"], atol=1e-6)
    flags = np.stack([raw[f"flag={v}"] for v in ("REJ", "RSTO", "S0", "SF")], -1)
    np.testing.assert_allclose(np.sort(flags, -1), np.tile([0, 0, 0, 1], (len(flags), 1)), atol=1e-5)
    # The perturbation is not trivial: the attack really moved mutable features.
    assert (x - x0).abs().amax() > 0.5


def test_a_one_hot_switch_happens_only_when_it_fits_the_ball(fitted):
    data, pipeline, c = fitted
    x0 = torch.tensor(pipeline.transform(data.frame[:1]))
    names = list(c.names)
    sf, s0 = names.index("flag=SF"), names.index("flag=S0")
    target = s0 if x0[0, sf] > x0[0, s0] else sf
    push = torch.zeros_like(x0)
    push[0, target] = 100.0
    needed = float((c.one_z - c.zero_z).abs().max())
    kept = c.project(x0 + push, x0, needed / 2, "linf")
    assert torch.equal(kept[:, c.groups[0]], x0[:, c.groups[0]])
    moved = c.project(x0 + push, x0, needed * 1.01, "linf")
    assert moved[0, target] == c.one_z[target]


def test_integer_rounds_to_nearest_inside_the_ball_and_towards_the_original_outside():
    schema = ThreatSchema(features={"n": FeatureSpec(lower=0, integer=True)})
    frame = pd.DataFrame({"n": np.arange(0, 20)})
    data = TabularData(frame=frame, family=np.array(["benign"] * 20, dtype=object), schema=schema)
    pipeline = FeaturePipeline(clip=None).fit(data)
    c = compile_constraints(pipeline, schema)
    (_, _, _, mean, std) = pipeline.feature_sources()[0]
    unit = 1.0 / std  # one raw count in z-units
    x0 = torch.tensor([[(10 - mean) / std]], dtype=torch.float64)
    candidate = x0 + 0.7 * unit  # raw 10.7
    # The ball admits raw 11 (nearest): take it.
    near = c.to(x0).project(candidate, x0, 1.2 * unit, "linf")
    assert near.item() == pytest.approx((11 - mean) / std, abs=1e-9)
    # The ball admits only up to raw 10.9: rounding goes back to the original 10.
    back = c.to(x0).project(candidate, x0, 0.9 * unit, "linf")
    assert back.item() == pytest.approx((10 - mean) / std, abs=1e-9)


@pytest.mark.parametrize("norm", ["linf", "l2", "edits"])
def test_increase_only_counts_never_fall_below_the_sample(norm):
    """Score = calls + other (log counts): the attacker wants both lower, but may only lower ``other``."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"calls": rng.integers(5, 60, 200), "other": rng.integers(5, 60, 200)})
    inserted = FeatureSpec(lower=0, integer=True, increase_only=True, why="calls can only be inserted")
    schema = ThreatSchema(features={"calls": inserted, "other": FeatureSpec(lower=0, integer=True)})
    data = TabularData(
        frame=frame,
        family=np.array(["x"] * 200, dtype=object),
        log_scaled=["calls", "other"],
        schema=schema,
    )
    pipeline = FeaturePipeline(clip=None).fit(data)
    c = compile_constraints(pipeline, schema)
    x0 = torch.tensor(pipeline.transform(frame.iloc[:50]))
    detector = _linear(torch.tensor([1.0, 1.0], dtype=torch.float64)).float()
    objective = classifier_objective(detector, torch.ones(50, dtype=torch.int64), "margin")
    attack = get_attack("edits") if norm == "edits" else get_attack("pgd", norm=norm)
    # L2 rounds integers towards the original, so its steps must exceed one count: eps 2 rather than 1.
    eps = {"edits": 5, "linf": 1.0, "l2": 2.0}[norm]
    x, _ = perturb(objective, x0, attack=attack, eps=eps, constraints=c, seed=0)
    torch.testing.assert_close(x[:, 0], x0[:, 0], rtol=0, atol=0)
    assert bool((x[:, 1] < x0[:, 1]).all())
    assert set(c.violations(x, x0, eps, norm).values()) == {0}
    # Lowering an increase-only count is a violation; raising it is not.
    unit = torch.zeros_like(x0)
    unit[:, 0] = 0.01
    assert c.violations(x0 - unit, x0, 1.0, "linf")["direction"] == 50
    assert c.violations(x0 + unit, x0, 1.0, "linf")["direction"] == 0
    with pytest.raises(ValueError, match="increase_only applies to mutable"):
        FeatureSpec(mutable=False, increase_only=True, why="x")


def _linear(w: torch.Tensor, b: float = 0.0) -> nn.Module:
    """Logits [0, w·x + b]: the detector score is exactly w·x + b."""
    model = nn.Linear(w.numel(), 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.stack([torch.zeros_like(w), w]))
        model.bias.copy_(torch.tensor([0.0, b]))
    return model


@pytest.mark.parametrize("name", ["fgsm", "pgd", "apgd-ce", "apgd-margin"])
def test_linf_attacks_reach_the_closed_form_optimum_of_a_linear_detector(name):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, generator=gen, dtype=torch.float64)
    x0 = torch.randn(3, 5, 8, generator=gen, dtype=torch.float64)
    model = _linear(w)
    y = torch.ones(3, 5, dtype=torch.int64)
    attack = get_attack(name, steps=40) if name != "fgsm" else get_attack(name)
    _, score = perturb(
        classifier_objective(model, y, attack.loss),
        x0,
        attack=attack,
        eps=0.3,
        constraints=box_constraints(8, dtype=torch.float64),
    )
    # min over the L∞ ball of w·x is w·x0 - eps·||w||_1.
    torch.testing.assert_close(score, x0 @ w - 0.3 * w.abs().sum(), atol=1e-9, rtol=0)


def test_l2_pgd_reaches_the_closed_form_optimum_of_a_linear_detector():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, generator=gen, dtype=torch.float64)
    x0 = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    attack = get_attack("pgd", norm="l2", steps=60, start="input")
    _, score = perturb(
        classifier_objective(_linear(w), torch.ones(4, dtype=torch.int64), "margin"),
        x0,
        attack=attack,
        eps=0.5,
        constraints=box_constraints(8, dtype=torch.float64),
    )
    torch.testing.assert_close(score, x0 @ w - 0.5 * w.norm(), atol=1e-6, rtol=0)


def test_frozen_rows_stay_put_and_attacks_never_help_the_detector():
    gen = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2)).double()
    x0 = torch.randn(2, 10, 6, generator=gen, dtype=torch.float64)
    y = torch.ones(2, 10, dtype=torch.int64)
    free = torch.arange(10).expand(2, 10) % 2 == 0
    objective = classifier_objective(model, y, "ce")
    for name in ("pgd", "apgd-ce", "square"):
        x, score = perturb(
            objective, x0, attack=get_attack(name), eps=0.4, constraints=box_constraints(6), free=free
        )
        assert torch.equal(x[~free], x0[~free])
        with torch.no_grad():
            clean = margin(model(x0), y)
        assert bool((score <= clean + 1e-12).all()), name
        again, _ = perturb(
            objective, x0, attack=get_attack(name), eps=0.4, constraints=box_constraints(6), free=free
        )
        assert torch.equal(x, again), f"{name} is not reproducible with the same seed"


def test_apgd_checkpoints_follow_the_published_schedule():
    # p0 = 0, p1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (Croce & Hein, 2020), 100 iterations.
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_worst_case_takes_each_samples_most_successful_attack():
    clean = torch.tensor([[5.0, 5.0, 5.0, 5.0]])
    by_a = torch.tensor([[-1.0, 5.0, 4.0, 5.0]])  # evades on sample 0 only
    by_b = torch.tensor([[5.0, -2.0, 4.5, 5.0]])  # evades on sample 1 only
    thresholds = torch.tensor([3.0])
    assert detected(by_a, thresholds).item() == 0.75
    assert detected(by_b, thresholds).item() == 0.75
    worst = worst_case([clean, by_a, by_b])
    assert worst.tolist() == [[-1.0, -2.0, 4.0, 5.0]]
    assert detected(worst, thresholds).item() == 0.5


def test_robust_evaluate_matches_the_per_sample_closed_form_on_a_linear_detector():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, generator=gen, dtype=torch.float64)
    model = _linear(w)
    benign = torch.randn(2, 300, 6, generator=gen, dtype=torch.float64) - w
    attack = torch.randn(2, 50, 6, generator=gen, dtype=torch.float64) + w
    eps = 0.25
    out = robust_evaluate(
        model, benign, attack, constraints=box_constraints(6, dtype=torch.float64), eps=[eps], sanity=False
    )
    for t in range(2):
        tau = torch.sort(benign[t] @ w, descending=True).values[3]  # floor(1% of 300) = 3 above it
        expected = ((attack[t] @ w - eps * w.abs().sum()) > tau).double().mean().item()
        assert out["robust"][str(eps)]["tpr"][t] == pytest.approx(expected)
        assert out["clean"]["tpr"][t] == pytest.approx(((attack[t] @ w) > tau).double().mean().item())


class _Staircase(nn.Module):
    """A detector whose score is piecewise constant: zero gradient everywhere (masked gradients)."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.round(4 * (x @ self.w)) / 4
        return torch.stack([torch.zeros_like(s), s], -1)


def test_sanity_checks_flag_gradient_masking_and_pass_on_an_honest_model():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, generator=gen, dtype=torch.float64)
    benign = torch.randn(2, 300, 6, generator=gen, dtype=torch.float64) - w
    attack = torch.randn(2, 60, 6, generator=gen, dtype=torch.float64) + w
    box = box_constraints(6, dtype=torch.float64)
    masked = robust_evaluate(_Staircase(w), benign, attack, constraints=box, eps=[2.0], seed=0)
    assert "gradient_free" in masked["flags"], masked["sanity"]["gradient_free"]
    honest = robust_evaluate(_linear(w), benign, attack, constraints=box, eps=[2.0], seed=0)
    assert honest["flags"] == [], honest["sanity"]
    assert honest["sanity"]["large_eps"]["robust_tpr"] == 0.0


class _FlatNovelty(nn.Module):
    """Score min(1, squared distance to the nearest benign row) - 0.5: flat, with a zero gradient, more than
    one unit from every benign row, so a gradient attack that starts there cannot move."""

    def __init__(self, benign: torch.Tensor) -> None:
        super().__init__()
        self.benign = benign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(x, self.benign).square().amin(-1)
        s = d2.clamp(max=1.0) - 0.5
        return torch.stack([torch.zeros_like(s), s], -1)


def test_mimicry_starts_at_the_benign_row_the_sample_can_reach_where_gradients_are_flat():
    gen = torch.Generator().manual_seed(4)
    benign = 4 * torch.rand(1, 300, 3, generator=gen, dtype=torch.float64)
    # Each malicious row is a benign row moved 3 units along one axis, out of the flat region's reach.
    source = benign[:, :20]
    attack = source + torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64)
    box = box_constraints(3, -10.0, 10.0, dtype=torch.float64)
    detector = _FlatNovelty(benign[0])
    out = robust_evaluate(detector, benign, attack, constraints=box, eps=[3.0], seed=0)
    robust = out["robust"]["3.0"]
    assert out["clean"]["tpr"] == [1.0]
    assert robust["per_attack_tpr"]["mimicry"] == [0.0]
    for name in ("pgd", "apgd-ce", "apgd-margin", "square"):
        assert robust["per_attack_tpr"][name][0] > 0.5, name
    assert robust["tpr"] == [0.0] and sum(robust["violations"].values()) == 0
    # With one axis immutable, no guide is within reach of the first row: the start is the guide nearest to
    # the feasible box, projected into it; a detector flat everywhere in reach keeps the last iterate there.
    flat = _FlatNovelty(torch.full((1, 3), 100.0, dtype=torch.float64))
    objective = classifier_objective(flat, torch.ones(1, 20, dtype=torch.int64), "margin")
    frozen = dataclasses.replace(box, mutable=torch.tensor([True, True, False]))
    guides = torch.tensor([[9.0, 9.0, 9.0]] * 15 + [[1.0, 1.0, 5.0]], dtype=torch.float64)
    last = dataclasses.replace(get_attack("mimicry"), keep="last")
    x, _ = perturb(objective, attack, attack=last, eps=3.0, constraints=frozen, guides=guides)
    nearest = torch.maximum(torch.minimum(guides[-1], attack[0, 0] + 3), attack[0, 0] - 3)
    nearest[2] = attack[0, 0, 2]
    assert torch.equal(x[0, 0], nearest)


def test_mimicry_candidates_are_the_guides_nearest_to_each_rows_feasible_box():
    """The ranking (immutable columns as one matmul, the others as distances to their interval) picks the
    same candidates as the squared distance to the feasible box written out per row, column and guide."""
    gen = torch.Generator().manual_seed(7)
    x0 = torch.randn(2, 30, 6, generator=gen, dtype=torch.float64)
    guides = torch.randn(2, 200, 6, generator=gen, dtype=torch.float64)
    box = box_constraints(6, -2.0, 2.0, dtype=torch.float64)
    frozen = dataclasses.replace(box, mutable=torch.tensor([True, False, True, True, False, True]))
    objective = classifier_objective(
        _linear(torch.ones(6, dtype=torch.float64)), torch.ones(2, 30).long(), "ce"
    )
    run = AttackRun(objective, x0, 0.5, get_attack("mimicry"), frozen.to(x0), None)
    picked = guide_starts(run, guides)
    lo, hi = frozen.linf_interval(x0, 0.5)
    gap = (lo.unsqueeze(-2) - guides.unsqueeze(1)).clamp_min(0) + (
        guides.unsqueeze(1) - hi.unsqueeze(-2)
    ).clamp_min(0)
    nearest = gap.square().sum(-1).topk(GUIDE_CANDIDATES, dim=-1, largest=False).indices
    for t in range(2):
        for r in range(30):
            # Under a plain box the projection is the clamp to the row's interval.
            expected = torch.clamp(guides[t, nearest[t, r]], lo[t, r], hi[t, r])
            got = picked[:, t, r]
            assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, expected.tolist()))


def test_a_benign_start_is_refused_where_it_cannot_work():
    objective = classifier_objective(
        _linear(torch.ones(3, dtype=torch.float64)), torch.ones(2, dtype=torch.int64), "ce"
    )
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    box = box_constraints(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="pass guides"):
        perturb(objective, x0, attack=get_attack("mimicry"), eps=1.0, constraints=box)
    with pytest.raises(ValueError, match="at least 16 guides"):
        perturb(
            objective, x0, attack=get_attack("mimicry"), eps=1.0, constraints=box, guides=torch.zeros(3, 3)
        )
    with pytest.raises(ValueError, match="rule 'pgd' or 'apgd'"):
        Attack("bad", loss="margin", rule="square", start="benign")
    with pytest.raises(ValueError, match="start must be one of"):
        Attack("bad", start="benign-ish")


def test_large_eps_frees_a_value_clipped_at_one_end_of_the_box():
    """A malicious value clipped at +10 must be able to reach benign values below 0: a ball as wide as the
    clip (the earlier constant 10) stops it at 0 and would flag an honest linear detector."""
    gen = torch.Generator().manual_seed(1)
    box = box_constraints(1, -10.0, 10.0, dtype=torch.float64)
    assert large_eps(box, "linf") == 20.0
    assert large_eps(box_constraints(4, -10.0, 10.0), "l2") == pytest.approx(40.0)
    assert large_eps(box_constraints(4), "linf") == 20.0  # no finite bound: twice the default clip
    assert large_eps(box, "edits") == LARGE_EDITS
    benign = -2 + 0.3 * torch.randn(1, 500, 1, generator=gen, dtype=torch.float64)
    attack = torch.full((1, 20, 1), 10.0, dtype=torch.float64)
    detector = _linear(torch.ones(1, dtype=torch.float64))
    out = robust_evaluate(detector, benign, attack, constraints=box, eps=[1.0])
    check = out["sanity"]["large_eps"]
    assert check["eps"] == 20.0 and check["clean_tpr"] == 1.0
    assert check["robust_tpr"] == 0.0 and "large_eps" not in out["flags"]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_restarts_keep_each_samples_best_and_find_more(norm):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 2)).double()
    x0 = torch.randn(200, 6, dtype=torch.float64)
    y = model(x0).argmax(-1)
    objective = classifier_objective(model, y, "margin")
    box = box_constraints(6, dtype=torch.float64)
    once = get_attack("pgd", norm=norm, steps=3)
    x1, s1 = perturb(objective, x0, attack=once, eps=0.5, constraints=box, seed=3)
    x4, s4 = perturb(
        objective, x0, attack=dataclasses.replace(once, restarts=4), eps=0.5, constraints=box, seed=3
    )
    # The first restart replays the single run (same seed), and each sample keeps its best iterate.
    assert bool((s4 <= s1).all()) and bool((s4 < s1 - 1e-6).any())
    torch.testing.assert_close(objective(x4)[1], s4)
    assert int(sum(box.violations(x4, x0, 0.5, norm).values())) == 0


def test_bad_attack_parameters_are_clear_errors():
    with pytest.raises(ValueError, match="loss must be one of"):
        Attack("x", loss="dlr")
    with pytest.raises(ValueError, match="norm must be one of"):
        Attack("x", norm="l1")
    with pytest.raises(ValueError, match="keep='last' needs restarts=1"):
        Attack("x", keep="last", restarts=3)
    with pytest.raises(ValueError, match="unknown attack 'cw'"):
        get_attack("cw")
    model = nn.Linear(3, 2)
    x0 = torch.zeros(1, 3)
    objective = classifier_objective(model, torch.ones(1, dtype=torch.int64), "ce")
    for eps in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
            perturb(objective, x0, attack=get_attack("pgd"), eps=eps, constraints=box_constraints(3))
    with pytest.raises(ValueError, match="constraints cover 4 features, inputs have 3"):
        perturb(objective, x0, attack=get_attack("pgd"), eps=0.1, constraints=box_constraints(4))


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_closed_form_mlp_gradient_equals_autograd_shared_and_per_task(loss):
    from metashield.attacks.fast_mlp import MLPObjective, mlp_layers
    from metashield.meta import MAML
    from metashield.models import MLP

    torch.manual_seed(0)
    model = MLP(7, (16, 12), 2).double()
    x = torch.randn(3, 9, 7, dtype=torch.float64)
    y = torch.randint(0, 2, (3, 9))
    # Shared weights: the model itself.
    fast = MLPObjective(mlp_layers(model), y, loss)
    ref = classifier_objective(model, y, loss)
    xg = x.clone().requires_grad_(True)
    ref_loss, ref_score = ref(xg)
    (ref_grad,) = torch.autograd.grad(ref_loss.sum(), xg)
    got_loss, got_score, got_grad = fast.value_and_grad(x)
    torch.testing.assert_close(got_loss, ref_loss.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(got_score, ref_score.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(got_grad, ref_grad, rtol=0, atol=1e-12)
    # Per-task weights: a learner's adapted parameters.
    learner = MAML(model, inner_lr=0.3, inner_steps=2)
    support = torch.randn(3, 6, 7, dtype=torch.float64)
    with torch.no_grad():
        params = learner.adapt(support, torch.tensor([[0, 0, 0, 1, 1, 1]] * 3))
    fast = MLPObjective(mlp_layers(model, params), y, loss)
    ref = classifier_objective(lambda z: learner.predict(params, z), y, loss)
    xg = x.clone().requires_grad_(True)
    ref_loss, _ = ref(xg)
    (ref_grad,) = torch.autograd.grad(ref_loss.sum(), xg)
    _, _, got_grad = fast.value_and_grad(x)
    torch.testing.assert_close(got_grad, ref_grad, rtol=0, atol=1e-12)
    # The engine takes the closed form and lands on the same adversarial examples.
    box = box_constraints(7, dtype=torch.float64)
    a, _ = perturb(fast, x, attack=get_attack("apgd-ce", loss=loss), eps=0.3, constraints=box)
    b, _ = perturb(ref, x, attack=get_attack("apgd-ce", loss=loss), eps=0.3, constraints=box)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("per_task", [False, True])
def test_restricted_mlp_objective_equals_the_full_one_where_the_attack_can_move(per_task):
    """``MLPObjective.restrict`` precomputes the first layer's share of the immutable columns and takes the
    free columns alone: values and their gradient must equal the full objective's, and the engine (whose
    iterates then hold the free columns only) must land on the same adversarial examples as the autograd
    path on full inputs under a schema that freezes most columns."""
    import dataclasses

    from metashield.attacks.fast_mlp import MLPObjective, mlp_layers
    from metashield.meta import MAML
    from metashield.models import MLP

    torch.manual_seed(1)
    d = 21  # 7 free columns: the first layer's backward is padded to 16 columns
    model = MLP(d, (32, 16), 2).double()
    x = torch.randn(3, 9, d, dtype=torch.float64)
    y = torch.randint(0, 2, (3, 9))
    mutable = torch.zeros(d, dtype=torch.bool)
    mutable[[0, 3, 4, 9, 15, 16, 20]] = True
    if per_task:
        learner = MAML(model, inner_lr=0.3, inner_steps=2)
        with torch.no_grad():
            support = torch.randn(3, 6, d, dtype=torch.float64)
            params = learner.adapt(support, torch.tensor([[0, 0, 0, 1, 1, 1]] * 3))
        layers, forward = mlp_layers(model, params), (lambda z: learner.predict(params, z))
    else:
        layers, forward = mlp_layers(model), model
    full = MLPObjective(layers, y, "ce")
    restricted = full.restrict(x, mutable)
    # Any point that keeps the fixed columns at x: same loss, score and free-column gradient.
    moved = torch.where(mutable, x + torch.randn_like(x), x)
    want = full.value_and_grad(moved)
    got = restricted.value_and_grad(moved[..., mutable])
    for a, b in zip(got[:2], want[:2], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(got[2], want[2][..., mutable], rtol=0, atol=1e-12)
    # Columns given as indices in any order: the inputs and the gradient follow that order.
    order = mutable.nonzero().squeeze(-1)[torch.tensor([4, 0, 6, 2, 1, 5, 3])]
    got = full.restrict(x, order).value_and_grad(moved[..., order])
    for a, b in zip(got[:2], want[:2], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(got[2], want[2][..., order], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="already restricted"):
        restricted.restrict(x, mutable)
    # Through the engine (which restricts L∞ attacks on its own) against autograd on the full model.
    box = box_constraints(d, dtype=torch.float64)
    frozen = dataclasses.replace(box, mutable=mutable)
    reference = classifier_objective(forward, y, "ce")
    for name in ("pgd", "apgd-ce", "square"):
        a, _ = perturb(full, x, attack=get_attack(name), eps=0.3, constraints=frozen)
        b, _ = perturb(reference, x, attack=get_attack(name), eps=0.3, constraints=frozen)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        assert torch.equal(a[..., ~mutable], x[..., ~mutable])


def test_selected_constraints_project_the_selected_columns_as_the_full_ones_do(fitted):
    """``Constraints.select``: integer grids, log-scaled counts and a one-hot group keep their meaning when
    the inputs hold the mutable columns only; a group split by the selection is an error."""
    data, pipeline, c = fitted
    x0 = torch.tensor(pipeline.transform(data.frame))
    candidate = x0 + 4 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    sub = c.select(c.mutable)
    assert sub.n_features == int(c.mutable.sum()) and bool(sub.mutable.all())
    for norm in ("linf", "l2"):
        full = c.project(candidate.clone(), x0, 3.0, norm)
        part = sub.project(candidate[:, c.mutable].clone(), x0[:, c.mutable], 3.0, norm)
        torch.testing.assert_close(part, full[:, c.mutable], rtol=0, atol=0)
    up, down = c.edit_steps(x0)
    sub_up, sub_down = sub.edit_steps(x0[:, c.mutable])
    assert torch.equal(sub_up, up[:, c.mutable]) and torch.equal(sub_down, down[:, c.mutable])
    split = c.mutable.clone()
    split[c.groups[0][0]] = False
    with pytest.raises(ValueError, match="one-hot group .* only partly selected"):
        c.select(split)


def test_block_order_makes_each_kind_of_column_one_slice_and_projects_as_the_natural_order(fitted):
    """``Constraints.block_order`` (the order an attack's iterates hold their columns in): a permutation of
    the selected columns in which plain, one-hot, linear-integer and log-integer columns each form one block,
    so the L∞ projection reads them as slices; projecting in that order, or in a scrambled one (gathers),
    gives the natural order's result permuted (exactly under L∞)."""
    from metashield.attacks.linf_projection import LinfProjector

    data, pipeline, c = fitted
    x0 = torch.tensor(pipeline.transform(data.frame))
    candidate = x0 + 4 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    natural = c.mutable.nonzero().squeeze(-1)
    order = c.block_order(c.mutable)
    assert sorted(order.tolist()) == natural.tolist() and not torch.equal(order, natural)
    sub = c.select(order)
    kind = torch.zeros(len(order), dtype=torch.int64)
    kind[sub.groups[0]] = 1
    kind[sub.int_idx[~sub.int_log]], kind[sub.int_idx[sub.int_log]] = 2, 3
    assert bool((kind.diff() >= 0).all()) and set(kind.tolist()) == {0, 1, 2, 3}
    projector = LinfProjector(sub, x0[:, order], 3.0)
    assert all(isinstance(block[0], slice) for block in projector.ints + projector.groups)
    scrambled = order.flip(0)
    for norm in ("linf", "l2"):
        full = c.project(candidate.clone(), x0, 3.0, norm)
        for columns in (order, scrambled):
            part = c.select(columns).project(candidate[:, columns].clone(), x0[:, columns], 3.0, norm)
            # L2's row norm sums in the new order: float32 rounding, nothing more.
            tol = 0 if norm == "linf" else 2e-6
            torch.testing.assert_close(part, full[:, columns], rtol=0, atol=tol)


def test_every_rule_lands_on_the_same_examples_in_the_mutable_columns_as_on_full_inputs(fitted):
    """Under a schema with integer, log-scaled, one-hot and immutable columns, the engine's fast path (the
    iterates hold the mutable columns, ``MLPObjective.restrict``) and autograd on full inputs agree for
    every step rule, random starts and Square's random draws included."""
    from metashield.attacks.fast_mlp import MLPObjective, mlp_layers
    from metashield.models import MLP

    data, pipeline, c32 = fitted
    c = c32.to(torch.zeros((), dtype=torch.float64))
    x0 = torch.tensor(pipeline.transform(data.frame[:64]), dtype=torch.float64)
    torch.manual_seed(2)
    model = MLP(x0.shape[1], (24, 16), 2).double()
    y = torch.ones(len(x0), dtype=torch.int64)
    for name, eps in (("pgd", 2.0), ("apgd-margin", 2.0), ("square", 2.0), ("edits", 3)):
        attack = get_attack(name, steps=30) if name == "square" else get_attack(name)
        fast = MLPObjective(mlp_layers(model), y, attack.loss)
        reference = classifier_objective(model, y, attack.loss)
        a, score_a = perturb(fast, x0, attack=attack, eps=eps, constraints=c, seed=5)
        b, score_b = perturb(reference, x0, attack=attack, eps=eps, constraints=c, seed=5)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        torch.testing.assert_close(score_a, score_b, rtol=0, atol=1e-12)
        assert (a - x0).abs().amax() > 0, name
        # Checked at the pipeline's float32 precision, in which x0's untouched integer values were written.
        assert sum(c32.violations(a.float(), x0.float(), eps, attack.norm).values()) == 0
