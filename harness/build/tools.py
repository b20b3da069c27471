"""The ia32 suite's two 32-bit programs, built from drivers/tools/ia32_calls.c.

    ia32_int80  no libc, syscalls by inline `int $0x80` (-DKMX_INT80): the host's gcc -m32 on an
                x86_64 host, zig's clang (-target x86-linux-none, freestanding) anywhere else
    ia32_musl   static musl (zig's clang, -target x86-linux-musl): libc's syscall(), which enters
                through the vDSO's __kernel_vsyscall (sysenter)

Both go into one content-keyed directory, cache/build/tools/<key> (key: the source's digest, the
commands' flags and the compilers' versions), filled once under a lock.

The throughput benchmark's syscall storm, drivers/tools/storm.c, is one static musl program per
architecture (zig's clang, -target <arch>-linux-musl -static -O2), built by build_storm() into
cache/build/storm/<arch>-<key>.
"""

from __future__ import annotations

import json
import shlex
import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.archs import ARCH_NAMES, ARCHS
from harness.build import Log, cached_dir, content_key, quiet, sources_digest
from harness.build.bpf_common import bpf_clang, bpf_clang_version, zig_env
from harness.build.toolchain import host_machine
from harness.errors import BuildError
from harness.paths import project_root

TYPE_CHECKING = False
if TYPE_CHECKING:
    from harness.debian import DebianRepo

TOOLS_FORMAT = 1  # bump when the build layout or the commands change in a way the key does not see
SOURCE = Path("drivers") / "tools" / "ia32_calls.c"
INT80_NAME = "ia32_int80"
MUSL_NAME = "ia32_musl"
WARNINGS = ("-Wall", "-Werror")
INT80_FLAGS = (
    "-nostdlib",
    "-static",
    "-ffreestanding",
    "-fno-pic",
    "-fno-stack-protector",
    "-fno-builtin",
    "-O1",
    "-DKMX_INT80",
    *WARNINGS,
)
GCC_INT80_FLAGS = ("-m32", *INT80_FLAGS)
ZIG_INT80_FLAGS = ("-target", "x86-linux-none", *INT80_FLAGS)
MUSL_FLAGS = ("-target", "x86-linux-musl", "-static", "-O2", *WARNINGS)
_TIMEOUT_S = 1800.0  # zig compiles musl itself the first time (about a minute)
_LOCK_TIMEOUT_S = 1800.0
_EM_386 = 3

STORM_FORMAT = 1  # bump when the storm build changes in a way its key does not see
STORM_SOURCE = Path("drivers") / "tools" / "storm.c"
STORM_NAME = "storm"
STORM_FLAGS = ("-static", "-O2", *WARNINGS)  # after -target <zig target>
# e_machine of each architecture's ELF (elf.h: EM_X86_64, EM_AARCH64, EM_S390, EM_PPC64, EM_RISCV,
# EM_LOONGARCH); all 64-bit, s390x big-endian
STORM_MACHINES = {"x86_64": 62, "aarch64": 183, "s390x": 22, "ppc64le": 21, "riscv64": 243, "loongarch64": 258}
_PT_INTERP = 3


@dataclass(frozen=True)
class ElfShape:
    """What an ELF file's header says: class (32 or 64 bits), byte order, machine, and whether it asks for
    a program interpreter (a dynamic loader: PT_INTERP)."""

    bits: int
    big_endian: bool
    machine: int
    interp: bool


def elf_shape(head: bytes) -> ElfShape | None:
    """The shape of the ELF whose first bytes (its program headers included) are head; None if not an ELF."""
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
        return None
    bits, big = 32 * head[4], head[5] == 2
    order = ">" if big else "<"
    (machine,) = struct.unpack_from(order + "H", head, 18)
    # e_phoff, e_phentsize, e_phnum
    layout = (order + "Q", 32, 54, 56) if bits == 64 else (order + "I", 28, 42, 44)
    if len(head) < layout[3] + 2:
        return ElfShape(bits, big, machine, False)
    (phoff,) = struct.unpack_from(layout[0], head, layout[1])
    (phentsize,) = struct.unpack_from(order + "H", head, layout[2])
    (phnum,) = struct.unpack_from(order + "H", head, layout[3])
    interp = any(
        struct.unpack_from(order + "I", head, start)[0] == _PT_INTERP
        for start in range(phoff, phoff + phnum * phentsize, max(phentsize, 1))
        if start + 4 <= len(head)
    )
    return ElfShape(bits, big, machine, interp)


@dataclass(frozen=True)
class StormBuild:
    path: Path  # the static binary
    cached: bool  # True: an earlier build's directory was reused
    compiler: str  # "zig 0.17.1 (clang 22.1.8)"
    command: list[str]  # the argv that built it (paths in the final directory)


