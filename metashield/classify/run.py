"""Meta-train, tune on meta-val, score every method on the same fixed test episodes (``metashield classify``).

Meta-learners (MAML, Meta-SGD, ProtoNet, ...), pretrain + fine-tune of a new N-way head, 1-NN and logistic
regression are all scored on the SAME seeded test episodes; every hyper-parameter is chosen on meta-val
episodes. With ``split: rotate`` each fold trains from scratch and the report pools the folds per family.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from metashield._atomic import atomic_write_json
from metashield.attacks.presets import get_attack
from metashield.checkpoint import load_checkpoint
from metashield.classify.config import ClassifyConfig, load_classify_config
from metashield.classify.prepare import ClassifyData, build_model, prepare_families, rotation_folds
from metashield.classify.report import format_table, pool_folds
from metashield.classify.robust import robust_predictions
from metashield.config import TrainConfig
from metashield.data import BENIGN, TabularData, load_dataset
from metashield.data.sequences import SequenceData
from metashield.device import resolve_device
from metashield.evaluation.baselines import (
    LogisticRegressionLearner,
    NearestNeighbourLearner,
    finetune_learner,
)
from metashield.evaluation.classifiers import (
    Classifier,
    learner_classifier,
    logreg_classifier,
    pretrain_families,
    with_new_head,
)
from metashield.evaluation.metrics import bootstrap_ci
from metashield.tasks import EpisodeSampler
from metashield.tasks.fixed import Episodes, make_episodes
from metashield.train import build_learner, meta_train

log = logging.getLogger(__name__)


def episode_set(
    data: ClassifyData, cfg: ClassifyConfig, part: Literal["val", "test"], shots: int
) -> Episodes:
    """The fixed meta-val or test episodes at ``shots``; seeded by (seed, part, shots) only, so they do not
    depend on which methods run, and each shot count is an independent draw."""
    family, families, n = (
        (data.val_family, data.val_families, cfg.val_episodes)
        if part == "val"
        else (data.family, data.split.test, cfg.test_episodes)
    )
    return make_episodes(
        family,
        families,
        ways=cfg.ways,
        shots=shots,
        queries=cfg.queries,
        n=n,
        seed=[cfg.seed, 2, int(part == "test"), shots],
    )


def predictions(classify: Classifier, episodes: Episodes, X: np.ndarray, device: torch.device) -> np.ndarray:
    """Whether each query was classified right, bool [E, M]."""
    return classify(*episodes.tensors(X, device)) == episodes.query_y


def _grid_search(
    candidates: dict[str, tuple[dict, Classifier]], val: Episodes, X: np.ndarray, device: torch.device
) -> tuple[str, dict, dict[str, float]]:
    """(best name, its params, meta-val accuracy of every candidate); ties go to the first listed."""
    scores = {name: float(predictions(clf, val, X, device).mean()) for name, (_, clf) in candidates.items()}
    best = max(scores, key=scores.get)
    return best, candidates[best][0], scores


def finetune_candidates(pretrained: nn.Module, cfg: ClassifyConfig) -> dict[str, tuple[dict, Classifier]]:
    """Fine-tune grid: lr x steps x (head only | all layers), each from the pretrained body + a new head."""
    out = {}
    for head_only in (True, False):
        for lr in cfg.finetune_lrs:
            for steps in cfg.finetune_steps:
                params = {"lr": lr, "steps": steps, "head_only": head_only}
                learner = finetune_learner(with_new_head(pretrained, cfg.ways), lr, steps, head_only)
                out[f"finetune lr={lr} steps={steps} head_only={head_only}"] = (
                    params,
                    learner_classifier(learner),
                )
    return out


def train_meta_learners(
    data: ClassifyData, cfg: ClassifyConfig, val: Episodes, out_dir: Path, device: torch.device
) -> dict[str, dict]:
    """Meta-train each algorithm on N-way batches of meta-train rows, early-stopped on meta-val accuracy.

    Returns algorithm -> {"learner": best weights loaded, "val_acc", "steps", "history"}.
    """
    family = data.family[data.train_rows]
    # Families with <= K rows cannot give a support and a query; left out here (instead of the sampler's
    # warning) because on Drebin they are a known third of the meta-train families.
    names, counts = np.unique(family, return_counts=True)
    usable = names[counts > cfg.train_shots].tolist()
    log.info(
        "meta-training on %d of %d meta-train families (> %d rows)", len(usable), len(names), cfg.train_shots
    )
    sampler = EpisodeSampler(
        data.X[data.train_rows],
        family,
        usable,
        None,
        kind="classify",
        ways=cfg.ways,
        shots=cfg.train_shots,
        queries=cfg.queries,
    )
    # meta_train reads only the loop settings from TrainConfig; kind stays "detect" because the validator
    # refuses "classify" for `metashield train`, and the episodes come from the classify sampler above.
    loop = TrainConfig(
        algorithms=list(cfg.algorithms),
        steps=cfg.steps,
        tasks_per_batch=cfg.tasks_per_batch,
        eval_every=cfg.eval_every,
        patience=cfg.patience,
    )
    out = {}
    for i, algo in enumerate(cfg.algorithms):
        torch.manual_seed(cfg.seed * 1000 + i)
        learner = build_learner(algo, build_model(data, cfg, cfg.ways), cfg.meta).to(device)
        state = meta_train(
            learner,
            algo,
            sampler,
            lambda m: float(predictions(learner_classifier(m), val, data.X, device).mean()),
            loop,
            cfg.meta,
            out_dir=out_dir,
            seed=cfg.seed,
            device=device,
            metadata={"task": "classify", "ways": cfg.ways, "shots": cfg.train_shots},
            progress=False,
        )
        tensors, _ = load_checkpoint(out_dir, algo)
        learner.load_state_dict(tensors)
        # meta_train names its score column after the detection metric; here it is N-way accuracy.
        history = [{"step": h["step"], "val_acc": h["val_tpr@1%fpr"], **_loss(h)} for h in state.history]
        out[algo] = {"learner": learner, "val_acc": state.best_score, "steps": state.step, "history": history}
        log.info("%s: best meta-val accuracy %.3f after %d steps", algo, state.best_score, state.step)
    return out


def _loss(record: dict) -> dict:
    return {"meta_loss": record["meta_loss"]} if "meta_loss" in record else {}


def _scores(right: np.ndarray, episodes: Episodes, family: np.ndarray, seed: int) -> dict[str, Any]:
    """Episode-level accuracy with its CI, and the accuracy on each held-out family's queries."""
    acc = right.mean(axis=1)
    mean, lo, hi = bootstrap_ci(acc, seed=seed)
    names = family[episodes.query_idx]
    by_family = {str(f): float(right[names == f].mean()) for f in np.unique(names)}
    return {"acc": mean, "ci_lo": lo, "ci_hi": hi, "episodes": len(acc), "family_acc": by_family}


