"""Fetching dataset files: mirrors, origins, checksums, cache repair and the all-fail error."""

from __future__ import annotations

import functools
import hashlib
import http.server
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metashield.data import REGISTRY, DownloadError, TabularData, fetch, load_dataset
from metashield.data.registry import DatasetSpec, RemoteFile

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

PAYLOAD = bytes(range(256)) * 40
"""Content of the toy dataset's one file (10,240 bytes)."""


def toy_loader(folder: Path) -> TabularData:
    data = np.frombuffer((folder / "toy.bin").read_bytes(), dtype=np.uint8)
    return TabularData(frame=pd.DataFrame({"byte": data}), family=np.full(len(data), "benign", dtype=object))


def closed_port_url() -> str:
    """An http URL on a loopback port nothing listens on (connection refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def make_mirror(root: Path, content: bytes) -> str:
    """A mirror folder holding toy/toy.bin with ``content``; returns its file:// base URL."""
    (root / "toy").mkdir(parents=True)
    (root / "toy" / "toy.bin").write_bytes(content)
    return root.as_uri()


@pytest.fixture(autouse=True)
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Keep tests out of the user's cache and away from mirrors set by the Makefile."""
    monkeypatch.setenv("METASHIELD_DATA", str(tmp_path / "cache"))
    monkeypatch.delenv("METASHIELD_MIRROR", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def origins(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Register dataset 'toy'; the returned list is its origin URLs (initially one unreachable URL)."""
    urls = [f"{closed_port_url()}/origin/toy.bin"]
    spec = DatasetSpec(
        name="toy",
        folder="toy",
        files=(RemoteFile("toy.bin", hashlib.sha256(PAYLOAD).hexdigest(), len(PAYLOAD)),),
        urls={"toy.bin": tuple(urls)},
        description="test dataset",
        loader=toy_loader,
    )
    monkeypatch.setitem(REGISTRY, "toy", spec)
    return urls


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # keep pytest output clean; failures show up as HTTP errors in the test


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A loopback HTTP server serving a folder: yields (folder, base URL)."""
    root = tmp_path / "http"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root))
    )
    # A short poll interval so that shutdown() returns quickly at teardown.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def leftovers(folder: Path) -> list[str]:
    """Files in ``folder`` other than the dataset file: temporary downloads must not stay behind."""
    return sorted(p.name for p in folder.iterdir() if p.name != "toy.bin") if folder.exists() else []


def test_file_mirror(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cache: Path, origins: list[str]
) -> None:
    monkeypatch.setenv("METASHIELD_MIRROR", make_mirror(tmp_path / "mirror", PAYLOAD))
    folder = fetch("toy", progress=False)
    assert folder == cache / "toy"
    assert (folder / "toy.bin").read_bytes() == PAYLOAD
    assert leftovers(folder) == []


def test_http_mirror(
    monkeypatch: pytest.MonkeyPatch, http_root: tuple[Path, str], tmp_path: Path, origins: list[str]
) -> None:
    root, base = http_root
    make_mirror(root, PAYLOAD)
    monkeypatch.setenv("METASHIELD_MIRROR", base + "/")
    folder = fetch("toy", home=tmp_path / "elsewhere", progress=False)
    assert folder == tmp_path / "elsewhere" / "toy"
    assert (folder / "toy.bin").read_bytes() == PAYLOAD


def test_http_origin_after_mirrors(
    monkeypatch: pytest.MonkeyPatch, http_root: tuple[Path, str], cache: Path, origins: list[str]
) -> None:
    root, base = http_root
    (root / "origin").mkdir()
    (root / "origin" / "toy.bin").write_bytes(PAYLOAD)
    spec = REGISTRY["toy"]
    monkeypatch.setitem(
        REGISTRY, "toy", DatasetSpec(**{**spec.__dict__, "urls": {"toy.bin": (f"{base}/origin/toy.bin",)}})
    )
    monkeypatch.setenv("METASHIELD_MIRROR", f"{base}/missing")  # a 404
    assert (fetch("toy", progress=False) / "toy.bin").read_bytes() == PAYLOAD


