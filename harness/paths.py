"""Where kmatrix keeps its cache and runs, and what a failed write to the cache means."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import platformdirs

from harness.errors import CacheError, ConfigError

CACHE_HINT = "set KMATRIX_CACHE to a writable directory"
# errno values that mean "this cache cannot take the write", as opposed to a bug or a bad input.
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def cache_dir() -> Path:
    """User cache (downloads, unpacked packages, built images); KMATRIX_CACHE overrides."""
    override = os.environ.get("KMATRIX_CACHE")
    path = Path(override) if override else Path(platformdirs.user_cache_dir("kmatrix"))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"cache directory {path} cannot be created: {error.strerror}",
            hint=CACHE_HINT,
        ) from None
    # access(2) reports EROFS for a read-only mount even to root, who passes every permission check.
    if not os.access(path, os.W_OK):
        raise ConfigError(f"cache directory {path} is not writable{_read_only_note(path)}", hint=CACHE_HINT)
    return path


def _read_only_note(path: Path) -> str:
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return ""
    return " (it is on a read-only file system)" if read_only else ""


def cache_write_error(where: Path, error: OSError) -> CacheError | None:
    """The one-line error for a failed write into the cache, or None if `error` is not about the disk.

    `where` names the file or directory being written when the OSError itself carries no file name
    (a write(2) that hits ENOSPC does not say which file it was).
    """
    path = Path(os.fsdecode(error.filename)) if error.filename else where
    if error.errno in _FULL:
        return CacheError(
            f"disk full: no space left on the file system holding {path}{_free_note(path)}",
            hint="free space there, or set KMATRIX_CACHE to a directory on a larger disk; "
            "the partial files were removed and the next run starts them again",
        )
    if error.errno in _NOT_WRITABLE:
        return CacheError(
            f"cache directory {_existing_dir(path)} is not writable ({error.strerror})",
            hint=f"{CACHE_HINT} (or remount it read-write)",
        )
    return None


@contextmanager
def cache_writes(where: Path) -> Iterator[None]:
    """Turn a disk-full or read-only OSError raised inside into a CacheError naming `where`."""
    try:
        yield
    except OSError as error:
        mapped = cache_write_error(where, error)
        if mapped is None:
            raise
        raise mapped from error


def _existing_dir(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return candidate
    return path


def _free_note(path: Path) -> str:
    try:
        usage = shutil.disk_usage(_existing_dir(path))
    except OSError:
        return ""
    return f" ({usage.free // 1024} KiB free of {usage.total // 1024} KiB)"


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def default_matrix_path() -> Path:
    return Path(os.environ.get("KMATRIX_MATRIX", project_root() / "matrix.yaml"))


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
