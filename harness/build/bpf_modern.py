"""Build the modern (CO-RE) BPF probe, drivers/modern_bpf: one object per architecture.

The object is compiled against a vmlinux.h for the architecture, from Debian's `linux-bpf-dev`
(trixie; the next suite whose .deb the pool still has when trixie's was dropped, recorded in the
result), with zig's clang and Debian's libbpf headers (harness/build/bpf_common.py). Field offsets
are relocated by libbpf at load time against the running kernel's BTF, so the same object serves
every kernel of the architecture that has BTF (5.8+, CONFIG_DEBUG_INFO_BTF).

Steps: generate kmx_modern_decode.h for the arch (drivers/modern_bpf/gen_decode.py, from the schema
header and the arch's syscall table), compile kmx_modern.bpf.c. Objects are cached by a hash of the
sources, the vmlinux.h and libbpf-dev packages, the compiler's version and the fault.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import filelock

from harness.archs import ArchProfile
from harness.build import Log, content_key, quiet, sources_digest, stage_sources
from harness.build.bpf_common import (
    COMMON_CFLAGS,
    bpf_clang,
    bpf_clang_version,
    bpf_target_flags,
    libbpf_headers,
    libbpf_headers_package,
    zig_env,
)
from harness.debian import DebianRepo, Package
from harness.errors import BuildError, FetchError
from harness.paths import project_root

BUILD_FORMAT = 1  # bump when the build directory layout or the compile command changes
FAULTS: dict[str, tuple[str, ...]] = {
    "swap_args": ("-DKMX_FAULT_SWAP_ARGS",),
    "no_ia32": ("-DKMX_FAULT_NO_IA32",),
    "no_container": ("-DKMX_FAULT_NO_CONTAINER",),
    "verifier_reject": ("-DKMX_FAULT_VERIFIER_REJECT",),  # test-only: a program the verifier refuses
}
OBJECT_NAME = "kmx_modern.bpf.o"
SOURCE_NAME = "kmx_modern.bpf.c"
DECODE_HEADER = "kmx_modern_decode.h"
VMLINUX_PACKAGE = "linux-bpf-dev"
VMLINUX_SUITES = ("trixie", "forky", "sid")
_LOCK_TIMEOUT_S = 1800.0





@dataclass(frozen=True)
class BpfBuild:
    obj: Path
    arch: str
    seconds: float
    cached: bool
    compiler: str
    vmlinux_source: str  # e.g. "linux-bpf-dev 6.12.117-1 (trixie, amd64)"
    command: list[str]


@dataclass(frozen=True)
class Vmlinux:
    header: Path
    package: Package
    notes: tuple[str, ...]  # suites passed over

    @property
    def source(self) -> str:
        return f"{self.package.name} {self.package.version} ({self.package.suite}, {self.package.architecture})"


def vmlinux_header(repo: DebianRepo, arch: ArchProfile, log: Log = quiet) -> Vmlinux:
    """linux-bpf-dev's vmlinux.h for the architecture (trixie first)."""
    try:
        pkg, notes = repo.find_fetchable(VMLINUX_SUITES, arch.debian_arch, VMLINUX_PACKAGE)
    except FetchError as error:
        raise BuildError(f"no vmlinux.h for {arch.name}: {error}", hint=error.hint) from None
    for note in notes:
        log(f"{arch.name}: {note.splitlines()[0]}")
    root = repo.unpack(pkg)
    found = [*sorted(root.glob("usr/include/*/linux/bpf/vmlinux.h")),
             *sorted(root.glob("usr/include/linux/bpf/vmlinux.h"))]
    if not found:
        raise BuildError(f"{pkg.name} {pkg.version} ({arch.debian_arch}) has no vmlinux.h",
                         hint="Debian's linux-bpf-dev layout changed")
    header = found[0]
    with header.open("rb") as handle:
        start = handle.read(256)
    if start.lstrip().startswith(b"#error"):
        first = start.splitlines()[0].decode(errors="replace")
        raise BuildError(f"{pkg.name} {pkg.version} ({arch.debian_arch}) ships no types: {first}",
                         hint=f"Debian builds {arch.name}'s kernel without CONFIG_DEBUG_INFO_BTF: CO-RE cannot "
                              "work there (its cells are skipped for that reason)")
    return Vmlinux(header, pkg, tuple(notes))


def driver_sources(root: Path | None = None, arch: str | None = None) -> dict[str, Path]:
    """Files that make up the probe, by their path in the build directory."""
    base = root or project_root()
    modern = base / "drivers" / "modern_bpf"
    files = {f"modern_bpf/{p.relative_to(modern).as_posix()}": p for p in sorted(modern.rglob("*"))
             if p.is_file() and (p.suffix in (".c", ".h") or p.name == "gen_decode.py")
             and p.name != DECODE_HEADER and "__pycache__" not in p.parts}
    files["common/kmx_events.h"] = base / "drivers" / "common" / "kmx_events.h"
    for name in ("kmx_ia32.h", "kmx_ia32_map.h"):  # the IA32 translation (x86_64 compat tasks)
        files[f"common/{name}"] = base / "drivers" / "common" / name
    files["kmod/gen_decode.py"] = base / "drivers" / "kmod" / "gen_decode.py"  # the schema parser it reuses
    if arch is not None:
        files[f"common/syscalls/{arch}.json"] = base / "drivers" / "common" / "syscalls" / f"{arch}.json"
    return files




