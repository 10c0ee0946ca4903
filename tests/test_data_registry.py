"""The dataset registry: specs, cache folder and mirror configuration."""

from __future__ import annotations

from pathlib import Path

import platformdirs
import pytest

from metashield.data import REGISTRY, data_home, get_spec, load_nsl_kdd, mirrors
from metashield.data.registry import DatasetSpec, RemoteFile


def test_nsl_kdd_spec_points_at_the_pinned_public_copy() -> None:
    spec = get_spec("nsl-kdd")
    assert spec.folder == "nsl-kdd"
    assert spec.files == (
        RemoteFile(
            "NSL_KDD.zip", "3ba51add3e2042b2731d2e28623176c445d5de14b644cb099bde425f6195fb39", 3711636
        ),
    )
    assert spec.urls["NSL_KDD.zip"] == (
        "https://raw.githubusercontent.com/mekkheir/Dataset/ac0e7dddad3326d8103f8ae8a3881f3ef2a36b62/NSL_KDD.zip",
    )
    assert spec.loader is load_nsl_kdd
    assert "nsl-kdd" in REGISTRY


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(KeyError, match="unknown dataset 'nope'; known datasets: .*nsl-kdd"):
        get_spec("nope")


def test_data_home_prefers_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("METASHIELD_DATA", str(tmp_path))
    assert data_home() == tmp_path
    monkeypatch.delenv("METASHIELD_DATA")
    assert data_home() == Path(platformdirs.user_cache_dir("metashield"))


def test_mirrors_split_on_commas_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METASHIELD_MIRROR", raising=False)
    assert mirrors() == []
    monkeypatch.setenv("METASHIELD_MIRROR", " file:///a b/data/ , http://127.0.0.1:8000,,")
    assert mirrors() == ["file:///a b/data", "http://127.0.0.1:8000"]


@pytest.mark.parametrize(
    ("name", "sha", "size", "match"),
    [
        ("a.zip", "ABC", 1, "64 lowercase hex"),
        ("a.zip", "0" * 64, -1, ">= 0 bytes"),
        ("../a.zip", "0" * 64, 1, "plain file name"),
        ("..", "0" * 64, 1, "plain file name"),
    ],
)
def test_remote_file_rejects_bad_fields(name: str, sha: str, size: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RemoteFile(name, sha, size)


def test_spec_rejects_urls_for_unknown_files() -> None:
    with pytest.raises(ValueError, match=r"unknown files \['b.zip'\]"):
        DatasetSpec(
            name="x",
            folder="x",
            files=(RemoteFile("a.zip", "0" * 64, 1),),
            urls={"b.zip": ("http://example.invalid/b.zip",)},
            description="",
            loader=load_nsl_kdd,
        )
