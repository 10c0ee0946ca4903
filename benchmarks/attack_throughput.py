"""Attack throughput (samples/s) of metashield's PGD against torchattacks and ART, and batched over tasks.

Workload: PGD-20 L∞ (step eps/4, uniform random start) on ``MLP(121 -> 256 -> 256 -> 2)`` (seeded init,
parameters frozen), 4,096 NSL-KDD attack rows in z-space (``FeaturePipeline`` fitted on the whole dataset),
float32, ``--threads`` intra-op threads. Every method attacks 4,096 samples per call:

* ``torchattacks``: ``torchattacks.PGD``. Its step clamps to [0, 1] (``torch.clamp(images + delta, min=0,
  max=1)`` in torchattacks/attacks/pgd.py), so it gets the same rows min-max scaled to [0, 1]: same shape,
  same work, only speed is compared.
* ``art``: ``ProjectedGradientDescent`` on a ``PyTorchClassifier`` without ``clip_values`` (no box), one
  batch of 4,096. ART casts to float32 itself. Its ``loss.backward()`` would also compute weight gradients of
  a model that requires them; the model is frozen for every method, so nobody pays for those.
* ``metashield (box)``: ``perturb`` with the ``pgd`` preset and ``box_constraints(121)``: the ball only, the
  libraries' feasible set, with the objective ``metashield attack`` uses for an MLP (``MLPObjective``: the
  input gradient in closed form, attacks/fast_mlp.py). The preset keeps each sample's best iterate, which
  costs one forward pass more at the start and one at the end than the libraries' 20.
* ``metashield (nsl-kdd)``: the same with ``compile_constraints(pipeline, THREAT_SCHEMA)``: immutable columns,
  bounds, integer grids, one-hot groups.
* ``metashield autograd (nsl-kdd)``: the same through autograd (``classifier_objective``), the path any
  other ``nn.Module`` takes.
* ``metashield compiled (nsl-kdd)``: ``metashield (nsl-kdd)`` with ``perturb(compile=True)``: the objective
  and each step's projection through ``torch.compile``. Its warm-up call compiles (the table's last column
  gives that call's seconds); the rate is of the calls after it.
* ``tasks batched``: 16 tasks adapted by ``MAML(inner_lr=0.2, inner_steps=5)`` (under ``torch.no_grad()``) on
  random support sets [16, 10, 121]; x [16, 256, 121] attacked in ONE ``perturb`` call with the per-task
  adapted weights (``MLPObjective`` on ``mlp_layers(model, params)``), NSL-KDD constraints.
* ``tasks batched, compiled``: the same with ``compile=True``.
* ``tasks loop``: the same 16 tasks attacked one ``perturb`` call each, with that task's parameters.

Rounds are interleaved (every round runs every method once, in alternating order, to cancel drift) after one
untimed warm-up call each; the rate is the median over rounds, and each ratio the median over rounds of
that round's ratio. Peak memory is the growth of the peak RSS over one call (Linux), measured for each
method in a subprocess of its own so that one method's high-water mark cannot hide another's.

    python benchmarks/attack_throughput.py                       # 5 rounds
    python benchmarks/attack_throughput.py --rounds 1 --out out.json

Needs NSL-KDD: ``metashield data download nsl-kdd`` (or ``$METASHIELD_MIRROR``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from machine import machine  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

from metashield.attacks.constraints import Constraints, box_constraints, compile_constraints  # noqa: E402
from metashield.attacks.engine import Attack, classifier_objective, perturb  # noqa: E402
from metashield.attacks.fast_mlp import MLPObjective, mlp_layers  # noqa: E402
from metashield.attacks.presets import get_attack  # noqa: E402
from metashield.data import BENIGN, DownloadError, FeaturePipeline, load_dataset  # noqa: E402
from metashield.data.nsl_kdd import THREAT_SCHEMA  # noqa: E402
from metashield.meta import MAML  # noqa: E402
from metashield.models.mlp import MLP  # noqa: E402

SAMPLES, TASKS, SHOTS, HIDDEN = 4096, 16, 10, (256, 256)
METHODS = (
    "torchattacks",
    "art",
    "metashield (box)",
    "metashield (nsl-kdd)",
    "metashield autograd (nsl-kdd)",
    "metashield compiled (nsl-kdd)",
    "tasks batched",
    "tasks batched, compiled",
    "tasks loop",
)
LIBRARIES = {"torchattacks": "torchattacks", "art": "art"}  # method -> module it needs
Run = Callable[[], Tensor]

# ---------------------------------------------------------------------------------------------- workload


def prepare(seed: int) -> dict:
    """Inputs of every method: NSL-KDD attack rows [4096, 121] (z and min-max), constraints, support sets."""
    try:
        data = load_dataset("nsl-kdd", progress=False)
    except DownloadError as exc:
        raise SystemExit(
            "this benchmark needs NSL-KDD: run `metashield data download nsl-kdd` (or set "
            f"$METASHIELD_MIRROR to a mirror holding nsl-kdd/NSL_KDD.zip).\n{exc}"
        ) from None
    pipeline = FeaturePipeline().fit(data)
    z = torch.from_numpy(pipeline.transform(data.frame))
    attack_rows = np.flatnonzero(data.family != BENIGN)
    benign_rows = np.flatnonzero(data.family == BENIGN)
    rng = np.random.default_rng(seed)
    x = z[rng.choice(attack_rows, SAMPLES, replace=False)]
    lo, hi = z.amin(0), z.amax(0)
    # Balanced random support sets: SHOTS // 2 benign and SHOTS // 2 attack rows per task.
    half = SHOTS // 2
    support = [rng.choice(rows, (TASKS, half), replace=False) for rows in (benign_rows, attack_rows)]
    return {
        "x": x,
        "x01": (x - lo) / (hi - lo).clamp_min(1e-12),
        "y": torch.ones(SAMPLES, dtype=torch.int64),  # every row is an attack: class 1
        "nsl": compile_constraints(pipeline, THREAT_SCHEMA),
        "support_x": z[torch.from_numpy(np.concatenate(support, axis=1))],
        "support_y": torch.arange(2).repeat_interleave(half).expand(TASKS, -1).contiguous(),
    }


def new_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return MLP(121, HIDDEN, 2).eval().requires_grad_(False)


def build(method: str, work: dict, cfg: argparse.Namespace) -> Run:
    """A closure that attacks all 4,096 samples once with ``method`` and returns the adversarial rows."""
    model = new_model(cfg.seed)
    eps, steps = cfg.eps, cfg.steps
    x, y = work["x"], work["y"]
    attack = get_attack("pgd", steps=steps)  # step eps/4 from a uniform random start, best iterate kept
    if method == "torchattacks":
        import torchattacks

        pgd = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=steps, random_start=True)
        return lambda: pgd(work["x01"], y)
    if method == "art":
        from art.attacks.evasion import ProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier

        classifier = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(121,), nb_classes=2)
        art_pgd = ProjectedGradientDescent(
            classifier,
            norm=np.inf,
            eps=eps,
            eps_step=eps / 4,
            max_iter=steps,
            num_random_init=1,
            batch_size=SAMPLES,
            verbose=False,
        )
        x_np, y_np = x.numpy(), y.numpy()
        return lambda: torch.from_numpy(art_pgd.generate(x_np, y_np))
    compile = "compiled" in method
    if method.startswith("metashield"):
        constraints = box_constraints(121) if method == "metashield (box)" else work["nsl"]
        # What `metashield attack` runs for an MLP: the input gradient in closed form (attacks/fast_mlp.py);
        # the autograd row is the generic path any nn.Module takes.
        if "autograd" in method:
            objective = classifier_objective(model, y, "ce")
        else:
            objective = MLPObjective(mlp_layers(model), y, "ce")
        return lambda: perturb(
            objective, x, attack=attack, eps=eps, constraints=constraints, compile=compile
        )[0]
    return _build_tasks(method != "tasks loop", model, work, attack, eps, compile)


def _build_tasks(
    batched: bool, model: nn.Module, work: dict, attack: Attack, eps: float, compile: bool
) -> Run:
    """``tasks batched`` (one ``perturb`` over [16, 256, 121]) or ``tasks loop`` (one per task)."""
    learner = MAML(model, inner_lr=0.2, inner_steps=5)
    with torch.no_grad():
        params = learner.adapt(work["support_x"], work["support_y"])
    xt = work["x"].view(TASKS, SAMPLES // TASKS, -1)
    yt = work["y"].view(TASKS, SAMPLES // TASKS)
    constraints: Constraints = work["nsl"]

    def attack_tasks(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        objective = MLPObjective(mlp_layers(model, p), y, "ce")
        return perturb(objective, x, attack=attack, eps=eps, constraints=constraints, compile=compile)[0]

    if batched:
        return lambda: attack_tasks(params, xt, yt)

    def loop() -> Tensor:
        out = []
        for t in range(TASKS):
            task = {k: v[t : t + 1] for k, v in params.items()}
            out.append(attack_tasks(task, xt[t : t + 1], yt[t : t + 1]))
        return torch.cat(out)

    return loop


def available(method: str) -> bool:
    module = LIBRARIES.get(method)
    return module is None or importlib.util.find_spec(module) is not None


# ---------------------------------------------------------------------------------------------- workers


def worker_memory(cfg: argparse.Namespace) -> dict:
    """Growth of the peak RSS (MiB) over one call of ``cfg.method``, after setup (Linux only)."""
    torch.set_num_threads(cfg.threads)
    # The worker rebuilds the seeded workload instead of unpickling one: no torch.load of a pickle.
    run = build(cfg.method, prepare(cfg.seed), cfg)
    if "compiled" in cfg.method:
        run()  # the compilation's own memory is not the attack's working set
    # Lower the kernel's peak-RSS mark to the current RSS (Linux >= 4.0): the mark left by imports and setup
    # is higher than one attack's working set and would hide it.
    Path("/proc/self/clear_refs").write_text("5")
    before = status_kib("VmRSS")
    run()
    return {"peak_mib": (status_kib("VmHWM") - before) / 1024.0}


def status_kib(field: str) -> int:
    """A memory field of /proc/self/status (``VmRSS``: resident now, ``VmHWM``: peak), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_memory(cfg: argparse.Namespace, method: str) -> float:
    argv = [sys.executable, __file__, "--worker", "--method", method]
    argv += ["--threads", str(cfg.threads), "--eps", str(cfg.eps), "--steps", str(cfg.steps)]
    argv += ["--seed", str(cfg.seed)]
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg.threads)}
    res = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"memory worker for {method} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_mib"]


