"""Read zip archives without trusting them: size limits against zip bombs, no writes outside the target."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path, PurePosixPath

from metashield._atomic import atomic_write

DEFAULT_MAX_MEMBER_BYTES = 1 << 30
"""Largest decompressed member ``read_zip_member`` accepts by default (1 GiB; NSL-KDD's largest is 19 MB)."""

_CHUNK_BYTES = 1 << 20


class ArchiveError(ValueError):
    """A zip archive is corrupt, too large once decompressed, or tries to write outside its target."""


def read_zip_member(
    zip_path: str | os.PathLike, member: str, max_bytes: int = DEFAULT_MAX_MEMBER_BYTES
) -> bytes:
    """The decompressed bytes of ``member`` of the zip at ``zip_path``, at most ``max_bytes`` bytes.

    Both the size the archive declares and the bytes actually produced are checked against the limit,
    the latter while reading in chunks, so a member with a forged small size cannot exhaust memory.
    """
    zip_path = Path(zip_path)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            try:
                info = archive.getinfo(member)
            except KeyError:
                raise ArchiveError(
                    f"{zip_path}: no member {member!r}; members are {archive.namelist()}"
                ) from None
            if info.file_size > max_bytes:
                raise ArchiveError(
                    f"{zip_path}[{member}]: declares {info.file_size} bytes decompressed, "
                    f"more than the limit of {max_bytes} bytes"
                )
            chunks: list[bytes] = []
            total = 0
            with archive.open(info) as fh:
                while chunk := fh.read(_CHUNK_BYTES):
                    total += len(chunk)
                    if total > max_bytes:
                        raise ArchiveError(
                            f"{zip_path}[{member}]: decompresses to more than the limit of {max_bytes} bytes "
                            f"(declared {info.file_size})"
                        )
                    chunks.append(chunk)
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"{zip_path}[{member}]: corrupt zip archive: {exc}") from exc
    return b"".join(chunks)


def _check_member(info: zipfile.ZipInfo, dest: Path, zip_path: Path) -> Path:
    """The path inside ``dest`` where ``info`` goes; raises if it would land elsewhere or is a link."""
    name = info.filename
    # Check the name as written in the archive: zipfile would silently strip a leading "/" or a drive,
    # and "\\" is a separator on Windows even though it is a plain character here.
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"{zip_path}: member {name!r} has an absolute path")
    if ".." in parts:
        raise ArchiveError(f"{zip_path}: member {name!r} contains '..' and would escape {dest}")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ArchiveError(f"{zip_path}: member {name!r} is a symbolic link, which is not extracted")
    target = (dest / Path(*parts)).resolve() if parts else dest
    if target != dest and dest not in target.parents:
        raise ArchiveError(f"{zip_path}: member {name!r} would be written to {target}, outside {dest}")
    return target


def safe_extract(zip_path: str | os.PathLike, dest: str | os.PathLike, max_total_bytes: int) -> list[Path]:
    """Extract every member of the zip at ``zip_path`` into ``dest``; returns the files written.

    Refuses, before writing anything, members with absolute paths, ``..`` components or symbolic links,
    and archives declaring more than ``max_total_bytes`` decompressed bytes; the bytes actually written
    are counted too. Each file is written atomically, so an aborted extraction leaves no partial file.
    """
    zip_path = Path(zip_path)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    written: list[Path] = []
    try:
        with zipfile.ZipFile(zip_path) as archive:
            infos = archive.infolist()
            targets = [_check_member(info, dest, zip_path) for info in infos]
            declared = sum(info.file_size for info in infos)
            if declared > max_total_bytes:
                raise ArchiveError(
                    f"{zip_path}: declares {declared} bytes decompressed, more than the limit of "
                    f"{max_total_bytes} bytes"
                )
            total = 0
            for info, target in zip(infos, targets, strict=True):
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue

                def write(tmp: Path, info: zipfile.ZipInfo = info) -> None:
                    nonlocal total
                    with archive.open(info) as src, open(tmp, "wb") as out:
                        while chunk := src.read(_CHUNK_BYTES):
                            total += len(chunk)
                            if total > max_total_bytes:
                                raise ArchiveError(
                                    f"{zip_path}: decompresses to more than the limit of {max_total_bytes} "
                                    f"bytes (at member {info.filename!r})"
                                )
                            out.write(chunk)

                atomic_write(target, write)
                written.append(target)
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"{zip_path}: corrupt zip archive: {exc}") from exc
    return written
