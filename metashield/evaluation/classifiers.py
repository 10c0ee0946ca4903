"""N-way few-shot classifiers for family classification, the counterparts of ``evaluation.baselines``.

A classifier maps ``(support_x [E,S,D], support_y [E,S], query_x [E,M,D])`` to predicted classes [E, M].
Every one is a learner with ``adapt``/``predict`` (1-NN and logistic regression through their torch forms in
``evaluation.baselines``), so the model scored clean is the model the attacks differentiate.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from metashield.evaluation.baselines import LogisticRegressionLearner

Classifier = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], np.ndarray]

CHUNK = 50
"""Episodes per call: 1-NN's pairwise differences are [E, M, S, D], too large for 200 episodes at once."""


def learner_classifier(learner: nn.Module) -> Classifier:
    """Adapt on each support set and predict the argmax class (ties: the lowest class); vmapped per chunk of
    ``CHUNK`` episodes."""

    def classify(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> np.ndarray:
        learner.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(sx), CHUNK):
                part = slice(i, i + CHUNK)
                logits = learner.predict(learner.adapt(sx[part], sy[part]), qx[part])
                out.append(logits.argmax(-1).cpu().numpy())
        return np.concatenate(out)

    return classify


def logreg_classifier(C: float) -> Classifier:
    """Multinomial L2 logistic regression (scikit-learn's fit) on the support set."""
    return learner_classifier(LogisticRegressionLearner(C))


def pretrain_families(
    model: nn.Module,
    X: np.ndarray,
    labels: np.ndarray,
    *,
    lr: float,
    steps: int,
    seed: int,
    device: torch.device,
) -> nn.Module:
    """Supervised training of ``model`` (F outputs) over all meta-train families: X [n, D], labels [n] in
    0..F-1. Returns the model in eval mode.

    Mini-batches of 256 rows drawn uniformly (not per family: most families have only a handful of rows).
    """
    torch.manual_seed(seed * 1000 + 999)
    model = model.to(device)
    rng = np.random.default_rng([seed, 3])
    Xt, yt = torch.as_tensor(X, device=device), torch.as_tensor(labels, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.as_tensor(rng.integers(0, len(X), 256), device=device)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(Xt[idx]), yt[idx]).backward()
        opt.step()
    return model.eval()


def with_new_head(pretrained: nn.Module, ways: int) -> nn.Module:
    """A copy of ``pretrained`` whose F-way head is replaced by a zero N-way head.

    Zero rather than random: every episode then starts from the same uniform prediction, and head-only
    fine-tuning (a convex problem) does not depend on an initialisation seed.
    """
    model = copy.deepcopy(pretrained)
    head = nn.Linear(model.head.in_features, ways, device=model.head.weight.device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    model.head = head
    return model
