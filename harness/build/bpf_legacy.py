"""Build the legacy BPF probe (drivers/bpf) for one kernel, against that kernel's own headers.

No CO-RE: the object is compiled per kernel the way legacy probes (Falco's driver/bpf) are, with the
kernel's include paths and configuration, so struct layouts, CONFIG_* choices and __NR_* numbers
are that kernel's. The headers are the Debian packages the kernel module is built against, laid
out by harness/build/kmod.py (resolve_headers, prepare_root).

Two steps, both with zig's clang (harness/build/bpf_common.py), because kernel headers only parse
for the kernel's own architecture (inline assembly, arch-specific types and macros):

  1. front end for the kernel's architecture (`-target <arch>-linux-gnu`): C -> LLVM bitcode,
     optimisations off (`-Xclang -disable-llvm-passes`), with the kernel's include paths,
     `-include linux/kconfig.h`, `-D__KERNEL__`, `-D__TARGET_ARCH_<x>`;
  2. BPF back end (`-target bpfel|bpfeb-freestanding -mcpu=v3 -O2`): bitcode -> BPF ELF with BTF.

This is what Falco's kbuild rule does with `clang -emit-llvm` and `llc -march=bpf`; zig's clang
does both steps, so no LLVM tools are needed on the host. The probe never dereferences kernel
memory directly: it reads fields at offsetof() offsets the front end computed for the kernel's
ABI, so layouts cannot drift between the two steps. s390x objects are big-endian (bpfeb).

Objects are cached by a hash of the probe's sources, the header packages, the compiler's version,
the fault and the attachment; a failed step raises BuildError with the first compiler error and
the command that reproduces it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import filelock

from harness.archs import ArchProfile
from harness.build import Log, content_key, quiet, sources_digest, stage_sources
from harness.build.bpf_common import COMMON_CFLAGS, TARGET_ARCH, bpf_clang, bpf_clang_version, zig_env
from harness.build.kmod import KernelHeaders, build_failure, prepare_root, resolve_headers
from harness.debian import DebianRepo
from harness.errors import BuildError
from harness.paths import project_root

BUILD_FORMAT = 1  # bump when the build directory layout or the compile commands change
OBJECT_NAME = "kmx_bpf.o"
SOURCE_NAME = "kmx_bpf.c"
DECODE_HEADER = "kmx_decode.h"
FAULTS: dict[str, tuple[str, ...]] = {"swap_args": ("-DKMX_FAULT_SWAP_ARGS",), "no_ia32": ("-DKMX_FAULT_NO_IA32",),
                                      "no_container": ("-DKMX_FAULT_NO_CONTAINER",)}
# The architectures the legacy probe supports (matrix.yaml's `bpf` driver): no riscv64, loongarch64.
LEGACY_ARCHS = ("x86_64", "aarch64", "s390x", "ppc64le")
# Front-end triple: the kernel's own architecture (its headers' inline assembly and types).
FRONT_END_TRIPLES = {
    "x86_64": "x86_64-linux-gnu",
    "aarch64": "aarch64-linux-gnu",
    "s390x": "s390x-linux-gnu",
    "ppc64le": "powerpc64le-linux-gnu",
}
# What kernel headers trip over with clang, as Falco's and the kernel's samples/bpf builds turn off.
_QUIET_WARNINGS = (
    "-Wno-unused-value",
    "-Wno-pointer-sign",
    "-Wno-compare-distinct-pointer-types",
    "-Wno-gnu-variable-sized-type-not-at-end",
    "-Wno-address-of-packed-member",
    "-Wno-tautological-compare",
    "-Wno-unknown-warning-option",
    "-Wno-unused-function",
    "-Wno-unknown-attributes",
    "-Wno-duplicate-decl-specifier",
    "-Wno-frame-address",
)
_FRONT_END_FLAGS = (
    "-O2",
    "-g",
    "-emit-llvm",
    "-Xclang",
    "-disable-llvm-passes",
    "-fno-stack-protector",
    "-fno-jump-tables",
    "-fno-unwind-tables",
    "-fno-asynchronous-unwind-tables",
    "-fno-builtin",
    "-nostdinc",
    "-D__KERNEL__",
    "-D__BPF_TRACING__",
    '-DKBUILD_MODNAME="kmx_bpf"',
)
# Per architecture: what its headers need to parse with clang although the kernel was built by gcc.
# powerpc picks inline-asm operand constraints by CONFIG_CC_IS_CLANG ("YZ<>" is gcc-only); the
# other uses of that option in its headers are inside assembly the probe never calls.
ARCH_FRONT_END_FLAGS: dict[str, tuple[str, ...]] = {"ppc64le": ("-DCONFIG_CC_IS_CLANG",)}
_LOCK_TIMEOUT_S = 1800.0





@dataclass(frozen=True)
class LegacyBpfBuild:
    obj: Path
    arch: str
    kernel_release: str
    seconds: float
    cached: bool
    compiler: str  # e.g. "zig 0.17.1 (clang 22.1.8)"
    command: list[str]  # step 1, C -> bitcode (where compile errors show)
    backend_command: list[str] = field(default_factory=list)  # step 2, bitcode -> BPF object
    programs: dict[str, int] = field(default_factory=dict)  # ELF section -> instructions
    attach: str = "raw_tracepoint"  # or "tracepoint"


def required_packages(release: str) -> list[str]:
    """apt packages the legacy BPF build needs on a Debian host of that release: none.

    The compiler is zig's clang from the `ziglang` wheel in kmatrix's venv (the same on Debian 12
    and 13); the headers are Debian's linux-headers packages, fetched by the repository client.
    """
    del release
    return []


def supported(arch: ArchProfile) -> bool:
    return arch.name in LEGACY_ARCHS


# -- sources ---------------------------------------------------------------------------------------


def driver_sources(root: Path | None = None) -> dict[str, Path]:
    """Files that make up the probe, by their path in the build directory."""
    base = root or project_root()
    bpf = base / "drivers" / "bpf"
    files = {
        f"bpf/{p.name}": p
        for p in sorted(bpf.iterdir())
        if p.is_file() and p.suffix in (".c", ".h") and p.name != DECODE_HEADER
    }
    files["common/kmx_events.h"] = base / "drivers" / "common" / "kmx_events.h"
    for name in ("kmx_ia32.h", "kmx_ia32_map.h"):  # the IA32 translation (x86_64 compat tasks)
        files[f"common/{name}"] = base / "drivers" / "common" / name
    files["kmod/gen_decode.py"] = base / "drivers" / "kmod" / "gen_decode.py"  # the decode table generator
    return files




def cache_key(
    sources: str,
    package_sha256s: Sequence[str],
    compiler_version: str,
    fault: str | None,
    attach: str = "raw_tracepoint",
) -> str:
    """The build cache key: sources, header packages, compiler, fault, attachment."""
    material = [
        BUILD_FORMAT,
        sources,
        list(package_sha256s),
        compiler_version,
        fault,
        attach,
        list(_FRONT_END_FLAGS),
        list(COMMON_CFLAGS),
        ARCH_FRONT_END_FLAGS,
    ]
    return content_key(*material)


# -- the kernel's include paths --------------------------------------------------------------------


@dataclass(frozen=True)
class KernelTree:
    """Debian's split of a kernel's headers: the arch package (objtree) and the common one (srctree)."""

    objtree: Path  # linux-headers-<release>: .config, include/generated, arch/<x>/include/generated
    srctree: Path  # linux-headers-<abi>-common: include/, arch/<x>/include

    @classmethod
    def find(cls, headers_dir: Path, common_name: str | None = None) -> KernelTree:
        """From the arch headers' directory: its Makefile includes the common tree's Makefile."""
        candidates = []
        if common_name:
            candidates.append(headers_dir.parent / common_name)
        makefile = headers_dir / "Makefile"
        if makefile.is_file():
            match = re.search(r"^include\s+(\S+)/Makefile\s*$", makefile.read_text(), re.M)
            if match:
                candidates.append(Path(match.group(1)))
        candidates.append(headers_dir)  # a full (unsplit) tree
        for candidate in candidates:
            if (candidate / "include" / "linux" / "kconfig.h").is_file():
                return cls(headers_dir, candidate)
        raise BuildError(
            f"{headers_dir}: no kernel source headers (include/linux/kconfig.h) found",
            hint="Debian's kernel headers packaging changed: see harness/build/bpf_legacy.py",
        )


def kernel_include_flags(tree: KernelTree, arch: ArchProfile) -> list[str]:
    """kbuild's LINUXINCLUDE for an out-of-tree build (arch, generated, uapi), and the two headers
    kbuild forces into every kernel C file: kconfig.h (the configuration) and compiler_types.h."""
    sa = arch.kbuild_arch
    src, obj = tree.srctree, tree.objtree
    return [
        f"-I{src}/arch/{sa}/include",
        f"-I{obj}/arch/{sa}/include/generated",
        f"-I{src}/include",
        f"-I{obj}/include",
        f"-I{src}/arch/{sa}/include/uapi",
        f"-I{obj}/arch/{sa}/include/generated/uapi",
        f"-I{src}/include/uapi",
        f"-I{obj}/include/generated/uapi",
        "-include",
        f"{src}/include/linux/kconfig.h",
        "-include",
        f"{src}/include/linux/compiler_types.h",
    ]


def front_end_command(
    compiler: Sequence[str],
    arch: ArchProfile,
    tree: KernelTree,
    build_dir: Path,
    output: Path,
    fault: str | None = None,
    attach: str = "raw_tracepoint",
) -> list[str]:
    """Step 1: the probe's C, with the kernel's headers, to LLVM bitcode for the kernel's architecture."""
    if arch.name not in FRONT_END_TRIPLES:
        raise BuildError(
            f"the legacy BPF probe does not support {arch.name}",
            hint=f"supported: {', '.join(LEGACY_ARCHS)} (matrix.yaml drivers.bpf)",
        )
    if fault is not None and fault not in FAULTS:
        raise BuildError(f"unknown fault {fault!r}", hint=f"choose one of: {', '.join(FAULTS)}")
    if attach not in ("raw_tracepoint", "tracepoint"):
        raise BuildError(f"unknown attachment {attach!r}", hint="raw_tracepoint or tracepoint")
    bpf = build_dir / "bpf"
    argv = [
        *compiler,
        "-target",
        FRONT_END_TRIPLES[arch.name],
        *_FRONT_END_FLAGS,
        f"-D__TARGET_ARCH_{TARGET_ARCH[arch.name]}",
        *ARCH_FRONT_END_FLAGS.get(arch.name, ()),
        *_QUIET_WARNINGS,
        f"-I{bpf}",
        *kernel_include_flags(tree, arch),
    ]
    if fault is not None:
        argv += FAULTS[fault]
    if attach == "tracepoint":
        argv.append("-DKMX_TRACEPOINT")
    argv += ["-c", str(bpf / SOURCE_NAME), "-o", str(output)]
    return argv


