"""Settings of ``metashield classify``; configs/drebin_families.yaml and configs/mal_api.yaml explain them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from metashield.attacks.presets import PRESETS
from metashield.config import Algorithm, MetaConfig


class SequenceModelConfig(BaseModel):
    """The token-sequence base learner (``models.SequenceCNN``) and how much of each trace it reads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_len: int = Field(256, ge=1)
    embed_dim: int = Field(16, ge=1)
    channels: list[int] = Field(default_factory=lambda: [32, 32], min_length=1)
    kernel: int = Field(5, ge=1)


class ClassifyConfig(BaseModel):
    """N-way family classification: data, split, models, meta-training and the baselines' grids."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = "drebin-families"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    clip_z: float | None = Field(10.0, gt=0)
    # features: a tabular dataset through the feature pipeline into an MLP. For a sequence dataset, tokens:
    # the first sequence.max_len calls into a SequenceCNN; bag: counts of every call over the whole
    # sequence into an MLP (a summary with no truncation).
    representation: Literal["features", "tokens", "bag"] = "features"
    sequence: SequenceModelConfig = Field(default_factory=SequenceModelConfig)
    ways: int = Field(5, ge=2)
    train_shots: int = Field(5, ge=1)
    eval_shots: list[int] = Field(default_factory=lambda: [1, 5])
    queries: int = Field(15, ge=1)
    # random: n_test test and n_val meta-val families drawn with split_seed. rotate: families in sorted
    # order, fold k holds out families k..k+n_test-1 (cyclically); with so few families there are none to
    # spare for meta-val, so val_fraction of each meta-train family's rows is held out for meta-val.
    split: Literal["random", "rotate"] = "random"
    n_val: int = Field(5, ge=0)
    n_test: int = Field(8, ge=2)
    split_seed: int = 0
    val_fraction: float = Field(0.3, gt=0, lt=1)
    folds: list[int] | None = None
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
    # Robust accuracy (``classify.robust``): attack presets of ``metashield.attacks`` against every method's
    # adapted model, worst case per query, at each budget of attack_eps (whole edits for the ``edits``
    # attack, else L-inf z-units). Empty: clean accuracy only.
    attacks: list[str] = Field(default_factory=list)
    attack_eps: list[float] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> ClassifyConfig:
        self._check_attacks()
        if self.n_test < self.ways:
            raise ValueError(f"n_test must be >= ways = {self.ways} (every episode needs N families)")
        if self.split == "random" and self.n_val < self.ways:
            raise ValueError(f"n_val must be >= ways = {self.ways} (every meta-val episode needs N families)")
        if self.folds is not None and self.split != "rotate":
            raise ValueError("folds only applies to split: rotate")
        if self.folds is not None and (not self.folds or min(self.folds) < 0):
            raise ValueError(f"folds must be a non-empty list of fold numbers >= 0, got {self.folds}")
        if not self.eval_shots or min(self.eval_shots) < 1:
            raise ValueError(f"eval_shots must be a non-empty list of shots >= 1, got {self.eval_shots}")
        if min(self.finetune_steps, default=0) < 1 or not self.finetune_lrs or not self.logreg_cs:
            raise ValueError("finetune_lrs, finetune_steps (>= 1) and logreg_cs must be non-empty")
        if self.sequence.kernel % 2 == 0:
            raise ValueError(f"sequence.kernel must be odd, got {self.sequence.kernel}")
        return self

    def _check_attacks(self) -> None:
        if bool(self.attacks) != bool(self.attack_eps):
            raise ValueError("attacks and attack_eps go together: give both (or neither)")
        unknown = sorted(set(self.attacks) - set(PRESETS))
        if unknown:
            raise ValueError(f"attacks: unknown {unknown}; attacks are {sorted(PRESETS)}")
        if any(not (math.isfinite(e) and e > 0) for e in self.attack_eps):
            raise ValueError(f"attack_eps must be finite budgets > 0, got {self.attack_eps}")
        edits = {PRESETS[a].norm == "edits" for a in self.attacks}
        if len(edits) > 1:
            raise ValueError(
                "attacks mixes the edits budget (whole edits) with z-unit attacks, whose eps mean other units"
            )
        if edits == {True} and any(e != int(e) for e in self.attack_eps):
            raise ValueError(
                f"the edits attack spends whole edits: attack_eps must be integers, got {self.attack_eps}"
            )
        if self.attacks and self.representation == "tokens":
            raise ValueError(
                "attacks need feature inputs: no attack on token sequences is built; use representation: bag "
                "(call counts, attacked by inserting calls)"
            )

    @property
    def min_rows(self) -> int:
        """Rows a val/test family needs so that every episode has distinct support and query rows."""
        return max(self.eval_shots + [self.train_shots]) + self.queries


def load_classify_config(source: str | Path | dict[str, Any]) -> ClassifyConfig:
    """A ``ClassifyConfig`` from a YAML path (safe loader) or a plain dict."""
    tree = source if isinstance(source, dict) else yaml.safe_load(Path(source).read_text(encoding="utf-8"))
    return ClassifyConfig.model_validate(tree or {})


DEMO_CONFIGS: dict[str, dict[str, Any]] = {
    "drebin-families": {
        "dataset": "drebin-families",
        "steps": 200,
        "pretrain_steps": 500,
        "test_episodes": 100,
    },
    # One rotation fold on whole-trace call counts: the CNN on raw traces is the slow part on a CPU.
    "mal-api": {
        "dataset": "mal-api",
        "representation": "bag",
        "ways": 3,
        "n_test": 3,
        "split": "rotate",
        "folds": [0],
        "steps": 200,
        "eval_every": 25,
        "pretrain_steps": 300,
        "test_episodes": 100,
        "val_episodes": 50,
    },
}
"""``metashield demo --dataset NAME`` for the family-classification datasets: small budgets of the settings
in configs/drebin_families.yaml and configs/mal_api.yaml."""
