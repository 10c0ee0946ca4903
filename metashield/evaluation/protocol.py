"""Leave-families-out few-shot detection: identical episodes for every method, metrics per episode."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from metashield.evaluation.baselines import Scorer
from metashield.evaluation.metrics import episode_metrics
from metashield.tasks import make_detect_episodes, stack_episodes

log = logging.getLogger(__name__)


@dataclass
class EpisodeSet:
    """All episodes of one held-out family at one shot count, stacked for a single vmapped call.

    support_x [E,2K,D], support_y [E,2K], query_x [E,M,D] (torch); query_y [E,M] numpy (1 = attack).
    """

    family: str
    shots: int
    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: np.ndarray

    @property
    def n_benign_queries(self) -> int:
        return int((self.query_y[0] == 0).sum())


def episode_seed(seed: int, family: str, shots: int) -> int:
    """A per-(family, shots) seed that does not depend on which other families or methods are evaluated."""
    return int(np.random.SeedSequence([seed, zlib.crc32(family.encode()), shots]).generate_state(1)[0])


def build_episode_sets(
    X: np.ndarray,
    family: np.ndarray,
    families: Sequence[str],
    benign_idx: np.ndarray,
    *,
    shots: int,
    n_episodes: int,
    attack_queries: int,
    benign_queries: int,
    seed: int,
    device: torch.device | None = None,
) -> dict[str, EpisodeSet]:
    """Episodes for each family with at least ``shots + 1`` rows; the others are skipped with one warning."""
    sets: dict[str, EpisodeSet] = {}
    skipped = []
    for name in families:
        rows = np.flatnonzero(family == name)
        if len(rows) < shots + 1:
            skipped.append(f"{name} ({len(rows)} rows)")
            continue
        episodes = make_detect_episodes(
            rows,
            benign_idx,
            family=name,
            shots=shots,
            n_episodes=n_episodes,
            max_attack_queries=attack_queries,
            benign_queries=benign_queries,
            seed=episode_seed(seed, name, shots),
        )
        batch = stack_episodes(X, episodes)
        t = batch.to_torch(device=device)
        sets[name] = EpisodeSet(name, shots, t.support_x, t.support_y, t.query_x, batch.query_y)
    if skipped:
        log.warning(
            "%d-shot: skipped families with fewer than %d rows: %s", shots, shots + 1, ", ".join(skipped)
        )
    return sets


def score_set(scorer: Scorer, es: EpisodeSet, chunk: int = 25) -> np.ndarray:
    """Scores [E, M]; episodes go through the scorer in chunks to bound memory."""
    parts = [
        scorer(es.support_x[i : i + chunk], es.support_y[i : i + chunk], es.query_x[i : i + chunk])
        for i in range(0, es.support_x.shape[0], chunk)
    ]
    return np.concatenate(parts)


def worst_case_scores(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Scores with non-finite values made finite AGAINST the model: a NaN attack score becomes the lowest
    possible score (missed), a NaN benign score the highest (false alarm); +-inf become the largest finite
    values, so a diverged adaptation costs the method instead of crashing the evaluation."""
    big = np.finfo(np.float64).max
    out = np.asarray(scores, dtype=np.float64).copy()
    nan = np.isnan(out)
    out[nan & (y == 1)] = -big
    out[nan & (y == 0)] = big
    return np.clip(out, -big, big)


def run_protocol(
    methods: Mapping[str, Scorer],
    sets: Mapping[str, EpisodeSet],
    *,
    seed: int = 0,
    base_rate: float | None = None,
) -> dict[str, dict[str, list[dict[str, float]]]]:
    """Per-episode metrics: ``result[method][family]`` is a list (one dict per episode, in episode order).

    base_rate: the share of attacks in real traffic, for precision at that rate (``episode_metrics``).
    """
    out: dict[str, dict[str, list[dict[str, float]]]] = {}
    for method, scorer in methods.items():
        out[method] = {}
        for fam, es in sets.items():
            scores = score_set(scorer, es)
            bad = int((~np.isfinite(scores)).sum())
            if bad:
                log.warning("%s on %s: %d non-finite scores, counted against the method", method, fam, bad)
                scores = worst_case_scores(scores, es.query_y)
            out[method][fam] = set_metrics(scores, es, seed=seed, base_rate=base_rate)
    return out


def set_metrics(
    scores: np.ndarray, es: EpisodeSet, *, seed: int = 0, base_rate: float | None = None
) -> list[dict[str, float]]:
    """Per-episode metrics of finite scores [E, M] on ``es`` (decision threshold 0), as ``run_protocol``
    reports them: for scores a scorer did not produce by itself, e.g. a combination of several."""
    return [
        episode_metrics(scores[e], es.query_y[e], threshold=0.0, seed=seed + e, base_rate=base_rate)
        for e in range(len(scores))
    ]


def mean_score(
    scorer: Scorer, sets: Mapping[str, EpisodeSet], *, name: str = "m", metric: str = "tpr@1%fpr"
) -> float:
    """``mean_metric`` of one scorer on ``sets`` (e.g. its meta-val score); ``name`` labels its warnings."""
    return mean_metric(run_protocol({name: scorer}, sets)[name], metric)


def family_scores(
    scorer: Scorer, sets: Mapping[str, EpisodeSet], *, name: str = "m", metric: str = "tpr@1%fpr"
) -> dict[str, float]:
    """Per family, the mean of ``metric`` over its episodes; their mean is ``mean_score``."""
    return family_means(run_protocol({name: scorer}, sets)[name], metric)


def family_means(result: Mapping[str, list[dict[str, float]]], metric: str = "tpr@1%fpr") -> dict[str, float]:
    """Per family, the mean of ``metric`` over its episodes."""
    return {fam: float(np.mean([ep[metric] for ep in eps])) for fam, eps in result.items()}


def mean_metric(result: Mapping[str, list[dict[str, float]]], metric: str = "tpr@1%fpr") -> float:
    """Mean over families of the per-family mean (every family weighs the same)."""
    return float(np.mean(list(family_means(result, metric).values())))


def choice_stability(
    per_family: Mapping[str, Mapping[str, float]], *, n_boot: int = 2000, seed: int = 0
) -> dict[str, float]:
    """How often each candidate would be chosen if the families were drawn again: the share of ``n_boot``
    bootstrap resamples of the families (with replacement, the same resample for every candidate) in which
    its mean over the resampled families is the highest (ties: the first candidate, as the choice itself).

    per_family: candidate -> family -> score (e.g. meta-val TPR@1%FPR), every candidate on the same families.
    """
    names = list(per_family)
    families = sorted(per_family[names[0]])
    if any(sorted(per_family[n]) != families for n in names):
        raise ValueError("every candidate must be scored on the same families")
    table = np.array([[per_family[n][f] for f in families] for n in names])  # [C, F]
    draws = np.random.default_rng(seed).integers(len(families), size=(n_boot, len(families)))
    means = table[:, draws].mean(-1)  # [C, B]
    wins = np.bincount(means.argmax(0), minlength=len(names))
    return {n: float(w / n_boot) for n, w in zip(names, wins, strict=True)}
