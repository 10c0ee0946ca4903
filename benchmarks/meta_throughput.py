"""Meta-training throughput (tasks/s) of metashield's learners against per-task loops.

Methods: MAML (second order), FOMAML, Meta-SGD (second order) and Reptile. Each is measured three ways in the
same process, on the same initial weights and episodes:

* ``metashield``: ``MAML``/``MetaSGD`` ``.outer_loss(...).backward()`` + Adam step; ``Reptile.step``.
* ``loop``: the learn2learn design written as lean as plain torch allows: per task, clone the weights, adapt
  with ``torch.autograd.grad(create_graph=not first_order)``, ``backward()`` the task's query loss; then one
  Adam step.
* ``learn2learn``: ``l2l.algorithms.MAML``/``MetaSGD`` with ``.clone()`` and ``.adapt()`` per task, when
  learn2learn can be imported (see ``--l2l-path`` and benchmarks/README.md). Its ``__init__`` imports
  torchvision, gym, requests, ...; those of them that are absent are replaced by inert stub modules for the
  import.
  Reptile has no learn2learn class; its column uses ``l2l.algorithms.MAML(first_order=True)`` clones.

Rounds are interleaved (every round runs every implementation, in alternating order, to cancel drift) and the
figure is the median over rounds. One meta-step is forward + backward + Adam step over ``--tasks`` tasks. Peak
memory is the growth of max RSS over the meta-steps, measured for each (method, implementation) in a
subprocess of its own so that one implementation's high-water mark cannot hide another's.

    python benchmarks/meta_throughput.py                 # full run, a few minutes on 2 cores
    python benchmarks/meta_throughput.py --quick         # smoke run, < 20 s
    python benchmarks/meta_throughput.py --json out.json --l2l-path /tmp/l2l-site
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from machine import machine  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

from metashield.meta import MAML, MetaSGD, Reptile  # noqa: E402
from metashield.models.mlp import MLP  # noqa: E402

METHODS = ("maml", "fomaml", "metasgd", "reptile")
IMPLS = ("metashield", "loop", "learn2learn")
Episode = tuple[Tensor, Tensor, Tensor, Tensor]
Step = Callable[[Episode], None]

# ---------------------------------------------------------------------------------------------- learn2learn

# Third-party packages that learn2learn 0.2.0's __init__ imports for its vision/gym/text/data helpers; none is
# used by l2l.algorithms.MAML/MetaSGD. Only those that are not installed are stubbed.
_L2L_STUBBED = ("torchvision", "gym", "requests", "tqdm", "scipy", "pytorch_lightning", "qpth", "PIL")


class _StubMeta(type):
    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub


class _Stub(metaclass=_StubMeta):
    """Stands for any class, function or constant of a stubbed package; subclassable and callable."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __call__(self, *args, **kwargs):
        return _Stub()


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, missing: set[str]) -> None:
        self.missing = missing

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in self.missing:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module) -> None:
        pass


def import_learn2learn(l2l_path: str | None) -> tuple[types.ModuleType | None, str]:
    """learn2learn, or None with the reason; stubs only the listed packages that are not installed."""
    if l2l_path:
        sys.path.insert(0, l2l_path)
    if importlib.machinery.PathFinder.find_spec("learn2learn", sys.path) is None:
        return None, "learn2learn is not installed (see benchmarks/README.md, --l2l-path)"
    missing = {n for n in _L2L_STUBBED if importlib.machinery.PathFinder.find_spec(n, sys.path) is None}
    finder = _StubFinder(missing)
    sys.meta_path.insert(0, finder)
    try:
        import learn2learn as l2l
    except Exception as exc:  # an sdist build that does not load: report, measure the rest
        return None, f"import learn2learn failed: {type(exc).__name__}: {exc}"
    finally:
        sys.meta_path.remove(finder)
    note = f"learn2learn {l2l.__version__}"
    if missing:
        note += f" (stub modules for absent {', '.join(sorted(missing))})"
    return l2l, note


# ---------------------------------------------------------------------------------------------- workloads


