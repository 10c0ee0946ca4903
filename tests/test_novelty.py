"""Benign novelty (``evaluation.novelty``): exact neighbour distances, the blend, and its meta-val choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from metashield.evaluation.novelty import (
    NoveltyTable,
    blend,
    margin_scale,
    neighbour_distances,
    novelty_scorer,
    tune_blend,
)
from metashield.evaluation.protocol import EpisodeSet


def test_neighbour_distances_equal_scikit_learns_kth_neighbour_distances():
    rng = np.random.default_rng(0)
    x, benign = rng.normal(size=(50, 6)), rng.normal(size=(300, 6))
    got = neighbour_distances(torch.from_numpy(x), torch.from_numpy(benign), [1, 3, 7], chunk=16)
    expected = NearestNeighbors(n_neighbors=7).fit(benign).kneighbors(x)[0][:, [0, 2, 6]]
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-9)
    for ks in ([0], [301], []):
        with pytest.raises(ValueError, match="neighbour ranks"):
            neighbour_distances(torch.from_numpy(x), torch.from_numpy(benign), ks)


def test_neighbour_distances_under_autograd_give_the_dense_values_and_gradients():
    """The attack path (neighbours found without a graph, distances to them recomputed) equals cdist + topk
    differentiated densely, in value and in the gradient of any weighted sum."""
    rng = np.random.default_rng(3)
    x, benign = torch.from_numpy(rng.normal(size=(40, 6))), torch.from_numpy(rng.normal(size=(500, 6)))
    w = torch.from_numpy(rng.normal(size=(40, 2)))
    xa = x.clone().requires_grad_(True)
    got = neighbour_distances(xa, benign, [1, 4], chunk=16)
    (grad,) = torch.autograd.grad((got * w).sum(), xa)
    xd = x.clone().requires_grad_(True)
    dense = torch.cdist(xd, benign).topk(4, dim=1, largest=False).values[:, [0, 3]]
    (expected,) = torch.autograd.grad((dense * w).sum(), xd)
    torch.testing.assert_close(got, dense, rtol=0, atol=1e-10)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(neighbour_distances(xa, benign, [1, 4]), dense.detach(), rtol=0, atol=0)


def test_novelty_table_looks_rows_up_by_content_and_refuses_unknown_rows():
    rng = np.random.default_rng(1)
    X, benign = rng.normal(size=(40, 5)).astype(np.float32), rng.normal(size=(100, 5)).astype(np.float32)
    table = NoveltyTable(X, benign, [1, 5])
    picked = torch.from_numpy(X[[[3, 7, 3], [0, 39, 12]]])  # [2, 3, D], like an episode stack
    expected = neighbour_distances(torch.from_numpy(X), torch.from_numpy(benign), [1, 5]).numpy()
    np.testing.assert_array_equal(table(picked), expected[[[3, 7, 3], [0, 39, 12]]])
    np.testing.assert_array_equal(table.column(5)(picked), expected[[[3, 7, 3], [0, 39, 12]], 1])
    with pytest.raises(ValueError, match="not a row of the dataset"):
        table(torch.from_numpy(X[:2] + 1))


def test_blend_divides_each_part_by_its_scale():
    margins = np.array([[2.0, -1.0, 4.0], [1.0, 1.0, 3.0]])
    reference = np.array([[0.0, 2.0], [1.0, 1.0 + 1e-3]])
    scale = margin_scale(reference)
    np.testing.assert_allclose(scale, [[1.0], [5e-4]])
    got = blend(margins, scale, np.array([[0.5, 1.0, 0.0], [2.0, 0.0, 1.0]]), 0.5, 0.25)
    np.testing.assert_allclose(got[0], 0.25 * margins[0] + 0.75 * np.array([1.0, 2.0, 0.0]))
    np.testing.assert_allclose(got[1], 0.25 * margins[1] / 5e-4 + 0.75 * np.array([4.0, 0.0, 2.0]))
    with pytest.raises(ValueError, match="same margin"):
        margin_scale(np.ones((2, 4)))


def _episodes(attack_x0: float, attack_x1: float, rng) -> tuple[EpisodeSet, np.ndarray]:
    """(one family's episodes, every row they query) in 2-D. Benign queries, the benign index and the
    reference rows are N(0, 1)^2; attack queries are centred on (attack_x0, attack_x1)."""
    n_eps, n_benign, n_attack = 4, 300, 30
    benign_q = rng.normal(0, 1, (n_eps, n_benign, 2))
    attack_q = rng.normal(0, 1, (n_eps, n_attack, 2)) + [attack_x0, attack_x1]
    qx = np.concatenate([benign_q, attack_q], axis=1).astype(np.float32)
    qy = np.r_[np.zeros(n_benign), np.ones(n_attack)].astype(int)
    sx = torch.zeros(n_eps, 2, 2)
    es = EpisodeSet(
        "fam", 1, sx, torch.tensor([[0, 1]] * n_eps), torch.from_numpy(qx), np.tile(qy, (n_eps, 1))
    )
    return es, qx.reshape(-1, 2)


@pytest.mark.parametrize(
    ("attack_x0", "attack_x1", "weight"),
    [
        (4.0, 0.0, 0.25),  # the margin (feature 1) is noise, novelty (feature 0) tells: the smallest weight
        (0.0, 3.0, 0.75),  # the margin tells, novelty is noise (attacks as near as benign rows): the largest
    ],
)
def test_tune_blend_weights_the_informative_part(attack_x0, attack_x1, weight):
    rng = np.random.default_rng(2)
    es, rows = _episodes(attack_x0, attack_x1, rng)
    index = rng.normal(0, 1, (2000, 2)).astype(np.float32)
    reference = torch.from_numpy(rng.normal(0, 1, (200, 2)).astype(np.float32))
    table = NoveltyTable(np.concatenate([rows, reference.numpy()]), index, [1, 5])

    def scorer(sx, sy, qx):
        return qx[..., 1].numpy()

    best, trace = tune_blend(scorer, {"fam": es}, table, reference, [0.25, 0.5, 0.75])
    assert best["weight"] == weight and len(trace) == 6
    assert best["val_tpr@1%fpr"] == max(p["val_tpr@1%fpr"] for p in trace) > 0.5
    assert min(p["val_tpr@1%fpr"] for p in trace) < best["val_tpr@1%fpr"] - 0.05
    assert best["novelty_scale"] == pytest.approx(table(reference)[:, [1, 5].index(best["k"])].std())
    # The blend's scorer scores exactly what the choice measured.
    blended = novelty_scorer(
        scorer, table.column(best["k"]), best["novelty_scale"], reference, best["weight"]
    )
    scores = blended(es.support_x, es.support_y, es.query_x)
    q, ref = es.query_x[..., 1].numpy(), reference[:, 1].numpy()
    d = table(es.query_x)[..., [1, 5].index(best["k"])]
    expected = best["weight"] * q / ref.std() + (1 - best["weight"]) * d / best["novelty_scale"]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
