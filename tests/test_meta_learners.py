"""MAML, FOMAML, Meta-SGD, ANIL and Reptile against explicit per-task references (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from metashield.meta import ANIL, MAML, Ensemble, MetaSGD, Reptile
from metashield.meta.inner import adapt_task, adapt_tasks
from metashield.models.mlp import MLP

T, S, Q, D, C = 4, 6, 7, 5, 3
DT = torch.float64


def make_model(out_dim: int = C) -> MLP:
    torch.manual_seed(0)
    return MLP(D, (8, 8), out_dim).to(DT)


def episode(seed: int = 1) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(T, S, D, generator=g, dtype=DT),
        torch.randint(0, C, (T, S), generator=g),
        torch.randn(T, Q, D, generator=g, dtype=DT),
        torch.randint(0, C, (T, Q), generator=g),
    )


def ref_forward(ps: list[Tensor], x: Tensor) -> Tensor:
    """The MLP written out by hand, in named_parameters order: (W, b) per layer, ReLU between."""
    h = x
    for i in range(0, len(ps) - 2, 2):
        h = torch.relu(h @ ps[i].T + ps[i + 1])
    return h @ ps[-2].T + ps[-1]


def ref_meta_grads(
    model: MLP,
    data: tuple[Tensor, ...],
    *,
    lr: float = 0.01,
    steps: int = 1,
    first_order: bool = False,
    adapted: list[int] | None = None,
    alphas: list[Tensor] | None = None,
    loss_fn=F.cross_entropy,
) -> tuple[Tensor, list[Tensor]]:
    """Outer loss and its gradient w.r.t. θ (then α) by a per-task loop of torch.autograd.grad."""
    sx, sy, qx, qy = data
    theta = [p.detach().clone().requires_grad_() for p in model.parameters()]
    alphas = [a.detach().clone().requires_grad_() for a in alphas] if alphas is not None else None
    adapted = adapted if adapted is not None else list(range(len(theta)))
    total = 0.0
    for t in range(sx.shape[0]):
        fast = list(theta)
        for _ in range(steps):
            loss = loss_fn(ref_forward(fast, sx[t]), sy[t])
            # create_graph=False returns detached gradients: exactly FOMAML's "detach every inner gradient".
            grads = torch.autograd.grad(
                loss, [fast[i] for i in adapted], create_graph=not first_order, retain_graph=True
            )
            for i, g in zip(adapted, grads, strict=True):
                fast[i] = fast[i] - (alphas[i] if alphas is not None else lr) * g
        total = total + loss_fn(ref_forward(fast, qx[t]), qy[t])
    total = total / sx.shape[0]
    return total, list(torch.autograd.grad(total, theta + (alphas or [])))


def learner_grads(learner: torch.nn.Module, data: tuple[Tensor, ...]) -> tuple[Tensor, list[Tensor]]:
    learner.zero_grad()
    loss = learner.outer_loss(*data)
    loss.backward()
    return loss, [p.grad for p in learner.parameters()]


def assert_close_lists(a: list[Tensor], b: list[Tensor], tol: float = 1e-5) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)


@pytest.mark.parametrize("steps", [1, 3])
def test_maml_meta_gradient_matches_second_order_reference(steps: int) -> None:
    model, data = make_model(), episode()
    # A large inner lr makes the second-order term big enough that dropping it would fail the comparison.
    loss, grads = learner_grads(MAML(model, inner_lr=0.5, inner_steps=steps), data)
    ref_loss, ref = ref_meta_grads(model, data, lr=0.5, steps=steps)
    torch.testing.assert_close(loss, ref_loss)
    assert_close_lists(grads, ref)
    _, first_order_ref = ref_meta_grads(model, data, lr=0.5, steps=steps, first_order=True)
    assert not torch.allclose(grads[0], first_order_ref[0], atol=1e-4)


@pytest.mark.parametrize("steps", [1, 3])
def test_fomaml_matches_detached_reference(steps: int) -> None:
    model, data = make_model(), episode()
    _, grads = learner_grads(MAML(model, inner_lr=0.5, inner_steps=steps, first_order=True), data)
    _, ref = ref_meta_grads(model, data, lr=0.5, steps=steps, first_order=True)
    assert_close_lists(grads, ref)


def test_metasgd_parameters_are_theta_then_alpha() -> None:
    model = make_model()
    learner = MetaSGD(model, inner_lr=0.03)
    params = list(learner.parameters())
    theta = list(model.parameters())
    assert len(params) == 2 * len(theta)
    assert all(p is q for p, q in zip(params, theta, strict=False))
    for p, a in zip(theta, params[len(theta) :], strict=True):
        assert a.shape == p.shape and a.dtype == DT
        assert torch.all(a == 0.03)


@pytest.mark.parametrize("first_order", [False, True])
def test_metasgd_alpha_gradient_matches_reference(first_order: bool) -> None:
    model, data = make_model(), episode()
    learner = MetaSGD(model, inner_lr=0.2, inner_steps=2, first_order=first_order)
    with torch.no_grad():  # distinct step sizes per entry, so a mix-up of α between parameters would show
        for a in learner.step_sizes:
            a.uniform_(0.05, 0.4)
    alphas = list(learner.step_sizes)
    loss, grads = learner_grads(learner, data)
    ref_loss, ref = ref_meta_grads(model, data, steps=2, alphas=alphas, first_order=first_order)
    torch.testing.assert_close(loss, ref_loss)
    assert_close_lists(grads, ref)


def test_anil_adapts_head_only_and_body_gets_outer_gradient() -> None:
    model, data = make_model(), episode()
    learner = ANIL(model, head="head", inner_lr=0.5, inner_steps=3)
    _, grads = learner_grads(learner, data)
    names = [n for n, _ in model.named_parameters()]
    head = [i for i, n in enumerate(names) if n.startswith("head.")]
    _, ref = ref_meta_grads(model, data, lr=0.5, steps=3, adapted=head)
    assert_close_lists(grads, ref)

    with torch.no_grad():
        fast = learner.adapt(data[0], data[1])
    assert list(fast) == names
    for n, p in model.named_parameters():
        assert fast[n].shape == (T, *p.shape)
        if n.startswith("head."):
            assert not torch.allclose(fast[n], p.expand_as(fast[n]))
        else:  # documented: the body comes back as an expanded view of the shared parameter
            assert torch.equal(fast[n], p.expand_as(fast[n])) and fast[n].stride(0) == 0


def test_anil_rejects_unknown_head() -> None:
    with pytest.raises(ValueError, match="classifier"):
        ANIL(make_model(), head="classifier")


def test_reptile_step_matches_explicit_loop() -> None:
    model, (sx, sy, _, _) = make_model(), episode()
    theta = [p.detach().clone() for p in model.parameters()]
    deltas = [torch.zeros_like(p) for p in theta]
    for t in range(T):
        fast = [p.clone().requires_grad_() for p in theta]
        for _ in range(4):
            grads = torch.autograd.grad(F.cross_entropy(ref_forward(fast, sx[t]), sy[t]), fast)
            fast = [(p - 0.3 * g).detach().requires_grad_() for p, g in zip(fast, grads, strict=True)]
        for d, f, p in zip(deltas, fast, theta, strict=True):
            d += (f.detach() - p) / T
    expected = [p + 0.5 * d for p, d in zip(theta, deltas, strict=True)]

    learner = Reptile(model, inner_lr=0.3, inner_steps=4, outer_lr=0.5)
    originals = list(model.parameters())
    learner.step(sx, sy)
    assert all(p is q for p, q in zip(model.parameters(), originals, strict=True))  # updated in place
    assert_close_lists([p.detach() for p in model.parameters()], expected, tol=1e-10)
    assert all(p.grad is None for p in model.parameters())


def test_vmapped_inner_loop_matches_per_task_loop() -> None:
    model, (sx, sy, _, _) = make_model(), episode()
    params = dict(model.named_parameters())
    loop = {
        "module": model,
        "loss_fn": F.cross_entropy,
        "adapted": tuple(params),
        "steps": 3,
        "first_order": False,
    }
    batched = adapt_tasks(params, 0.1, sx, sy, **loop)
    for t in range(T):
        single = adapt_task(params, 0.1, sx[t], sy[t], **loop)
        for n in params:
            torch.testing.assert_close(batched[n][t], single[n], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("target_shape", ["[T,S]", "[T,S,1]"])
def test_mse_loss_fn_for_regression(target_shape: str) -> None:
    model, (sx, _, qx, _) = make_model(out_dim=1), episode()
    g = torch.Generator().manual_seed(2)
    sy, qy = torch.randn(T, S, generator=g, dtype=DT), torch.randn(T, Q, generator=g, dtype=DT)
    _, ref = ref_meta_grads(model, (sx, sy.unsqueeze(-1), qx, qy.unsqueeze(-1)), steps=2, loss_fn=F.mse_loss)
    if target_shape == "[T,S,1]":
        sy, qy = sy.unsqueeze(-1), qy.unsqueeze(-1)
    _, grads = learner_grads(MAML(model, inner_steps=2, loss_fn=F.mse_loss), (sx, sy, qx, qy))
    assert_close_lists(grads, ref)


@pytest.mark.parametrize("cls", [MAML, MetaSGD, ANIL, Reptile])
def test_float64_and_gradients_land_on_the_models_parameters(cls: type) -> None:
    model, (sx, sy, qx, qy) = make_model(), episode()
    learner = cls(model)
    assert learner.model is model
    assert all(p is q for p, q in zip(learner.parameters(), model.parameters(), strict=False))
    params = learner.adapt(sx.float(), sy)  # float32 inputs are cast to the model's dtype
    assert all(p.dtype == DT for p in params.values())
    assert learner.predict(params, qx).dtype == DT
    if cls is Reptile:
        return
    loss = learner.outer_loss(sx, sy, qx, qy)
    assert loss.dtype == DT
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("cls", [MAML, MetaSGD, ANIL, Reptile])
def test_adapt_under_no_grad_is_detached_but_adapted(cls: type) -> None:
    model, (sx, sy, _, _) = make_model(), episode()
    learner = cls(model, inner_lr=0.1)
    with torch.no_grad():
        fast = learner.adapt(sx, sy)
    assert list(fast) == [n for n, _ in model.named_parameters()]
    assert not any(p.requires_grad for p in fast.values())
    assert not torch.allclose(fast["head.weight"], model.head.weight.expand_as(fast["head.weight"]))
    with torch.no_grad():
        assert torch.allclose(fast["head.weight"], learner.adapt(sx, sy)["head.weight"])  # deterministic


def test_adapt_is_differentiable_and_predict_agrees_with_outer_loss() -> None:
    model, (sx, sy, qx, qy) = make_model(), episode()
    learner = MAML(model, inner_lr=0.5, inner_steps=2)
    logits = learner.predict(learner.adapt(sx, sy), qx)
    assert logits.shape == (T, Q, C)
    loss = F.cross_entropy(logits.flatten(0, 1), qy.flatten())
    torch.testing.assert_close(loss, learner.outer_loss(sx, sy, qx, qy))
    grads = torch.autograd.grad(loss, list(model.parameters()))
    _, ref = ref_meta_grads(model, (sx, sy, qx, qy), lr=0.5, steps=2)
    assert_close_lists(list(grads), ref)


@pytest.mark.parametrize(
    ("arg", "shape"),
    [
        ("support_x", (T, S)),
        ("support_x", (T, S, D, 1)),
        ("support_y", (T, S + 1)),
        ("support_y", (T + 1, S)),
        ("query_x", (T + 1, Q, D)),
        ("query_x", (T, Q, D + 1)),
        ("query_y", (T, Q - 1)),
    ],
)
def test_outer_loss_rejects_bad_shapes(arg: str, shape: tuple[int, ...]) -> None:
    data = dict(zip(["support_x", "support_y", "query_x", "query_y"], episode(), strict=True))
    data[arg] = torch.zeros(shape, dtype=data[arg].dtype)
    with pytest.raises(ValueError, match=arg):
        MAML(make_model()).outer_loss(**data)


def test_predict_rejects_task_count_mismatch() -> None:
    model, (sx, sy, qx, _) = make_model(), episode()
    learner = MAML(model)
    with torch.no_grad():
        fast = learner.adapt(sx, sy)
    with pytest.raises(ValueError, match="x must be"):
        learner.predict(fast, qx[:2])


def ref_query_logits(theta: list[Tensor], data: tuple[Tensor, ...], lr: float, steps: int, first_order: bool):
    """Query logits [T, Q, C] after ``steps`` inner steps from ``theta``, by a per-task autograd loop."""
    sx, sy, qx, _ = data
    out = []
    for t in range(sx.shape[0]):
        fast = list(theta)
        for _ in range(steps):
            loss = F.cross_entropy(ref_forward(fast, sx[t]), sy[t])
            grads = torch.autograd.grad(loss, fast, create_graph=not first_order)
            fast = [p - lr * g for p, g in zip(fast, grads, strict=True)]
        out.append(ref_forward(fast, qx[t]))
    return torch.stack(out)


def test_ensemble_predicts_mean_logits_and_differentiates_through_every_member() -> None:
    data = sx, sy, qx, qy = episode()
    a = make_model()
    torch.manual_seed(1)
    b = MLP(D, (8, 8), C).to(DT)
    ensemble = Ensemble(
        {
            "maml": MAML(a, inner_lr=0.5, inner_steps=2),
            "fomaml": MAML(b, inner_lr=0.3, inner_steps=1, first_order=True),
        }
    )
    params = ensemble.adapt(sx, sy)
    assert sorted(params) == sorted(f"{m}/{k}" for m in ("maml", "fomaml") for k, _ in a.named_parameters())
    logits = ensemble.predict(params, qx)
    loss = F.cross_entropy(logits.flatten(0, 1), qy.flatten())
    grads = torch.autograd.grad(loss, [*a.parameters(), *b.parameters()])

    theta_a = [p.detach().clone().requires_grad_() for p in a.parameters()]
    theta_b = [p.detach().clone().requires_grad_() for p in b.parameters()]
    ref = (ref_query_logits(theta_a, data, 0.5, 2, False) + ref_query_logits(theta_b, data, 0.3, 1, True)) / 2
    torch.testing.assert_close(logits, ref, rtol=1e-10, atol=1e-10)
    ref_loss = F.cross_entropy(ref.flatten(0, 1), qy.flatten())
    assert_close_lists(list(grads), list(torch.autograd.grad(ref_loss, theta_a + theta_b)))


def test_one_member_ensemble_is_its_member_and_bad_members_are_refused() -> None:
    (sx, sy, qx, _), learner = episode(), MetaSGD(make_model(), inner_lr=0.1)
    alone = learner.predict(learner.adapt(sx, sy), qx)
    one = Ensemble({"metasgd": learner})
    assert torch.equal(one.predict(one.adapt(sx, sy), qx), alone)
    with pytest.raises(KeyError, match="no adapted parameters for ensemble member 'metasgd'"):
        one.predict({"maml/w": torch.zeros(1)}, qx)
    with pytest.raises(ValueError, match="at least one member"):
        Ensemble({})
    with pytest.raises(ValueError, match=r"may not contain '/' or '.': \['a/b'\]"):
        Ensemble({"a/b": learner})
