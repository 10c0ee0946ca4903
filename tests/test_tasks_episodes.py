"""Meta-training batches and fixed evaluation episodes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from metashield.data.types import BENIGN
from metashield.tasks.episodes import EpisodeSampler, make_detect_episodes, stack_episodes

D = 4


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X whose first column is the row index, so every feature row maps back to its index."""
    sizes = {BENIGN: 300, "big": 100, "mid": 30, "few": 8, "tiny": 3}
    family = np.concatenate([np.full(n, f, dtype=object) for f, n in sizes.items()])
    X = np.zeros((len(family), D), dtype=np.float32)
    X[:, 0] = np.arange(len(family))
    return X, family, np.flatnonzero(family == BENIGN)


def rows(x: np.ndarray) -> np.ndarray:
    return x[..., 0].astype(np.int64)


def test_detect_batch_shapes_labels_and_classes(data) -> None:
    X, family, benign = data
    sampler = EpisodeSampler(X, family, ["big", "mid"], benign, shots=5, queries=15)
    b = sampler.sample(8, np.random.default_rng(0))
    assert b.support_x.shape == (8, 10, D) and b.query_x.shape == (8, 30, D)
    assert b.support_x.dtype == np.float32 and b.support_y.dtype == np.int64
    assert (b.support_y == np.repeat([0, 1], 5)).all() and (b.query_y == np.repeat([0, 1], 15)).all()
    for t in range(8):
        s, q = rows(b.support_x[t]), rows(b.query_x[t])
        assert not set(s) & set(q)
        assert (family[s[:5]] == BENIGN).all() and (family[q[:15]] == BENIGN).all()
        attack = set(family[np.concatenate([s[5:], q[15:]])])
        assert len(attack) == 1 and attack <= {"big", "mid"}


def test_detect_batch_with_more_benign_queries(data) -> None:
    X, family, benign = data
    sampler = EpisodeSampler(X, family, ["big", "mid"], benign, shots=5, queries=15, benign_queries=60)
    b = sampler.sample(4, np.random.default_rng(0))
    assert b.support_x.shape == (4, 10, D) and b.query_x.shape == (4, 75, D)
    assert (b.query_y == np.repeat([0, 1], [60, 15])).all()
    for t in range(4):
        s, q = rows(b.support_x[t]), rows(b.query_x[t])
        assert not set(s) & set(q) and len(set(q[:60])) == 60
        assert (family[q[:60]] == BENIGN).all() and (family[q[60:]] != BENIGN).all()
    # The default equals benign_queries = queries, draw for draw.
    a = EpisodeSampler(X, family, ["big", "mid"], benign, queries=15).sample(3, np.random.default_rng(5))
    c = EpisodeSampler(X, family, ["big", "mid"], benign, queries=15, benign_queries=15).sample(
        3, np.random.default_rng(5)
    )
    assert np.array_equal(a.query_x, c.query_x) and np.array_equal(a.support_x, c.support_x)


def test_sample_reproducible_from_rng_state(data) -> None:
    X, family, benign = data
    sampler = EpisodeSampler(X, family, ["big", "mid"], benign)
    a, b = sampler.sample(4, np.random.default_rng(7)), sampler.sample(4, np.random.default_rng(7))
    assert np.array_equal(a.support_x, b.support_x) and np.array_equal(a.query_x, b.query_x)
    c = sampler.sample(4, np.random.default_rng(8))
    assert not np.array_equal(a.query_x, c.query_x)


def test_shot_list_draws_one_k_per_batch(data) -> None:
    X, family, benign = data
    sampler = EpisodeSampler(X, family, ["big", "mid"], benign, shots=[1, 3], queries=15)
    rng = np.random.default_rng(0)
    ks = []
    for _ in range(40):
        b = sampler.sample(4, rng)
        k = b.support_x.shape[1] // 2
        assert b.support_x.shape == (4, 2 * k, D) and b.query_x.shape == (4, 30, D)
        assert (b.support_y == np.repeat([0, 1], k)).all()
        for t in range(4):
            assert not set(rows(b.support_x[t])) & set(rows(b.query_x[t]))
        ks.append(k)
    assert set(ks) == {1, 3} and 10 <= ks.count(1) <= 30
    # One K in a list draws nothing: the stream of a fixed-K run is unchanged.
    a = EpisodeSampler(X, family, ["big", "mid"], benign, shots=[5]).sample(3, np.random.default_rng(5))
    c = EpisodeSampler(X, family, ["big", "mid"], benign, shots=5).sample(3, np.random.default_rng(5))
    assert np.array_equal(a.support_x, c.support_x) and np.array_equal(a.query_x, c.query_x)


