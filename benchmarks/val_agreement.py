"""Does meta-val rank the methods the way the test families do? Compares quality-run directories.

    python benchmarks/val_agreement.py runs/quality runs/repval  # after few_shot_quality.py, benign_replay.py

Every method of a run is chosen, tuned or early-stopped on the meta-val families, so a protocol is only as
good as the agreement between meta-val and test. For each directory of ``few_shot_quality.py`` runs
(``split<s>_seed<t>/metrics.json``; ``logreg-replay`` is merged from the runs' ``benign_replay.json`` caches
where ``metrics.json`` lacks it) and each shot count, over the runs found in every directory:

* rho: Spearman rank correlation between the methods' meta-val and test TPR@1%FPR (all meta-learners and
  baselines of a run), mean over runs;
* hits: runs where the method best on meta-val is also best on test; regret: how far the meta-val choice
  falls below the test-best method, in points, mean over runs;
* the val-chosen best meta-learner, best baseline and their paired difference, pooled as in the main table.

Prints a markdown table; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benign_replay import NAME as REPLAY  # noqa: E402  (benchmarks/ is on sys.path)
from benign_replay import report_with_replay  # noqa: E402
from few_shot_quality import METRIC, pool  # noqa: E402


def load_reports(root: Path, runs: list[str]) -> list[dict]:
    """The runs' ``metrics.json``, with ``logreg-replay`` among the baselines where it was scored later."""
    out = []
    for name in runs:
        run = root / name
        report = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        if REPLAY not in next(iter(report["shots"].values()))["summary"]:
            cache = run / "benign_replay.json"
            if not cache.is_file():
                raise SystemExit(
                    f"{run}: no {REPLAY} in metrics.json and no {cache}: run benign_replay.py first"
                )
            report = report_with_replay(run, json.loads(cache.read_text(encoding="utf-8")))
        out.append(report)
    return out


def agreement(report: dict, shot: str) -> tuple[float, bool, float]:
    """(Spearman rho of meta-val vs test over the run's methods, val-best is test-best, regret)."""
    entry = report["shots"][shot]
    methods = [m for m in entry["summary"] if m in entry["val_tpr@1%fpr"]]
    val = np.array([entry["val_tpr@1%fpr"][m] for m in methods])
    test = np.array([entry["summary"][m][METRIC]["mean"] for m in methods])
    chosen = int(val.argmax())
    return (
        float(spearmanr(val, test).statistic),
        chosen == int(test.argmax()),
        float(test.max() - test[chosen]),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", type=Path, nargs="+", help="directories of few_shot_quality.py runs")
    args = ap.parse_args()
    found = [{p.parent.name for p in d.glob("split*_seed*/metrics.json")} for d in args.dirs]
    runs = sorted(set.intersection(*found))
    if not runs:
        raise SystemExit(f"no run with metrics.json is in every one of {[str(d) for d in args.dirs]}")
    print(f"{len(runs)} runs in every directory: {', '.join(runs)}\n")
    print(
        "| runs | shot | rho (val vs test) | val-best = test-best | regret | best-meta | best-baseline "
        "| best meta − best baseline (paired) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for d in args.dirs:
        reports = load_reports(d, runs)
        pooled = pool(reports)
        for shot in sorted(pooled, key=int):
            rho, hits, regret = zip(*(agreement(r, shot) for r in reports), strict=True)
            best = {k: 100 * pooled[shot]["methods"][k]["mean"] for k in ("best-meta", "best-baseline")}
            gap = {k: 100 * v for k, v in pooled[shot]["best_meta_minus_best_baseline"].items()}
            print(
                f"| {d} | {shot} | {np.mean(rho):.2f} | {sum(hits)}/{len(runs)} "
                f"| {100 * np.mean(regret):.1f} "
                f"| {best['best-meta']:.1f} | {best['best-baseline']:.1f} "
                f"| {gap['mean']:+.1f} [{gap['lo']:+.1f}, {gap['hi']:+.1f}] |"
            )


if __name__ == "__main__":
    main()
