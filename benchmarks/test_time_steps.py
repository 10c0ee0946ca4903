"""Would more inner steps at test time help? Meta-val only (the test families are never scored here).

    python benchmarks/test_time_steps.py runs/quality/split0_seed0 [--algorithms metasgd,maml]

For each gradient meta-learner of a trained run, the meta-val TPR@1%FPR of the evaluation protocol's tuning
episodes at 1, 5 and 10 shots with the trained number of inner steps, twice and four times as many.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from metashield.device import resolve_device
from metashield.evaluation.baselines import learner_scorer
from metashield.evaluation.protocol import mean_score
from metashield.runs import load_model, load_run, tuning_episode_sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--algorithms", default="metasgd,maml")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config, prep, meta = load_run(args.run)
    device = resolve_device("cpu")
    for algo in args.algorithms.split(","):
        learner = load_model(config, int(meta["in_dim"]), args.run, algo, algo).eval()
        trained = learner.inner_steps
        for k in (1, 5, 10):
            val = tuning_episode_sets(config, prep, k, device)
            scores = []
            for steps in (trained, 2 * trained, 4 * trained):
                learner.inner_steps = steps
                scores.append(100 * mean_score(learner_scorer(learner), val))
            learner.inner_steps = trained
            cells = ", ".join(f"{m * trained} steps {v:.1f}" for m, v in zip((1, 2, 4), scores, strict=True))
            print(f"{args.run.name} {algo} {k}-shot meta-val TPR@1%FPR: {cells}")


if __name__ == "__main__":
    main()
