"""The task-fused path (meta/lowrank.py) must give the generic torch.func inner loop's numbers exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metashield.meta import ANIL, MAML, MetaSGD, Reptile, lowrank
from metashield.meta.inner import predict_tasks
from metashield.models import MLP


def generic_ce(outputs, targets):
    # A different function object than F.cross_entropy: routes the learner through meta/inner.py.
    return F.cross_entropy(outputs, targets)


def episode(seed=0, t=4, s=6, q=5, d=7, classes=2):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(t, s, d, generator=g, dtype=torch.float64),
        torch.randint(0, classes, (t, s), generator=g),
        torch.randn(t, q, d, generator=g, dtype=torch.float64),
        torch.randint(0, classes, (t, q), generator=g),
    )


def twin_models(hidden, classes=2, seed=0):
    torch.manual_seed(seed)
    a = MLP(7, hidden, classes).double()
    b = MLP(7, hidden, classes).double()
    b.load_state_dict(a.state_dict())
    return a, b


def same_random_step_sizes(fused, generic, seed):
    """Distinct step sizes per entry, equal in both Meta-SGD learners: a path that used one α per layer, or
    the α of another layer, would differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a, b in zip(fused.step_sizes, generic.step_sizes, strict=True):
            a.copy_(torch.rand(a.shape, generator=g, dtype=a.dtype) * 0.5)
            b.copy_(a)


def assert_same_outer_loss_and_gradients(fused, generic, every_gradient_nonzero=False):
    sx, sy, qx, qy = episode()
    assert fused._fused(sy, qy) and not generic._fused(sy, qy)
    lf, lg = fused.outer_loss(sx, sy, qx, qy), generic.outer_loss(sx, sy, qx, qy)
    lf.backward()
    lg.backward()
    torch.testing.assert_close(lf, lg, rtol=0, atol=1e-12)
    for (name, pf), pg in zip(fused.named_parameters(), generic.parameters(), strict=True):
        if every_gradient_nonzero:
            assert pf.grad is not None and pf.grad.abs().sum() > 0, name
        torch.testing.assert_close(pf.grad, pg.grad, rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [0, 1, 3])
@pytest.mark.parametrize("hidden", [[32, 24], [8], []])
def test_fused_meta_gradient_equals_generic_loop(first_order, steps, hidden):
    fused_model, generic_model = twin_models(hidden)
    fused = MAML(fused_model, inner_lr=0.3, inner_steps=steps, first_order=first_order)
    generic = MAML(generic_model, 0.3, steps, first_order=first_order, loss_fn=generic_ce)
    assert_same_outer_loss_and_gradients(fused, generic)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("hidden", [[32, 24], []])
def test_fused_meta_sgd_gradients_equal_generic_loop(first_order, steps, hidden):
    fused_model, generic_model = twin_models(hidden)
    fused = MetaSGD(fused_model, inner_lr=0.3, inner_steps=steps, first_order=first_order).double()
    generic = MetaSGD(generic_model, 0.3, steps, first_order=first_order, loss_fn=generic_ce).double()
    same_random_step_sizes(fused, generic, seed=1)
    assert_same_outer_loss_and_gradients(fused, generic, every_gradient_nonzero=True)


@pytest.mark.parametrize("algorithm", ["maml", "metasgd", "reptile", "anil"])
@pytest.mark.parametrize("steps", [0, 1, 3])
@pytest.mark.parametrize("hidden", [[32, 24], []])
def test_fused_adapt_without_graph_equals_generic_loop(algorithm, steps, hidden):
    fused_model, generic_model = twin_models(hidden)
    make = {
        "maml": lambda m, **kw: MAML(m, inner_lr=0.3, inner_steps=steps, **kw),
        "metasgd": lambda m, **kw: MetaSGD(m, inner_lr=0.3, inner_steps=steps, **kw).double(),
        "reptile": lambda m, **kw: Reptile(m, inner_lr=0.3, inner_steps=steps, outer_lr=0.5, **kw),
        "anil": lambda m, **kw: ANIL(m, head="head", inner_lr=0.3, inner_steps=steps, **kw),
    }[algorithm]
    fused, generic = make(fused_model), make(generic_model, loss_fn=generic_ce)
    if algorithm == "metasgd":
        same_random_step_sizes(fused, generic, seed=2)
    sx, sy, qx, _ = episode(seed=5)
    # ANIL freezes the body's layers (none when the MLP has no hidden layer).
    frozen = len(hidden) if algorithm == "anil" else 0
    assert fused._frozen_layers(sy) == frozen and generic._frozen_layers(sy) is None
    with torch.no_grad():
        pf, pg = fused.adapt(sx, sy), generic.adapt(sx, sy)
        assert list(pf) == list(pg) == [n for n, _ in fused_model.named_parameters()]
        for name in pf:
            assert pf[name].shape == pg[name].shape == (sx.shape[0], *fused_model.get_parameter(name).shape)
            torch.testing.assert_close(pf[name], pg[name], rtol=0, atol=1e-12, msg=name)
        torch.testing.assert_close(fused.predict(pf, qx), generic.predict(pg, qx), rtol=0, atol=1e-12)
        if frozen:
            assert pf["body.0.weight"].stride(0) == 0  # a view of the shared tensor, as adapt promises
    # Under autograd adapt stays on the generic loop: its result must carry the graph to θ.
    assert fused.adapt(sx, sy)[next(iter(pf))].requires_grad


