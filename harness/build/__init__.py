"""Builds of the three reference drivers and the toolchains they need.

kmod.py (kernel module, per kernel), bpf_legacy.py (legacy eBPF, per kernel), bpf_modern.py
(CO-RE eBPF, per architecture), bpf_common.py and toolchain.py (compilers). The pieces every
build shares live here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

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
