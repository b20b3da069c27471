"""What both BPF probes build with: zig's clang, and libbpf's BPF-side headers from Debian.

The compiler is clang from the `ziglang` wheel (`python -m ziglang cc`), the same on Debian 12 and
13 hosts (bookworm's clang 14 and trixie's clang 19 would give different objects): pinned by the
wheel in the venv, its version recorded with every object. Targets: `bpfel-freestanding`, or
`bpfeb-freestanding` for big-endian architectures (s390x).

The headers (bpf_helpers.h, bpf_tracing.h, bpf_core_read.h, ...) come from Debian trixie's
`libbpf-dev` for the host architecture (they are the same on every architecture), fetched and
verified by the repository client; `libbpf_headers()` returns the include directory holding `bpf/`.

Small and stable on purpose (both probes' builds import it):
    bpf_clang() -> list[str]            argv prefix of the compiler
    bpf_clang_version() -> str          "zig 0.17.1 (clang 22.1.8)"
    bpf_target_flags(arch) -> list[str] -target bpfel/bpfeb-freestanding, -D__TARGET_ARCH_<x>
    libbpf_headers(repo, cache) -> Path include directory with bpf/bpf_helpers.h etc.
    libbpf_headers_package(repo) -> Package   which libbpf-dev (for build records)
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from harness.archs import ArchProfile
from harness.build import cached_dir
from harness.build.toolchain import host_debian_arch
from harness.debian import DebianRepo, Package
from harness.errors import BuildError

LIBBPF_SUITES = ("trixie", "forky", "sid")
LIBBPF_PACKAGE = "libbpf-dev"
# Flags every BPF object gets: BTF and CO-RE relocations need -g; BPF has no unwinding; v3 is
# the ISA every kernel here (5.8+) verifies (jmp32, alu32).
COMMON_CFLAGS = ("-g", "-O2", "-fno-unwind-tables", "-fno-asynchronous-unwind-tables", "-mcpu=v3",
                 "-Wall", "-Wno-unused-function")

# -D__TARGET_ARCH_<x> for libbpf's bpf_tracing.h, by kmatrix arch name
TARGET_ARCH = {
    "x86_64": "x86",
    "aarch64": "arm64",
    "s390x": "s390",
    "ppc64le": "powerpc",
    "riscv64": "riscv",
    "loongarch64": "loongarch",
}
_LOCK_TIMEOUT_S = 600.0


def _zig_missing() -> BuildError:
    return BuildError("no BPF compiler: the `ziglang` package is not installed in kmatrix's venv",
                      hint="pip install ziglang (or rerun ./bootstrap)")


def bpf_clang() -> list[str]:
    """The compiler's argv prefix: zig's clang, run by this Python."""
    try:
        import ziglang  # noqa: F401
    except ImportError:
        raise _zig_missing() from None
    return [sys.executable, "-m", "ziglang", "cc"]


@functools.lru_cache(maxsize=1)
def bpf_clang_version() -> str:
    """e.g. "zig 0.17.1 (clang 22.1.8)": part of every BPF build's cache key and result."""
    prefix = bpf_clang()
    try:
        zig = subprocess.run([sys.executable, "-m", "ziglang", "version"], capture_output=True, text=True,
                             timeout=120, check=True).stdout.strip()
        clang = subprocess.run([*prefix, "--version"], capture_output=True, text=True, timeout=120,
                               check=True).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise BuildError(f"zig's clang does not run: {error}", hint="pip install --force-reinstall ziglang") from None
    match = re.search(r"clang version (\S+)", clang)
    return f"zig {zig} (clang {match.group(1) if match else 'unknown'})"


def bpf_target_flags(arch: ArchProfile) -> list[str]:
    """-target for the arch's byte order and the __TARGET_ARCH_<x> define of libbpf's bpf_tracing.h."""
    if arch.name not in TARGET_ARCH:
        raise BuildError(f"no BPF target for {arch.name}", hint=f"known: {', '.join(TARGET_ARCH)}")
    return ["-target", f"{arch.bpf_target}-freestanding", f"-D__TARGET_ARCH_{TARGET_ARCH[arch.name]}"]


def zig_env(cache: Path) -> dict[str, str]:
    """Environment for zig: its caches under kmatrix's cache, not $HOME."""
    zig_cache = cache / "build" / "zig"
    return dict(os.environ, ZIG_GLOBAL_CACHE_DIR=str(zig_cache / "global"),
                ZIG_LOCAL_CACHE_DIR=str(zig_cache / "local"), LC_ALL="C")


def libbpf_headers_package(repo: DebianRepo) -> Package:
    """Debian's libbpf-dev (trixie, else the next suite whose .deb the pool has), host architecture."""
    pkg, _notes = repo.find_fetchable(LIBBPF_SUITES, host_debian_arch(), LIBBPF_PACKAGE)
    return pkg


def libbpf_headers(repo: DebianRepo, cache: Path) -> Path:
    """An include directory holding bpf/bpf_helpers.h, bpf/bpf_tracing.h, bpf/bpf_core_read.h, ..."""
    pkg = libbpf_headers_package(repo)
    root = repo.unpack(pkg)
    source = root / "usr" / "include" / "bpf"
    if not (source / "bpf_helpers.h").is_file():
        raise BuildError(f"{pkg.name} {pkg.version} has no usr/include/bpf/bpf_helpers.h",
                         hint="Debian's libbpf-dev layout changed")
    # A directory of its own (the unpacked tree also has the host's other headers, which must not
    # shadow the freestanding target's).
    def fill(tmp: Path) -> str:
        shutil.copytree(source, tmp / "bpf")
        return f"{pkg.name} {pkg.version} ({pkg.suite})\n"

    return cached_dir(cache / "build" / "libbpf-headers" / pkg.sha256[:16], fill, lock_timeout_s=_LOCK_TIMEOUT_S)
