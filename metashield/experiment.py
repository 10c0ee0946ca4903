"""From a config to model-ready arrays: load, de-conflict, split families and benign rows, fit the features.

This is the one place where data/ and tasks/ meet; the preprocessing is fitted on meta-training rows only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from metashield.config import Config, FamiliesConfig
from metashield.data import BENIGN, FeaturePipeline, TabularData, load_dataset, load_tabular
from metashield.data.schema import UNCONSTRAINED, ThreatSchema
from metashield.data.unsw_nb15 import load_unsw_nb15
from metashield.tasks import FamilySplit, drop_conflicting_rows, split_benign, split_families
from metashield.tasks.families import campaign_families, time_ordered_benign, window_families, window_split

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Standardised features and the leave-families-out bookkeeping of one run.

    X: float32 [n, D] features after the pipeline; family: [n] family names (BENIGN for benign rows).
    benign: index arrays of the benign ``train`` / ``val`` / ``test`` slices.
    schema: the dataset's threat model in raw units.
    """

    X: np.ndarray
    family: np.ndarray
    split: FamilySplit
    benign: dict[str, np.ndarray]
    pipeline: FeaturePipeline
    dataset: str
    category: dict[str, str]
    schema: ThreatSchema = UNCONSTRAINED

    def family_rows(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.family == name)

    def replay_pool(self) -> np.ndarray:
        """Benign rows a detector may replay when it adapts (``logreg-replay``): the benign TRAINING slice,
        never the slices that evaluation queries come from."""
        return self.X[self.benign["train"]]

    def fit_mask(self) -> np.ndarray:
        """Rows the preprocessing and meta-training may see: benign train slice + meta-train families."""
        mask = np.isin(self.family, self.split.train)
        mask[self.benign["train"]] = True
        return mask


def data_files(config: Config) -> list[Path]:
    """The user-supplied files a run reads (none for registry datasets, whose sha256 the registry pins)."""
    if config.data.dataset == "tabular":
        return [Path(config.data.tabular.path)]
    return [Path(p) for p in config.data.paths]


def load_raw(config: Config) -> TabularData:
    if config.data.dataset == "unsw-nb15":
        return load_unsw_nb15(config.data.paths)
    if config.data.dataset == "tabular":
        src = config.data.tabular
        return load_tabular(
            src.path,
            label_column=src.label_column,
            benign_label=src.benign_label,
            drop_columns=src.drop_columns,
            categorical_columns=src.categorical_columns,
            log_columns=src.log_columns,
            on_bad_rows=src.on_bad_rows,
        )
    data = load_dataset(config.data.dataset)
    if not isinstance(data, TabularData):
        raise ValueError(
            f"data.dataset {config.data.dataset!r} holds {type(data).__name__} (call sequences), not feature "
            "rows: detection needs a tabular dataset; classify its families with `metashield classify "
            "--config configs/mal_api.yaml`"
        )
    return data


def _pseudo_families(data: TabularData, fc: FamiliesConfig) -> TabularData:
    """``data`` with every malicious row's family replaced by its campaign or time window."""
    malicious = data.family != BENIGN
    if not malicious.any():
        raise ValueError(f"{data.name}: no malicious rows to group into families")
    family = data.family.copy()
    if fc.kind == "windows":
        if data.timestamp is None:
            raise ValueError(
                f"{data.name}: data.families.kind=windows needs per-row timestamps, and this dataset has none"
            )
        family[malicious] = window_families(data.timestamp[malicious], fc.windows)
        log.info("%s: %d malicious rows in %d time windows", data.name, int(malicious.sum()), fc.windows)
    else:
        rows = data.subset(malicious)
        # The clustering's own encoding (one-hot, log1p), fitted on the malicious rows it clusters: the
        # campaigns are defined by all of them; the model's pipeline is fitted later on meta-train rows only.
        encoded = FeaturePipeline(clip=None).fit_transform(rows)
        names, k, scores = campaign_families(encoded, k_candidates=fc.k_candidates, seed=fc.seed)
        family[malicious] = names
        log.info(
            "%s: %d malicious rows in %d k-means campaigns (silhouette by k: %s)",
            data.name,
            int(malicious.sum()),
            k,
            ", ".join(f"{c}: {v:.3f}" for c, v in scores.items()),
        )
    return replace(data, family=family, category={})


def prepare(
    config: Config,
    *,
    data: TabularData | None = None,
    split: FamilySplit | None = None,
    pipeline: FeaturePipeline | None = None,
) -> Prepared:
    """Build a :class:`Prepared` run; ``split``/``pipeline`` from a checkpoint reproduce it exactly."""
    data = load_raw(config) if data is None else data
    keep, _ = drop_conflicting_rows(data.frame, data.family)
    data = data.subset(keep)
    families = config.data.families
    if families.kind != "labels":
        data = _pseudo_families(data, families)
    if split is None and families.kind == "windows":
        if config.split.never_test:
            raise ValueError(
                "split.never_test: time windows are split by time (the latest are test), so no window can be "
                "kept out of test; remove split.never_test"
            )
        split = window_split(data.attack_families, config.split.n_val, config.split.n_test)
    if split is None:
        names, counts = np.unique(data.family, return_counts=True)
        split = split_families(
            data.attack_families,
            val=config.split.val_families,
            test=config.split.test_families,
            n_val=config.split.n_val,
            n_test=config.split.n_test,
            seed=config.split.seed,
            eligible=[f for f, c in zip(names, counts, strict=True) if c >= config.split.min_rows],
            never_test=config.split.never_test,
        )
    benign_rows = np.flatnonzero(data.family == BENIGN)
    if len(benign_rows) == 0:
        raise ValueError(f"{data.name}: no benign rows, cannot build detection episodes")
    if families.kind == "windows":
        train_b, val_b, test_b = time_ordered_benign(
            benign_rows, data.timestamp, config.data.benign_fractions
        )
    else:
        train_b, val_b, test_b = split_benign(
            benign_rows, fractions=config.data.benign_fractions, seed=config.split.seed
        )
    prepared = Prepared(
        X=np.empty((0, 0), np.float32),
        family=data.family,
        split=split,
        benign={"train": train_b, "val": val_b, "test": test_b},
        pipeline=pipeline if pipeline is not None else FeaturePipeline(clip=config.data.clip_z),
        dataset=data.name,
        category=dict(data.category),
        schema=data.schema,
    )
    if pipeline is None:
        prepared.pipeline.fit(data.subset(prepared.fit_mask()))
    prepared.X = prepared.pipeline.transform(data.frame)
    log.info(
        "%s: %d rows, %d features; families train=%d val=%d test=%d; benign train/val/test=%d/%d/%d",
        data.name,
        len(data.family),
        prepared.X.shape[1],
        len(split.train),
        len(split.val),
        len(split.test),
        len(train_b),
        len(val_b),
        len(test_b),
    )
    return prepared
