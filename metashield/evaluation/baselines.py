"""Few-shot scorers: meta-learners and the baselines they are compared with, on identical episodes.

Every scorer maps a stack of episodes to attack scores for their queries:
``(support_x [E,S,D], support_y [E,S], query_x [E,M,D]) -> scores [E,M]`` (numpy, higher = more malicious),
with 0 as the method's own decision threshold. Neural scores are the logit margin z_attack - z_benign rather
than a softmax probability, so confident scores do not saturate into ties.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits
from torch import nn

from metashield.meta import ANIL, MAML

Scorer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], np.ndarray]


def _margin(logits: torch.Tensor) -> np.ndarray:
    return (logits[..., 1] - logits[..., 0]).float().cpu().numpy()


def learner_scorer(learner: nn.Module) -> Scorer:
    """Adapt a (meta-)learner on each support set and score the queries; all episodes in one vmapped call."""

    def score(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> np.ndarray:
        learner.eval()
        with torch.no_grad():
            params = learner.adapt(sx, sy)
            return _margin(learner.predict(params, qx))

    return score


ENSEMBLE = "ensemble"
"""Method name of the ``evaluate.ensemble`` candidate in ``metrics.json``."""


def ensemble_scorer(members: list[Scorer]) -> Scorer:
    """Mean of the members' scores [E, M], each adapted on the same support set (members on one scale).

    For scorers of different runs (seed ensembles in benchmarks/); the ``evaluate.ensemble`` candidate of one
    run is ``learner_scorer(meta.Ensemble(...))``, the learner ``adapt`` deploys."""

    def score(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> np.ndarray:
        return np.mean([m(sx, sy, qx) for m in members], axis=0)

    return score


def finetune_scorer(pretrained: nn.Module, lr: float, steps: int, head_only: bool) -> Scorer:
    """Pretrain + fine-tune: full-batch gradient descent on the support set from the pretrained weights.

    It runs on the same functional inner loop as the meta-learners, so the only difference between this
    baseline and MAML is whether the starting point was meta-learned.
    """
    if steps == 0:
        return _zero_shot(pretrained)
    return learner_scorer(finetune_learner(pretrained, lr, steps, head_only))


def finetune_learner(pretrained: nn.Module, lr: float, steps: int, head_only: bool) -> nn.Module:
    """The fine-tune baseline as a learner with ``adapt``/``predict`` (what attacks through it need)."""
    if head_only:
        return ANIL(pretrained, head="head", inner_lr=lr, inner_steps=steps)
    return MAML(pretrained, inner_lr=lr, inner_steps=steps, first_order=True)


def _zero_shot(model: nn.Module) -> Scorer:
    def score(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            return _margin(model(qx))

    return score


def scratch_scorer(make_model: Callable[[], nn.Module], lr: float, steps: int) -> Scorer:
    """Train a freshly initialised network on the support set alone (no prior knowledge)."""
    return learner_scorer(MAML(make_model(), inner_lr=lr, inner_steps=steps, first_order=True))


def knn_scorer() -> Scorer:
    """1-nearest-neighbour: score = distance to the nearest benign support row - to the nearest attack row."""

    def score(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> np.ndarray:
        out = []
        for s, y, q in zip(sx.cpu().numpy(), sy.cpu().numpy(), qx.cpu().numpy(), strict=True):
            d = [NearestNeighbors(n_neighbors=1).fit(s[y == c]).kneighbors(q)[0][:, 0] for c in (0, 1)]
            out.append(d[0] - d[1])
        return np.stack(out)

    return score


def _one_blas_thread() -> threadpool_limits:
    """A context for scikit-learn's fits on one episode (at most ~1,000 x 121 values): BLAS threads never pay
    for such small products, and beside torch's own threads they oversubscribe the cores. On 2 cores next to
    torch, one logistic-regression fit took 80-250 ms with OpenBLAS's default threads and 2-6 ms with one."""
    return threadpool_limits(limits=1, user_api="blas")


def _logistic(C: float) -> LogisticRegression:
    """The logistic regression both ``logreg_scorer`` and its attackable form fit on a support set."""
    return LogisticRegression(C=C, max_iter=1000)