def cache_key(sources: str, package_sha256s: Sequence[str], compiler_version: str, fault: str | None,
              flags: Sequence[str] = ()) -> str:
    """The build cache key: sources, vmlinux.h and libbpf-dev packages, compiler, fault, flags."""
    material = [BUILD_FORMAT, sources, list(package_sha256s), compiler_version, fault, list(flags)]
    return content_key(*material)


def compile_command(compiler: Sequence[str], arch: ArchProfile, build_dir: Path, libbpf_include: Path,
                    fault: str | None, output: Path) -> list[str]:
    """The clang command line that builds the object in build_dir (which holds the sources' layout)."""
    if fault is not None and fault not in FAULTS:
        raise BuildError(f"unknown fault {fault!r}", hint=f"choose one of: {', '.join(FAULTS)}")
    modern = build_dir / "modern_bpf"
    argv = [*compiler, *bpf_target_flags(arch), *COMMON_CFLAGS,
            f"-I{build_dir / 'include'}",  # vmlinux.h
            f"-I{modern}", f"-I{modern / 'include'}", f"-I{build_dir / 'common'}", f"-I{libbpf_include}"]
    if fault is not None:
        argv += FAULTS[fault]
    argv += ["-c", str(modern / SOURCE_NAME), "-o", str(output)]
    return argv


def generate_decode(build_dir: Path, arch: ArchProfile) -> str:
    """kmx_modern_decode.h for the arch, written into build_dir/modern_bpf."""
    script = build_dir / "modern_bpf" / "gen_decode.py"
    argv = [sys.executable, str(script), "--arch", arch.name, "--header", str(build_dir / "common" / "kmx_events.h"),
            "--syscalls", str(build_dir / "common" / "syscalls")]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise BuildError(f"gen_decode.py failed: {last[0]}", hint=shlex.join(argv))
    (build_dir / "modern_bpf" / DECODE_HEADER).write_text(done.stdout)
    return done.stdout


def build_modern_bpf(
    repo: DebianRepo,
    arch: ArchProfile,
    cache: Path,
    *,
    fault: str | None = None,
    log: Log = quiet,
) -> BpfBuild:
    """The modern probe's object for `arch`: cached, or built now."""
    if fault is not None and fault not in FAULTS:
        raise BuildError(f"unknown fault {fault!r}", hint=f"choose one of: {', '.join(FAULTS)}")
    started = time.monotonic()
    compiler = bpf_clang()
    version = bpf_clang_version()
    vmlinux = vmlinux_header(repo, arch, log)
    libbpf_pkg = libbpf_headers_package(repo)
    files = driver_sources(arch=arch.name)
    key = cache_key(sources_digest(files), [vmlinux.package.sha256, libbpf_pkg.sha256], version, fault,
                    [*bpf_target_flags(arch), *COMMON_CFLAGS])
    out = cache / "build" / "modern_bpf" / f"{arch.name}-{key}"
    obj, meta = out / OBJECT_NAME, out / "build.json"

    def cached() -> BpfBuild | None:
        if obj.is_file() and meta.is_file():
            recorded = json.loads(meta.read_text())
            return BpfBuild(obj, arch.name, round(time.monotonic() - started, 3), True, version,
                            str(recorded.get("vmlinux_source", vmlinux.source)), list(recorded.get("command", [])))
        return None

    found = cached()
    if found is not None:
        return found
    include = libbpf_headers(repo, cache)
    out.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(out) + ".lock", timeout=_LOCK_TIMEOUT_S):
        found = cached()
        if found is not None:
            return found
        return _build(arch, compiler, version, vmlinux, libbpf_pkg, include, files, out, cache, fault, started, log)


def _build(arch: ArchProfile, compiler: list[str], version: str, vmlinux: Vmlinux, libbpf_pkg: Package,
           include: Path, files: dict[str, Path], out: Path, cache: Path, fault: str | None, started: float,
           log: Log) -> BpfBuild:
    build_dir = stage_sources(files, out)
    (build_dir / "include").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(vmlinux.header, build_dir / "include" / "vmlinux.h")
    generate_decode(build_dir, arch)
    built = build_dir / OBJECT_NAME
    command = compile_command(compiler, arch, build_dir, include, fault, built)
    log(f"{arch.name}: building {OBJECT_NAME} with {version} against {vmlinux.source}")
    done = subprocess.run(command, cwd=build_dir, env=zig_env(cache), capture_output=True,
                          text=True, check=False)
    output = done.stdout + done.stderr
    (out / "build.log").write_text(f"$ {shlex.join(command)}\n{output}")
    if done.returncode != 0 or not built.is_file():
        first = next((line for line in output.splitlines() if "error:" in line), output.strip()[-500:] or "no output")
        raise BuildError(f"{OBJECT_NAME} for {arch.name} ({version}) failed:\n{first}",
                         hint=f"cd {shlex.quote(str(build_dir))} && {shlex.join(command)}   "
                              f"(full log: {out / 'build.log'})")
    shutil.copy2(built, out / OBJECT_NAME)
    shutil.rmtree(build_dir, ignore_errors=True)  # vmlinux.h copy; kept only when a build fails
    seconds = round(time.monotonic() - started, 3)
    (out / "build.json").write_text(json.dumps({
        "arch": arch.name, "compiler": version, "vmlinux_source": vmlinux.source, "vmlinux_notes": list(vmlinux.notes),
        "libbpf_headers": f"{libbpf_pkg.name} {libbpf_pkg.version} ({libbpf_pkg.suite})", "fault": fault,
        "seconds": seconds, "command": command, "object_bytes": (out / OBJECT_NAME).stat().st_size,
    }, indent=2))
    return BpfBuild(out / OBJECT_NAME, arch.name, seconds, False, version, vmlinux.source, command)