def back_end_command(compiler: Sequence[str], arch: ArchProfile, bitcode: Path, output: Path) -> list[str]:
    """Step 2: bitcode to a BPF object (with .BTF) of the kernel's byte order."""
    flags = [f for f in COMMON_CFLAGS if not f.startswith("-W")]
    return [
        *compiler,
        "-target",
        f"{arch.bpf_target}-freestanding",
        *flags,
        "-Wno-override-module",
        "-c",
        str(bitcode),
        "-o",
        str(output),
    ]


def generate_decode(build_dir: Path) -> None:
    """kmx_decode.h (the module's decode table and __NR_* switch) into build_dir/bpf."""
    script = build_dir / "kmod" / "gen_decode.py"
    header = build_dir / "common" / "kmx_events.h"
    done = subprocess.run([sys.executable, str(script), str(header)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BuildError(f"gen_decode.py failed: {last}", hint=f"{sys.executable} {script} {header}")
    (build_dir / "bpf" / DECODE_HEADER).write_text(done.stdout)


# -- the object ------------------------------------------------------------------------------------


def elf_sections(obj: bytes) -> dict[str, tuple[int, int, int]]:
    """A 64-bit ELF object's sections: name -> (sh_type, sh_flags, size), either byte order."""
    if obj[:4] != b"\x7fELF" or obj[4] != 2:
        raise ValueError("not a 64-bit ELF object")
    order = "<" if obj[5] == 1 else ">"
    (shoff,) = struct.unpack_from(order + "Q", obj, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", obj, 0x3A)
    headers = [struct.unpack_from(order + "IIQQQQ", obj, shoff + index * shentsize) for index in range(shnum)]
    strtab = headers[shstrndx][4]
    sections = {}
    for name, kind, flags, _addr, _offset, size in headers:
        end = obj.index(b"\0", strtab + name)
        sections[obj[strtab + name : end].decode()] = (kind, flags, size)
    return sections


def program_sizes(obj: bytes) -> dict[str, int]:
    """Instructions (8 bytes each) per non-empty executable section of a BPF object, by section name."""
    sht_progbits, shf_execinstr = 1, 0x4
    return {
        name: size // 8
        for name, (kind, flags, size) in elf_sections(obj).items()
        if kind == sht_progbits and flags & shf_execinstr and size
    }


def _cached(out: Path, started: float) -> LegacyBpfBuild | None:
    obj, meta = out / OBJECT_NAME, out / "build.json"
    if not (obj.is_file() and meta.is_file()):
        return None
    recorded = json.loads(meta.read_text())
    return LegacyBpfBuild(
        obj,
        recorded["arch"],
        recorded["kernel_release"],
        round(time.monotonic() - started, 3),
        True,
        recorded["compiler"],
        list(recorded["command"]),
        list(recorded["backend_command"]),
        dict(recorded.get("programs", {})),
        recorded.get("attach", "raw_tracepoint"),
    )


def build_legacy_bpf(
    repo: DebianRepo,
    arch: ArchProfile,
    suite: str,
    cache: Path,
    *,
    fault: str | None = None,
    attach: str = "raw_tracepoint",
    log: Log = quiet,
) -> LegacyBpfBuild:
    """kmx_bpf.o for the kernel that (arch, suite) boots: cached, or built now.

    attach="tracepoint" builds the fallback that attaches to tracepoint/raw_syscalls/* (what a
    kernel without raw tracepoints, < 4.17, gets automatically).
    """
    if not supported(arch):
        raise BuildError(
            f"the legacy BPF probe does not support {arch.name}",
            hint=f"supported: {', '.join(LEGACY_ARCHS)} (matrix.yaml drivers.bpf)",
        )
    if fault is not None and fault not in FAULTS:
        raise BuildError(f"unknown fault {fault!r}", hint=f"choose one of: {', '.join(FAULTS)}")
    started = time.monotonic()
    kh = resolve_headers(repo, arch, suite, log)
    compiler = bpf_clang()
    version = bpf_clang_version()
    files = driver_sources()
    key = cache_key(sources_digest(files), [kh.headers.sha256, kh.common.sha256], version, fault, attach)
    out = cache / "build" / "bpf_legacy" / f"{arch.name}-{kh.release}-{key}"
    found = _cached(out, started)
    if found is not None:
        return found
    headers_dir = prepare_root(repo, kh, cache, log)
    out.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(out) + ".lock", timeout=_LOCK_TIMEOUT_S):
        found = _cached(out, started)
        if found is not None:
            return found
        return _build(kh, arch, compiler, version, headers_dir, files, out, cache, fault, attach, started, log)


def _run_step(what: str, command: list[str], build_dir: Path, log_path: Path, env: dict[str, str]) -> None:
    done = subprocess.run(command, cwd=build_dir, env=env, capture_output=True, text=True, check=False)
    output = done.stdout + done.stderr
    with log_path.open("a") as handle:
        handle.write(f"$ {shlex.join(command)}\n{output}\n")
    if done.returncode != 0:
        raise build_failure(what, output, command, build_dir, log_path)


def _build(
    kh: KernelHeaders,
    arch: ArchProfile,
    compiler: list[str],
    version: str,
    headers_dir: Path,
    files: dict[str, Path],
    out: Path,
    cache: Path,
    fault: str | None,
    attach: str,
    started: float,
    log: Log,
) -> LegacyBpfBuild:
    build_dir = stage_sources(files, out)
    generate_decode(build_dir)
    tree = KernelTree.find(headers_dir, kh.common.name)
    bitcode = build_dir / "kmx_bpf.bc"
    front = front_end_command(compiler, arch, tree, build_dir, bitcode, fault, attach)
    back = back_end_command(compiler, arch, bitcode, build_dir / OBJECT_NAME)
    log(f"{arch.name}: building {OBJECT_NAME} for {kh.release} with {version}")
    env = zig_env(cache)
    log_path = out / "build.log"
    what = f"{OBJECT_NAME} for {arch.name} {kh.release} ({version})"
    _run_step(what, front, build_dir, log_path, env)
    _run_step(f"{what}, BPF back end", back, build_dir, log_path, env)
    data = (build_dir / OBJECT_NAME).read_bytes()
    programs = program_sizes(data)
    if not programs:
        raise BuildError(f"{what}: the object has no programs", hint=f"see {log_path}")
    tmp = out / f".{OBJECT_NAME}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, out / OBJECT_NAME)
    shutil.rmtree(build_dir, ignore_errors=True)  # kept only when a build fails
    seconds = round(time.monotonic() - started, 3)
    (out / "build.json").write_text(
        json.dumps(
            {
                "arch": arch.name,
                "kernel_release": kh.release,
                "suite": kh.suite,
                "compiler": version,
                "packages": {p.name: p.version for p in (kh.headers, kh.common)},
                "fault": fault,
                "attach": attach,
                "seconds": seconds,
                "command": front,
                "backend_command": back,
                "programs": programs,
                "object_bytes": len(data),
            },
            indent=2,
        )
    )
    return LegacyBpfBuild(
        out / OBJECT_NAME, arch.name, kh.release, seconds, False, version, front, back, programs, attach
    )