def evaluate_shots(
    data: ClassifyData,
    cfg: ClassifyConfig,
    shots: int,
    learners: dict[str, dict],
    pretrained: nn.Module | None,
    device: torch.device,
) -> dict[str, dict]:
    """Every method on the same test episodes at ``shots``; baselines tuned on meta-val episodes first.
    With ``cfg.attacks``, each method's robust accuracy too (``classify.robust``).

    Learners read ``data.X``; 1-NN and logistic regression read ``data.X_flat``.
    """
    val, test = episode_set(data, cfg, "val", shots), episode_set(data, cfg, "test", shots)
    methods: dict[str, tuple[dict, nn.Module, np.ndarray]] = {
        algo: ({"val_acc_train_shots": r["val_acc"]}, r["learner"], data.X) for algo, r in learners.items()
    }
    methods["1-nn"] = ({}, NearestNeighbourLearner(), data.X_flat)
    logreg = {f"C={c}": ({"C": c}, logreg_classifier(c)) for c in cfg.logreg_cs}
    _, params, scores = _grid_search(logreg, val, data.X_flat, device)
    methods["logreg"] = (
        {**params, "val_acc": max(scores.values())},
        LogisticRegressionLearner(params["C"]),
        data.X_flat,
    )
    if pretrained is not None:
        name, params, scores = _grid_search(finetune_candidates(pretrained, cfg), val, data.X, device)
        learner = finetune_learner(
            with_new_head(pretrained, cfg.ways), params["lr"], params["steps"], params["head_only"]
        )
        methods["pretrain+finetune"] = ({**params, "val_acc": scores[name]}, learner, data.X)
    results = {}
    for name, (params, learner, X) in methods.items():
        right = predictions(learner_classifier(learner), test, X, device)
        results[name] = {**_scores(right, test, data.family, cfg.seed), "chosen_on_val": params}
        if cfg.attacks:
            results[name]["robust"] = _robust(name, learner, test, X, data, cfg, device)
    return results


