"""Compilers for kernel modules: Debian's cross gcc per architecture, zig (clang) where there is none.

`find_compiler(arch)` says what this host can build with (None when nothing fits);
`require_compiler(arch)` raises BuildError naming the apt package to install instead;
`required_packages(release)` lists the apt packages a fresh Debian 12 / 13 host needs for every
architecture's module build (for `kmatrix setup`).

loongarch64 on Debian 12 has no cross gcc: the module is compiled by `zig cc` (clang, from the
`ziglang` wheel) through a wrapper that turns gcc-only kbuild flags into clang ones, and linked
with `zig ld.lld`, with LLVM=1 so kbuild asks for LLVM tool names.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.archs import ARCHS, ArchProfile
from harness.errors import BuildError

ZIG_WRAPPER_VERSION = 1  # bump when the zig flag mapping changes: it is part of the build cache key

# The kbuild host tools Debian ships in linux-kbuild-* are dynamically linked against these.
_KBUILD_RUNTIME = {
    "bookworm": ["libelf1", "libssl3", "zlib1g"],
    "trixie": ["libelf1t64", "libssl3t64", "zlib1g"],
}
_HOST_BUILD = ["make", "gcc", "binutils", "python3"]


@dataclass(frozen=True)
class Compiler:
    """How to compile kernel code for one architecture on this host."""

    arch: str  # kmatrix arch name
    kind: str  # "gcc" or "zig"
    cc: str  # the CC= value (an executable path)
    version: str  # first line of `--version`: part of the cache key, shown in results
    make_vars: tuple[str, ...]  # VAR=value words for make (CC, CROSS_COMPILE, LLVM, LD, ...)
    path_prepend: tuple[str, ...] = field(default=())  # directories put first on PATH for the build

    @property
    def description(self) -> str:
        return f"{self.kind}: {self.version}"


def host_machine() -> str:
    return platform.machine()


def host_debian_arch() -> str:
    """The host's Debian architecture (amd64 on x86_64, ...)."""
    profile = ARCHS.get(host_machine())
    if profile is None:
        raise BuildError(f"unsupported build host architecture {host_machine()}",
                         hint=f"build on one of: {', '.join(ARCHS)}")
    return profile.debian_arch


def host_release(os_release: Path = Path("/etc/os-release")) -> str:
    """The host's Debian codename (bookworm, trixie, ...), or '' when unknown."""
    try:
        text = os_release.read_text()
    except OSError:
        return ""
    match = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", text, re.M)
    return match.group(1) if match else ""


def gcc_package(triple: str) -> str:
    """Debian's cross gcc package for a GNU triple (gcc-x86-64-linux-gnu, gcc-aarch64-linux-gnu, ...)."""
    return "gcc-" + triple.replace("_", "-")


def _has_native_cross_gcc(arch: ArchProfile, release: str) -> bool:
    # Debian 12 has no loongarch64 cross gcc; Debian 13 does.
    return not (arch.name == "loongarch64" and release in ("bookworm", ""))


def required_packages(release: str) -> list[str]:
    """apt packages for building kmx.ko for every architecture on a Debian host of that release."""
    packages = list(_HOST_BUILD) + _KBUILD_RUNTIME.get(release, _KBUILD_RUNTIME["trixie"])
    host = host_machine()
    for arch in ARCHS.values():
        if arch.name == host:
            continue
        if _has_native_cross_gcc(arch, release):
            packages.append(gcc_package(arch.cross_triple))
    # loongarch64 on bookworm: zig from the venv (the `ziglang` wheel) instead of an apt package.
    return packages


