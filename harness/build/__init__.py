"""Builds of the three reference drivers and the toolchains they need.

kmod.py (kernel module, per kernel), bpf_legacy.py (legacy eBPF, per kernel), bpf_modern.py
(CO-RE eBPF, per architecture), bpf_common.py and toolchain.py (compilers). The pieces every
build shares live here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import filelock

from harness.paths import cache_writes

Log = Callable[[str], None]


def quiet(_message: str) -> None:
    """The default build log: say nothing."""


def sources_digest(files: dict[str, Path]) -> str:
    """sha256 over the sources' names and contents, independent of their order."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].read_bytes() + b"\0")
    return digest.hexdigest()


def content_key(*material: object) -> str:
    """A short cache key over JSON-able build inputs (sources digest, package sha256s, compiler, ...)."""
    return hashlib.sha256(json.dumps(material, default=list).encode()).hexdigest()[:24]


def stage_sources(files: dict[str, Path], out: Path) -> Path:
    """A fresh `out/src` holding the driver sources (a failed or interrupted attempt is cleared first)."""
    if out.exists():
        shutil.rmtree(out)
    build_dir = out / "src"
    for name, path in files.items():
        dest = build_dir / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
    return build_dir


def cached_dir(dest: Path, fill: Callable[[Path], str], *, lock_timeout_s: float = 1800.0) -> Path:
    """`dest`, filled once by `fill(tmp)` under a file lock and renamed into place.

    `fill` returns the text of the `.complete` marker; a directory without it (an interrupted
    attempt) is rebuilt. Parallel runs wait for each other instead of building twice.
    """
    done = dest / ".complete"
    if done.exists():
        return dest
    # A full or read-only cache ends in one CacheError naming the path; the temporary tree is removed.
    with cache_writes(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        return _fill_locked(dest, fill, lock_timeout_s)


def _fill_locked(dest: Path, fill: Callable[[Path], str], lock_timeout_s: float) -> Path:
    done = dest / ".complete"
    with filelock.FileLock(str(dest) + ".lock", timeout=lock_timeout_s):
        if done.exists():
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        try:
            marker = fill(tmp)
            (tmp / ".complete").write_text(marker)
            if dest.exists():
                shutil.rmtree(dest)
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest
