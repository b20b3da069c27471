"""Cross-build kmx.ko (drivers/kmod) against the Debian headers of the kernel a cell boots.

For (arch, suite) the kernel is the one images.py boots (resolve_image_package). Its headers come
in three packages: `linux-headers-<abi>-<flavour>` (target arch), `linux-headers-<abi>-common`
(Architecture: all) and the build HOST's `linux-kbuild-<ver>` (host tools: fixdep, modpost,
objtool, ...). They are laid out in one private root, hard-linked from the repository client's
unpacked trees, with the arch Makefile's absolute /usr/src include pointed into the root. When the
kbuild tools need a newer glibc than the host's (trixie's and sid's on Debian 12), each one is
replaced by a script running it through that suite's own ld.so.

The .ko is cached by a hash of the driver sources, the three packages' sha256s, the compiler's
version and the fault; a failed build raises BuildError with the first compiler error and the make
command that reproduces it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import filelock

from harness.archs import ArchProfile
from harness.build import Log, cached_dir, content_key, quiet, sources_digest, stage_sources
from harness.build.toolchain import Compiler, host_debian_arch, require_compiler
from harness.debian import DebianRepo, Package
from harness.errors import BuildError, FetchError
from harness.images import resolve_image_package
from harness.paths import project_root

BUILD_FORMAT = 1  # bump when the build root layout or make invocation changes
# Test-only build faults (make variables; drivers/kmod/Kbuild turns them into -D defines).
FAULTS: dict[str, tuple[str, ...]] = {
    "swap_args": ("KMX_FAULT_SWAP_ARGS=y",),
    "no_ia32": ("KMX_FAULT_NO_IA32=y",),
    "no_container": ("KMX_FAULT_NO_CONTAINER=y",),
    "open_device": ("KMX_FAULT_OPEN_DEVICE=y",),
    "oops_on_load": ("KMX_FAULT_OOPS_ON_LOAD=y",),
    # modpost refuses a module with an undefined symbol unless told to warn: the module must link.
    "unknown_symbol": ("KMX_FAULT_UNKNOWN_SYMBOL=y", "KBUILD_MODPOST_WARN=1"),
}
MAKE_JOBS = 2
_LOCK_TIMEOUT_S = 1800.0
_GLIBC_NEED = re.compile(rb"GLIBC_2\.(\d+)(?:\.\d+)?\x00")
_ERROR_LINE = re.compile(r"(?:^|:\d+(?::\d+)?: )(?:fatal )?error: |^ERROR: |undefined reference to|: undefined symbol")





@dataclass(frozen=True)
class KmodBuild:
    ko: Path
    arch: str
    kernel_release: str
    seconds: float
    cached: bool
    compiler: str
    command: list[str]


@dataclass(frozen=True)
class KernelHeaders:
    """The packages a module build needs for one kernel."""

    release: str  # uname -r of the kernel, e.g. 6.1.0-50-amd64
    suite: str
    headers: Package  # linux-headers-<release> (target arch)
    common: Package  # linux-headers-<abi>-common (arch all)
    kbuild: Package  # linux-kbuild-<ver> (host arch)

    @property
    def name(self) -> str:
        return self.headers.name


# -- resolving the packages ------------------------------------------------------------------------


def resolve_headers(repo: DebianRepo, arch: ArchProfile, suite: str, log: Log = quiet) -> KernelHeaders:
    """The headers of the kernel that images.py boots for (arch, suite)."""
    image = resolve_image_package(repo, arch, suite)
    release = image.name.removeprefix("linux-image-").removesuffix("-unsigned")
    name = f"linux-headers-{release}"
    try:
        headers = repo.find(suite, arch.debian_arch, name, image.version)
    except FetchError:
        headers = repo.find(suite, arch.debian_arch, name)
        log(f"{arch.name}: {name} {image.version} not in {suite}; using {headers.version}")
    deps = [alt for group in headers.depends_names() for alt in group]
    common_name = next((d for d in deps if d.startswith("linux-headers-") and d.endswith("-common")), None)
    kbuild_name = next((d for d in deps if d.startswith("linux-kbuild-")), None)
    if common_name is None or kbuild_name is None:
        raise BuildError(
            f"{headers.name} {headers.version} ({suite}/{arch.debian_arch}) depends on no "
            f"linux-headers-*-common or linux-kbuild-* package (Depends: {headers.depends})",
            hint="Debian's kernel packaging changed: teach harness/build/kmod.py:resolve_headers the new layout",
        )
    common = _same_version(repo, suite, arch.debian_arch, common_name, headers.version, log)
    kbuild = _same_version(repo, suite, host_debian_arch(), kbuild_name, headers.version, log)
    return KernelHeaders(release, suite, headers, common, kbuild)


def _same_version(repo: DebianRepo, suite: str, debian_arch: str, name: str, version: str, log: Log) -> Package:
    try:
        return repo.find(suite, debian_arch, name, version)
    except FetchError:
        pkg = repo.find(suite, debian_arch, name)
        log(f"{name} {version} not in {suite}/{debian_arch}; using {pkg.version}")
        return pkg


# -- the private build root ------------------------------------------------------------------------


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a tree as hard links (the sources are never modified in place), keeping symlinks."""
    shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)