@dataclass(frozen=True)
class Ia32Tools:
    int80: Path
    musl: Path
    cached: bool
    compilers: dict[str, str]  # program -> compiler version ("gcc (Debian 12.2.0-14) 12.2.0", "zig 0.17.1 (...)")
    commands: dict[str, list[str]] = field(default_factory=dict)  # program -> argv that built it


def _zig_cc(what: str = "the ia32 tools", why: str = "the musl build of drivers/tools/ia32_calls.c") -> list[str]:
    """zig's clang, invoked as bpf_common does (`python -m ziglang cc`); a BuildError saying who needs it."""
    try:
        return bpf_clang()
    except BuildError:
        raise BuildError(
            f"no zig for {what}: the `ziglang` package is not installed in kmatrix's venv ({why} needs zig's clang)",
            hint="pip install ziglang (or rerun ./bootstrap)",
        ) from None


def _gcc_version(gcc: str) -> str:
    try:
        done = subprocess.run([gcc, "--version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as error:
        raise BuildError(f"{gcc} --version does not run: {error}", hint="apt install gcc") from None
    lines = done.stdout.splitlines()
    if done.returncode != 0 or not lines:
        raise BuildError(f"{gcc} --version failed: {done.stderr.strip()[-500:]}", hint="apt install gcc")
    return lines[0].strip()


def int80_compiler(kind: str | None = None) -> tuple[str, list[str], list[str], str]:
    """(kind, compiler argv, flags, version) for the int80 build: the host gcc -m32 on x86_64, else zig."""
    if kind is None:
        kind = "gcc" if host_machine() == "x86_64" and shutil.which("gcc") else "zig"
    if kind == "gcc":
        gcc = shutil.which("gcc")
        if gcc is None:
            raise BuildError("no gcc for the ia32 int80 build", hint="apt install gcc (on x86_64 hosts)")
        return "gcc", [gcc], list(GCC_INT80_FLAGS), _gcc_version(gcc)
    if kind == "zig":
        return "zig", _zig_cc(), list(ZIG_INT80_FLAGS), bpf_clang_version()
    raise ValueError(f"unknown int80 compiler {kind!r} (gcc or zig)")


def _hint(kind: str, command: list[str], cwd: Path) -> str:
    again = f"cd {shlex.quote(str(cwd))} && {shlex.join(command)}"
    if kind == "gcc":
        return (
            f"the host gcc must build and link 32-bit x86 code (gcc -m32; Debian: apt install gcc-multilib "
            f"binutils); to reproduce: {again}"
        )
    return f"zig's clang failed (pip install --force-reinstall ziglang); to reproduce: {again}"


def _is_ia32(shape: ElfShape) -> bool:
    return (shape.bits, shape.big_endian, shape.machine) == (32, False, _EM_386)


def _compile(
    kind: str,
    command: list[str],
    cwd: Path,
    out: Path,
    env: dict[str, str] | None,
    *,
    expect: tuple[str, Callable[[ElfShape], bool]] = ("a 32-bit x86 ELF", _is_ia32),
) -> str:
    """Run one build command; BuildError naming it and its stderr unless it left the expected ELF at out.

    expect: (what it should be, in words; the test of its ELF shape).
    """
    try:
        done = subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise BuildError(
            f"{out.name}: `{shlex.join(command)}` ran past {_TIMEOUT_S:.0f}s", hint=_hint(kind, command, cwd)
        ) from None
    except OSError as error:
        raise BuildError(
            f"{out.name}: `{shlex.join(command)}` does not run: {error}", hint=_hint(kind, command, cwd)
        ) from None
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0 or not out.is_file():
        raise BuildError(
            f"{out.name}: `{shlex.join(command)}` failed (exit {done.returncode}):\n{output[-2000:] or 'no output'}",
            hint=_hint(kind, command, cwd),
        )
    what, test = expect
    with out.open("rb") as binary:
        shape = elf_shape(binary.read(4096))
    if shape is None or not test(shape):
        raise BuildError(f"{out.name}: `{shlex.join(command)}` did not produce {what}", hint=_hint(kind, command, cwd))
    return output


def _source_root(repo: Path | DebianRepo | None) -> Path:
    """A Path is the source tree; anything else (the run's DebianRepo: no Debian package is needed) means this one."""
    return repo if isinstance(repo, Path) else project_root()


def build_ia32_tools(
    repo: Path | DebianRepo | None, cache: Path, log: Log = quiet, *, int80_kind: str | None = None
) -> Ia32Tools:
    """Build (or reuse) ia32_int80 and ia32_musl under cache/build/tools/<key>.

    repo: the source tree holding drivers/tools/ia32_calls.c (a DebianRepo or None: this checkout).
    int80_kind: "gcc" or "zig" to choose the int80 compiler (default: gcc on x86_64 hosts, else zig).
    """
    source = _source_root(repo) / SOURCE
    if not source.is_file():
        raise BuildError(f"{source} is missing", hint="run from a kmatrix checkout")
    kind, int80_cc, int80_flags, int80_version = int80_compiler(int80_kind)
    zig = _zig_cc()
    musl_version = bpf_clang_version()
    compilers = {"int80": int80_version, "musl": musl_version}
    flags = {"int80": int80_flags, "musl": list(MUSL_FLAGS)}
    key = content_key("ia32-tools", TOOLS_FORMAT, sources_digest({SOURCE.name: source}), kind, flags, compilers)
    dest = cache / "build" / "tools" / key
    built: list[bool] = []

    def fill(tmp: Path) -> str:
        built.append(True)
        src = tmp / "src"
        src.mkdir()
        shutil.copy2(source, src / SOURCE.name)
        commands = {
            "int80": [*int80_cc, *int80_flags, "-o", str(tmp / INT80_NAME), str(src / SOURCE.name)],
            "musl": [*zig, *MUSL_FLAGS, "-o", str(tmp / MUSL_NAME), str(src / SOURCE.name)],
        }
        log(f"ia32 tools: building {INT80_NAME} with {int80_version}")
        _compile(kind, commands["int80"], src, tmp / INT80_NAME, zig_env(cache) if kind == "zig" else None)
        log(f"ia32 tools: building {MUSL_NAME} with {musl_version} (static musl)")
        _compile("zig", commands["musl"], src, tmp / MUSL_NAME, zig_env(cache))
        # the commands as they ran, with the final directory instead of the temporary one
        final = {name: [arg.replace(str(tmp), str(dest)) for arg in argv] for name, argv in commands.items()}
        record = {"compilers": compilers, "int80_kind": kind, "commands": final}
        (tmp / "build.json").write_text(json.dumps(record, indent=2) + "\n")
        return json.dumps(compilers) + "\n"

    cached_dir(dest, fill, lock_timeout_s=_LOCK_TIMEOUT_S)
    try:
        commands = json.loads((dest / "build.json").read_text()).get("commands", {})
    except (OSError, ValueError):
        commands = {}
    return Ia32Tools(dest / INT80_NAME, dest / MUSL_NAME, not built, compilers, commands)


def build_storm(cache: Path, arch: str, log: Log = quiet) -> StormBuild:
    """Build (or reuse) the static syscall-storm helper for one architecture (kmatrix's name).

    cache/build/storm/<arch>-<key>/storm, key: the source's digest, the flags and zig's version.
    """
    if arch not in STORM_MACHINES or arch not in ARCHS:
        valid = ", ".join(name for name in ARCH_NAMES if name in STORM_MACHINES)
        raise BuildError(f"no storm build for architecture {arch!r} (valid: {valid})", hint=f"choose one of: {valid}")
    source = project_root() / STORM_SOURCE
    if not source.is_file():
        raise BuildError(f"{source} is missing", hint="run from a kmatrix checkout")
    profile = ARCHS[arch]
    zig = _zig_cc("the storm helper", f"the static build of {STORM_SOURCE}")
    compiler = bpf_clang_version()
    flags = ["-target", profile.zig_target, *STORM_FLAGS]
    key = content_key("storm", STORM_FORMAT, sources_digest({STORM_SOURCE.name: source}), arch, flags, compiler)
    dest = cache / "build" / "storm" / f"{arch}-{key}"
    machine = STORM_MACHINES[arch]
    built: list[bool] = []

    def static_binary(shape: ElfShape) -> bool:
        return (shape.bits, shape.big_endian, shape.machine, shape.interp) == (64, profile.big_endian, machine, False)

    def fill(tmp: Path) -> str:
        built.append(True)
        src = tmp / "src"
        src.mkdir()
        shutil.copy2(source, src / STORM_SOURCE.name)
        command = [*zig, *flags, "-o", str(tmp / STORM_NAME), str(src / STORM_SOURCE.name)]
        log(f"storm: building for {arch} ({profile.zig_target}) with {compiler}")
        what = f"a static {arch} ELF (64-bit, e_machine {machine}, no PT_INTERP)"
        _compile("zig", command, src, tmp / STORM_NAME, zig_env(cache), expect=(what, static_binary))
        final = [arg.replace(str(tmp), str(dest)) for arg in command]
        record = {"arch": arch, "compiler": compiler, "command": final}
        (tmp / "build.json").write_text(json.dumps(record, indent=2) + "\n")
        return compiler + "\n"

    cached_dir(dest, fill, lock_timeout_s=_LOCK_TIMEOUT_S)
    try:
        command = [str(arg) for arg in json.loads((dest / "build.json").read_text())["command"]]
    except (OSError, ValueError, KeyError, TypeError):
        command = []
    return StormBuild(dest / STORM_NAME, not built, compiler, command)
