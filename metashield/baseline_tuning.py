"""The tuned baselines of ``metashield evaluate``: their hyper-parameter grids, the scorer of each grid point
for a run, and the search of a grid on meta-val episodes."""

from __future__ import annotations

import logging

import numpy as np
import torch

from metashield.config import Config, EvaluateConfig
from metashield.evaluation.baselines import (
    Scorer,
    benign_replay,
    finetune_scorer,
    knn_scorer,
    logreg_scorer,
    scratch_scorer,
)
from metashield.evaluation.protocol import family_scores
from metashield.experiment import Prepared
from metashield.runs import build_model

log = logging.getLogger(__name__)


def baseline_grids(ec: EvaluateConfig) -> dict[str, list[dict]]:
    """Hyper-parameter grids of the baselines, searched on meta-val families at each shot count."""
    finetune = [
        {"lr": lr, "steps": steps, "head_only": head}
        for lr in ec.finetune_lrs
        for steps in ec.finetune_steps
        for head in (False, True)
    ]
    return {
        "finetune": finetune + [{"lr": 0.0, "steps": 0, "head_only": False}],
        "scratch": [{"lr": lr, "steps": steps} for lr in ec.scratch_lrs for steps in ec.scratch_steps],
        "logreg": [{"C": c} for c in ec.logreg_cs],
        "logreg-replay": [{"C": c} for c in ec.logreg_cs],
        "knn": [{}],
    }


def baseline_scorer(
    name: str,
    params: dict,
    config: Config,
    prep: Prepared,
    pretrained: torch.nn.Module | None,
    device: torch.device,
) -> Scorer:
    """The scorer of baseline ``name`` at grid point ``params`` (``baseline_grids``) for a run's data;
    ``pretrained`` (the run's supervised model) is needed by ``finetune`` only."""
    if name == "finetune":
        if pretrained is None:
            raise ValueError("the finetune baseline needs the run's pretrained model")
        return finetune_scorer(pretrained, params["lr"], params["steps"], params["head_only"])
    if name == "scratch":

        def fresh_model() -> torch.nn.Module:
            # A fixed initialisation: drawn from the global RNG, it depended on whatever ran before in the
            # process (training, other baselines), so `evaluate` after `train` in one process and a later
            # `metashield evaluate` disagreed.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed * 1000 + 998)
                return build_model(config, prep.X.shape[1]).to(device)

        return scratch_scorer(fresh_model, params["lr"], params["steps"])
    if name == "logreg":
        return logreg_scorer(params["C"])
    if name == "logreg-replay":
        benign = torch.from_numpy(prep.replay_pool())
        return benign_replay(logreg_scorer(params["C"]), benign, config.evaluate.replay_rows, config.seed)
    if name == "knn":
        return knn_scorer()
    raise ValueError(f"unknown baseline {name!r}")


def tune_baseline(grid: list[dict], make, val_sets, label: str) -> tuple[dict, float, list]:
    """Pick the grid point with the best mean meta-val TPR@1%FPR (ties: the first, i.e. the simplest).

    Returns (params, score, trace); each trace entry also holds its per-family meta-val scores."""
    per_family = [family_scores(make(**p), val_sets) for p in grid]
    scores = [float(np.mean(list(f.values()))) for f in per_family]
    best = int(np.argmax(scores))
    log.info("%s: best %s (meta-val TPR@1%%FPR %.3f)", label, grid[best], scores[best])
    return (
        grid[best],
        scores[best],
        [
            {"params": p, "val_tpr@1%fpr": s, "val_per_family": f}
            for p, s, f in zip(grid, scores, per_family, strict=True)
        ],
    )