def _replace_text(path: Path, text: str) -> None:
    path.unlink()  # may be a hard link into the repository client's cache: never write through it
    path.write_text(text)


def host_glibc() -> tuple[int, int] | None:
    """The host's glibc version, or None when it has none (or says nothing)."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        return None
    match = re.search(r"glibc (\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def elf_executables(tree: Path) -> list[Path]:
    return sorted(p for p in tree.rglob("*") if p.is_file() and not p.is_symlink() and os.access(p, os.X_OK)
                  and _is_elf(p))


def glibc_needed(binaries: Iterable[Path]) -> tuple[int, int]:
    """The newest GLIBC_2.x symbol version any of the binaries asks for."""
    newest = 0
    for binary in binaries:
        for match in _GLIBC_NEED.finditer(binary.read_bytes()):
            newest = max(newest, int(match.group(1)))
    return (2, newest)


def _glibc_fallback_suites(suite: str) -> list[str]:
    suites = [suite, suite.split("-")[0], "sid"]
    return list(dict.fromkeys(suites))


def _loader_of(libc_root: Path) -> tuple[Path, Path]:
    """(ld.so, directory of libc.so.6) inside an unpacked libc6 package."""
    loaders = sorted(p for p in libc_root.rglob("ld-linux*.so*") if p.is_file())
    libcs = sorted(p for p in libc_root.rglob("libc.so.6") if p.is_file())
    if not loaders or not libcs:
        raise BuildError(f"{libc_root} has no ld-linux*.so or libc.so.6", hint="the libc6 package layout changed")
    return loaders[0].resolve(), libcs[0].parent.resolve()


def wrap_for_glibc(kbuild_dir: Path, loader: Path, libdir: Path, installed_at: Path | None = None) -> list[str]:
    """Replace each ELF program under kbuild_dir by a script running it through `loader`.

    `--argv0 "$0"` keeps argv[0] the wrapper's path: Debian's modpost and objtool are themselves
    wrappers that exec `<argv[0]>.real-<variant>`, which must be a wrapper too. The scripts name
    the programs under `installed_at` (where kbuild_dir will be once moved into place).
    """
    stash = kbuild_dir / ".kmx-elf"
    final_stash = (installed_at or kbuild_dir) / stash.name
    wrapped = []
    for binary in elf_executables(kbuild_dir):
        relative = binary.relative_to(kbuild_dir)
        if relative.parts[0] == stash.name:
            continue
        real = stash / relative
        real.parent.mkdir(parents=True, exist_ok=True)
        os.replace(binary, real)
        script = (f"#!/bin/sh\n# kmatrix: run with its own suite's glibc (the host's is older)\n"
                  f"exec {shlex.quote(str(loader))} --library-path {shlex.quote(str(libdir))} "
                  f'--argv0 "$0" {shlex.quote(str(final_stash / relative))} "$@"\n')
        binary.write_text(script)
        binary.chmod(0o755)
        wrapped.append(str(relative))
    return wrapped


def prepare_root(repo: DebianRepo, kh: KernelHeaders, cache: Path, log: Log = quiet) -> Path:
    """The headers directory (the make -C target) inside a private root, built once and cached."""
    trees = {pkg.name: repo.unpack(pkg) for pkg in (kh.headers, kh.common, kh.kbuild)}
    key = hashlib.sha256(
        json.dumps([BUILD_FORMAT, kh.headers.sha256, kh.common.sha256, kh.kbuild.sha256, host_glibc()]).encode()
    ).hexdigest()[:16]
    root = cache / "build" / "roots" / f"{kh.release}-{key}"

    def fill(tmp: Path) -> str:
        return json.dumps(_populate_root(repo, kh, trees, tmp, root, log), indent=2)

    cached_dir(root, fill, lock_timeout_s=_LOCK_TIMEOUT_S)
    return root / "usr" / "src" / kh.headers.name


def _populate_root(repo: DebianRepo, kh: KernelHeaders, trees: dict[str, Path], tmp: Path, final: Path,
                   log: Log) -> dict[str, object]:
    notes: dict[str, object] = {"packages": {p.name: p.version for p in (kh.headers, kh.common, kh.kbuild)}}
    for pkg, part in ((kh.headers, "usr/src"), (kh.common, "usr/src"), (kh.kbuild, "usr/lib")):
        source = trees[pkg.name] / part
        entries = [p for p in source.iterdir()] if source.is_dir() else []
        if not entries:
            raise BuildError(f"{pkg.name} {pkg.version} has nothing under /{part}",
                             hint="Debian's kernel packaging changed: check the package contents")
        for entry in entries:
            dest = tmp / part / entry.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if entry.is_symlink():
                os.symlink(os.readlink(entry), dest)
            elif entry.is_dir():
                _link_tree(entry, dest)
            else:
                _link_or_copy(str(entry), str(dest))
    headers_dir = tmp / "usr" / "src" / kh.headers.name
    makefile = headers_dir / "Makefile"
    if not makefile.is_file():
        raise BuildError(f"{kh.headers.name} has no Makefile", hint="Debian's kernel packaging changed")
    text = makefile.read_text()
    # The arch Makefile includes the common one (and sets KBUILD_OUTPUT) by absolute /usr/src paths.
    _replace_text(makefile, text.replace("/usr/src/", f"{final}/usr/src/"))

    kbuild_dirs = sorted((tmp / "usr" / "lib").glob("linux-kbuild-*"))
    needed = glibc_needed(elf_executables(kbuild_dirs[0])) if kbuild_dirs else (2, 0)
    host = host_glibc()
    notes["glibc_needed"] = f"{needed[0]}.{needed[1]}"
    if kbuild_dirs and host is not None and needed > host:
        libc, fallbacks = repo.find_fetchable(_glibc_fallback_suites(kh.suite), host_debian_arch(), "libc6")
        for line in fallbacks:
            log(line)
        loader, libdir = _loader_of(repo.unpack(libc))
        # The wrapper scripts name the final root's paths, not tmp's.
        kbuild_dir = kbuild_dirs[0]
        wrapped = wrap_for_glibc(kbuild_dir, loader, libdir, final / kbuild_dir.relative_to(tmp))
        notes["glibc_wrapper"] = {"libc6": f"{libc.suite} {libc.version}", "host": f"{host[0]}.{host[1]}",
                                  "wrapped": wrapped}
        log(f"{kh.kbuild.name}: tools need glibc {needed[0]}.{needed[1]}, host has {host[0]}.{host[1]}: "
            f"running them through libc6 {libc.version} ({libc.suite})'s ld.so")
    return notes


# -- sources, cache key, make ----------------------------------------------------------------------


def driver_sources(root: Path | None = None, source: Path | None = None) -> dict[str, Path]:
    """Files that make up the module, by their path in the build directory.

    `source` is the module's folder (default: the project's drivers/kmod): its C sources and
    headers, Kbuild (or, without one, its Makefile) and gen_decode.py, staged as `kmod/`; beside it
    `common/` holds the project's event schema and IA32 translation headers, which a module
    speaking the kmx protocol includes as ../common/.
    """
    base = root or project_root()
    kmod = source if source is not None else base / "drivers" / "kmod"
    if not kmod.is_dir():
        raise BuildError(f"{kmod} is not a folder", hint="check the driver's `source` in matrix.yaml")
    listed = sorted(p for p in kmod.iterdir() if p.is_file())
    has_kbuild = any(p.name == "Kbuild" for p in listed)
    files = {f"kmod/{p.name}": p for p in listed
             if (p.suffix in (".c", ".h") or p.name in ("Kbuild", "gen_decode.py")
                 or (p.name == "Makefile" and not has_kbuild))
             and p.name != "kmx_decode.h"}
    files["common/kmx_events.h"] = base / "drivers" / "common" / "kmx_events.h"
    for name in ("kmx_ia32.h", "kmx_ia32_map.h"):  # the IA32 translation (x86_64 compat tasks)
        files[f"common/{name}"] = base / "drivers" / "common" / name
    return files


def cache_key(sources: str, kh_sha256s: Sequence[str], compiler_version: str, fault: str | None,
              make_vars: Sequence[str] = ()) -> str:
    """The build cache key: driver sources, header packages, compiler, fault, make variables."""
    material = [BUILD_FORMAT, sources, list(kh_sha256s), compiler_version, fault, list(make_vars)]
    return content_key(*material)


def make_command(headers_dir: Path, build_dir: Path, arch: ArchProfile, compiler: Compiler,
                 fault: str | None) -> list[str]:
    argv = ["make", f"-j{MAKE_JOBS}", "-C", str(headers_dir), f"M={build_dir}", f"ARCH={arch.kbuild_arch}",
            *compiler.make_vars]
    if (headers_dir / "vmlinux").exists():
        argv.append("CONFIG_DEBUG_INFO_BTF_MODULES=")  # module BTF would need pahole; not needed to load
    if fault is not None:
        argv += FAULTS[fault]
    argv.append("modules")
    if compiler.path_prepend:
        path = os.pathsep.join([*compiler.path_prepend, os.environ.get("PATH", "/usr/bin:/bin")])
        argv = ["env", f"PATH={path}", *argv]
    return argv


def first_error(output: str, context: int = 2) -> str:
    """The first compiler/linker/modpost error in a build's output, with a little context."""
    lines = output.splitlines()
    for index, line in enumerate(lines):
        if _ERROR_LINE.search(line):
            picked = [line]
            for follow in lines[index + 1 : index + 1 + context]:
                if follow.startswith((" ", "\t")) or re.match(r"^\s*\d* \|", follow):
                    picked.append(follow)
                else:
                    break
            return "\n".join(picked)
    for line in lines:
        if "***" in line:
            return line
    return "\n".join(lines[-5:]) or "make failed without output"


