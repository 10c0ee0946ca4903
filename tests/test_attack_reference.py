"""The engine's PGD L∞ against independent implementations on one trained model and one batch.

References: a hand-written loop (always), torchattacks' ``PGD`` and ART's ``ProjectedGradientDescent``
(optional test dependencies, skipped when absent). All run without random start and return the last iterate,
so the adversarial examples themselves must agree, not only their success rates.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metashield.attacks.constraints import box_constraints
from metashield.attacks.engine import Attack, classifier_objective, perturb
from metashield.models.mlp import MLP

D = 20
# A power of two: both libraries ascend the batch-MEAN cross-entropy, the engine the per-sample sum; scaling
# by 1/64 is exact in floating point, so every gradient coordinate (and its sign) is the engine's, times 2^-6.
N = 64
# Dyadic so that the engine's step ``step_size * eps`` = (ALPHA / EPS) * EPS is exactly ALPHA.
EPS, ALPHA, STEPS = 0.0625, 0.015625, 10
TOL = 1e-5

PGD_REF = Attack(
    "pgd-ref",
    loss="ce",
    rule="pgd",
    norm="linf",
    steps=STEPS,
    step_size=ALPHA / EPS,
    start="input",
    keep="last",
)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Batches of 64 rows gain nothing from intra-op threads, and on a loaded machine OpenMP threads
    spin-wait on each other (300 training steps: 0.2 s on 1 thread, 19 s on 2 with both cores busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def problem() -> tuple[nn.Module, Tensor, Tensor]:
    """(MLP 20 -> 32 -> 32 -> 2 in float64, eval mode; inputs [N, D] in [0, 1]; labels int64 [N])."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(512, D, generator=g, dtype=torch.float64)
    w = torch.randn(D, generator=g, dtype=torch.float64)
    # A non-linear boundary so the trained network is not just a linear map (PGD would then be one FGSM step).
    y = ((x - 0.5) @ w + 0.5 * torch.sin(6 * x[:, 0]) > 0).long()
    torch.manual_seed(0)
    model = MLP(D, (32, 32), 2).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x[:-N]), y[:-N]).backward()
        opt.step()
    model.eval().requires_grad_(False)
    # Held-out rows: some are near the boundary, so the attack flips some predictions.
    return model, x[-N:], y[-N:]


def engine_pgd(model: nn.Module, x: Tensor, y: Tensor, lower: float, upper: float) -> Tensor:
    """The engine's PGD-ref from ``x`` [N, D] (dtype of ``x``) inside the box [lower, upper]^D."""
    objective = classifier_objective(lambda z: model(z), y, "ce")
    constraints = box_constraints(D, lower, upper, dtype=x.dtype)
    x_adv, _ = perturb(objective, x, attack=PGD_REF, eps=EPS, constraints=constraints)
    return x_adv


def check_nontrivial(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor) -> None:
    """The comparison means something: the attack moved, fooled the model somewhere and met the box."""
    with torch.no_grad():
        assert (model(x_adv).argmax(-1) != y).sum() > (model(x).argmax(-1) != y).sum()
    assert (((x_adv - x).abs().amax(-1) - EPS).abs() < 1e-6).float().mean() > 0.9
    assert ((x_adv == 0) | (x_adv == 1)).any()


def test_pgd_matches_hand_written_loop(problem: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x0, y = problem
    x0 = x0 * 4 - 2  # outside [0, 1]: the huge box below must never bind
    x = x0.clone()
    for _ in range(STEPS):
        (g,) = torch.autograd.grad(F.cross_entropy(model(x.requires_grad_()), y, reduction="sum"), x)
        x = x0 + (x.detach() + ALPHA * g.sign() - x0).clamp(-EPS, EPS)
    x_adv = engine_pgd(model, x0, y, -1e6, 1e6)
    assert (x_adv - x0).abs().amax() > 0
    assert (x_adv - x).abs().max().item() <= TOL


def test_pgd_matches_torchattacks(problem: tuple[nn.Module, Tensor, Tensor]) -> None:
    torchattacks = pytest.importorskip(
        "torchattacks", reason="optional reference implementation: pip install torchattacks"
    )
    model, x, y = problem
    # torchattacks/attacks/pgd.py keeps the caller's dtype (``images.clone().detach().to(self.device)``), so
    # this runs in float64. Its step is ``adv + alpha * grad.sign()``, then ``delta = clamp(adv - images,
    # -eps, eps)``, ``clamp(images + delta, 0, 1)``: the ball, then the box, as ``Constraints.project``.
    # ``Attack.__call__`` (attack.py) puts the model in eval mode for the attack; it already is.
    attack = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=False)
    x_ref = attack(x, y)
    assert x_ref.dtype == torch.float64
    x_adv = engine_pgd(model, x, y, 0.0, 1.0)
    check_nontrivial(model, x, y, x_adv)
    assert (x_adv - x_ref).abs().max().item() <= TOL


def test_pgd_matches_art(problem: tuple[nn.Module, Tensor, Tensor]) -> None:
    pytest.importorskip(
        "art", reason="optional reference implementation: pip install adversarial-robustness-toolbox"
    )
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    model64, x64, y = problem
    # ART casts inputs to ART_NUMPY_DTYPE = float32 (art/config.py; ``x.astype(ART_NUMPY_DTYPE)`` in
    # ProjectedGradientDescentPyTorch.generate), so both sides run a float32 copy of the model on float32
    # rows.
    model = copy.deepcopy(model64).float()
    x = x64.float()
    classifier = PyTorchClassifier(
        model, loss=nn.CrossEntropyLoss(), input_shape=(D,), nb_classes=2, clip_values=(0.0, 1.0)
    )
    # No random init (num_random_init=0 starts at x; the L∞ direction is ``ones * grad.sign()``, zero where
    # the gradient is zero, as the engine). One batch of all N rows. y given, so ART does not attack its own
    # predictions. ART's order differs by design: ``_apply_perturbation_pytorch`` clips to clip_values
    # first, then ``_projection`` clamps x - x0 to the ball and adds x0 back. Both intervals contain x0, so
    # clipping to one then the other is clipping to their intersection, as the engine's ball-then-box: the
    # two orders agree up to the rounding of (clip(x) - x0) + x0, an ulp.
    attack = ProjectedGradientDescent(
        classifier,
        norm=np.inf,
        eps=EPS,
        eps_step=ALPHA,
        max_iter=STEPS,
        num_random_init=0,
        batch_size=N,
        targeted=False,
        verbose=False,
    )
    x_ref = attack.generate(x.numpy(), y.numpy())
    assert x_ref.dtype == np.float32
    x_adv = engine_pgd(model, x, y, 0.0, 1.0)
    check_nontrivial(model, x, y, x_adv)
    assert np.abs(x_adv.numpy() - x_ref).max() <= TOL