def make_episodes(n: int, tasks: int, shots: int, queries: int, dim: int, seed: int) -> list[Episode]:
    """``n`` binary episodes: support [T, 2*shots, dim], query [T, 2*queries, dim], balanced labels."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        sy = torch.arange(2).repeat_interleave(shots).expand(tasks, -1).contiguous()
        qy = torch.arange(2).repeat_interleave(queries).expand(tasks, -1).contiguous()
        shift = torch.randn(tasks, 1, dim, generator=g)
        sx = torch.randn(tasks, 2 * shots, dim, generator=g) + shift * (2 * sy.unsqueeze(-1) - 1)
        qx = torch.randn(tasks, 2 * queries, dim, generator=g) + shift * (2 * qy.unsqueeze(-1) - 1)
        out.append((sx, sy, qx, qy))
    return out


def build(method: str, impl: str, model: nn.Module, cfg: argparse.Namespace, l2l) -> Step:
    """One meta-step closure ``step(episode)`` for ``method`` implemented by ``impl`` on ``model``."""
    lr, steps, first_order = cfg.inner_lr, cfg.inner_steps, method == "fomaml"
    if method == "reptile":
        return _build_reptile(impl, model, cfg, l2l)
    if impl == "metashield":
        cls = MetaSGD if method == "metasgd" else MAML
        learner = cls(model, inner_lr=lr, inner_steps=steps, first_order=first_order)
        opt = torch.optim.Adam(learner.parameters(), lr=cfg.outer_lr)

        def step(ep: Episode) -> None:
            opt.zero_grad(set_to_none=True)
            learner.outer_loss(*ep).backward()
            opt.step()

        return step
    if impl == "loop":
        params = list(model.parameters())
        alphas = [nn.Parameter(torch.full_like(p, lr)) for p in params] if method == "metasgd" else None
        opt = torch.optim.Adam(params + (alphas or []), lr=cfg.outer_lr)
        create_graph = not first_order
        forward = lean_forward(model)

        def step(ep: Episode) -> None:
            sx, sy, qx, qy = ep
            opt.zero_grad(set_to_none=True)
            tasks = sx.shape[0]
            for t in range(tasks):
                fast = [p.clone() for p in params]  # learn2learn's clone_module: a differentiable copy
                for _ in range(steps):
                    loss = F.cross_entropy(forward(fast, sx[t]), sy[t])
                    grads = torch.autograd.grad(loss, fast, create_graph=create_graph)
                    if alphas is None:
                        fast = [w - lr * g for w, g in zip(fast, grads, strict=True)]
                    else:
                        fast = [w - a * g for w, a, g in zip(fast, alphas, grads, strict=True)]
                (F.cross_entropy(forward(fast, qx[t]), qy[t]) / tasks).backward()
            opt.step()

        return step
    # learn2learn
    if method == "metasgd":
        meta = l2l.algorithms.MetaSGD(model, lr=lr, first_order=False)
    else:
        meta = l2l.algorithms.MAML(model, lr=lr, first_order=first_order)
    opt = torch.optim.Adam(meta.parameters(), lr=cfg.outer_lr)

    def step(ep: Episode) -> None:
        sx, sy, qx, qy = ep
        opt.zero_grad(set_to_none=True)
        tasks = sx.shape[0]
        for t in range(tasks):
            learner = meta.clone()
            for _ in range(steps):
                learner.adapt(F.cross_entropy(learner(sx[t]), sy[t]))
            (F.cross_entropy(learner(qx[t]), qy[t]) / tasks).backward()
        opt.step()

    return step


def lean_forward(model: nn.Module) -> Callable[[list[Tensor], Tensor], Tensor]:
    """``f(weights, x)``: the model's Linear/ReLU stack on an explicit weight list, without module calls."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.ReLU))]
    if sum(isinstance(m, nn.Linear) for m in layers) * 2 != len(list(model.parameters())):
        raise ValueError("the lean loop supports Linear/ReLU stacks with biases only")

    def forward(weights: list[Tensor], x: Tensor) -> Tensor:
        k = 0
        for m in layers:
            if isinstance(m, nn.Linear):
                x = F.linear(x, weights[k], weights[k + 1])
                k += 2
            else:
                x = torch.relu(x)
        return x

    return forward