def reproduce_command(command: Sequence[str], build_dir: Path) -> str:
    """A shell line that reruns the failed make exactly (the build directory is kept)."""
    return f"cd {shlex.quote(str(build_dir))} && {shlex.join(command)}"


def build_failure(what: str, output: str, command: Sequence[str], build_dir: Path, log_path: Path) -> BuildError:
    """The error a failed make raises: the first error line(s); the hint reproduces it."""
    return BuildError(f"{what} failed:\n{first_error(output)}",
                      hint=f"{reproduce_command(command, build_dir)}   (full log: {log_path})")


def _generate_decode(build_dir: Path) -> None:
    if not (build_dir / "gen_decode.py").is_file():  # a module without the kmx decode table
        return
    done = subprocess.run([sys.executable, str(build_dir / "gen_decode.py"),
                           str(build_dir.parent / "common" / "kmx_events.h")],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BuildError(f"gen_decode.py failed: {done.stderr.strip().splitlines()[-1:]}",
                         hint=f"{sys.executable} {build_dir / 'gen_decode.py'} {build_dir.parent / 'common'}"
                         "/kmx_events.h")
    (build_dir / "kmx_decode.h").write_text(done.stdout)


def build_kmod(
    repo: DebianRepo,
    arch: ArchProfile,
    suite: str,
    cache: Path,
    *,
    fault: str | None = None,
    log: Log = quiet,
    source: Path | None = None,
    module: str = "kmx",
) -> KmodBuild:
    """`module`.ko from the kbuild folder `source` (default: drivers/kmod, kmx.ko) for the kernel
    (arch, suite) boots: cached, or built now."""
    if fault is not None and fault not in FAULTS:
        raise BuildError(f"unknown fault {fault!r}", hint=f"choose one of: {', '.join(FAULTS)}")
    started = time.monotonic()
    kh = resolve_headers(repo, arch, suite, log)
    compiler = require_compiler(arch, cache / "build" / "toolchains")
    files = driver_sources(source=source)
    key = cache_key(sources_digest(files), [kh.headers.sha256, kh.common.sha256, kh.kbuild.sha256],
                    compiler.version, fault, compiler.make_vars)
    out = cache / "build" / "kmod" / f"{arch.name}-{kh.release}-{key}"
    ko, meta = out / f"{module}.ko", out / "build.json"
    if ko.is_file() and meta.is_file():
        recorded = json.loads(meta.read_text())
        return KmodBuild(ko, arch.name, kh.release, round(time.monotonic() - started, 3), True,
                         compiler.description, list(recorded.get("command", [])))
    headers_dir = prepare_root(repo, kh, cache, log)
    out.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(out) + ".lock", timeout=_LOCK_TIMEOUT_S):
        if ko.is_file() and meta.is_file():
            recorded = json.loads(meta.read_text())
            return KmodBuild(ko, arch.name, kh.release, round(time.monotonic() - started, 3), True,
                             compiler.description, list(recorded.get("command", [])))
        return _build(kh, arch, compiler, headers_dir, files, out, fault, started, log, module)


