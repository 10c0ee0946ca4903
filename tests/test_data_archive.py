"""Zip reading and extraction against malicious archives."""

from __future__ import annotations

import stat
import struct
import zipfile
from pathlib import Path

import pytest

from metashield.data.archive import ArchiveError, read_zip_member, safe_extract


def make_zip(path: Path, members: dict[str | zipfile.ZipInfo, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def forge_declared_size(path: Path, declared: int) -> None:
    """Overwrite the uncompressed size in the local and central headers of the (only) member."""
    raw = bytearray(path.read_bytes())
    local = raw.index(b"PK\x03\x04")
    central = raw.index(b"PK\x01\x02")
    struct.pack_into("<I", raw, local + 22, declared)
    struct.pack_into("<I", raw, central + 24, declared)
    path.write_bytes(bytes(raw))


def test_reads_a_member_in_place(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "a.zip", {"x.txt": b"hello", "y.txt": b"world"})
    assert read_zip_member(path, "y.txt") == b"world"
    assert not (tmp_path / "y.txt").exists()


def test_unknown_member_lists_members(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "a.zip", {"x.txt": b"hello"})
    with pytest.raises(ArchiveError, match=r"no member 'z.txt'; members are \['x.txt'\]"):
        read_zip_member(path, "z.txt")


def test_declared_size_over_the_limit_is_refused(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "bomb.zip", {"zeros": bytes(1 << 20)})
    with pytest.raises(ArchiveError, match=r"bomb.zip\[zeros\]: declares 1048576 bytes .* limit of 1000"):
        read_zip_member(path, "zeros", max_bytes=1000)


def test_forged_small_declared_size_does_not_slip_through(tmp_path: Path) -> None:
    # The header claims 100 bytes, but the member inflates to 1 MiB: reading must fail, not return data.
    path = make_zip(tmp_path / "bomb.zip", {"zeros": bytes(1 << 20)})
    forge_declared_size(path, 100)
    with pytest.raises(ArchiveError, match=r"bomb.zip\[zeros\]"):
        read_zip_member(path, "zeros", max_bytes=1000)


def test_not_a_zip_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "fake.zip"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(ArchiveError, match="fake.zip.*corrupt zip archive"):
        read_zip_member(path, "x")


def test_safe_extract_writes_inside_dest(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "a.zip", {"x.txt": b"1", "sub/y.txt": b"22", "sub/dir/": b""})
    dest = tmp_path / "out"
    written = safe_extract(path, dest, max_total_bytes=100)
    assert sorted(p.relative_to(dest.resolve()).as_posix() for p in written) == ["sub/y.txt", "x.txt"]
    assert (dest / "sub" / "y.txt").read_bytes() == b"22"
    assert (dest / "sub" / "dir").is_dir()


def symlink_member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("member", "match"),
    [
        ("../evil.txt", "contains '..'"),
        ("ok/../../evil.txt", "contains '..'"),
        ("..\\evil.txt", "contains '..'"),
        ("/tmp/evil.txt", "absolute path"),
        ("C:/evil.txt", "absolute path"),
        (symlink_member("link"), "symbolic link"),
    ],
)
def test_safe_extract_refuses_escaping_members(
    tmp_path: Path, member: str | zipfile.ZipInfo, match: str
) -> None:
    # A harmless member first: nothing at all may be written when any member is malicious.
    path = make_zip(tmp_path / "evil.zip", {"good.txt": b"fine", member: b"/etc/passwd"})
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match=match):
        safe_extract(path, dest, max_total_bytes=1 << 20)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_safe_extract_refuses_too_much_data(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "big.zip", {"a": bytes(600), "b": bytes(600)})
    with pytest.raises(ArchiveError, match="declares 1200 bytes"):
        safe_extract(path, tmp_path / "out", max_total_bytes=1000)
    assert list((tmp_path / "out").iterdir()) == []


def test_safe_extract_refuses_forged_sizes(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "bomb.zip", {"zeros": bytes(1 << 20)})
    forge_declared_size(path, 100)
    with pytest.raises(ArchiveError, match="bomb.zip"):
        safe_extract(path, tmp_path / "out", max_total_bytes=1000)
    assert list((tmp_path / "out").iterdir()) == []