def _build_reptile(impl: str, model: nn.Module, cfg: argparse.Namespace, l2l) -> Step:
    """Reptile: θ ← θ + outer_lr · mean_t(θ'_t − θ) after ``inner_steps`` first-order SGD steps per task."""
    lr, steps, outer = cfg.inner_lr, cfg.inner_steps, cfg.reptile_outer_lr
    if impl == "metashield":
        reptile = Reptile(model, inner_lr=lr, inner_steps=steps, outer_lr=outer)
        return lambda ep: reptile.step(ep[0], ep[1])
    params = list(model.parameters())
    meta = l2l.algorithms.MAML(model, lr=lr, first_order=True) if impl == "learn2learn" else None
    forward = lean_forward(model)

    def adapt_loop(x: Tensor, y: Tensor) -> list[Tensor]:
        fast = [p.detach().requires_grad_() for p in params]
        for _ in range(steps):
            loss = F.cross_entropy(forward(fast, x), y)
            grads = torch.autograd.grad(loss, fast)
            with torch.no_grad():
                fast = [(w - lr * g).requires_grad_() for w, g in zip(fast, grads, strict=True)]
        return fast

    def adapt_l2l(x: Tensor, y: Tensor) -> list[Tensor]:
        learner = meta.clone()
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(x), y))
        return list(learner.parameters())

    adapt = adapt_loop if impl == "loop" else adapt_l2l

    def step(ep: Episode) -> None:
        sx, sy = ep[0], ep[1]
        tasks = sx.shape[0]
        total = [torch.zeros_like(p) for p in params]
        for t in range(tasks):
            for acc, w in zip(total, adapt(sx[t], sy[t]), strict=True):
                acc.add_(w.detach())
        with torch.no_grad():
            for p, acc in zip(params, total, strict=True):
                p.add_(acc / tasks - p, alpha=outer)

    return step


def new_model(cfg: argparse.Namespace) -> nn.Module:
    torch.manual_seed(cfg.seed)
    return MLP(cfg.dim, tuple(cfg.hidden), 2)


# ---------------------------------------------------------------------------------------------- workers


def worker_time(cfg: argparse.Namespace) -> dict:
    """Interleaved timing of every available implementation of ``cfg.method``: median s per meta-step."""
    torch.set_num_threads(cfg.threads)
    l2l, note = import_learn2learn(cfg.l2l_path)
    impls = [i for i in IMPLS if i != "learn2learn" or l2l is not None]
    episodes = make_episodes(4, cfg.tasks, cfg.shots, cfg.queries, cfg.dim, cfg.seed)
    steps = {i: build(cfg.method, i, new_model(cfg), cfg, l2l) for i in impls}
    for i in impls:  # warm-up: allocator, autograd and vmap caches
        for k in range(cfg.warmup):
            steps[i](episodes[k % len(episodes)])
    times: dict[str, list[float]] = {i: [] for i in impls}
    for r in range(cfg.rounds):
        for i in impls if r % 2 == 0 else impls[::-1]:
            t0 = time.perf_counter()
            for k in range(cfg.steps):
                steps[i](episodes[k % len(episodes)])
            times[i].append((time.perf_counter() - t0) / cfg.steps)
    return {"method": cfg.method, "l2l": note, "times": times}


def worker_memory(cfg: argparse.Namespace) -> dict:
    """Growth of max RSS (MiB) over ``cfg.steps`` meta-steps of one implementation, after setup."""
    torch.set_num_threads(cfg.threads)
    l2l, note = import_learn2learn(cfg.l2l_path) if cfg.impl == "learn2learn" else (None, "")
    if cfg.impl == "learn2learn" and l2l is None:
        return {"peak_mib": None, "l2l": note}
    episodes = make_episodes(1, cfg.tasks, cfg.shots, cfg.queries, cfg.dim, cfg.seed)
    step = build(cfg.method, cfg.impl, new_model(cfg), cfg, l2l)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(max(cfg.steps, 2)):
        step(episodes[0])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mib": (after - before) / 1024.0}  # ru_maxrss is in KiB on Linux


def run_worker(cfg: argparse.Namespace, kind: str, method: str, impl: str = "") -> dict:
    argv = [sys.executable, __file__, "--worker", kind, "--method", method, "--impl", impl or "metashield"]
    argv += _forward_flags(cfg)
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg.threads)}
    res = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"worker {kind} {method} {impl} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _forward_flags(cfg: argparse.Namespace) -> list[str]:
    flags = ["--threads", str(cfg.threads), "--tasks", str(cfg.tasks), "--shots", str(cfg.shots)]
    flags += ["--queries", str(cfg.queries), "--dim", str(cfg.dim), "--hidden", *map(str, cfg.hidden)]
    flags += [
        "--inner-steps",
        str(cfg.inner_steps),
        "--inner-lr",
        str(cfg.inner_lr),
        "--rounds",
        str(cfg.rounds),
    ]
    flags += ["--steps", str(cfg.steps), "--warmup", str(cfg.warmup), "--seed", str(cfg.seed)]
    if cfg.l2l_path:
        flags += ["--l2l-path", cfg.l2l_path]
    return flags


