"""Does the CUDA path compute what the CPU path computes? Run on a machine with a GPU:

    python benchmarks/device_check.py

Checks, in float64 on synthetic data (no dataset needed): MAML's second-order meta-gradient and Meta-SGD's,
the meta-gradient of a MAML + Meta-SGD ``Ensemble`` and a constrained PGD through its adapted members, the
constrained PGD/APGD attacks (autograd and closed-form objectives) and ``robust_evaluate`` give the same
numbers on ``cuda`` as on ``cpu``; then times one float32 PGD-20 on 4,096 rows on each device.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd
import torch

from metashield.attacks import box_constraints, classifier_objective, compile_constraints, get_attack, perturb
from metashield.attacks.fast_mlp import MLPObjective, mlp_layers
from metashield.data import FeaturePipeline, TabularData
from metashield.data.schema import FeatureSpec, ThreatSchema
from metashield.evaluation.robust import robust_evaluate
from metashield.meta import MAML, Ensemble, MetaSGD
from metashield.models import MLP


def _constraints():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "n": rng.integers(0, 500, 400),
            "bytes": rng.integers(0, 10**6, 400),
            "rate": rng.random(400),
            "proto": rng.choice(["tcp", "udp"], 400),
            "flag": rng.choice(["SF", "S0", "REJ"], 400),
        }
    )
    schema = ThreatSchema(
        features={
            "n": FeatureSpec(lower=0, upper=500, integer=True),
            "bytes": FeatureSpec(lower=0, integer=True),
            "rate": FeatureSpec(lower=0.0, upper=1.0),
            "proto": FeatureSpec(mutable=False, why="transport"),
        }
    )
    data = TabularData(
        frame=frame,
        family=np.array(["benign"] * 400, dtype=object),
        categorical=["proto", "flag"],
        log_scaled=["bytes"],
        schema=schema,
    )
    pipeline = FeaturePipeline().fit(data)
    return torch.tensor(pipeline.transform(frame)), compile_constraints(pipeline, schema)


def _meta_grads(device: str, cls) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = MLP(6, (16,), 2).double().to(device)
    learner = cls(model, inner_lr=0.1, inner_steps=3).to(device)
    gen = torch.Generator().manual_seed(1)
    sx = torch.randn(4, 10, 6, generator=gen, dtype=torch.float64).to(device)
    qx = torch.randn(4, 12, 6, generator=gen, dtype=torch.float64).to(device)
    sy = torch.randint(0, 2, (4, 10), generator=gen).to(device)
    qy = torch.randint(0, 2, (4, 12), generator=gen).to(device)
    learner.outer_loss(sx, sy, qx, qy).backward()
    return [p.grad.cpu() for p in learner.parameters()]


def _ensemble(device: str, x: torch.Tensor, constraints) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(meta-gradient of a MAML + Meta-SGD ensemble's query loss, its PGD adversarial examples of x)."""
    members = {}
    for name, cls in (("maml", MAML), ("metasgd", MetaSGD)):
        torch.manual_seed(len(members))
        members[name] = cls(MLP(x.shape[1], (16,), 2).double(), inner_lr=0.1, inner_steps=3)
    ensemble = Ensemble(members).to(device)
    gen = torch.Generator().manual_seed(2)
    idx = torch.randperm(len(x), generator=gen)
    sx, qx = x[idx[:20]].reshape(2, 10, -1).to(device), x[idx[20:44]].reshape(2, 12, -1).to(device)
    sy, qy = (torch.randint(0, 2, (2, n), generator=gen).to(device) for n in (10, 12))
    logits = ensemble.predict(ensemble.adapt(sx, sy), qx)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), qy.flatten()).backward()
    grads = [p.grad.cpu() for p in ensemble.parameters()]
    with torch.no_grad():
        params = ensemble.adapt(sx, sy)
    objective = classifier_objective(lambda z: ensemble.predict(params, z), torch.ones_like(qy), "ce")
    attack = get_attack("pgd", start="input")
    adv, _ = perturb(objective, qx, attack=attack, eps=1.0, constraints=constraints)
    bad = constraints.to(adv).violations(adv.flatten(0, 1), qx.flatten(0, 1), 1.0)
    assert sum(bad.values()) == 0, (device, "ensemble", bad)
    return grads, adv.cpu()


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    print(torch.cuda.get_device_name(0), torch.__version__)
    worst = 0.0
    for cls in (MAML, MetaSGD):
        for a, b in zip(_meta_grads("cpu", cls), _meta_grads("cuda", cls), strict=True):
            worst = max(worst, float((a - b).abs().max()))
        print(f"{cls.__name__} meta-gradient, max |cpu - cuda|: {worst:.2e}")
    x, constraints = _constraints()
    x = x.double()[:64]
    (grads_cpu, adv_cpu), (grads_cuda, adv_cuda) = (_ensemble(d, x, constraints) for d in ("cpu", "cuda"))
    ens_grad = max(float((a - b).abs().max()) for a, b in zip(grads_cpu, grads_cuda, strict=True))
    ens_adv = float((adv_cpu - adv_cuda).abs().max())
    print(f"Ensemble meta-gradient, max |cpu - cuda|: {ens_grad:.2e}; its PGD examples: {ens_adv:.2e}")
    worst = max(worst, ens_grad, ens_adv)
    torch.manual_seed(0)
    model = MLP(x.shape[1], (32,), 2).double()
    y = torch.ones(64, dtype=torch.int64)
    results = {}
    for device in ("cpu", "cuda"):
        m = model.to(device)
        xd, yd = x.to(device), y.to(device)
        for name in ("pgd", "apgd-ce"):
            attack = get_attack(name, start="input")
            for kind, objective in (
                ("autograd", classifier_objective(m, yd, attack.loss)),
                ("closed form", MLPObjective(mlp_layers(m), yd, attack.loss)),
            ):
                adv, _ = perturb(objective, xd, attack=attack, eps=1.0, constraints=constraints)
                bad = constraints.to(adv).violations(adv, xd, 1.0)
                results[(device, name, kind)] = adv.cpu()
                assert sum(bad.values()) == 0, (device, name, kind, bad)
        rob = robust_evaluate(
            m, xd[None, :32], xd[None, 32:], constraints=constraints, eps=[1.0], attacks=["pgd"], sanity=False
        )
        results[(device, "robust")] = rob["robust"]["1.0"]["tpr"]
    for name in ("pgd", "apgd-ce"):
        for kind in ("autograd", "closed form"):
            diff = float((results[("cpu", name, kind)] - results[("cuda", name, kind)]).abs().max())
            print(f"{name} ({kind}) adversarial examples, max |cpu - cuda|: {diff:.2e}")
            worst = max(worst, diff)
    print(f"robust_evaluate TPR cpu {results[('cpu', 'robust')]} cuda {results[('cuda', 'robust')]}")
    ok = worst < 1e-6 and results[("cpu", "robust")] == results[("cuda", "robust")]
    big = torch.randn(4096, 121)
    net = MLP(121, (256, 256), 2).requires_grad_(False)
    box = box_constraints(121)
    for device in ("cpu", "cuda"):
        n, xb = net.to(device), big.to(device)
        objective = MLPObjective(mlp_layers(n), torch.ones(4096, dtype=torch.int64, device=device), "ce")
        perturb(objective, xb, attack=get_attack("pgd"), eps=0.25, constraints=box)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        perturb(objective, xb, attack=get_attack("pgd"), eps=0.25, constraints=box)
        if device == "cuda":
            torch.cuda.synchronize()
        print(f"PGD-20 on 4,096 rows, {device}: {4096 / (time.perf_counter() - start):,.0f} samples/s")
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
