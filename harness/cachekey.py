"""CI cache keys, one per part of ~/.cache/kmatrix, each over exactly the inputs that part depends on.

A change to a driver must not throw away the downloaded kernels, and a new kernel in matrix.yaml
must not throw away the built guest images: so each part has its own key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from harness.doctor import debian_release
from harness.matrix import Matrix

__all__ = ["PARTS", "cache_key_line", "cache_keys"]

PARTS: tuple[str, ...] = ("kernels", "images", "toolchains", "drivers")
KEY_CHARS = 16

# Build outputs a developer may leave in the tree (kbuild, Python): not inputs.
_IGNORED_DIRS = {"__pycache__", ".tmp_versions"}
_IGNORED_SUFFIXES = (".pyc", ".o", ".ko", ".mod", ".mod.c", ".cmd")
_IGNORED_NAMES = {"Module.symvers", "modules.order"}


def _digest(chunks: Iterable[bytes]) -> str:
    sha = hashlib.sha256()
    for chunk in chunks:
        # Length-prefixed, so ("ab", "c") and ("a", "bc") hash differently.
        sha.update(len(chunk).to_bytes(8, "big"))
        sha.update(chunk)
    return sha.hexdigest()[:KEY_CHARS]


def _is_input(path: Path, root: Path) -> bool:
    relative = path.relative_to(root)
    if any(part in _IGNORED_DIRS for part in relative.parts):
        return False
    return path.name not in _IGNORED_NAMES and not path.name.endswith(_IGNORED_SUFFIXES)


def _files(repo: Path, *entries: str) -> list[bytes]:
    """Relative path and content of each file (a directory: every file under it), sorted by path."""
    chunks: list[bytes] = []
    for entry in entries:
        base = repo / entry
        found = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else [base]
        for path in found:
            if path.is_file() and _is_input(path, repo):
                chunks += [path.relative_to(repo).as_posix().encode(), path.read_bytes()]
    return chunks


def _kernel_sources(matrix: Matrix) -> bytes:
    sources = {
        arch: [[ref.label, ref.suite, str(ref.path) if ref.path else None, ref.expect_text]
               for ref in matrix.kernels(arch)]
        for arch in sorted(matrix.architectures)
    }
    return json.dumps(sources, sort_keys=True).encode()


def _userland(matrix: Matrix) -> bytes:
    return json.dumps(matrix.userland, sort_keys=True).encode()


def cache_keys(repo: Path, matrix: Matrix, *, release: str | None = None) -> dict[str, str]:
    """Hex key per part of the cache. `release`: the host's Debian codename (default: /etc/os-release)."""
    codename = (release or debian_release()).encode()
    return {
        "kernels": _digest([_kernel_sources(matrix), codename]),
        # Guest images are built from the userland suites' packages, by the recipes and rootfs.py.
        "images": _digest([_userland(matrix), *_files(repo, "images", "harness/rootfs.py")]),
        "toolchains": _digest([codename, *_files(repo, "pyproject.toml", "drivers/tools")]),
        "drivers": _digest(_files(repo, "drivers")),
    }


def cache_key_line(part: str, keys: Mapping[str, str], *, release: str | None = None) -> str:
    """`kmatrix-<part>-<debian codename>-<key>`; part `all` is one key over every part's key."""
    codename = release or debian_release()
    if part == "all":
        key = _digest(f"{name}={keys[name]}".encode() for name in PARTS)
    elif part in keys:
        key = keys[part]
    else:
        raise ValueError(f"unknown cache part {part!r}: choose one of {', '.join((*PARTS, 'all'))}")
    return f"kmatrix-{part}-{codename}-{key}"