def logreg_scorer(C: float) -> Scorer:
    """L2 logistic regression fitted on the support set; score = its decision function."""

    def score(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> np.ndarray:
        out = []
        with _one_blas_thread():
            for s, y, q in zip(sx.cpu().numpy(), sy.cpu().numpy(), qx.cpu().numpy(), strict=True):
                clf = _logistic(C).fit(s, y)
                out.append(clf.decision_function(q))
        return np.stack(out)

    return score


def _check_replay(benign: torch.Tensor, rows: int) -> None:
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    if benign.dim() != 2 or len(benign) == 0:
        raise ValueError(f"benign must be a non-empty [B, D] tensor, got shape {tuple(benign.shape)}")


def replay_support(
    support_x: torch.Tensor, support_y: torch.Tensor, benign: torch.Tensor, rows: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Support sets [E, S, D] plus ``rows`` rows drawn (seeded) from ``benign`` [B, D], the attack rows
    repeated so that both classes weigh the same in a mean loss: ([E, S', D], [E, S'])."""
    _check_replay(benign, rows)
    malicious = support_y[0] == 1
    if not bool((support_y == support_y[0]).all()) or not bool(malicious.any()) or bool(malicious.all()):
        raise ValueError("benign replay needs every episode to hold both classes in the same layout")
    gen = torch.Generator().manual_seed(seed)
    drawn = torch.randint(len(benign), (support_x.shape[0], rows), generator=gen).to(benign.device)
    replayed = benign[drawn].to(device=support_x.device, dtype=support_x.dtype)
    attack, own_benign = support_x[:, malicious], support_x[:, ~malicious]
    repeats = max(1, (own_benign.shape[1] + rows) // attack.shape[1])
    x = torch.cat([own_benign, replayed, attack.repeat(1, repeats, 1)], dim=1)
    n0, n1 = own_benign.shape[1] + rows, attack.shape[1] * repeats
    e = support_x.shape[0]
    return x, torch.cat([support_y.new_zeros(e, n0), support_y.new_ones(e, n1)], dim=1)


def benign_replay(scorer: Scorer, benign: torch.Tensor, rows: int, seed: int = 0) -> Scorer:
    """``scorer`` fitted on each support set plus ``rows`` benign rows drawn from ``benign`` [B, D].

    A team that meets a new attack family has few labelled attack rows but plenty of benign traffic. The
    replayed rows must come from data the detector may train on (a run's benign TRAINING slice, never the
    slice its benign queries come from). See ``replay_support``; draws are seeded per call, so a scorer gives
    the same result for the same episodes whatever was scored before.
    """
    _check_replay(benign, rows)

    def score(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> np.ndarray:
        return scorer(*replay_support(sx, sy, benign, rows, seed), qx)

    return score


class ReplayLearner(nn.Module):
    """A learner (``adapt``/``predict``) that adapts on each support set plus replayed benign rows: the
    attackable form of ``benign_replay`` (e.g. over ``LogisticRegressionLearner``). Draws follow the episodes
    of each ``adapt`` call, so a chunk of episodes draws other rows than the whole set does in ``evaluate``.
    """

    def __init__(self, learner: nn.Module, benign: torch.Tensor, rows: int, seed: int = 0) -> None:
        super().__init__()
        _check_replay(benign, rows)
        self.learner, self.benign, self.rows, self.seed = learner, benign, rows, seed

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.learner.adapt(*replay_support(support_x, support_y, self.benign, self.rows, self.seed))

    def predict(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return self.learner.predict(params, x)


class NearestNeighbourLearner(nn.Module):
    """``knn_scorer`` as a learner (``adapt``/``predict``), so evasion attacks can take its gradient; for N
    classes it is also ``metashield classify``'s 1-NN (a tie between classes goes to the lowest label).

    ``adapt`` keeps the support set; ``predict`` gives logits [T, M, C] = minus the Euclidean distance to the
    nearest support row of each class 0..C-1 (C read from the labels). For C = 2 the margin is
    ``knn_scorer``'s score.
    """

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"support_x": support_x, "support_y": support_y}

    def predict(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        # The direct formula, not cdist's matmul shortcut: its cancellation error would shift near distances.
        d = (x.unsqueeze(2) - params["support_x"].unsqueeze(1)).pow(2).sum(-1).clamp_min(1e-30).sqrt()
        y = params["support_y"].unsqueeze(1)  # [T, 1, S]
        classes = range(int(params["support_y"].max()) + 1)
        return -torch.stack([d.masked_fill(y != c, torch.inf).amin(-1) for c in classes], dim=-1)


class LogisticRegressionLearner(nn.Module):
    """``logreg_scorer`` (and N-way ``logreg_classifier``) as a learner: ``adapt`` fits scikit-learn's model
    on each support set (not differentiable, so only attacks on the queries apply); ``predict`` gives logits
    [T, M, C]: (0, x·w + b) for two classes, x·W_c + b_c (multinomial) for more.
    """

    def __init__(self, C: float) -> None:
        super().__init__()
        self.C = C

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> dict[str, torch.Tensor]:
        with _one_blas_thread():
            fits = [
                _logistic(self.C).fit(s, y)
                for s, y in zip(support_x.detach().cpu().numpy(), support_y.cpu().numpy(), strict=True)
            ]
        # scikit-learn keeps one weight row for two classes (the logit of class 1 against class 0).
        weight = np.stack(
            [np.vstack([np.zeros_like(f.coef_), f.coef_]) if len(f.coef_) == 1 else f.coef_ for f in fits]
        )
        bias = np.stack([np.r_[0.0, f.intercept_] if len(f.intercept_) == 1 else f.intercept_ for f in fits])
        return {
            "weight": torch.as_tensor(weight, dtype=support_x.dtype, device=support_x.device),
            "bias": torch.as_tensor(bias, dtype=support_x.dtype, device=support_x.device),
        }

    def predict(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("tmd,tcd->tmc", x, params["weight"]) + params["bias"].unsqueeze(1)


def pretrain(
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    *,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | None = None,
) -> nn.Module:
    """Supervised benign-vs-attack training on meta-training rows with class-balanced mini-batches.

    X: [n, D] float32, y: [n] in {0, 1}. Returns a trained copy; ``model`` is left untouched.
    """
    model = copy.deepcopy(model).to(device)
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(y == c) for c in (0, 1)]
    if any(len(idx) == 0 for idx in by_class):
        raise ValueError("pretrain needs both benign (0) and attack (1) rows")
    Xt = torch.as_tensor(X, device=device)
    yt = torch.as_tensor(y, dtype=torch.long, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    half = batch_size // 2
    model.train()
    for _ in range(steps):
        idx = np.concatenate([rng.choice(c, half) for c in by_class])
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(Xt[idx]), yt[idx])
        loss.backward()
        opt.step()
    return model.eval()
