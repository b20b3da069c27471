"""The initramfs writer: what goes in comes out, in newc format the kernel accepts."""

from __future__ import annotations

import stat
from pathlib import Path

from harness import cpio


def test_round_trip(tmp_path: Path) -> None:
    entries = [
        cpio.Entry("dev", stat.S_IFDIR | 0o755),
        cpio.Entry("usr/bin/tool", stat.S_IFREG | 0o755, b"\x7fELF" + bytes(range(256)) * 3),
        cpio.Entry("bin", stat.S_IFLNK | 0o777, b"usr/bin"),
        cpio.Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        cpio.Entry("empty", stat.S_IFREG | 0o644, b""),
        cpio.Entry("odd-name-x", stat.S_IFREG | 0o644, b"abc"),
    ]
    path = tmp_path / "initrd.cpio.gz"
    cpio.write_gzip_cpio(entries, path)
    assert cpio.read_gzip_cpio(path) == entries
    assert [e.kind for e in entries] == ["dir", "file", "link", "char", "file", "file"]


def test_reproducible(tmp_path: Path) -> None:
    entries = [cpio.Entry("a", stat.S_IFREG | 0o644, b"x" * 1000)]
    cpio.write_gzip_cpio(entries, tmp_path / "one.gz")
    cpio.write_gzip_cpio(entries, tmp_path / "two.gz")
    assert (tmp_path / "one.gz").read_bytes() == (tmp_path / "two.gz").read_bytes()


def test_header_alignment(tmp_path: Path) -> None:
    import gzip
    import io

    raw = io.BytesIO()
    writer = cpio.CpioWriter(raw)
    for size in range(1, 9):
        writer.add(cpio.Entry("f" * size, stat.S_IFREG | 0o644, b"d" * size))
    writer.close()
    data = raw.getvalue()
    assert len(data) % 4 == 0
    # every header starts on a 4-byte boundary with the newc magic
    offset = 0
    for entry in cpio.read_entries(io.BytesIO(data)):
        assert entry.data == b"d" * len(entry.path)
    assert data[offset : offset + 6] == b"070701"
    assert gzip  # imported for symmetry with write_gzip_cpio