# ---------------------------------------------------------------------------------------------- driver


def fmt(x: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "—" if x is None else format(x, spec) + suffix


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the figure is their median")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--eps", type=float, default=0.25, help="L∞ budget (z-units; the same number in [0, 1])")
    p.add_argument("--steps", type=int, default=20, help="PGD iterations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument("--out", metavar="FILE", help="write the results as JSON to FILE")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    cfg = p.parse_args(argv)
    if cfg.worker:
        print(json.dumps(worker_memory(cfg)))
        return 0

    torch.set_num_threads(cfg.threads)
    info = machine()
    workload = (
        f"PGD-{cfg.steps} L∞ eps {cfg.eps} step eps/4 random start, "
        f"MLP 121->{'->'.join(map(str, HIDDEN))}->2, "
        f"{SAMPLES} NSL-KDD attack rows (tasks: {TASKS} x {SAMPLES // TASKS}, MAML 5 steps at lr 0.2 on "
        f"{SHOTS}-row support sets), float32, {cfg.threads} threads, {cfg.rounds} interleaved rounds"
    )
    print(f"# {info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['date']}")
    print(f"# load average (1 min) before: {info['loadavg_1m']}")
    print(f"# {workload}")
    work = prepare(cfg.seed)
    methods = [m for m in METHODS if available(m)]
    missing = [m for m in METHODS if m not in methods]
    runs = {m: build(m, work, cfg) for m in methods}
    warmup: dict[str, float] = {}
    for m in methods:  # warm-up: allocator, vmap and autograd caches, torch.compile
        t0 = time.perf_counter()
        runs[m]()
        warmup[m] = time.perf_counter() - t0
    times: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(cfg.rounds):
        for m in methods if r % 2 == 0 else methods[::-1]:
            t0 = time.perf_counter()
            runs[m]()
            times[m].append(time.perf_counter() - t0)
    peak: dict[str, float] = {}
    if not cfg.no_memory:
        peak = {m: peak_memory(cfg, m) for m in methods}

    rate = {m: SAMPLES / statistics.median(ts) for m, ts in times.items()}

    def ratio_to(ref: str, m: str) -> float | None:
        # The median of per-round ratios: the calls of one round run within seconds of each other, so the
        # machine's speed drifting between rounds (by up to 20% on a shared host) cancels out of each ratio.
        if ref not in times:
            return None
        return statistics.median(a / b for a, b in zip(times[ref], times[m], strict=True))

    rows = []
    head = "| method | samples/s | vs torchattacks | vs ART | vs loop | peak RSS Δ MiB | warm-up call s |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for m in methods:
        ratio = {
            "torchattacks": ratio_to("torchattacks", m),
            "art": ratio_to("art", m),
            "loop": ratio_to("tasks loop", m) if m.startswith("tasks") else None,
        }
        rows.append(
            {
                "method": m,
                "samples_per_s": rate[m],
                "seconds": times[m],
                "ratio": ratio,
                "peak_mib": peak.get(m),
                "warmup_s": warmup[m],
            }
        )
        cells = [fmt(ratio[k], ".2f", "x") for k in ("torchattacks", "art", "loop")]
        print(f"| {m} | {rate[m]:.0f} | {' | '.join(cells)} | {fmt(peak.get(m), '.0f')} | {warmup[m]:.1f} |")
    print("# torchattacks attacks the rows min-max scaled to [0, 1] (its PGD clamps to [0, 1]): same work")
    if missing:
        print(f"# not installed, skipped: {', '.join(missing)}")
    print(f"# load average (1 min) after: {os.getloadavg()[0]:.2f}")
    if cfg.out:
        report = {"machine": info, "workload": workload, "skipped": missing, "rows": rows}
        Path(cfg.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
