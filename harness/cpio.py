"""A newc ("070701") cpio writer and reader: initramfs images built without root or a cpio binary."""

from __future__ import annotations

import gzip
import io
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    path: str  # relative, no leading "/"
    mode: int  # full st_mode (type and permissions)
    data: bytes = b""  # file content, or the symlink target
    rdev: tuple[int, int] = (0, 0)
    uid: int = 0
    gid: int = 0
    mtime: int = 0  # fixed for reproducible images

    @property
    def kind(self) -> str:
        for name, test in (
            ("dir", stat.S_ISDIR),
            ("link", stat.S_ISLNK),
            ("file", stat.S_ISREG),
            ("char", stat.S_ISCHR),
            ("block", stat.S_ISBLK),
        ):
            if test(self.mode):
                return name
        return "other"


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


class CpioWriter:
    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._ino = 1

    def add(self, entry: Entry) -> None:
        name = entry.path.strip("/").encode() + b"\0"
        fields = (
            self._ino,
            entry.mode,
            entry.uid,
            entry.gid,
            2 if stat.S_ISDIR(entry.mode) else 1,
            entry.mtime,
            len(entry.data),
            0,
            0,
            entry.rdev[0],
            entry.rdev[1],
            len(name),
            0,
        )
        self._ino += 1
        header = _MAGIC + b"".join(f"{value:08x}".encode() for value in fields)
        self._out.write(header + name + _pad(len(header) + len(name)))
        self._out.write(entry.data + _pad(len(entry.data)))

    def close(self) -> None:
        self.add(Entry(_TRAILER, 0))


def read_entries(stream: BinaryIO) -> Iterator[Entry]:
    """Parse a newc archive (used by tests and `kmatrix image --list`)."""
    while True:
        header = stream.read(110)
        if len(header) < 110 or header[:6] != _MAGIC:
            raise ValueError("not a newc cpio archive (bad magic or truncated header)")
        values = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, uid, gid, mtime, size = values[1], values[2], values[3], values[5], values[6]
        name_size = values[11]
        name = stream.read(name_size)[:-1].decode()
        stream.read(-(110 + name_size) % 4)
        data = stream.read(size)
        stream.read(-size % 4)
        if name == _TRAILER:
            return
        yield Entry(name, mode, data, (values[9], values[10]), uid, gid, mtime)


def write_gzip_cpio(entries: list[Entry], path: Path) -> None:
    """Write entries (parents first is the caller's job) as a gzip'd newc archive, atomically."""
    raw = io.BytesIO()
    writer = CpioWriter(raw)
    for entry in entries:
        writer.add(entry)
    writer.close()
    tmp = path.with_suffix(path.suffix + ".tmp")
    with (
        open(tmp, "wb") as handle,
        gzip.GzipFile(filename="", fileobj=handle, mode="wb", compresslevel=9, mtime=0) as gz,
    ):
        gz.write(raw.getvalue())
    tmp.replace(path)


def read_gzip_cpio(path: Path) -> list[Entry]:
    with gzip.open(path, "rb") as handle:
        return list(read_entries(handle))  # type: ignore[arg-type]
