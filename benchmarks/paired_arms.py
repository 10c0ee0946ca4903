"""One method in two arms of an ablation (runs that differ in one setting), paired on the same test episodes.

    python benchmarks/paired_arms.py --base runs/aug/base_split{0,1,2} --arm runs/aug/shots1_split{0,1,2}

Each ``--base`` run pairs with the ``--arm`` run at the same position: both must hold the same test
families and, evaluated with the same seed, the same test episodes (checked: same families and episode
counts). Per shot count it prints the change of the method's meta-val TPR@1%FPR (mean over the pairs, the
figure a val-based choice would act on), and the test change paired per (run, held-out family) unit with a
95% bootstrap CI over the units, then the test change per pair. Nothing here chooses anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from few_shot_quality import METRIC, bootstrap_ci  # noqa: E402  (benchmarks/ is on sys.path)


def unit_diffs(base: dict, arm: dict, method: str, shot: str) -> np.ndarray:
    """Arm minus base, one value per held-out family of the pair."""
    sb, sa = (r["shots"][shot]["summary"][method] for r in (base, arm))
    b, a = sb["per_family"], sa["per_family"]
    if sorted(b) != sorted(a) or sb["episodes"] != sa["episodes"]:
        raise SystemExit(f"{shot}-shot: the two runs do not hold the same test families and episode counts")
    return np.array([a[f][METRIC] - b[f][METRIC] for f in sorted(b)])


def compare(bases: list[Path], arms: list[Path], method: str) -> str:
    if len(bases) != len(arms):
        raise SystemExit(f"{len(bases)} --base runs but {len(arms)} --arm runs: give them in pairs")
    reports = [
        [json.loads((run / "metrics.json").read_text(encoding="utf-8")) for run in runs]
        for runs in (bases, arms)
    ]
    lines = [
        f"{method}: arm − base, TPR@1%FPR points. meta-val: mean over {len(bases)} pairs; test: paired per "
        "(pair, family) unit, 95% bootstrap CI over units; then test per pair",
        "",
        "| shot | meta-val | test (paired) | test per pair |",
        "|---|---|---|---|",
    ]
    rng = np.random.default_rng(0)
    for shot in sorted(reports[0][0]["shots"], key=int):
        val = np.mean(
            [
                a["shots"][shot]["val_tpr@1%fpr"][method] - b["shots"][shot]["val_tpr@1%fpr"][method]
                for b, a in zip(*reports, strict=True)
            ]
        )
        per_pair = [unit_diffs(b, a, method, shot) for b, a in zip(*reports, strict=True)]
        mean, lo, hi = bootstrap_ci(np.concatenate(per_pair), rng)
        pairs = " / ".join(f"{100 * d.mean():+.1f}" for d in per_pair)
        test = f"{100 * mean:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
        lines.append(f"| {shot} | {100 * val:+.1f} | {test} | {pairs} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, nargs="+", required=True)
    ap.add_argument("--arm", type=Path, nargs="+", required=True)
    ap.add_argument("--method", default="metasgd")
    args = ap.parse_args()
    print(compare(args.base, args.arm, args.method))


if __name__ == "__main__":
    main()
