"""Which datasets metashield knows, which files make each one, and where to get them."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from metashield.data.nsl_kdd import NSL_KDD_ZIP, load_nsl_kdd
from metashield.data.types import TabularData

DATA_ENV = "METASHIELD_DATA"
"""Environment variable naming the cache folder (overrides the per-user cache)."""

MIRROR_ENV = "METASHIELD_MIRROR"
"""Environment variable holding mirror base URLs (comma separated), tried before the origin URLs."""


class UnknownDatasetError(KeyError):
    """No dataset of that name is registered."""

    def __str__(self) -> str:
        # KeyError would print the message quoted like a dict key.
        return str(self.args[0])


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: its name in the dataset folder, sha256 (hex) and size in bytes."""

    name: str
    sha256: str
    size: int

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if self.size < 0:
            raise ValueError(f"{self.name}: size must be >= 0 bytes, got {self.size}")
        # The name becomes a cache path and part of a mirror URL: only a plain file name is safe.
        if not self.name or "/" in self.name or "\\" in self.name or self.name in {".", ".."}:
            raise ValueError(f"file name must be a plain file name, got {self.name!r}")


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: its files, their public origin URLs and the function that parses the folder.

    folder: sub-folder of the cache (and of each mirror) holding the files.
    urls: file name -> full public origin URLs, tried in order after the mirrors.
    loader: parses the folder holding every verified file into ``TabularData``.
    """

    name: str
    folder: str
    files: tuple[RemoteFile, ...]
    urls: Mapping[str, tuple[str, ...]]
    description: str
    loader: Callable[[Path], TabularData]

    def __post_init__(self) -> None:
        names = [f.name for f in self.files]
        unknown = sorted(set(self.urls) - set(names))
        if unknown:
            raise ValueError(
                f"dataset {self.name!r}: urls given for unknown files {unknown}; files are {names}"
            )


REGISTRY: dict[str, DatasetSpec] = {
    "nsl-kdd": DatasetSpec(
        name="nsl-kdd",
        folder="nsl-kdd",
        files=(
            RemoteFile(
                name=NSL_KDD_ZIP,
                sha256="3ba51add3e2042b2731d2e28623176c445d5de14b644cb099bde425f6195fb39",
                size=3_711_636,
            ),
        ),
        urls={
            # The CIC download page is gone; this public copy is byte-identical to two unrelated copies.
            NSL_KDD_ZIP: (
                "https://raw.githubusercontent.com/mekkheir/Dataset/"
                "ac0e7dddad3326d8103f8ae8a3881f3ef2a36b62/NSL_KDD.zip",
            ),
        },
        description=(
            "NSL-KDD network intrusion records (Tavallaee et al., CISDA 2009): 41 features, "
            "39 attack types in 4 categories; 17 attack types occur only in the test files."
        ),
        loader=load_nsl_kdd,
    ),
}


def get_spec(name: str) -> DatasetSpec:
    """The registered dataset called ``name``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownDatasetError(f"unknown dataset {name!r}; known datasets: {sorted(REGISTRY)}") from None


def data_home() -> Path:
    """Cache folder for downloaded datasets: ``$METASHIELD_DATA``, else the per-user cache folder."""
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("metashield"))


def mirrors() -> list[str]:
    """Mirror base URLs from ``$METASHIELD_MIRROR`` (comma separated), in order, without trailing slash.

    A mirror holds ``<base>/<dataset folder>/<file name>``; mirrors are tried before the origin URLs.
    Only commas separate, because a ``file://`` base may contain spaces.
    """
    env = os.environ.get(MIRROR_ENV, "")
    return [part.strip().rstrip("/") for part in env.split(",") if part.strip()]
