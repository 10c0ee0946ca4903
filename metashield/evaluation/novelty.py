"""Benign novelty: how far a row lies from the benign traffic a detector already holds.

A new attack family is often simply unlike benign traffic, whatever it looks like. The distance of a row to
its k-th nearest neighbour among benign TRAINING rows (never a query slice) is a zero-shot score of that,
and blending it into a few-shot detector's logit margin helps most where the support set says least
(BENCHMARKS.md, "Benign novelty"). The blend is

    w * margin / s_margin + (1 - w) * d_k / s_k

with each part divided by its standard deviation over reference benign rows held out of the neighbour index
(the margin's per adapted model, so every episode's blend has the same balance), and w and k chosen on
meta-val (``evaluate.novelty``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from metashield.evaluation.baselines import Scorer
from metashield.evaluation.metrics import tpr_at_fpr
from metashield.evaluation.protocol import EpisodeSet, score_set, worst_case_scores

SUFFIX = "+novelty"
"""``<method>+novelty`` names a method's blend with benign novelty in ``metrics.json``."""


def neighbour_distances(
    x: torch.Tensor, benign: torch.Tensor, ks: Sequence[int], chunk: int = 1024
) -> torch.Tensor:
    """Exact Euclidean distances [N, len(ks)] of rows x [N, D] to their k-th nearest benign rows [B, D], for
    each k in ``ks`` (1 = the nearest); brute force in chunks of ``chunk`` rows, differentiable in x."""
    if not ks or min(ks) < 1 or max(ks) > len(benign):
        raise ValueError(f"neighbour ranks {list(ks)} must lie in 1..{len(benign)} (the benign rows)")
    benign = benign.to(device=x.device, dtype=x.dtype)
    ranks = [k - 1 for k in ks]
    # An attack differentiates these distances at every step. The backward of cdist is dense over all
    # [chunk, B] pairs, but only the k-th neighbours carry gradient: so under autograd the neighbours are
    # found without a graph and the distances to them alone recomputed with one.
    track = torch.is_grad_enabled() and x.requires_grad
    parts = []
    for i in range(0, len(x), chunk):
        xi = x[i : i + chunk]
        if not track:
            parts.append(torch.cdist(xi, benign).topk(max(ks), dim=1, largest=False).values[:, ranks])
            continue
        with torch.no_grad():
            idx = torch.cdist(xi, benign).topk(max(ks), dim=1, largest=False).indices[:, ranks]
        parts.append((xi.unsqueeze(1) - benign[idx]).norm(dim=-1))
    return torch.cat(parts) if parts else x.new_zeros(0, len(ks))


class NoveltyTable:
    """``neighbour_distances`` of every row of a dataset X [N, D], looked up by row content: evaluation
    scores the same dataset rows in every episode and method, so each distance is computed once."""

    def __init__(self, X: np.ndarray, benign: np.ndarray, ks: Sequence[int]):
        rows = np.ascontiguousarray(X, dtype=np.float32)
        with torch.no_grad():
            self.distances = (
                neighbour_distances(
                    torch.from_numpy(rows), torch.from_numpy(np.asarray(benign, dtype=np.float32)), ks
                )
                .double()
                .numpy()
            )
        self.ks = tuple(ks)
        self._row = {r.tobytes(): i for i, r in enumerate(rows)}

    def column(self, k: int) -> Callable[[torch.Tensor], np.ndarray]:
        """Rows [..., D] -> their distances to the k-th nearest benign row [...]."""
        j = self.ks.index(k)
        return lambda x: self(x)[..., j]

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        """float64 [..., len(ks)] of rows x [..., D]; a row that is not in X is an error."""
        flat = x.detach().cpu().numpy().astype(np.float32).reshape(-1, x.shape[-1])
        try:
            idx = [self._row[r.tobytes()] for r in flat]
        except KeyError:
            raise ValueError(
                "a row to score is not a row of the dataset the novelty table was built on"
            ) from None
        return self.distances[idx].reshape(*x.shape[:-1], len(self.ks))


def margin_scale(reference_margins: np.ndarray) -> np.ndarray:
    """[E, 1]: the standard deviation of each adapted model's margins on the reference rows [E, R]."""
    scale = reference_margins.std(axis=1, keepdims=True)
    if not np.all(scale > 0):
        raise ValueError("a detector gives every reference row the same margin: its blend cannot be scaled")
    return scale


def blend(margins, margin_scale, novelty, novelty_scale: float, weight: float):
    """w * margins / margin_scale + (1 - w) * novelty / novelty_scale, for numpy arrays (evaluation, adapted
    runs) and torch tensors (``NoveltyLearner``, differentiable) alike; shapes broadcast ([E, M], [E, 1])."""
    return weight * margins / margin_scale + (1 - weight) * novelty / novelty_scale


