"""Is a held-out NSL-KDD family separable from benign traffic at all? A supervised detector with every row.

    python benchmarks/supervised_reference.py --runs runs/quality        # after few_shot_quality.py

Where the few-shot methods miss a family, two explanations compete: the family looks like benign traffic in
these 121 features (then no learner can do better, and the absolute targets are beyond the data), or a few
rows are too few to learn it. This separates the two where the data allows. For every (split, held-out
family) unit of ``few_shot_quality.py`` whose family has at least ``--min-rows`` rows, a gradient-boosted
detector (scikit-learn's ``HistGradientBoostingClassifier``) is trained on the whole benign training slice
(~46,000 rows) and, in 5 folds, on 80% of ALL rows of the family, then scored on the family's remaining 20%
against the benign test slice that the episodes draw their benign queries from. Two variants: the family
alone, and the family plus every meta-train family as further attack rows (a conventional IDS that also knows
the old attacks). TPR@1%FPR uses ``threshold_at_fpr`` (ties count against the detector) with the threshold set
per fold on the benign test slice; the detections of the 5 folds are pooled. Smaller families have too few
rows for a reference that means more than a few-shot result, so they are listed without one.

Writes ``supervised_reference.json`` and ``supervised_reference.md`` under ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from few_shot_quality import METRIC  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

from metashield._atomic import atomic_write_json, atomic_write_text  # noqa: E402
from metashield.evaluation.metrics import threshold_at_fpr  # noqa: E402
from metashield.experiment import Prepared  # noqa: E402
from metashield.runs import load_run  # noqa: E402

VARIANTS = ("family", "known+family")
SHOTS = ("1", "5", "10")


def supervised_tpr(prep: Prepared, family: str, variant: str, folds: int, seed: int) -> float:
    """TPR@1%FPR of a detector trained on the benign train slice and (k-1)/k of the family's rows, pooled
    over k folds; ``variant`` "known+family" adds every meta-train family's rows as attacks."""
    rows = prep.X[prep.family_rows(family)]
    benign_train = prep.X[prep.benign["train"]]
    benign_test = prep.X[prep.benign["test"]]
    known = prep.X[np.isin(prep.family, prep.split.train)] if variant == "known+family" else rows[:0]
    order = np.random.default_rng(seed).permutation(len(rows))
    detected: list[np.ndarray] = []
    for held in np.array_split(order, folds):
        attacks = np.vstack([known, rows[np.setdiff1d(order, held)]])
        x = np.vstack([benign_train, attacks])
        y = np.r_[np.zeros(len(benign_train)), np.ones(len(attacks))]
        # Balanced weights: else a few hundred attack rows among 46,000 benign ones barely move the trees.
        weight = np.where(y == 1, len(benign_train) / len(attacks), 1.0)
        clf = HistGradientBoostingClassifier(random_state=seed).fit(x, y, sample_weight=weight)
        tau = threshold_at_fpr(clf.decision_function(benign_test), 0.01)
        detected.append(clf.decision_function(rows[held]) > tau)
    return float(np.concatenate(detected).mean())


def few_shot(reports: list[dict], family: str) -> dict[str, dict[str, float]]:
    """Per shot: the val-chosen best meta-learner's and best baseline's TPR@1%FPR on ``family``, mean over
    the runs (training seeds) of one split."""
    out: dict[str, dict[str, float]] = {}
    for shot in SHOTS:
        entries = [rep["shots"][shot] for rep in reports]
        out[shot] = {
            role: float(np.mean([e["summary"][e[role]]["per_family"][family][METRIC] for e in entries]))
            for role in ("best_meta_learner", "best_baseline")
        }
    return out


def markdown(units: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "TPR@1%FPR (%). Supervised: HistGradientBoosting on the benign training slice and "
        f"{args.folds} folds over all rows of the family (families with at least {args.min_rows} rows). "
        "Few-shot: mean over the split's training seeds of the val-chosen best meta-learner / best baseline.",
        "",
        "| split | family | rows | supervised: family only | supervised: known + family "
        "| few-shot 1 / 5 / 10: best-meta | best-baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    for u in units:
        sup = " | ".join(f"{100 * u['supervised'][v]:.1f}" for v in VARIANTS) if u["supervised"] else "– | –"
        meta = " / ".join(f"{100 * u['few_shot'][s]['best_meta_learner']:.1f}" for s in SHOTS)
        base = " / ".join(f"{100 * u['few_shot'][s]['best_baseline']:.1f}" for s in SHOTS)
        lines.append(f"| {u['split']} | {u['family']} | {u['rows']} | {sup} | {meta} | {base} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=Path("runs/quality"))
    ap.add_argument("--splits", default="0,1,2")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--min-rows", type=int, default=100)
    args = ap.parse_args()
    if args.min_rows < args.folds:
        raise SystemExit(f"--min-rows ({args.min_rows}) must be at least --folds ({args.folds})")
    units = []
    start = time.time()
    for split in (int(s) for s in args.splits.split(",")):
        runs = sorted(args.runs.glob(f"split{split}_seed*"))
        if not runs:
            raise SystemExit(f"no run split{split}_seed* under {args.runs}: run few_shot_quality.py first")
        reports = [json.loads((r / "metrics.json").read_text(encoding="utf-8")) for r in runs]
        # The family split, benign slices and pipeline depend on split.seed only: one run's data serves all.
        _, prep, _ = load_run(runs[0])
        for family in reports[0]["protocol"]["test_families"]:
            n = len(prep.family_rows(family))
            supervised = (
                {v: supervised_tpr(prep, family, v, args.folds, seed=split) for v in VARIANTS}
                if n >= args.min_rows
                else None
            )
            units.append(
                {
                    "split": split,
                    "family": family,
                    "rows": n,
                    "supervised": supervised,
                    "few_shot": few_shot(reports, family),
                }
            )
            took = time.time() - start
            print(f"split {split} {family} ({n} rows): {supervised} ({took:.0f} s)", flush=True)
    atomic_write_json(
        args.runs / "supervised_reference.json",
        {"folds": args.folds, "min_rows": args.min_rows, "units": units},
    )
    text = markdown(units, args)
    atomic_write_text(args.runs / "supervised_reference.md", text)
    print(text)


if __name__ == "__main__":
    main()
