"""Read a gzip file in place without trusting it: a size limit against decompression bombs."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

from metashield.data.archive import ArchiveError

_CHUNK_BYTES = 1 << 20


def read_gzip(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The decompressed bytes of the gzip file at ``path``, at most ``max_bytes`` bytes.

    The bytes are counted while reading in chunks, because the size in a gzip trailer is only the low
    32 bits and can be forged. Raises ``ArchiveError`` for a corrupt or truncated file or one that
    decompresses to more than ``max_bytes``.
    """
    path = Path(path)
    chunks: list[bytes] = []
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK_BYTES):
                total += len(chunk)
                if total > max_bytes:
                    raise ArchiveError(f"{path}: decompresses to more than the limit of {max_bytes} bytes")
                chunks.append(chunk)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ArchiveError(f"{path}: corrupt gzip file: {exc}") from exc
    return b"".join(chunks)
