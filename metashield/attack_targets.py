"""Which detectors of a trained run an attack can target, built as learners with ``adapt``/``predict``.

The ``attack`` job (``robustness``) attacks these: trained meta-learners, the ``ensemble`` candidate, the
tuned baselines that have a torch form, and the blends with benign novelty of any of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from metashield.checkpoint import has_checkpoint
from metashield.evaluation.baselines import (
    ENSEMBLE,
    LogisticRegressionLearner,
    NearestNeighbourLearner,
    ReplayLearner,
    finetune_learner,
)
from metashield.evaluation.novelty import SUFFIX as NOVELTY
from metashield.evaluation.novelty import NoveltyLearner
from metashield.meta import Ensemble
from metashield.runs import best_on_val, ensemble_members, load_model, novelty_rows, read_metrics

GRADIENT_LEARNERS = ("maml", "fomaml", "metasgd", "anil", "reptile")
QUERY_ONLY_LEARNERS = ("protonet",)
"""Attacked after adaptation (query threat) only: the support and end-to-end threats optimise through an
inner loop of gradient steps, which a prototypical network does not have."""
QUERY_ONLY_BASELINES = ("knn", "logreg", "logreg-replay")
"""1-NN and logistic regression on the support set, with or without replayed benign rows (``metashield
evaluate``'s baselines, logistic regression with its meta-val-tuned C): attacked after adaptation only, since
scikit-learn's fit has no gradient."""


def attack_targets(
    run_dir: Path, config, prep, meta: dict, methods: Sequence[str] | None, shots: int, device, threat: str
):
    """name -> learner with ``adapt``/``predict``: trained meta-learners, the ``ensemble`` candidate of
    ``evaluate.ensemble`` (its members as ``metrics.json`` evaluated them) and the tuned fine-tune; for the
    query threat also ProtoNet, 1-NN and logistic regression; and the blends of any of them with benign
    novelty that ``metrics.json`` records (``NoveltyLearner``)."""
    in_dim = int(meta["in_dim"])
    metrics_path = run_dir / "metrics.json"
    report = read_metrics(run_dir) or {}
    metrics = report.get("shots", {}).get(str(shots), {})
    members = ensemble_members(report, list(config.evaluate.ensemble))
    attackable = GRADIENT_LEARNERS + (QUERY_ONLY_LEARNERS if threat == "query" else ())
    available = [a for a in config.train.algorithms if a in attackable and has_checkpoint(run_dir, a)]
    if members and all(m in available for m in members):
        available.append(ENSEMBLE)
    if methods is None:
        best = metrics.get("best_meta_learner")
        candidates = available + [
            b for b in metrics.get("novelty", {}) if b.removesuffix(NOVELTY) in available
        ]
        if best not in candidates:
            # A learner this threat cannot attack (ProtoNet through adaptation).
            best = best_on_val(metrics, candidates) or (available[0] if available else None)
        methods = [best] if best is not None else []
        if "finetune" in metrics.get("tuned_baselines", {}):
            methods.append("finetune")

    def build(name: str):
        """The learner ``name`` (not a blend) for this threat; a ValueError says why it cannot be attacked."""
        if name == "knn" and threat == "query":
            return NearestNeighbourLearner()
        if name in ("logreg", "logreg-replay") and threat == "query":
            tuned = metrics.get("tuned_baselines", {}).get(name)
            if tuned is None:
                raise FileNotFoundError(
                    f"{metrics_path}: no tuned {name} at {shots} shots; run `metashield evaluate --run "
                    f"{run_dir} --shots {shots} --baselines {name}` first"
                )
            learner = LogisticRegressionLearner(tuned["params"]["C"])
            if name == "logreg-replay":
                benign = torch.from_numpy(prep.replay_pool())
                learner = ReplayLearner(learner, benign, config.evaluate.replay_rows, config.seed)
            return learner
        if name == "finetune":
            tuned = metrics.get("tuned_baselines", {}).get("finetune")
            if tuned is None:
                raise FileNotFoundError(
                    f"{metrics_path}: no tuned fine-tune baseline at {shots} shots; run "
                    f"`metashield evaluate --run {run_dir} --shots {shots}` first"
                )
            pretrained = load_model(config, in_dim, run_dir, "pretrained").to(device)
            p = tuned["params"]
            return finetune_learner(pretrained, p["lr"], p["steps"], p["head_only"])
        if name == ENSEMBLE and name in available:
            return Ensemble({m: load_model(config, in_dim, run_dir, m, m) for m in members}).to(device)
        if name in available:
            return load_model(config, in_dim, run_dir, name, name).to(device)
        why = " (ProtoNet has no inner loop to attack through)" if name in QUERY_ONLY_LEARNERS else ""
        if name in QUERY_ONLY_BASELINES:
            why = " (scikit-learn's fit on the support set has no gradient)"
        others = "'finetune', 'knn', 'logreg', 'logreg-replay'" if threat == "query" else "'finetune'"
        raise ValueError(
            f"method {name!r} cannot be attacked in {run_dir} under the {threat} threat{why}: methods are "
            f"{others}, the trained meta-learners {available} and their blends with benign novelty that "
            f"metrics.json records (`<method>{NOVELTY}`)"
        )

    learners = {}
    for name in methods:
        base = name.removesuffix(NOVELTY)
        if base == name:
            learners[name] = build(name)
            continue
        blend = metrics.get("novelty", {}).get(name)
        if blend is None:
            raise FileNotFoundError(
                f"{metrics_path}: no blend {name!r} at {shots} shots; run `metashield evaluate --run "
                f"{run_dir} --novelty {base}` first"
            )
        index, reference = novelty_rows(config, prep, report["protocol"]["novelty"]["reference_rows"])
        learners[name] = NoveltyLearner(
            build(base),
            torch.from_numpy(index),
            torch.from_numpy(reference),
            blend["k"],
            blend["weight"],
            blend["novelty_scale"],
        ).to(device)
    if not learners:
        raise ValueError(f"{run_dir}: no gradient meta-learner checkpoint to attack")
    for learner in learners.values():
        learner.eval()
    return learners