# ---------------------------------------------------------------------------------------------- driver


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "—" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds; the figure is their median")
    p.add_argument("--steps", type=int, default=2, help="meta-steps per implementation per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed meta-steps per implementation")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default 2; 1 with --quick)")
    p.add_argument("--tasks", type=int, default=16, help="tasks per meta-batch")
    p.add_argument("--shots", type=int, default=10, help="support examples per class (2 classes)")
    p.add_argument("--queries", type=int, default=15, help="query examples per class (2 classes)")
    p.add_argument("--dim", type=int, default=122)
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    p.add_argument("--inner-steps", type=int, default=5)
    p.add_argument("--inner-lr", type=float, default=0.01)
    p.add_argument("--outer-lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--reptile-outer-lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--no-memory", action="store_true", help="skip the max-RSS subprocesses")
    p.add_argument(
        "--l2l-path",
        default=os.environ.get("METASHIELD_L2L_PATH"),
        help="directory holding an installed learn2learn (pip install --target ...); $METASHIELD_L2L_PATH",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes and rounds: a smoke test, not a figure")
    p.add_argument("--json", metavar="OUT", help="write the results as JSON to OUT")
    p.add_argument("--worker", choices=("time", "memory"), help=argparse.SUPPRESS)
    p.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    cfg = p.parse_args(argv)

    if cfg.worker:
        out = worker_time(cfg) if cfg.worker == "time" else worker_memory(cfg)
        print(json.dumps(out))
        return 0
    if cfg.threads is None:
        # --quick is a smoke test: on a busy machine 2 OpenMP threads can wait on each other for seconds.
        cfg.threads = 1 if cfg.quick else 2
    if cfg.quick:
        cfg.tasks, cfg.hidden, cfg.inner_steps = 4, [32, 32], 2
        cfg.rounds, cfg.steps, cfg.warmup = 2, 1, 1
        cfg.methods = ["maml", "reptile"] if cfg.methods == list(METHODS) else cfg.methods

    info = machine()
    workload = (
        f"MLP {cfg.dim}->{'->'.join(map(str, cfg.hidden))}->2, {cfg.tasks} tasks/batch, S={2 * cfg.shots}, "
        f"Q={2 * cfg.queries}, {cfg.inner_steps} inner steps at lr {cfg.inner_lr}, {cfg.threads} threads, "
        f"{cfg.rounds} interleaved rounds x {cfg.steps} meta-steps"
    )
    print(f"# {info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['date']}")
    print(f"# load average (1 min) before: {info['loadavg_1m']}")
    print(f"# {workload}")
    rows = []
    for method in cfg.methods:
        if cfg.quick:  # in-process: a smoke test need not pay a fresh interpreter per method
            res = worker_time(argparse.Namespace(**{**vars(cfg), "method": method}))
        else:
            res = run_worker(cfg, "time", method)
        med = {i: statistics.median(ts) for i, ts in res["times"].items()}
        best = {i: min(ts) for i, ts in res["times"].items()}
        row = {
            "method": method,
            "tasks_per_s": {i: cfg.tasks / s for i, s in med.items()},
            "tasks_per_s_best": {i: cfg.tasks / s for i, s in best.items()},
            "seconds_per_step": res["times"],
            "l2l": res["l2l"],
            "peak_mib": {},
        }
        if not cfg.no_memory and not cfg.quick:
            for impl in med:
                row["peak_mib"][impl] = run_worker(cfg, "memory", method, impl)["peak_mib"]
        rows.append(row)
        print(f"# {method}: done ({res['l2l']})", file=sys.stderr)

    head = "| method | metashield tasks/s | loop tasks/s | learn2learn tasks/s | speed-up vs loop | vs l2l |"
    if not cfg.no_memory and not cfg.quick:
        head += " peak MiB (ms / loop / l2l) |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for row in rows:
        tps = row["tasks_per_s"]
        ms, lp, l2 = tps["metashield"], tps["loop"], tps.get("learn2learn")
        line = f"| {row['method']} | {fmt(ms)} | {fmt(lp)} | {fmt(l2)} | {ms / lp:.2f}x | "
        line += f"{fmt(ms / l2 if l2 else None, '.2f')}{'x' if l2 else ''} |"
        if row["peak_mib"]:
            mem = row["peak_mib"]
            line += f" {' / '.join(fmt(mem.get(i), '.0f') for i in IMPLS)} |"
        print(line)
    print(f"# learn2learn: {rows[0]['l2l'] if rows else ''}")
    print(f"# load average (1 min) after: {os.getloadavg()[0]:.2f}")
    if cfg.json:
        Path(cfg.json).write_text(json.dumps({"machine": info, "workload": workload, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
