"""Shared test fixtures: the location of the real datasets and trained runs reused across tests."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data() -> Path:
    """``../shared/data`` or a skip with the reason, for tests on the real files."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (only present inside the project workspace)")
    return SHARED_DATA


@pytest.fixture
def data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty dataset cache so no test writes to the user's cache."""
    home = tmp_path / "cache"
    monkeypatch.setenv("METASHIELD_DATA", str(home))
    monkeypatch.delenv("METASHIELD_MIRROR", raising=False)
    return home


@pytest.fixture(scope="session")
def nsl_kdd_mirror(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment that fetches NSL-KDD from the local mirror into a session-wide cache."""
    data = shared_data()
    home = tmp_path_factory.mktemp("nsl-cache")
    return {"METASHIELD_DATA": str(home), "METASHIELD_MIRROR": f"file://{data}"}


def write_synthetic_flows(
    path: Path, *, n_families: int = 12, per_family: int = 40, n_benign: int = 1500, seed: int = 0
) -> Path:
    """A small CSV in the generic tabular format: benign rows around the origin and one Gaussian cluster per
    attack family, with a categorical column and a heavy-tailed byte count."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    dim = 6
    centres = rng.normal(0, 3, size=(n_families, dim))
    parts = [("benign", rng.normal(0, 1, size=(n_benign, dim)))]
    parts += [
        (f"fam{i:02d}", centres[i] + rng.normal(0, 0.7, size=(per_family, dim))) for i in range(n_families)
    ]
    rows = []
    for label, feats in parts:
        for f in feats:
            rows.append(
                {
                    **{f"f{j}": float(v) for j, v in enumerate(f)},
                    "proto": "tcp" if f[0] > 0 else "udp",
                    "bytes": float(np.exp(3 + abs(f[1]))),
                    "label": label,
                }
            )
    pd.DataFrame(rows).to_csv(path, index=False)
    return path
