"""The ia32 suite's two 32-bit programs, built from drivers/tools/ia32_calls.c.

    ia32_int80  no libc, syscalls by inline `int $0x80` (-DKMX_INT80): the host's gcc -m32 on an
                x86_64 host, zig's clang (-target x86-linux-none, freestanding) anywhere else
    ia32_musl   static musl (zig's clang, -target x86-linux-musl): libc's syscall(), which enters
                through the vDSO's __kernel_vsyscall (sysenter)

Both go into one content-keyed directory, cache/build/tools/<key> (key: the source's digest, the
commands' flags and the compilers' versions), filled once under a lock.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from harness.build import Log, cached_dir, content_key, quiet, sources_digest
from harness.build.bpf_common import bpf_clang_version, zig_env
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


@dataclass(frozen=True)
class Ia32Tools:
    int80: Path
    musl: Path
    cached: bool
    compilers: dict[str, str]  # program -> compiler version ("gcc (Debian 12.2.0-14) 12.2.0", "zig 0.17.1 (...)")
    commands: dict[str, list[str]] = field(default_factory=dict)  # program -> argv that built it


def _zig_cc() -> list[str]:
    try:
        import ziglang  # noqa: F401
    except ImportError:
        raise BuildError(
            "no zig for the ia32 tools: the `ziglang` package is not installed in kmatrix's venv "
            "(the musl build of drivers/tools/ia32_calls.c needs zig's clang)",
            hint="pip install ziglang (or rerun ./bootstrap)",
        ) from None
    return [sys.executable, "-m", "ziglang", "cc"]


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


def _compile(kind: str, command: list[str], cwd: Path, out: Path, env: dict[str, str] | None) -> str:
    """Run one build command; BuildError naming it and its stderr unless it left a 32-bit x86 ELF at out."""
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
    head = out.read_bytes()[:20]
    if head[:5] != b"\x7fELF\x01" or int.from_bytes(head[18:20], "little") != _EM_386:
        raise BuildError(
            f"{out.name}: `{shlex.join(command)}` did not produce a 32-bit x86 ELF", hint=_hint(kind, command, cwd)
        )
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
