"""``perturb(compile=True)``: the same adversarial examples as the eager engine, compiled once per process."""

from __future__ import annotations

import pytest
import torch
from test_attacks import SCHEMA, _data
from torch._dynamo.utils import counters

from metashield.attacks.constraints import compile_constraints
from metashield.attacks.engine import classifier_objective, perturb, set_compile
from metashield.attacks.fast_mlp import MLPObjective, mlp_layers
from metashield.attacks.presets import get_attack
from metashield.attacks.state import compile_unavailable
from metashield.data import FeaturePipeline
from metashield.models import MLP

pytestmark = pytest.mark.skipif(
    compile_unavailable() is not None, reason=f"torch.compile cannot run here: {compile_unavailable()}"
)


@pytest.fixture(scope="module")
def case():
    """64 rows of the integer / log-scaled / one-hot / immutable schema of test_attacks, in float64."""
    data = _data()
    pipeline = FeaturePipeline(clip=10.0).fit(data)
    c32 = compile_constraints(pipeline, SCHEMA)
    x0 = torch.tensor(pipeline.transform(data.frame[:64]), dtype=torch.float64)
    torch.manual_seed(2)
    model = MLP(x0.shape[1], (24, 16), 2).double()
    return model, x0, c32


@pytest.mark.parametrize(
    ("name", "norm", "closed_form"),
    [
        ("pgd", "linf", True),
        ("apgd-margin", "linf", True),
        ("square", "linf", True),
        ("mimicry", "linf", True),
        ("pgd", "l2", True),
        ("apgd-ce", "linf", False),
    ],
)
def test_compiled_attacks_give_the_eager_examples(case, name, norm, closed_form):
    """Every step rule and start, both norms, the closed-form and the autograd objective: the compiled
    engine returns the eager engine's examples and scores, and they satisfy every constraint."""
    model, x0, c32 = case
    c = c32.to(x0)
    y = torch.ones(len(x0), dtype=torch.int64)
    attack = get_attack(name, norm=norm, steps=10)
    eps = 2.0 if norm == "linf" else 4.0
    guides = x0.flip(0)[:32] if attack.start == "benign" else None

    def run(compile: bool) -> tuple[torch.Tensor, torch.Tensor]:
        objective = (
            MLPObjective(mlp_layers(model), y, attack.loss)
            if closed_form
            else classifier_objective(model, y, attack.loss)
        )
        kw = {"attack": attack, "eps": eps, "constraints": c, "seed": 3, "guides": guides}
        return perturb(objective, x0, compile=compile, **kw)

    eager, eager_score = run(False)
    compiled, compiled_score = run(True)
    # Fused kernels may round the last bit differently; a sign step on such a difference would move a
    # coordinate by a whole step, far beyond this tolerance.
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-9)
    torch.testing.assert_close(compiled_score, eager_score, rtol=0, atol=1e-9)
    assert (compiled - x0).abs().amax() > 0
    assert sum(c32.violations(compiled.float(), x0.float(), eps, attack.norm).values()) == 0


def test_a_new_attack_call_reuses_the_compiled_code(case):
    """Guards check shapes and dtypes, not which objective or constraints object a call holds, nor the
    budget: a second call with fresh objects and new inputs of the same shape, and a third with another eps
    (so another step size), compile nothing new."""
    model, x0, c32 = case
    y = torch.ones(len(x0), dtype=torch.int64)
    attack = get_attack("pgd", steps=3)

    def call(x: torch.Tensor, eps: float) -> torch.Tensor:
        objective = MLPObjective(mlp_layers(model), y, "ce")
        return perturb(objective, x, attack=attack, eps=eps, constraints=c32.to(x), compile=True)[0]

    call(x0, 1.0)
    graphs = counters["stats"]["unique_graphs"]
    call(x0.flip(0), 1.0)
    wider = call(x0, 2.5)
    assert counters["stats"]["unique_graphs"] == graphs
    assert (wider - x0).abs().amax() > 1.0 + 1e-6  # the new budget was used, not the compiled one


def test_set_compile_sets_the_default_of_perturb(case, monkeypatch):
    """``set_compile(True)`` (the CLI's ``--compile``) makes ``compile=None`` calls compile."""
    from metashield.attacks import state

    model, x0, c32 = case
    seen = []
    real = state._fn
    monkeypatch.setattr(state, "_fn", lambda name, compile: seen.append(compile) or real(name, False))
    monkeypatch.setattr(state, "_compile_default", False)
    objective = MLPObjective(mlp_layers(model), torch.ones(len(x0), dtype=torch.int64), "ce")
    kw = {"attack": get_attack("fgsm"), "eps": 1.0, "constraints": c32.to(x0)}
    perturb(objective, x0, **kw)
    set_compile(True)
    perturb(objective, x0, **kw)
    assert seen and not any(seen[: len(seen) // 2]) and all(seen[len(seen) // 2 :])
