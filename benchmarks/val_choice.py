"""Choose a method's setting per split and shot count on meta-val, then score the choice on the test families.

    python benchmarks/val_choice.py --base runs/aug/rv_base_split{0,1,2} \
        --arm runs/aug/rv_lr10_split{0,1,2} --arm runs/aug/rv_lr20_split{0,1,2} \
        --against runs/repval/split{0,1,2}_seed0

Position i of ``--base`` and of every ``--arm`` is split i: runs of one method that differ in one setting,
evaluated on the same test episodes (``paired_arms.unit_diffs`` checks families and episode counts). For
each split and shot count the candidate (the base or an arm) with the highest meta-val TPR@1%FPR of
``--method`` is chosen, as ``metashield evaluate`` chooses the baselines' settings. Printed per shot: the
choices, the chosen − base change on meta-val and on test (paired per (split, family), 95% bootstrap CI
over those units) and, with ``--against`` (full runs with the same split and evaluation seed, hence the
same test episodes), the chosen and the base setting each minus that run's val-chosen best baseline.
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
from paired_arms import unit_diffs  # noqa: E402


def _load(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text(encoding="utf-8"))


def _per_family(report: dict, method: str, shot: str) -> dict[str, float]:
    return {f: v[METRIC] for f, v in report["shots"][shot]["summary"][method]["per_family"].items()}


def _val(report: dict, method: str, shot: str) -> float:
    return report["shots"][shot]["val_tpr@1%fpr"][method]


def _ci_text(values: np.ndarray) -> str:
    # A fresh generator per interval, so a figure does not depend on which others the options print.
    mean, lo, hi = bootstrap_ci(values, np.random.default_rng(0))
    return f"{100 * mean:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _against_best_baseline(run: dict, report: dict, method: str, shot: str) -> np.ndarray:
    """``method`` in ``report`` minus the val-chosen best baseline of the full ``run``, per test family."""
    best = run["shots"][shot]["best_baseline"]
    mine, theirs = _per_family(report, method, shot), _per_family(run, best, shot)
    if sorted(mine) != sorted(theirs):
        raise SystemExit(f"{shot}-shot: --against run holds other test families than the candidates")
    return np.array([mine[f] - theirs[f] for f in sorted(mine)])


def choose(bases: list[Path], arms: list[list[Path]], method: str, against: list[Path] | None) -> str:
    splits = len(bases)
    if any(len(runs) != splits for runs in arms) or (against is not None and len(against) != splits):
        raise SystemExit(f"{splits} --base runs: give each --arm (and --against) one run per split, in order")
    names = ["base"] + [runs[0].name.rsplit("_split", 1)[0] for runs in arms]
    candidates = [[_load(run) for run in runs] for runs in [bases, *arms]]
    full = [_load(run) for run in against] if against is not None else None
    lines = [
        f"{method}: setting chosen per split and shot on meta-val among {', '.join(names)}; "
        "TPR@1%FPR points, test paired per (split, family) unit, 95% bootstrap CI",
        "",
        "| shot | chosen per split | meta-val: chosen − base | test: chosen − base |"
        + (" chosen − best baseline | base − best baseline |" if full else ""),
        "|---|---|---|---|" + ("---|---|" if full else ""),
    ]
    for shot in sorted(candidates[0][0]["shots"], key=int):
        vals = np.array([[_val(runs[s], method, shot) for s in range(splits)] for runs in candidates])
        picks = [int(c) for c in vals.argmax(axis=0)]
        val_gain = np.mean([vals[c, s] - vals[0, s] for s, c in enumerate(picks)])
        test = np.concatenate(
            [unit_diffs(candidates[0][s], candidates[c][s], method, shot) for s, c in enumerate(picks)]
        )
        chosen_names = " / ".join(names[c] for c in picks)
        row = f"| {shot} | {chosen_names} | {100 * val_gain:+.1f} | {_ci_text(test)} |"
        if full:
            chosen = np.concatenate(
                [_against_best_baseline(full[s], candidates[c][s], method, shot) for s, c in enumerate(picks)]
            )
            base = np.concatenate(
                [_against_best_baseline(full[s], candidates[0][s], method, shot) for s in range(splits)]
            )
            row += f" {_ci_text(chosen)} | {_ci_text(base)} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, nargs="+", required=True)
    ap.add_argument("--arm", type=Path, nargs="+", action="append", required=True)
    ap.add_argument("--against", type=Path, nargs="+")
    ap.add_argument("--method", default="metasgd")
    args = ap.parse_args()
    print(choose(args.base, args.arm, args.method, args.against))


if __name__ == "__main__":
    main()
