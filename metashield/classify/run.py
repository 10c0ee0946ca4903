"""N-way K-shot family classification of held-out families (no benign class), e.g. Drebin malware families.

The detection pipeline (``experiment.prepare``, ``TrainConfig``) is benign-vs-family only, so this module has
its own small settings and preparation. Every method is scored on the SAME fixed, seeded test episodes:
meta-learners (MAML, Meta-SGD, ProtoNet, ...), pretrain + fine-tune of a new N-way head, 1-NN and logistic
regression. All hyper-parameter choices use meta-val episodes only.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from metashield._atomic import atomic_write_json
from metashield.checkpoint import load_checkpoint
from metashield.config import Algorithm, MetaConfig, TrainConfig
from metashield.data import BENIGN, FeaturePipeline, TabularData, load_dataset
from metashield.device import resolve_device
from metashield.evaluation.baselines import finetune_learner
from metashield.evaluation.classifiers import (
    Classifier,
    knn_classifier,
    learner_classifier,
    logreg_classifier,
    pretrain_families,
    with_new_head,
)
from metashield.evaluation.metrics import bootstrap_ci
from metashield.models.mlp import MLP
from metashield.tasks import EpisodeSampler, FamilySplit, drop_conflicting_rows, split_families
from metashield.train import build_learner, meta_train

log = logging.getLogger(__name__)

# Predicts query labels: (support_x [E,S,D], support_y [E,S], query_x [E,M,D]) -> labels int [E,M].


class ClassifyConfig(BaseModel):
    """Settings of ``metashield classify`` (configs/drebin_families.yaml documents each key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = "drebin-families"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    clip_z: float | None = Field(10.0, gt=0)
    ways: int = Field(5, ge=2)
    train_shots: int = Field(5, ge=1)
    eval_shots: list[int] = Field(default_factory=lambda: [1, 5])
    queries: int = Field(15, ge=1)
    n_val: int = Field(5, ge=2)
    n_test: int = Field(8, ge=2)
    split_seed: int = 0
    hidden: list[int] = Field(default_factory=lambda: [256, 256])
    algorithms: list[Algorithm] = Field(default_factory=lambda: ["maml", "metasgd", "protonet"])
    meta: MetaConfig = Field(default_factory=MetaConfig)
    steps: int = Field(1000, ge=1)
    tasks_per_batch: int = Field(16, ge=1)
    eval_every: int = Field(50, ge=1)
    patience: int = Field(5, ge=1)
    val_episodes: int = Field(100, ge=1)
    test_episodes: int = Field(200, ge=1)
    pretrain_steps: int = Field(2000, ge=0)
    pretrain_lr: float = Field(1e-3, gt=0)
    finetune_lrs: list[float] = Field(default_factory=lambda: [0.01, 0.1, 0.5])
    finetune_steps: list[int] = Field(default_factory=lambda: [10, 50, 100])
    logreg_cs: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0])

    @model_validator(mode="after")
    def _check(self) -> ClassifyConfig:
        if min(self.n_val, self.n_test) < self.ways:
            raise ValueError(
                f"n_val and n_test must be >= ways = {self.ways} (every episode needs N families)"
            )
        if not self.eval_shots or min(self.eval_shots) < 1:
            raise ValueError(f"eval_shots must be a non-empty list of shots >= 1, got {self.eval_shots}")
        if min(self.finetune_steps, default=0) < 1 or not self.finetune_lrs or not self.logreg_cs:
            raise ValueError("finetune_lrs, finetune_steps (>= 1) and logreg_cs must be non-empty")
        return self

    @property
    def min_rows(self) -> int:
        """Rows a val/test family needs so that every episode has distinct support and query rows."""
        return max(self.eval_shots + [self.train_shots]) + self.queries


def load_classify_config(source: str | Path | dict[str, Any]) -> ClassifyConfig:
    """A ``ClassifyConfig`` from a YAML path (safe loader) or a plain dict."""
    tree = source if isinstance(source, dict) else yaml.safe_load(Path(source).read_text(encoding="utf-8"))
    return ClassifyConfig.model_validate(tree or {})


@dataclass
class ClassifyData:
    """Standardised rows and the leave-families-out split; X float32 [n, D], family [n] names."""

    X: np.ndarray
    family: np.ndarray
    split: FamilySplit
    pipeline: FeaturePipeline


def prepare_families(data: TabularData, cfg: ClassifyConfig) -> ClassifyData:
    """Drop conflicting rows, hold out val/test families, fit the pipeline on meta-train family rows only."""
    if np.any(data.family == BENIGN):
        data = data.subset(data.family != BENIGN)  # family classification: benign is not a family
    keep, _ = drop_conflicting_rows(data.frame, data.family)
    data = data.subset(keep)
    names, counts = np.unique(data.family, return_counts=True)
    split = split_families(
        names.tolist(),
        n_val=cfg.n_val,
        n_test=cfg.n_test,
        seed=cfg.split_seed,
        eligible=[f for f, c in zip(names, counts, strict=True) if c >= cfg.min_rows],
    )
    pipeline = FeaturePipeline(clip=cfg.clip_z).fit(data.subset(np.isin(data.family, split.train)))
    X = pipeline.transform(data.frame)
    log.info(
        "%s: %d rows, %d features; families train=%d val=%d test=%d",
        data.name,
        len(X),
        X.shape[1],
        len(split.train),
        len(split.val),
        len(split.test),
    )
    return ClassifyData(X=X, family=data.family, split=split, pipeline=pipeline)