def _first_line(argv: Sequence[str]) -> str | None:
    """First line of a version command's output, or None when it cannot run."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def _gcc(arch: ArchProfile) -> Compiler | None:
    native = arch.name == host_machine()
    cc = shutil.which("gcc" if native else f"{arch.cross_triple}-gcc")
    if cc is None:
        return None
    version = _first_line([cc, "--version"])
    if version is None:
        return None
    make_vars = [f"CC={cc}"]
    if not native:
        make_vars.append(f"CROSS_COMPILE={arch.cross_triple}-")
    return Compiler(arch.name, "gcc", cc, version, tuple(make_vars))


def zig_available() -> bool:
    try:
        import ziglang  # noqa: F401
    except ImportError:
        return False
    return True


# -- zig (clang) for loongarch64 ------------------------------------------------------------------

ZIG_TARGETS = {"loongarch64": "loongarch64-linux-gnusf"}
# gcc-only flags clang rejects or that make no sense for it.
_ZIG_DROP = {"-msoft-float", "-fconserve-stack", "-fsanitize=bounds-strict"}
_ZIG_MAP = {"-march=loongarch64": "-mcpu=generic_la64"}


def zig_cc_args(arch_name: str, args: Sequence[str]) -> list[str]:
    """The `zig cc` arguments for a gcc command line kbuild produced (the wrapper's whole job)."""
    out = ["-target", ZIG_TARGETS[arch_name]]
    for arg in args:
        if arg in _ZIG_DROP:
            continue
        out.append(_ZIG_MAP.get(arg, arg))
    out.append("-Wno-unknown-warning-option")
    return out


def _write_script(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.chmod(0o755)
    os.replace(tmp, path)


def _zig(arch: ArchProfile, tools: Path) -> Compiler | None:
    if arch.name not in ZIG_TARGETS or not zig_available():
        return None
    python = sys.executable
    version = _first_line([python, "-m", "ziglang", "version"])
    if version is None:
        return None
    root = str(Path(__file__).resolve().parent.parent.parent)
    bindir = tools / f"zig-{arch.name}-v{ZIG_WRAPPER_VERSION}"
    env = f"PYTHONPATH={shlex.quote(root)}${{PYTHONPATH:+:$PYTHONPATH}}"
    run = f"{shlex.quote(python)} -m harness.build.toolchain"
    # CC: the flag-mapping wrapper; LLVM=1 tool names: ld.lld, llvm-ar, llvm-objcopy from zig;
    # llvm-nm, llvm-readelf, ... from the host's binutils (they only read ELF).
    scripts = {
        "cc": f'#!/bin/sh\nexport {env}\nexec {run} zig-cc {arch.name} "$@"\n',
        "ld.lld": f'#!/bin/sh\nexec {shlex.quote(python)} -m ziglang ld.lld "$@"\n',
        "llvm-ar": f'#!/bin/sh\nexec {shlex.quote(python)} -m ziglang ar "$@"\n',
        "llvm-objcopy": f'#!/bin/sh\nexec {shlex.quote(python)} -m ziglang objcopy "$@"\n',
    }
    for host_tool, llvm_name in (("nm", "llvm-nm"), ("readelf", "llvm-readelf"), ("objdump", "llvm-objdump"),
                                 ("strip", "llvm-strip")):
        found = shutil.which(llvm_name) or shutil.which(host_tool)
        if found:
            scripts[llvm_name] = f'#!/bin/sh\nexec {shlex.quote(found)} "$@"\n'
    for name, text in scripts.items():
        target = bindir / name
        if not target.exists() or target.read_text() != text:
            _write_script(target, text)
    cc = str(bindir / "cc")
    make_vars = ("LLVM=1", f"CC={cc}", f"LD={bindir / 'ld.lld'}", f"AR={bindir / 'llvm-ar'}",
                 f"OBJCOPY={bindir / 'llvm-objcopy'}", f"NM={bindir / 'llvm-nm'}")
    return Compiler(arch.name, "zig", cc, f"zig {version} (clang) wrapper v{ZIG_WRAPPER_VERSION}", make_vars,
                    (str(bindir),))


def default_tools_dir() -> Path:
    from harness.paths import cache_dir

    return cache_dir() / "build" / "toolchains"


def find_compiler(arch: ArchProfile, tools: Path | None = None) -> Compiler | None:
    """The compiler for `arch` on this host: its gcc (cross gcc), else zig where that works; None if neither."""
    found = _gcc(arch)
    if found is None and arch.name in ZIG_TARGETS:
        found = _zig(arch, tools or default_tools_dir())
    return found


def missing_compiler_hint(arch: ArchProfile, release: str | None = None) -> str:
    release = host_release() if release is None else release
    if arch.name == host_machine():
        return "apt-get install gcc make (or run `kmatrix setup`)"
    if _has_native_cross_gcc(arch, release):
        return f"apt-get install {gcc_package(arch.cross_triple)} (or run `kmatrix setup`)"
    return (f"Debian {release or '12'} has no {arch.cross_triple} gcc: install the `ziglang` wheel into kmatrix's "
            "venv (pip install ziglang), or build on Debian 13 with gcc-loongarch64-linux-gnu")


def require_compiler(arch: ArchProfile, tools: Path | None = None) -> Compiler:
    found = find_compiler(arch, tools)
    if found is None:
        raise BuildError(f"no C compiler for {arch.name} kernel modules on this host",
                         hint=missing_compiler_hint(arch))
    return found


def _zig_cc_main(argv: list[str]) -> int:
    arch_name, args = argv[0], argv[1:]
    command = [sys.executable, "-m", "ziglang", "cc", *zig_cc_args(arch_name, args)]
    os.execv(command[0], command)
    return 127  # not reached


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "zig-cc":
        sys.exit(_zig_cc_main(sys.argv[2:]))
    sys.exit("usage: python -m harness.build.toolchain zig-cc ARCH [cc arguments]")