def with_reference(scorer: Scorer, reference: torch.Tensor) -> Callable:
    """``(sx, sy, qx) -> (margins [E, M], reference margins [E, R])`` from ONE adaptation per episode: the
    reference rows [R, D] ride along with the queries."""

    def score(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        m = qx.shape[1]
        ref = reference.to(device=qx.device, dtype=qx.dtype).expand(qx.shape[0], -1, -1)
        scores = scorer(sx, sy, torch.cat([qx, ref], dim=1))
        return scores[:, :m], scores[:, m:]

    return score


def set_margins(scorer: Scorer, es: EpisodeSet, reference: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(margins on the queries of ``es`` [E, M], on the reference rows [E, R]) from one adaptation per
    episode, scored in ``score_set``'s chunks."""
    m = es.query_x.shape[1]
    ref = reference.to(device=es.query_x.device, dtype=es.query_x.dtype).expand(es.query_x.shape[0], -1, -1)
    scores = score_set(scorer, dataclasses.replace(es, query_x=torch.cat([es.query_x, ref], dim=1)))
    return scores[:, :m], scores[:, m:]


def novelty_scorer(
    scorer: Scorer,
    novelty: Callable[[torch.Tensor], np.ndarray],
    novelty_scale: float,
    reference: torch.Tensor,
    weight: float,
) -> Scorer:
    """A scorer's blend with benign novelty (``blend``); ``novelty`` maps rows [..., D] to d_k [...]."""
    margins = with_reference(scorer, reference)

    def score(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> np.ndarray:
        q, ref = margins(sx, sy, qx)
        return blend(q, margin_scale(ref), novelty(qx), novelty_scale, weight)

    return score


def tune_blend(
    scorer: Scorer,
    sets: dict[str, EpisodeSet],
    table: NoveltyTable,
    reference: torch.Tensor,
    weights: Sequence[float],
) -> tuple[dict, list[dict]]:
    """The (weight, k) with the best meta-val TPR@1%FPR (mean over families of the episode mean; ties: the
    first in ``weights`` x ``table.ks``), from one adaptation per episode. Returns (best, every point); each
    point also holds its per-family meta-val scores."""
    scales = table(reference).std(axis=0)
    parts = {}
    for fam, es in sets.items():
        q, ref = set_margins(scorer, es, reference)
        parts[fam] = (q, margin_scale(ref), table(es.query_x))
    trace = []
    for w in weights:
        for j, k in enumerate(table.ks):
            per_family = {}
            for fam, (q, ref, nov) in parts.items():
                s = worst_case_scores(blend(q, ref, nov[..., j], scales[j], w), sets[fam].query_y)
                per_family[fam] = float(
                    np.mean([tpr_at_fpr(s[e], sets[fam].query_y[e], 0.01) for e in range(len(s))])
                )
            trace.append(
                {
                    "weight": w,
                    "k": k,
                    "val_tpr@1%fpr": float(np.mean(list(per_family.values()))),
                    "val_per_family": per_family,
                }
            )
    best = max(trace, key=lambda p: p["val_tpr@1%fpr"])
    return {**best, "novelty_scale": float(scales[table.ks.index(best["k"])])}, trace


MARGIN_SCALE = "novelty/margin_scale"
"""Key of the per-task margin scale [T, 1] in a ``NoveltyLearner``'s adapted parameters."""


class NoveltyLearner(nn.Module):
    """A learner's blend with benign novelty as a learner (``adapt``/``predict``), so that attacks can follow
    it: ``predict`` returns logits [T, M, 2] whose margin z1 - z0 is ``blend``'s score, differentiable in x
    (the neighbour distances) and, through ``adapt``, in the support set (the margin and its scale).

    learner: any learner with ``adapt``/``predict``; index [B, D], reference [R, D]: ``runs.novelty_rows``.
    """

    def __init__(
        self,
        learner: nn.Module,
        index: torch.Tensor,
        reference: torch.Tensor,
        k: int,
        weight: float,
        novelty_scale: float,
    ):
        super().__init__()
        self.learner = learner
        self.register_buffer("index", index)
        self.register_buffer("reference", reference)
        self.k, self.weight, self.novelty_scale = k, weight, novelty_scale

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> dict[str, torch.Tensor]:
        params = dict(self.learner.adapt(support_x, support_y))
        ref = self.reference.to(support_x.dtype).expand(support_x.shape[0], -1, -1)
        logits = self.learner.predict(params, ref)
        params[MARGIN_SCALE] = (logits[..., 1] - logits[..., 0]).std(dim=1, correction=0, keepdim=True)
        return params

    def predict(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        base = {name: p for name, p in params.items() if name != MARGIN_SCALE}
        logits = self.learner.predict(base, x)
        distance = neighbour_distances(x.reshape(-1, x.shape[-1]), self.index, [self.k]).reshape(x.shape[:-1])
        margin = logits[..., 1] - logits[..., 0]
        score = blend(margin, params[MARGIN_SCALE], distance, self.novelty_scale, self.weight)
        return torch.stack([torch.zeros_like(score), score], dim=-1)