def test_shot_list_skips_families_too_small_for_its_largest_k(data) -> None:
    X, family, benign = data
    with pytest.warns(UserWarning, match=r"shots \+ 1 = 11 rows: few \(8\)"):
        sampler = EpisodeSampler(X, family, ["big", "few"], benign, shots=[1, 10], queries=5)
    assert sampler.families == ["big"]


def test_small_families_skipped_with_one_warning(data) -> None:
    X, family, benign = data
    with pytest.warns(UserWarning, match=r"few \(8\), missing \(0\), tiny \(3\)") as record:
        sampler = EpisodeSampler(X, family, ["big", "few", "tiny", "missing"], benign, shots=10, queries=5)
    assert len(record) == 1
    assert sampler.families == ["big"]


def test_query_with_replacement_when_family_is_small(data) -> None:
    X, family, benign = data
    # "few" has 8 rows: 5 support, 3 left for 15 queries.
    b = EpisodeSampler(X, family, ["few"], benign, shots=5, queries=15).sample(3, np.random.default_rng(0))
    for t in range(3):
        s, q = rows(b.support_x[t, 5:]), rows(b.query_x[t, 15:])
        assert len(set(s)) == 5 and not set(s) & set(q) and len(set(q)) <= 3
        assert (family[q] == "few").all()


def test_classify_labels_and_families(data) -> None:
    X, family, _ = data
    sampler = EpisodeSampler(
        X, family, ["big", "mid", "few"], None, kind="classify", ways=3, shots=2, queries=4
    )
    b = sampler.sample(16, np.random.default_rng(1))
    assert (b.support_y == np.repeat(np.arange(3), 2)).all() and (
        b.query_y == np.repeat(np.arange(3), 4)
    ).all()
    first = set()
    for t in range(16):
        s, q = rows(b.support_x[t]), rows(b.query_x[t])
        assert not set(s) & set(q)
        for c in range(3):
            fams = set(family[s[2 * c : 2 * c + 2]]) | set(family[q[4 * c : 4 * c + 4]])
            assert len(fams) == 1 and BENIGN not in fams
        assert len(set(family[s])) == 3
        first.add(family[s[0]])
    assert len(first) > 1  # label 0 is not always the same family


@pytest.mark.parametrize(
    ("families", "kwargs", "match"),
    [
        (["tiny"], {}, "no family"),
        (["big", "tiny"], {"kind": "classify", "ways": 2}, "ways = 2"),
        (["big"], {"ways": 3}, "ways must be 2"),
        ([BENIGN], {}, "attack families"),
        (["big"], {"kind": "nope"}, "kind"),
        (["big", "mid"], {"kind": "classify", "benign_queries": 30}, "benign_queries"),
        (["big"], {"benign_queries": 0}, "benign_queries"),
        (["big"], {"shots": []}, "non-empty list of distinct"),
        (["big"], {"shots": [2, 2]}, "non-empty list of distinct"),
        (["big"], {"shots": [0, 5]}, "shots >= 1"),
    ],
)
@pytest.mark.filterwarnings("ignore:skipping families")
def test_sampler_errors(data, families, kwargs, match) -> None:
    X, family, benign = data
    with pytest.raises(ValueError, match=match):
        EpisodeSampler(X, family, families, benign, **kwargs)


def test_sampler_rejects_non_benign_rows(data) -> None:
    X, family, benign = data
    with pytest.raises(ValueError, match="benign_idx points at rows"):
        EpisodeSampler(X, family, ["big"], np.append(benign, np.flatnonzero(family == "big")[:1]))


def test_detect_episodes_counts_disjoint_and_reproducible(data) -> None:
    X, family, benign = data
    big = np.flatnonzero(family == "big")
    eps = make_detect_episodes(
        big, benign, family="big", shots=5, n_episodes=6, max_attack_queries=40, seed=0
    )
    assert len(eps) == 6
    for e in eps:
        assert len(e.query_idx) == 295 + 40  # benign queries capped by len(benign) - K
        assert not set(e.support_idx) & set(e.query_idx)
        assert (e.support_y == np.repeat([0, 1], 5)).all() and e.query_y.sum() == 40
        assert (family[e.support_idx] == np.repeat([BENIGN, "big"], 5)).all()
        assert (family[e.query_idx[e.query_y == 1]] == "big").all()
    again = make_detect_episodes(
        big, benign, family="big", shots=5, n_episodes=6, max_attack_queries=40, seed=0
    )
    assert all(np.array_equal(a.support_idx, b.support_idx) for a, b in zip(eps, again, strict=True))
    assert all(np.array_equal(a.query_idx, b.query_idx) for a, b in zip(eps, again, strict=True))
    other = make_detect_episodes(
        big, benign, family="big", shots=5, n_episodes=6, max_attack_queries=40, seed=1
    )
    assert not np.array_equal(eps[0].support_idx, other[0].support_idx)
    one_shot = make_detect_episodes(big, benign, family="big", shots=1, n_episodes=1, seed=0)
    assert not set(one_shot[0].support_idx) <= set(eps[0].support_idx)