@dataclass
class Episodes:
    """Fixed N-way episodes as row indices of ``ClassifyData.X``.

    support_idx [E, N*K], support_y [E, N*K]; query_idx [E, N*Q], query_y [E, N*Q]; labels 0..N-1.
    """

    support_idx: np.ndarray
    support_y: np.ndarray
    query_idx: np.ndarray
    query_y: np.ndarray

    def tensors(self, X: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(support_x [E,S,D], support_y [E,S], query_x [E,M,D]) on ``device``."""
        return (
            torch.as_tensor(X[self.support_idx], device=device),
            torch.as_tensor(self.support_y, device=device),
            torch.as_tensor(X[self.query_idx], device=device),
        )

    def digest(self) -> str:
        """sha256 of the rows and labels, to show that two evaluations used the same episodes."""
        h = hashlib.sha256()
        for a in (self.support_idx, self.support_y, self.query_idx, self.query_y):
            h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        return h.hexdigest()


def make_episodes(
    family: np.ndarray, families: list[str], *, ways: int, shots: int, queries: int, n: int, seed: list[int]
) -> Episodes:
    """``n`` seeded N-way episodes over ``families``, drawn by ``EpisodeSampler(kind="classify")``.

    The sampler is run on a one-column "feature" holding each row's index, so it returns the indices it chose
    (float32 holds integers exactly below 2**24 rows) and every method can be given the very same rows.
    """
    rows = np.arange(len(family), dtype=np.float32)[:, None]
    sampler = EpisodeSampler(
        rows, family, families, None, kind="classify", ways=ways, shots=shots, queries=queries
    )
    batch = sampler.sample(n, np.random.default_rng(seed))
    return Episodes(
        support_idx=batch.support_x[..., 0].astype(np.int64),
        support_y=batch.support_y,
        query_idx=batch.query_x[..., 0].astype(np.int64),
        query_y=batch.query_y,
    )


def episode_accuracy(
    classify: Classifier, episodes: Episodes, X: np.ndarray, device: torch.device
) -> np.ndarray:
    """Query accuracy of each episode, float [E]."""
    pred = classify(*episodes.tensors(X, device))
    return (pred == episodes.query_y).mean(axis=1)


def _grid_search(
    candidates: dict[str, tuple[dict, Classifier]], val: Episodes, X: np.ndarray, device: torch.device
) -> tuple[str, dict, dict[str, float]]:
    """(best name, its params, meta-val accuracy of every candidate); ties go to the first listed."""
    scores = {
        name: float(episode_accuracy(clf, val, X, device).mean()) for name, (_, clf) in candidates.items()
    }
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
    """Meta-train each algorithm on N-way meta-train batches, early-stopped on meta-val accuracy.

    Returns algorithm -> {"learner": best weights loaded, "val_acc", "steps", "history"}.
    """
    # Families with <= K rows cannot give a support and a query; left out here (instead of the sampler's
    # warning) because on Drebin they are a known third of the meta-train families.
    names, counts = np.unique(data.family[np.isin(data.family, data.split.train)], return_counts=True)
    usable = names[counts > cfg.train_shots].tolist()
    log.info(
        "meta-training on %d of %d meta-train families (> %d rows)", len(usable), len(names), cfg.train_shots
    )
    sampler = EpisodeSampler(
        data.X,
        data.family,
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
        learner = build_learner(algo, MLP(data.X.shape[1], cfg.hidden, cfg.ways), cfg.meta).to(device)
        state = meta_train(
            learner,
            algo,
            sampler,
            lambda m: float(episode_accuracy(learner_classifier(m), val, data.X, device).mean()),
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


def _ci(acc: np.ndarray, seed: int) -> dict[str, float]:
    mean, lo, hi = bootstrap_ci(acc, seed=seed)
    return {"acc": mean, "ci_lo": lo, "ci_hi": hi, "episodes": len(acc)}


def episode_set(
    data: ClassifyData, cfg: ClassifyConfig, part: Literal["val", "test"], shots: int
) -> Episodes:
    """The fixed meta-val or test episodes at ``shots``; seeded by (seed, part, shots) only, so they do not
    depend on which methods run, and each shot count is an independent draw."""
    families, n = (
        (data.split.val, cfg.val_episodes) if part == "val" else (data.split.test, cfg.test_episodes)
    )
    return make_episodes(
        data.family,
        families,
        ways=cfg.ways,
        shots=shots,
        queries=cfg.queries,
        n=n,
        seed=[cfg.seed, 2, int(part == "test"), shots],
    )


def evaluate_shots(
    data: ClassifyData,
    cfg: ClassifyConfig,
    shots: int,
    learners: dict[str, dict],
    pretrained: nn.Module | None,
    device: torch.device,
) -> dict[str, dict]:
    """Every method on the same test episodes at ``shots``; baselines tuned on meta-val episodes first."""
    val, test = episode_set(data, cfg, "val", shots), episode_set(data, cfg, "test", shots)
    methods: dict[str, tuple[dict, Classifier]] = {
        algo: ({"val_acc_train_shots": r["val_acc"]}, learner_classifier(r["learner"]))
        for algo, r in learners.items()
    }
    methods["1-nn"] = ({}, knn_classifier())
    logreg = {f"C={c}": ({"C": c}, logreg_classifier(c)) for c in cfg.logreg_cs}
    _, params, scores = _grid_search(logreg, val, data.X, device)
    methods["logreg"] = ({**params, "val_acc": max(scores.values())}, logreg_classifier(params["C"]))
    if pretrained is not None:
        name, params, scores = _grid_search(finetune_candidates(pretrained, cfg), val, data.X, device)
        learner = finetune_learner(
            with_new_head(pretrained, cfg.ways), params["lr"], params["steps"], params["head_only"]
        )
        methods["pretrain+finetune"] = ({**params, "val_acc": scores[name]}, learner_classifier(learner))
    results = {}
    for name, (params, clf) in methods.items():
        results[name] = {
            **_ci(episode_accuracy(clf, test, data.X, device), cfg.seed),
            "chosen_on_val": params,
        }
    return results


def format_table(report: dict) -> str:
    """Accuracy [95% CI] per method (rows) and shot count (columns), in percent."""
    shots = sorted(report["results"], key=int)
    methods = list(report["results"][shots[0]])
    ways = report["ways"]
    head = f"{'method':<18}" + "".join(f"{f'{ways}-way {s}-shot':>24}" for s in shots)
    lines = [head, "-" * len(head)]
    for m in methods:
        cells = []
        for s in shots:
            r = report["results"][s][m]
            cells.append(f"{100 * r['acc']:5.1f} [{100 * r['ci_lo']:4.1f}, {100 * r['ci_hi']:4.1f}]")
        lines.append(f"{m:<18}" + "".join(f"{c:>24}" for c in cells))
    lines.append(
        f"chance {100 / report['ways']:.1f}%; {report['test_episodes']} test episodes over "
        f"{len(report['split']['test'])} held-out families, {report['queries']} queries per class; "
        f"best meta-learner on meta-val: {report['best_meta_learner']}"
    )
    return "\n".join(lines)


def classify_run(
    config: str | Path | dict[str, Any], out_dir: str | Path, *, data: TabularData | None = None
) -> dict[str, Any]:
    """Meta-train, tune on meta-val, evaluate on held-out families; writes ``out_dir/classify.json``.

    ``data`` replaces loading ``config.dataset`` (tests, custom data). Returns the report; its ``table`` is
    printable.
    """
    start = time.perf_counter()
    cfg = load_classify_config(config)
    out_dir = Path(out_dir)
    device = resolve_device(cfg.device)
    prepared = prepare_families(load_dataset(cfg.dataset) if data is None else data, cfg)
    learners = train_meta_learners(
        prepared, cfg, episode_set(prepared, cfg, "val", cfg.train_shots), out_dir, device
    )
    pretrained = None
    if cfg.pretrain_steps:
        train_rows = np.flatnonzero(np.isin(prepared.family, prepared.split.train))
        _, labels = np.unique(prepared.family[train_rows], return_inverse=True)
        pretrained = pretrain_families(
            prepared.X[train_rows],
            labels,
            hidden=cfg.hidden,
            lr=cfg.pretrain_lr,
            steps=cfg.pretrain_steps,
            seed=cfg.seed,
            device=device,
        )
    shots = sorted(set(cfg.eval_shots))
    results = {str(s): evaluate_shots(prepared, cfg, s, learners, pretrained, device) for s in shots}
    report = {
        "dataset": cfg.dataset,
        "test_episodes_sha256": {str(s): episode_set(prepared, cfg, "test", s).digest() for s in shots},
        "ways": cfg.ways,
        "queries": cfg.queries,
        "test_episodes": cfg.test_episodes,
        "split": prepared.split.to_dict(),
        "n_rows": len(prepared.X),
        "n_features": int(prepared.X.shape[1]),
        "best_meta_learner": max(learners, key=lambda a: learners[a]["val_acc"]) if learners else None,
        "training": {a: {k: v for k, v in r.items() if k != "learner"} for a, r in learners.items()},
        "results": results,
        "config": cfg.model_dump(mode="json"),
        "seconds": time.perf_counter() - start,
    }
    report["table"] = format_table(report)
    atomic_write_json(out_dir / "classify.json", report)
    return report
