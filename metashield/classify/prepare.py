"""From a dataset to model inputs and a leave-families-out split; statistics from meta-train rows only."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch import nn

from metashield.attacks.constraints import Constraints, compile_constraints
from metashield.classify.config import ClassifyConfig
from metashield.data import BENIGN, FeaturePipeline, TabularData
from metashield.data.sequences import SequenceData
from metashield.models.mlp import MLP
from metashield.models.sequence import SequenceCNN
from metashield.tasks import FamilySplit, drop_conflicting_rows, split_families

log = logging.getLogger(__name__)

NOT_DRAWN = ""
"""Family name given to rows an episode set must never draw (see ``ClassifyData.val_family``)."""


@dataclass
class ClassifyData:
    """Model inputs and the split of one fold.

    X: float32 [n, D], what the learners see (standardised features, or token ids for a SequenceCNN).
    X_flat: float32 [n, D'], what 1-NN and logistic regression see: X itself for feature rows; for tokens,
    the standardised log-counts of each call in the same truncated window, so they read the same calls.
    family: [n] names. val_family: [n] names for drawing meta-val episodes (rows of other roles renamed
    ``NOT_DRAWN``). train_rows: bool [n], the rows meta-training and pretraining may use.
    vocab_size: token vocabulary of a sequence representation, else None.
    constraints: the dataset's threat schema in X's z-space (features and bag representations; None for
    tokens, which no attack covers).
    """

    X: np.ndarray
    X_flat: np.ndarray
    family: np.ndarray
    split: FamilySplit
    val_family: np.ndarray
    train_rows: np.ndarray
    vocab_size: int | None = None
    constraints: Constraints | None = None

    @property
    def val_families(self) -> list[str]:
        """The families meta-val episodes draw from (meta-val families, or meta-train ones' held-out rows)."""
        return sorted(set(self.val_family.tolist()) - {NOT_DRAWN})


def rotation_folds(families: list[str], n_test: int) -> int:
    """Number of rotation folds: one per family, each holding out ``n_test`` consecutive ones."""
    if n_test >= len(families):
        raise ValueError(f"n_test = {n_test} leaves no meta-train family among {len(families)}")
    return len(families)


def fold_split(families: list[str], n_test: int, fold: int) -> FamilySplit:
    """Rotation fold ``fold``: test = sorted families fold..fold+n_test-1 (cyclic), train = the rest."""
    names = sorted(families)
    n = rotation_folds(names, n_test)
    if not 0 <= fold < n:
        raise ValueError(f"fold must be in 0..{n - 1} ({n} families), got {fold}")
    test = sorted(names[(fold + i) % n] for i in range(n_test))
    return FamilySplit(train=[f for f in names if f not in test], val=[], test=test)


def _held_out_rows(family: np.ndarray, families: list[str], fraction: float, seed: int) -> np.ndarray:
    """bool [n]: a seeded ``fraction`` of each family's rows (at least one, at most all but one)."""
    rng = np.random.default_rng([seed, 7])
    out = np.zeros(len(family), dtype=bool)
    for f in families:
        rows = np.flatnonzero(family == f)
        k = min(max(1, round(fraction * len(rows))), len(rows) - 1)
        out[rng.choice(rows, size=k, replace=False)] = True
    return out


def _window_counts(tokens: np.ndarray, vocab_size: int) -> pd.DataFrame:
    """Calls of each token id in each row of ``tokens`` [n, L] (id + 1, 0 = padding) -> [n, vocab_size]."""
    counts = np.zeros((len(tokens), vocab_size + 1), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(len(tokens)), tokens.shape[1]), tokens.ravel()), 1)
    return pd.DataFrame(counts[:, 1:], columns=[f"calls:{i}" for i in range(vocab_size)])


def _first_copies(data: SequenceData) -> SequenceData:
    """Each exact duplicate trace of a family kept once: a copy in the support and another in the query would
    be scored as learning when it is a lookup (Mal-API's 808 traces hold 21 such copies). Copies under two
    families are left to ``drop_conflicting_rows``, which removes all of them."""
    seen: set[tuple[str, bytes]] = set()
    keep = np.zeros(len(data.calls), dtype=bool)
    for i, (calls, family) in enumerate(zip(data.calls, data.family, strict=True)):
        digest = (str(family), hashlib.sha256(calls.tobytes()).digest())
        keep[i] = digest not in seen
        seen.add(digest)
    if not keep.all():
        log.info("%s: dropped %d exact duplicate sequences", data.name, int((~keep).sum()))
    return data.subset(keep)


