"""Fetch dataset files into the cache: mirrors first, then origins, every file checked against its sha256."""

from __future__ import annotations

import hashlib
import http.client
import logging
import sys
import urllib.request
from pathlib import Path

from tqdm import tqdm

from metashield._atomic import atomic_write
from metashield.data.registry import DatasetSpec, RemoteFile, data_home, get_spec, mirrors
from metashield.data.sequences import SequenceData
from metashield.data.types import TabularData

logger = logging.getLogger(__name__)

TIMEOUT_S = 60.0
"""Seconds a connection may stay silent (connect or read) before the URL counts as failed."""

_CHUNK_BYTES = 1 << 20


class DownloadError(RuntimeError):
    """No candidate URL gave a dataset file with the expected size and sha256.

    ``attempts`` holds ``(url, reason)`` for every URL tried, in order.
    """

    def __init__(self, message: str, attempts: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.attempts = attempts


class _VerificationError(ValueError):
    """The bytes a URL gave are not the expected file."""


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file at ``path``, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _cached_problem(path: Path, remote: RemoteFile) -> str | None:
    """Why the cached file at ``path`` is not ``remote`` (None when it is)."""
    size = path.stat().st_size
    if size != remote.size:
        return f"size {size} bytes, expected {remote.size}"
    digest = file_sha256(path)
    if digest != remote.sha256:
        return f"sha256 {digest}, expected {remote.sha256}"
    return None


def candidate_urls(spec: DatasetSpec, remote: RemoteFile) -> list[str]:
    """URLs to try for ``remote`` in order: ``<mirror>/<folder>/<file>`` for each mirror, then the origins."""
    origins = list(spec.urls.get(remote.name, ()))
    return [f"{base}/{spec.folder}/{remote.name}" for base in mirrors()] + origins


def _download(url: str, dest: Path, remote: RemoteFile, progress: bool) -> None:
    """Stream ``url`` into ``dest`` atomically; raises unless it has the expected size and sha256."""

    def write(tmp: Path) -> None:
        digest = hashlib.sha256()
        received = 0
        with (
            urllib.request.urlopen(url, timeout=TIMEOUT_S) as response,
            open(tmp, "wb") as out,
            tqdm(
                total=remote.size,
                unit="B",
                unit_scale=True,
                desc=remote.name,
                disable=not progress or not sys.stderr.isatty(),
            ) as bar,
        ):
            while chunk := response.read(_CHUNK_BYTES):
                received += len(chunk)
                # Stop early rather than fill the disk when a server sends more than the file can be.
                if received > remote.size:
                    raise _VerificationError(f"sent more than the expected {remote.size} bytes")
                digest.update(chunk)
                out.write(chunk)
                bar.update(len(chunk))
        if received != remote.size:
            raise _VerificationError(f"sent {received} bytes, expected {remote.size}")
        if digest.hexdigest() != remote.sha256:
            raise _VerificationError(f"sha256 {digest.hexdigest()}, expected {remote.sha256}")

    # atomic_write deletes the temporary file when write raises, so a failed URL leaves nothing behind.
    atomic_write(dest, write)


def _fetch_file(spec: DatasetSpec, remote: RemoteFile, folder: Path, progress: bool) -> None:
    """Make ``folder/remote.name`` a verified copy of ``remote``, downloading it when needed."""
    dest = folder / remote.name
    if dest.is_file():
        problem = _cached_problem(dest, remote)
        if problem is None:
            return
        logger.warning("cached %s is corrupt (%s); fetching it again", dest, problem)
    urls = candidate_urls(spec, remote)
    attempts: list[tuple[str, str]] = []
    for url in urls:
        logger.info("fetching %s", url)
        try:
            _download(url, dest, remote, progress)
        # Every way one URL can fail (unreachable, HTTP error, bad URL, truncated or wrong bytes): each
        # reason is kept and reported in the DownloadError if no URL works.
        except (OSError, ValueError, http.client.HTTPException) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            logger.warning("%s failed: %s", url, reason)
            attempts.append((url, reason))
            continue
        logger.info("saved %s (%d bytes, sha256 verified)", dest, remote.size)
        return
    tried = "\n".join(f"  - {url}: {reason}" for url, reason in attempts) or "  (no URL known)"
    raise DownloadError(
        f"could not fetch {remote.name} of dataset {spec.name!r}. URLs tried:\n{tried}\n"
        f"Mirrors come from $METASHIELD_MIRROR (comma-separated base URLs holding <base>/{spec.folder}/"
        f"{remote.name}).\nTo install the file by hand, download it from one of the URLs above (or copy it "
        f"from another machine) and place it at\n"
        f"  {dest}\nIt must be {remote.size} bytes with sha256 {remote.sha256}.",
        attempts,
    )


def fetch(name: str, *, home: str | Path | None = None, progress: bool = True) -> Path:
    """The local folder holding every file of dataset ``name``, each verified against its sha256.

    ``home`` is the cache folder (default ``data_home()``); files already cached and intact are not
    fetched again. ``progress`` shows a byte progress bar when stderr is a terminal. Raises
    ``DownloadError`` when a file cannot be obtained from any mirror or origin URL.
    """
    spec = get_spec(name)
    folder = (Path(home) if home is not None else data_home()) / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    for remote in spec.files:
        _fetch_file(spec, remote, folder, progress)
    return folder


def load_dataset(
    name: str, home: str | Path | None = None, *, progress: bool = True
) -> TabularData | SequenceData:
    """Fetch dataset ``name`` (see ``fetch``) and parse it with its registered loader."""
    return get_spec(name).loader(fetch(name, home=home, progress=progress))