def _build(kh: KernelHeaders, arch: ArchProfile, compiler: Compiler, headers_dir: Path, files: dict[str, Path],
           out: Path, fault: str | None, started: float, log: Log, module: str = "kmx") -> KmodBuild:
    build_root = stage_sources(files, out)
    build_dir = build_root / "kmod"
    _generate_decode(build_dir)
    command = make_command(headers_dir, build_dir, arch, compiler, fault)
    log(f"{arch.name}: building {module}.ko for {kh.release} with {compiler.description}")
    env = dict(os.environ, LC_ALL="C", KBUILD_VERBOSE="0")
    done = subprocess.run(command, cwd=build_dir, env=env, capture_output=True, text=True, check=False)
    output = done.stdout + done.stderr
    (out / "build.log").write_text(f"$ {shlex.join(command)}\n{output}")
    built = build_dir / f"{module}.ko"
    if done.returncode != 0 or not built.is_file():
        raise build_failure(f"{module}.ko for {arch.name} {kh.release} ({compiler.description})", output, command,
                            build_dir, out / "build.log")
    shutil.copy2(built, out / built.name)
    shutil.rmtree(build_root, ignore_errors=True)  # objects with debug info; kept only when a build fails
    seconds = round(time.monotonic() - started, 3)
    (out / "build.json").write_text(json.dumps({
        "arch": arch.name, "kernel_release": kh.release, "suite": kh.suite, "compiler": compiler.description,
        "packages": {p.name: p.version for p in (kh.headers, kh.common, kh.kbuild)}, "fault": fault,
        "seconds": seconds, "command": command,
    }, indent=2))
    return KmodBuild(out / built.name, arch.name, kh.release, seconds, False, compiler.description, command)
