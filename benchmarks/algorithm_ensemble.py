"""Algorithm ensembles: average the scores of several meta-learners that one run has already trained.

    python benchmarks/algorithm_ensemble.py --runs runs/repval --algorithms metasgd,maml,fomaml

Every run of ``benchmarks/few_shot_quality.py`` meta-trains all six meta-learners on the same data, so an
ensemble of some of them costs no further training, only their adaptations at test time. For each finished
run under ``--runs`` the ensemble adapts every member on the support set and averages their logit margins
(the members must all be classifiers on the same logit scale; ``evaluation.baselines.ensemble_scorer``,
which ``metashield evaluate`` uses for ``evaluate.ensemble``). It is
scored on the run's own meta-val and meta-test episodes, joins the run's meta-learners as one more
candidate for the val-chosen best meta-learner, and the pooled table is recomputed with
``few_shot_quality.pool``. The first member is rescored beside it and must reproduce ``metrics.json``.
Pick the members on meta-val (e.g. the best mean meta-val scores), never on test.

Writes ``algorithm_ensemble.json`` and ``algorithm_ensemble.md`` under ``--runs``; ``metrics.json`` is never
touched.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from seed_ensemble import add_candidate, write_report  # noqa: E402  (benchmarks/ is on sys.path)

from metashield.device import resolve_device  # noqa: E402
from metashield.evaluation.baselines import ensemble_scorer, learner_scorer  # noqa: E402
from metashield.runs import load_model, load_run  # noqa: E402


def ensemble_run(run: Path, algorithms: list[str], name: str) -> dict:
    """``metrics.json`` of ``run`` extended with the ensemble of its ``algorithms``."""
    config, prep, meta = load_run(run)
    device = resolve_device(config.device)
    scorers = [
        learner_scorer(load_model(config, int(meta["in_dim"]), run, a, a).to(device)) for a in algorithms
    ]
    return add_candidate(run, config, prep, ensemble_scorer(scorers), name, algorithms[0], scorers[0], device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, default=Path("runs/repval"))
    parser.add_argument("--algorithms", default="metasgd,maml,fomaml", help="the members, first = reference")
    args = parser.parse_args()
    algorithms = args.algorithms.split(",")
    if len(algorithms) < 2 or len(set(algorithms)) != len(algorithms):
        parser.error(f"an ensemble needs two or more distinct algorithms, got {args.algorithms}")
    if "protonet" in algorithms:
        parser.error("protonet's logits are negative squared distances, on another scale: leave it out")
    name = "+".join(algorithms)
    started = time.time()
    runs = sorted(p for p in args.runs.glob("split*_seed*") if (p / "metrics.json").is_file())
    if not runs:
        raise SystemExit(f"no finished run (split*_seed*/metrics.json) under {args.runs}")
    reports = []
    for run in runs:
        report = ensemble_run(run, algorithms, name)
        split, seed = run.name.removeprefix("split").split("_seed")
        report["protocol"]["split_seed"], report["protocol"]["train_seed"] = int(split), int(seed)
        reports.append(report)
    args.splits = ",".join(sorted({r.name.split("_")[0].removeprefix("split") for r in runs}))
    args.seeds = ",".join(sorted({r.name.split("_seed")[1] for r in runs}))
    what = f"mean logit margin of the run's own {', '.join(algorithms)}"
    write_report(
        args, reports, name, algorithms[0], what, started, "algorithm_ensemble", "ensemble_minus_first"
    )


if __name__ == "__main__":
    main()