def test_detect_episodes_small_family_uses_all_rest_and_stacks(data) -> None:
    X, family, benign = data
    few = np.flatnonzero(family == "few")
    eps = make_detect_episodes(few, benign, family="few", shots=5, n_episodes=4, benign_queries=50, seed=0)
    assert all(int(e.query_y.sum()) == 3 and len(e.query_idx) == 53 for e in eps)
    b = stack_episodes(X, eps)
    assert b.support_x.shape == (4, 10, D) and b.query_x.shape == (4, 53, D) and b.query_y.shape == (4, 53)
    assert np.array_equal(rows(b.query_x[2]), eps[2].query_idx)


def test_detect_episodes_errors(data) -> None:
    X, family, benign = data
    tiny = np.flatnonzero(family == "tiny")
    with pytest.raises(ValueError, match="family 'tiny': family_idx has 3 rows"):
        make_detect_episodes(tiny, benign, family="tiny", shots=3, n_episodes=2, seed=0)
    big = make_detect_episodes(
        np.flatnonzero(family == "big"), benign, family="big", shots=5, n_episodes=1, seed=0
    )
    few = make_detect_episodes(
        np.flatnonzero(family == "few"), benign, family="few", shots=5, n_episodes=1, seed=0
    )
    with pytest.raises(ValueError, match="one family at a time"):
        stack_episodes(X, big + few)


def test_to_torch_and_no_torch_import(data) -> None:
    X, family, benign = data
    b = EpisodeSampler(X, family, ["big"], benign).sample(2, np.random.default_rng(0))
    torch = pytest.importorskip("torch")
    sx, sy, qx, qy = b.to_torch(dtype=torch.float64)
    assert sx.dtype == torch.float64 and sy.dtype == torch.int64 and tuple(qx.shape) == b.query_x.shape
    assert np.array_equal(qy.numpy(), b.query_y)


def test_tasks_package_does_not_import_torch() -> None:
    code = "import sys, metashield.tasks; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_task_interpolation_mixes_the_attack_rows_of_two_tasks_with_one_lambda() -> None:
    from metashield.tasks import Batch
    from metashield.tasks.augment import interpolate_tasks

    t, d = 8, 3
    # Task i's attack rows all equal i + 1 (benign rows -1), so a mixed row reveals its pair and lambda.
    sy = np.tile([0, 0, 1, 1, 1], (t, 1))
    qy = np.tile([1, 0, 1, 0], (t, 1))
    sx = (
        np.where(sy[..., None] == 1, np.arange(1, t + 1)[:, None, None], -1.0)
        .repeat(d, -1)
        .astype(np.float32)
    )
    qx = (
        np.where(qy[..., None] == 1, np.arange(1, t + 1)[:, None, None], -1.0)
        .repeat(d, -1)
        .astype(np.float32)
    )
    batch = Batch(support_x=sx, support_y=sy, query_x=qx, query_y=qy)
    out = interpolate_tasks(batch, 0.5, np.random.default_rng(0))
    assert np.array_equal(out.support_y, sy) and np.array_equal(out.query_y, qy)
    assert np.array_equal(out.support_x[sy == 0], sx[sy == 0]) and np.array_equal(
        out.query_x[qy == 0], qx[qy == 0]
    )
    changed = [i for i in range(t) if not np.array_equal(out.support_x[i], sx[i])]
    assert len(changed) == 4  # round(0.5 * 8)
    for i in changed:
        support = out.support_x[i][sy[i] == 1]
        query = out.query_x[i][qy[i] == 1]
        # One value per task, shared by its support and query attack rows: lam*(i+1) + (1-lam)*(j+1), j != i.
        assert np.allclose(support, support[0, 0]) and np.allclose(query, support[0, 0])
        assert support[0, 0] != i + 1 and 1 <= support[0, 0] <= t
    assert np.array_equal(sx, batch.support_x)  # the input batch is not modified
    # The same generator state gives the same batch (training resumes bit for bit).
    again = interpolate_tasks(batch, 0.5, np.random.default_rng(0))
    assert np.array_equal(again.support_x, out.support_x) and np.array_equal(again.query_x, out.query_x)
    with pytest.raises(ValueError, match="as many attack rows in every task"):
        uneven = sy.copy()
        uneven[0, 0] = 1
        interpolate_tasks(Batch(sx, uneven, qx, qy), 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="fraction must be in"):
        interpolate_tasks(batch, 1.5, np.random.default_rng(0))