def _inputs(data: TabularData | SequenceData, cfg: ClassifyConfig) -> tuple[pd.DataFrame, TabularData | None]:
    """(the rows compared for conflicts, the tabular data the pipeline encodes) for the representation."""
    if isinstance(data, SequenceData):
        if cfg.representation == "features":
            raise ValueError(
                f"{data.name} holds call sequences: set representation to 'tokens' or 'bag', not 'features'"
            )
        if cfg.representation == "bag":
            bag = data.bag_of_calls()
            return bag.frame, bag
        return pd.DataFrame(data.tokens(cfg.sequence.max_len)), None
    if cfg.representation != "features":
        raise ValueError(
            f"representation {cfg.representation!r} needs a sequence dataset; {data.name} is tabular"
        )
    return data.frame, data


def prepare_families(
    data: TabularData | SequenceData, cfg: ClassifyConfig, fold: int | None = None
) -> ClassifyData:
    """Drop rows whose model input occurs under two families, split (``fold`` for split: rotate), and fit
    the pipeline on meta-train rows only (never meta-val or test rows)."""
    if isinstance(data, TabularData) and np.any(data.family == BENIGN):
        data = data.subset(data.family != BENIGN)  # family classification: benign is not a family
    if isinstance(data, SequenceData):
        data = _first_copies(data)
    compared, tabular = _inputs(data, cfg)
    keep, _ = drop_conflicting_rows(compared, data.family)
    data, compared = data.subset(keep), compared.loc[keep].reset_index(drop=True)
    tabular = None if tabular is None else tabular.subset(keep)
    family = data.family
    names, counts = np.unique(family, return_counts=True)
    if cfg.split == "rotate":
        if fold is None:
            raise ValueError("split: rotate needs a fold")
        split = fold_split(names.tolist(), cfg.n_test, fold)
        val_rows = _held_out_rows(family, split.train, cfg.val_fraction, cfg.split_seed)
    else:
        split = split_families(
            names.tolist(),
            n_val=cfg.n_val,
            n_test=cfg.n_test,
            seed=cfg.split_seed,
            eligible=[f for f, c in zip(names, counts, strict=True) if c >= cfg.min_rows],
        )
        val_rows = np.isin(family, split.val)
    train_rows = np.isin(family, split.train) & ~val_rows
    pipeline = FeaturePipeline(clip=cfg.clip_z)
    vocab_size, constraints = None, None
    if tabular is not None:
        X = X_flat = pipeline.fit(tabular.subset(train_rows)).transform(tabular.frame)
        constraints = compile_constraints(pipeline, tabular.schema)
    else:
        vocab_size = len(data.vocab)
        tokens = compared.to_numpy()
        counts = _window_counts(tokens, vocab_size)
        window = TabularData(frame=counts, family=family, log_scaled=list(counts.columns), name=data.name)
        X, X_flat = tokens.astype(np.float32), pipeline.fit(window.subset(train_rows)).transform(counts)
    log.info(
        "%s: %d rows, inputs %s; families train=%d val=%d test=%d",
        data.name,
        len(X),
        X.shape[1:],
        len(split.train),
        len(split.val),
        len(split.test),
    )
    return ClassifyData(
        X=X,
        X_flat=X_flat,
        family=family,
        split=split,
        val_family=np.where(val_rows, family, NOT_DRAWN).astype(object),
        train_rows=train_rows,
        vocab_size=vocab_size,
        constraints=constraints,
    )


def build_model(data: ClassifyData, cfg: ClassifyConfig, out_dim: int) -> nn.Module:
    """A fresh base learner for the representation: SequenceCNN for tokens, else an MLP."""
    if data.vocab_size is not None:
        s = cfg.sequence
        return SequenceCNN(
            data.vocab_size, out_dim, embed_dim=s.embed_dim, channels=s.channels, kernel=s.kernel
        )
    return MLP(data.X.shape[1], cfg.hidden, out_dim)
