"""Poisoned support sets on NSL-KDD held-out families, pooled over the quality runs.

    python benchmarks/support_attack.py --runs runs/quality --eps 10 --episodes 10 --out runs/support

For every run directory under ``--runs`` (each a ``metashield train`` run of ``configs/nsl_kdd.yaml``; see
``few_shot_quality.py``), the attacker controls ``--fraction`` of the K = 5 malicious support rows of each
meta-test episode and optimises them through MAML's inner loop (``metashield attack --attack support``),
placing the detector's 1%-FPR threshold with ``--attacker-benign`` rows of benign traffic it holds (the run's
benign validation slice; 0: the benign support rows only).
Reported per eps: TPR@1%FPR with a clean support, after a random label flip of the same rows, and after the
optimised attack, with 95% bootstrap CIs over (run, family) units and over episodes, and the paired
differences. Resumable: a run that already holds the result file is read, not recomputed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from few_shot_quality import bootstrap_ci  # noqa: E402  (benchmarks/ is on sys.path)

from metashield._atomic import atomic_write_json, atomic_write_text  # noqa: E402
from metashield.robustness import attack_run  # noqa: E402

KEYS = ("clean", "random_flip", "attacked")


def _ci(values: np.ndarray, rng: np.random.Generator) -> list[float]:
    """``bootstrap_ci`` as a JSON list: [mean, 2.5th, 97.5th percentile]."""
    return list(bootstrap_ci(values, rng))


def pool(reports: list[dict], method: str) -> dict:
    """Per eps: mean over (run, family) units of the per-family mean, with a bootstrap CI over the units."""
    rng = np.random.default_rng(0)
    out: dict = {}
    for eps in reports[0]["methods"][method]:
        units = {k: [] for k in KEYS}
        episodes = {k: [] for k in KEYS}
        for rep in reports:
            per = rep["per_episode"][method][eps]
            for k in KEYS:
                units[k] += [float(np.mean(v)) for v in per[k].values()]
                episodes[k] += [x for v in per[k].values() for x in v]
        arr = {k: np.array(v) for k, v in units.items()}
        out[eps] = {
            "units": len(arr["clean"]),
            "episodes": len(episodes["clean"]),
            **{f"{k}_tpr@1%fpr": _ci(arr[k], rng) for k in KEYS},
            "drop_attacked": _ci(arr["clean"] - arr["attacked"], rng),
            "drop_random_flip": _ci(arr["clean"] - arr["random_flip"], rng),
            "attacked_minus_random_flip": _ci(arr["attacked"] - arr["random_flip"], rng),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, default=Path("runs/quality"))
    parser.add_argument("--eps", type=lambda t: [float(v) for v in t.split(",")], default=[10.0])
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--optimiser", default="apgd-ce")
    parser.add_argument("--method", default="maml")
    parser.add_argument(
        "--attacker-benign",
        type=int,
        default=2000,
        help="benign validation rows the attacker holds (0: only the benign support rows)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/support"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # Finished runs only: a run still training has no checkpoint for every algorithm yet.
    runs = sorted(p for p in args.runs.iterdir() if (p / "metrics.json").is_file())
    reports = []
    for run in runs:
        name = f"attack_support_{args.method}_p{args.fraction}_b{args.attacker_benign}.json"
        path = run / name
        if path.is_file():
            report = json.loads(path.read_text())
        else:
            report = attack_run(
                run,
                threat="support",
                attack=args.optimiser,
                eps=args.eps,
                methods=[args.method],
                episodes=args.episodes,
                fraction=args.fraction,
                mode="flip-optimised",
                attacker_benign=args.attacker_benign,
                out_name=name,
            )
        reports.append(report)
        print(f"{run.name}: done", flush=True)
    pooled = pool(reports, args.method)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "support.json", {"runs": [str(r) for r in runs], "pooled": pooled})
    lines = [
        "| eps | units (run x family) | episodes | clean | random flip | attacked | drop (attacked) | "
        "drop (random flip) | attacked - flip |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for eps, p in pooled.items():

        def cell(v: list[float]) -> str:
            return f"{100 * v[0]:.1f} [{100 * v[1]:.1f}, {100 * v[2]:.1f}]"

        lines.append(
            f"| {eps} | {p['units']} | {p['episodes']} | {cell(p['clean_tpr@1%fpr'])} | "
            f"{cell(p['random_flip_tpr@1%fpr'])} | {cell(p['attacked_tpr@1%fpr'])} | "
            f"{cell(p['drop_attacked'])} | {cell(p['drop_random_flip'])} | "
            f"{cell(p['attacked_minus_random_flip'])} |"
        )
    table = "\n".join(lines)
    atomic_write_text(args.out / "support.md", table + "\n")
    print(table)


if __name__ == "__main__":
    main()