def _robust(
    name: str,
    learner: nn.Module,
    test: Episodes,
    X: np.ndarray,
    data: ClassifyData,
    cfg: ClassifyConfig,
    device,
) -> dict[str, dict]:
    """Accuracy under the configured attacks at each budget, with the violations of the adversarial rows."""
    if data.constraints is None:
        raise ValueError(f"{cfg.dataset}: this representation has no threat schema to attack within")
    start = time.perf_counter()
    attacks = [get_attack(a) for a in cfg.attacks]
    right, alone, violations = robust_predictions(
        learner, test, X, data.constraints, attacks, cfg.attack_eps, device, cfg.seed
    )
    log.info("robust accuracy of %s in %.1f s", name, time.perf_counter() - start)
    return {
        eps: {
            **_scores(r, test, data.family, cfg.seed),
            "per_attack_acc": {a: float(ok.mean()) for a, ok in alone[eps].items()},
            "violations": violations[eps],
        }
        for eps, r in right.items()
    }


def run_fold(
    source: TabularData | SequenceData,
    cfg: ClassifyConfig,
    out_dir: Path,
    device: torch.device,
    fold: int | None = None,
) -> dict[str, Any]:
    """One split: prepare, meta-train, pretrain, evaluate each shot count; writes out_dir/classify.json."""
    start = time.perf_counter()
    prepared = prepare_families(source, cfg, fold)
    learners = train_meta_learners(
        prepared, cfg, episode_set(prepared, cfg, "val", cfg.train_shots), out_dir, device
    )
    pretrained = None
    if cfg.pretrain_steps:
        _, labels = np.unique(prepared.family[prepared.train_rows], return_inverse=True)
        pretrained = pretrain_families(
            build_model(prepared, cfg, int(labels.max()) + 1),
            prepared.X[prepared.train_rows],
            labels,
            lr=cfg.pretrain_lr,
            steps=cfg.pretrain_steps,
            seed=cfg.seed,
            device=device,
        )
    shots = sorted(set(cfg.eval_shots))
    results = {str(s): evaluate_shots(prepared, cfg, s, learners, pretrained, device) for s in shots}
    best = max(learners, key=lambda a: learners[a]["val_acc"]) if learners else None
    report = {
        "dataset": cfg.dataset,
        "fold": fold,
        "test_episodes_sha256": {str(s): episode_set(prepared, cfg, "test", s).digest() for s in shots},
        "ways": cfg.ways,
        "split": prepared.split.to_dict(),
        "n_rows": len(prepared.X),
        "input_shape": list(prepared.X.shape[1:]),
        "best_meta_learner": best,
        "training": {a: {k: v for k, v in r.items() if k != "learner"} for a, r in learners.items()},
        "results": results,
        "note": (
            f"chance {100 / cfg.ways:.1f}%; {cfg.test_episodes} test episodes over "
            f"{len(prepared.split.test)} held-out families, {cfg.queries} queries per class; "
            f"best meta-learner on meta-val: {best}"
        ),
        "config": cfg.model_dump(mode="json"),
        "seconds": time.perf_counter() - start,
    }
    report["table"] = format_table(report)
    atomic_write_json(out_dir / "classify.json", report)
    return report


def classify_run(
    config: str | Path | dict[str, Any],
    out_dir: str | Path,
    *,
    data: TabularData | SequenceData | None = None,
) -> dict[str, Any]:
    """Run the configured split (every rotation fold, each in ``out_dir/fold<k>``, for split: rotate) and
    write ``out_dir/classify.json``. ``data`` replaces loading ``config.dataset`` (tests, custom data).
    Returns the report; its ``table`` is printable. A rotation fold already written is read back, not
    rerun."""
    cfg = load_classify_config(config)
    out_dir = Path(out_dir)
    device = resolve_device(cfg.device)
    source = load_dataset(cfg.dataset) if data is None else data
    if cfg.split == "random":
        return run_fold(source, cfg, out_dir, device)
    names = sorted(set(source.family.tolist()) - {BENIGN})
    n = rotation_folds(names, cfg.n_test)
    folds = cfg.folds if cfg.folds is not None else list(range(n))
    reports = []
    for k in folds:
        path = out_dir / f"fold{k}" / "classify.json"
        if path.is_file():
            previous = json.loads(path.read_text(encoding="utf-8"))
            if _same_protocol(previous["config"], cfg):
                reports.append(previous)
                continue
        reports.append(run_fold(source, cfg, out_dir / f"fold{k}", device, fold=k))
    report = pool_folds(reports, cfg)
    report["table"] = format_table(report)
    atomic_write_json(out_dir / "classify.json", report)
    return report


def _same_protocol(written: dict, cfg: ClassifyConfig) -> bool:
    """Whether a written fold ran with ``cfg``; which folds a run lists does not change any one fold."""
    now = cfg.model_dump(mode="json")
    return {k: v for k, v in written.items() if k != "folds"} == {
        k: v for k, v in now.items() if k != "folds"
    }