def test_intact_cache_is_used_without_any_url(cache: Path, origins: list[str]) -> None:
    (cache / "toy").mkdir(parents=True)
    (cache / "toy" / "toy.bin").write_bytes(PAYLOAD)
    # No mirror and an unreachable origin: only the cached copy can satisfy this.
    assert (fetch("toy") / "toy.bin").read_bytes() == PAYLOAD


def test_corrupt_cache_is_fetched_again(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    cache: Path,
    origins: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    (cache / "toy").mkdir(parents=True)
    corrupt = bytearray(PAYLOAD)
    corrupt[5] ^= 0xFF  # same size, different bytes: only the sha256 can tell
    (cache / "toy" / "toy.bin").write_bytes(corrupt)
    monkeypatch.setenv("METASHIELD_MIRROR", make_mirror(tmp_path / "mirror", PAYLOAD))
    with caplog.at_level(logging.WARNING, logger="metashield.data.download"):
        folder = fetch("toy", progress=False)
    assert (folder / "toy.bin").read_bytes() == PAYLOAD
    assert "is corrupt (sha256" in caplog.text


def test_bad_checksum_and_unreachable_mirrors_fall_through(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cache: Path, origins: list[str]
) -> None:
    wrong = make_mirror(tmp_path / "wrong", PAYLOAD[::-1])
    good = make_mirror(tmp_path / "good", PAYLOAD)
    monkeypatch.setenv("METASHIELD_MIRROR", f"{wrong},{closed_port_url()},{good}")
    folder = fetch("toy", progress=False)
    assert (folder / "toy.bin").read_bytes() == PAYLOAD
    assert leftovers(folder) == []


def test_all_failing_urls_are_listed(
    monkeypatch: pytest.MonkeyPatch,
    http_root: tuple[Path, str],
    tmp_path: Path,
    cache: Path,
    origins: list[str],
) -> None:
    root, base = http_root
    make_mirror(root, PAYLOAD + b"extra")  # too long
    wrong = make_mirror(tmp_path / "wrong", PAYLOAD[:-1] + b"x")  # right size, wrong sha256
    empty = (tmp_path / "empty").as_uri()  # no such file
    monkeypatch.setenv("METASHIELD_MIRROR", ",".join([wrong, base, empty]))
    with pytest.raises(DownloadError) as caught:
        load_dataset("toy", progress=False)
    expected_urls = [f"{wrong}/toy/toy.bin", f"{base}/toy/toy.bin", f"{empty}/toy/toy.bin", origins[0]]
    assert [url for url, _ in caught.value.attempts] == expected_urls
    message = str(caught.value)
    for url in expected_urls:
        assert f"  - {url}: " in message
    reasons = [reason for _, reason in caught.value.attempts]
    assert "expected " + hashlib.sha256(PAYLOAD).hexdigest() in reasons[0]
    assert "more than the expected 10240 bytes" in reasons[1]
    assert "URLError" in reasons[2] and "URLError" in reasons[3]
    assert str(cache / "toy" / "toy.bin") in message
    assert f"10240 bytes with sha256 {hashlib.sha256(PAYLOAD).hexdigest()}" in message
    assert leftovers(cache / "toy") == []
    assert not (cache / "toy" / "toy.bin").exists()


def test_load_dataset_parses_with_the_registered_loader(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, origins: list[str]
) -> None:
    monkeypatch.setenv("METASHIELD_MIRROR", make_mirror(tmp_path / "mirror", PAYLOAD))
    data = load_dataset("toy", progress=False)
    assert len(data.frame) == len(PAYLOAD)
    assert data.frame["byte"].iloc[257] == 1


@pytest.mark.shared_data
def test_nsl_kdd_from_the_shared_mirror(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    if not (SHARED_DATA / "nsl-kdd" / "NSL_KDD.zip").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA}/nsl-kdd/NSL_KDD.zip")
    monkeypatch.setenv("METASHIELD_MIRROR", SHARED_DATA.as_uri())
    folder = fetch("nsl-kdd", progress=False)
    assert folder == cache / "nsl-kdd"
    assert (folder / "NSL_KDD.zip").stat().st_size == 3711636