@pytest.mark.parametrize("hidden", [[32, 24], [8], []])
def test_batched_forward_equals_the_vmapped_module(hidden):
    model, _ = twin_models(hidden, classes=3)
    g = torch.Generator().manual_seed(6)
    params = {
        n: p.detach() + 0.1 * torch.randn(4, *p.shape, generator=g, dtype=p.dtype)
        for n, p in model.named_parameters()
    }
    x = torch.randn(4, 9, 7, generator=g, dtype=torch.float64)
    order = {id(p): n for n, p in model.named_parameters()}
    stacked = [params[order[id(t)]] for t in lowrank.stack_params(model)]
    expected = predict_tasks(model, params, x)
    torch.testing.assert_close(lowrank.predict(stacked, x), expected, rtol=0, atol=1e-12)
    # The learner's predict takes that path for MLPs, with the same result.
    torch.testing.assert_close(MAML(model).predict(params, x), expected, rtol=0, atol=1e-12)


def test_fused_handles_many_classes():
    fused_model, generic_model = twin_models([32], classes=20)
    fused = MAML(fused_model, inner_lr=0.2, inner_steps=2)
    generic = MAML(generic_model, inner_lr=0.2, inner_steps=2, loss_fn=generic_ce)
    sx, sy, qx, qy = episode(classes=20)
    fused.outer_loss(sx, sy, qx, qy).backward()
    generic.outer_loss(sx, sy, qx, qy).backward()
    for pf, pg in zip(fused_model.parameters(), generic_model.parameters(), strict=True):
        torch.testing.assert_close(pf.grad, pg.grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("hidden", [[32, 24], [8]])
def test_fused_reptile_step_equals_generic_loop(hidden):
    fused_model, generic_model = twin_models(hidden)
    sx, sy, _, _ = episode(seed=3)
    Reptile(fused_model, inner_lr=0.2, inner_steps=3, outer_lr=0.5).step(sx, sy)
    Reptile(generic_model, inner_lr=0.2, inner_steps=3, outer_lr=0.5, loss_fn=generic_ce).step(sx, sy)
    for pf, pg in zip(fused_model.parameters(), generic_model.parameters(), strict=True):
        torch.testing.assert_close(pf, pg, rtol=0, atol=1e-12)


def test_adapted_layers_that_are_not_a_suffix_stay_on_the_generic_loop():
    # ANIL adapting a middle layer: the fused path only freezes leading layers, so it must not be taken.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(7, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    middle, last = ANIL(net, head="2", inner_lr=0.3, inner_steps=2), ANIL(net, head="4", inner_lr=0.3)
    sx, sy, qx, _ = episode(seed=6)
    assert middle._frozen_layers(sy) is None and last._frozen_layers(sy) == 2
    with torch.no_grad():
        params = middle.adapt(sx, sy)
    assert not torch.equal(params["2.weight"][0], net[2].weight) and params["4.weight"].stride(0) == 0


def test_only_plain_linear_relu_stacks_take_the_fused_path():
    y = torch.zeros(2, 3, dtype=torch.long)
    relu_net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    tanh_net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    assert lowrank.supported(relu_net, F.cross_entropy, y)
    assert not lowrank.supported(tanh_net, F.cross_entropy, y)
    assert not lowrank.supported(nn.Sequential(nn.Linear(3, 2, bias=False)), F.cross_entropy, y)
    assert not lowrank.supported(MLP(3, [4], 2), F.mse_loss, y)
    assert not lowrank.supported(MLP(3, [4], 2), F.cross_entropy, y.double())
