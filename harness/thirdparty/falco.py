"""Falco's kernel module (scap.ko), cross-built from Debian's falcosecurity-scap-dkms.

The dkms package (Architecture: all, from sid) carries /usr/src/scap-<version>: a kbuild Makefile,
dkms.conf and `configure/<FEATURE>/` probes. While kbuild reads the Makefile, each probe builds a
tiny module in a sub-make started with `env -i`, passing only CC, PATH and KERNELDIR: ARCH,
CROSS_COMPILE, LLVM=1 and our BTF switch are lost there. So the build puts one directory first on
PATH holding the cross binutils under their plain names (`ld -> aarch64-linux-gnu-ld`: Debian's
5.10/6.1 headers set no CROSS_COMPILE unless dpkg says it is a cross build) and a `make` that adds
the build's make variables back, so every probe compiles exactly as the module does. A probe that
fails silently drops its feature flag, so the flags each build set are recorded.

Headers, build root and compiler are kmod.py's (resolve_headers, prepare_root, require_compiler);
the .ko is cached by the dkms package's sha256, the header packages' sha256s and the compiler.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import filelock

from harness.archs import ArchProfile
from harness.build import Log, content_key, quiet, stage_sources
from harness.build.kmod import (
    MAKE_JOBS,
    KernelHeaders,
    first_error,
    prepare_root,
    reproduce_command,
    resolve_headers,
)
from harness.build.toolchain import Compiler, host_debian_arch, require_compiler
from harness.debian import DebianRepo, Package
from harness.errors import BuildError, KmatrixError, UnsupportedTarget

if TYPE_CHECKING:
    from harness.matrix import KernelRef
    from harness.runner import Workspace
    from harness.vm import Guest

BUILD_FORMAT = 1  # bump when the tool directory, make variables or output layout change
DKMS_PACKAGE = "falcosecurity-scap-dkms"
DKMS_SUITE = "sid"
GUEST_PATH = "opt/kmatrix/drivers/scap.ko"  # relative to the guest's root
_LOCK_TIMEOUT_S = 1800.0
# Binutils kbuild calls as $(CROSS_COMPILE)<tool>; gcc itself is not linked: CC is always passed,
# and a plain `gcc` must stay the host's (HOSTCC).
BINUTILS = ("ld", "as", "ar", "nm", "objcopy", "objdump", "readelf", "strip")
# zig/LLVM builds (loongarch64 on Debian 12): the tool each plain name runs, in the zig bindir.
_LLVM_TOOLS = {"ld": "ld.lld", "ar": "llvm-ar", "nm": "llvm-nm", "objcopy": "llvm-objcopy",
               "objdump": "llvm-objdump", "readelf": "llvm-readelf", "strip": "llvm-strip"}
# The kernel config symbol scap's ppm.h keys each architecture on (kbuild ARCH -> symbol).
KERNEL_ARCH_SYMBOLS = {"x86": "CONFIG_X86", "arm64": "CONFIG_ARM64", "s390": "CONFIG_S390",
                       "powerpc": "CONFIG_PPC64", "riscv": "CONFIG_RISCV", "loongarch": "CONFIG_LOONGARCH"}
_PROBE_SET = re.compile(r"^\[configure-kmod\] Setting HAS_(\w+) flag")
_PROBE_OUTPUT = re.compile(r"^\[configure-kmod\] Build output for HAS_(\w+):")
_PROBE_MARK = re.compile(r"^\[configure-kmod\] (?:Build output for|Setting|Build system|Including)")
_PROBE_LEAVE = re.compile(r"make(?:\[\d+\])?: Leaving directory '[^']*/configure/\w+'")
_SANITY = "0__SANITY"


@dataclass(frozen=True)
class DkmsConf:
    """What dkms.conf says about the module and where dkms would refuse to build it."""

    name: str  # PACKAGE_NAME
    version: str  # PACKAGE_VERSION
    module: str  # BUILT_MODULE_NAME[0]
    kernel_min: tuple[int, ...] | None = None  # BUILD_EXCLUSIVE_KERNEL_MIN
    kernel_max: tuple[int, ...] | None = None  # BUILD_EXCLUSIVE_KERNEL_MAX
    arch_regex: str | None = None  # BUILD_EXCLUSIVE_ARCH (a regex on uname -m)


@dataclass(frozen=True)
class ScapSource:
    package: Package
    root: Path  # the unpacked usr/src/<name>-<version>
    conf: DkmsConf


@dataclass(frozen=True)
class ScapBuild:
    ko: Path
    arch: str
    kernel_release: str
    version: str  # the driver's, e.g. 0.23.2
    package_version: str  # the Debian package's, e.g. 0.23.2-6
    seconds: float
    cached: bool
    compiler: str
    command: list[str]
    features: dict[str, bool] = field(default_factory=dict)  # configure probe -> flag set
    built_in_s: float | None = None  # how long the build that made `ko` took (earlier, when cached)


# -- the source and what it supports ---------------------------------------------------------------


def version_tuple(text: str) -> tuple[int, ...]:
    """(6, 12, 95) from '6.12.95+deb12-arm64', '5.10.0-32-amd64' or '2.6.33'."""
    match = re.match(r"\d+(?:\.\d+)*", text.strip())
    if match is None:
        raise BuildError(f"no kernel version in {text!r}")
    return tuple(int(part) for part in match.group(0).split("."))


def _dotted(version: Sequence[int]) -> str:
    return ".".join(map(str, version))


def parse_dkms_conf(text: str) -> DkmsConf:
    """The fields of a dkms.conf (shell assignments) that say what is built and where it may be."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"\s*([A-Z_]+(?:\[\d+\])?)=(.*)$", line)
        if match:
            values[match.group(1)] = _unquote(match.group(2))
    missing = [key for key in ("PACKAGE_NAME", "PACKAGE_VERSION") if not values.get(key)]
    if missing:
        raise BuildError(f"dkms.conf has no {', '.join(missing)}", hint="the dkms package's layout changed")

    def version(key: str) -> tuple[int, ...] | None:
        return version_tuple(values[key]) if values.get(key) else None

    return DkmsConf(values["PACKAGE_NAME"], values["PACKAGE_VERSION"],
                    values.get("BUILT_MODULE_NAME[0]") or values["PACKAGE_NAME"],
                    version("BUILD_EXCLUSIVE_KERNEL_MIN"), version("BUILD_EXCLUSIVE_KERNEL_MAX"),
                    values.get("BUILD_EXCLUSIVE_ARCH") or None)


def _unquote(value: str) -> str:
    """A shell assignment's value: quotes removed, a trailing comment dropped."""
    try:
        words = shlex.split(value, comments=True)
    except ValueError:  # unbalanced quotes: dkms would choke too; keep the text for the error
        return value.strip()
    return words[0] if words else ""


def source_kernel_min(main_c: str) -> tuple[int, ...] | None:
    """The minimum main.c refuses to compile below (`#if LINUX_VERSION_CODE < KERNEL_VERSION(3, 10, 0)` + #error)."""
    match = re.search(r"LINUX_VERSION_CODE\s*<\s*KERNEL_VERSION\((\d+),\s*(\d+),\s*(\d+)\)\)?\s*\n\s*#error", main_c)
    return tuple(int(match.group(i)) for i in (1, 2, 3)) if match else None


def supported_symbols(ppm_h: str) -> set[str]:
    """Kernel arch symbols ppm.h defines SYSCALL_TABLE_ID0 for: the module compiles nowhere else.

    (The syscall_compat_<arch>.h files are for Falco's userspace; in the kernel the module takes
    the syscall numbers from the kernel's own asm/unistd.h.)
    """
    found: set[str] = set()
    for condition in re.findall(r"#\s*(?:el)?if(?:def)?\s+([^\n]*)\n\s*#\s*define\s+SYSCALL_TABLE_ID0\b", ppm_h):
        found.update(re.findall(r"CONFIG_\w+", condition))
    return found


def unbuildable_reason(source: ScapSource, arch: ArchProfile, release: str) -> str | None:
    """Why scap cannot be built for this (arch, kernel), in words; None when it can."""
    what = f"{source.conf.name} {source.conf.version} ({source.package.name} {source.package.version})"
    symbol = KERNEL_ARCH_SYMBOLS.get(arch.kbuild_arch)
    ppm_h = source.root / "ppm.h"  # scap's; another dkms package has no such table
    supported = supported_symbols(ppm_h.read_text(errors="replace")) if ppm_h.is_file() else None
    if supported is not None and (symbol is None or symbol not in supported):
        return (f"{what} does not support {arch.name}: its ppm.h defines SYSCALL_TABLE_ID0 only for "
                f"{', '.join(sorted(supported))}")
    if source.conf.arch_regex and not re.search(source.conf.arch_regex, arch.uname_m):
        return f"{what} does not support {arch.name}: dkms.conf BUILD_EXCLUSIVE_ARCH={source.conf.arch_regex!r}"
    kernel = version_tuple(release)
    main_c = source.root / "main.c"
    minimums = [(source.conf.kernel_min, "dkms.conf BUILD_EXCLUSIVE_KERNEL_MIN"),
                (source_kernel_min(main_c.read_text(errors="replace")) if main_c.is_file() else None,
                 "main.c's #error")]
    for minimum, where in minimums:
        if minimum is not None and kernel < minimum:
            return f"{what} needs kernel {_dotted(minimum)} or newer ({where}); {release} is older"
    if source.conf.kernel_max is not None and kernel > source.conf.kernel_max:
        return (f"{what} supports kernels up to {_dotted(source.conf.kernel_max)} "
                f"(dkms.conf BUILD_EXCLUSIVE_KERNEL_MAX); {release} is newer")
    return None


def fetch_scap_source(repo: DebianRepo, suite: str = DKMS_SUITE, package_name: str = DKMS_PACKAGE) -> ScapSource:
    """The unpacked dkms source tree. Architecture: all, so the build host's index lists it."""
    package = repo.find(suite, host_debian_arch(), package_name)
    confs = sorted((repo.unpack(package) / "usr" / "src").glob("*/dkms.conf"))
    if len(confs) != 1:
        raise BuildError(f"{package.name} {package.version} has {len(confs)} usr/src/*/dkms.conf, expected 1",
                         hint="the dkms package's layout changed")
    return ScapSource(package, confs[0].parent, parse_dkms_conf(confs[0].read_text()))


# -- the tool directory and the make command -------------------------------------------------------


def tool_links(arch: ArchProfile, compiler: Compiler) -> dict[str, str]:
    """Plain tool name -> the cross tool it must run (only tools that exist here)."""
    links: dict[str, str] = {}
    for tool in BINUTILS:
        target = _llvm_tool(compiler, tool) if compiler.kind == "zig" else shutil.which(f"{arch.cross_triple}-{tool}")
        if target is not None:
            links[tool] = target
    return links


def _llvm_tool(compiler: Compiler, tool: str) -> str | None:
    """The zig bindir's LLVM tool for a binutils name (clang assembles itself: no `as`)."""
    for bindir in compiler.path_prepend:
        candidate = Path(bindir) / _LLVM_TOOLS.get(tool, tool)
        if tool in _LLVM_TOOLS and candidate.exists():
            return str(candidate)
    return None


def make_variables(arch: ArchProfile, compiler: Compiler, headers_dir: Path) -> list[str]:
    """The VAR=value words every make of the build gets: the main one and each configure probe's."""
    words = [f"ARCH={arch.kbuild_arch}", *compiler.make_vars, f"KERNELDIR={headers_dir}"]
    if (headers_dir / "vmlinux").exists():
        words.append("CONFIG_DEBUG_INFO_BTF_MODULES=")  # module BTF would need pahole; not needed to load
    return words


def make_wrapper(real_make: str, variables: Sequence[str], home: str | None = None) -> str:
    """The `make` a probe's `env -i` sub-make finds on PATH: the real one with the build's variables.

    HOME comes back too: zig (loongarch64's compiler on Debian 12) keeps its cache under it and
    refuses to compile without one.
    """
    restore = f"export HOME={shlex.quote(home)}\n" if home else ""
    return ("#!/bin/sh\n# kmatrix: scap's configure probes run make under env -i; give it the build's variables\n"
            f'{restore}exec {shlex.join([real_make, *variables])} "$@"\n')


def write_tool_dir(directory: Path, links: dict[str, str], real_make: str, variables: Sequence[str],
                   home: str | None = None) -> Path:
    """A directory of plain-named cross tools and the make wrapper, to put first on PATH."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, target in links.items():
        (directory / name).symlink_to(target)
    wrapper = directory / "make"
    wrapper.write_text(make_wrapper(real_make, variables, home))
    wrapper.chmod(0o755)
    return directory


def build_path(tool_dir: Path, compiler: Compiler, inherited: str | None = None) -> str:
    base = inherited if inherited is not None else os.environ.get("PATH", "/usr/bin:/bin")
    return os.pathsep.join([str(tool_dir), *compiler.path_prepend, base])


def make_command(real_make: str, path: str, headers_dir: Path, build_dir: Path,
                 variables: Sequence[str]) -> list[str]:
    return ["env", f"PATH={path}", real_make, f"-j{MAKE_JOBS}", "-C", str(headers_dir), f"M={build_dir}",
            *variables, "modules"]


def find_make() -> str:
    found = shutil.which("make")
    if found is None:
        raise BuildError("no `make` on this host", hint="apt-get install make (or run `kmatrix setup`)")
    return found


def scap_cache_key(dkms_sha256: str, header_sha256s: Sequence[str], compiler_version: str,
                   make_vars: Sequence[str] = ()) -> str:
    return content_key(BUILD_FORMAT, dkms_sha256, list(header_sha256s), compiler_version, list(make_vars))


def header_sha256s(kh: KernelHeaders) -> list[str]:
    return [kh.headers.sha256, kh.common.sha256, kh.kbuild.sha256]


# -- reading the build's output --------------------------------------------------------------------


def split_probe_output(output: str) -> tuple[str, dict[str, str]]:
    """(the build's own lines, each configure probe's echoed log by feature name).

    A failed probe's log is echoed into make's output (first line prefixed `[configure-kmod] `);
    its errors are expected (a feature the kernel lacks) and must not be taken for the build's.
    """
    main: list[str] = []
    blocks: dict[str, list[str]] = {}
    current: str | None = None
    for line in output.splitlines():
        start = _PROBE_OUTPUT.match(line)
        if start:
            current = start.group(1)
            blocks[current] = []
        elif current is not None and _PROBE_MARK.match(line):
            current = None
            main.append(line)
        elif current is not None:
            blocks[current].append(line.removeprefix("[configure-kmod] "))
            if _PROBE_LEAVE.search(line):
                current = None
        else:
            main.append(line)
    return "\n".join(main), {name: "\n".join(lines) for name, lines in blocks.items()}


def probe_features(output: str, probes: Sequence[str]) -> dict[str, bool]:
    """Each configure probe -> whether the build set its HAS_ flag."""
    found = {m.group(1) for line in output.splitlines() if (m := _PROBE_SET.match(line))}
    return {name: name in found for name in sorted(probes)}


def scap_first_error(output: str) -> str:
    """The first error of a failed build; when the sanity probe failed, the first error in its log."""
    main, blocks = split_probe_output(output)
    if "Build system is broken" in main and _SANITY in blocks:
        return f"scap's configure sanity probe failed (a trivial module did not build):\n{first_error(blocks[_SANITY])}"
    return first_error(main)


# -- the build -------------------------------------------------------------------------------------


def build_scap_kmod(repo: DebianRepo, arch: ArchProfile, suite: str, cache: Path, *, log: Log = quiet,
                    package: str = DKMS_PACKAGE, package_suite: str = DKMS_SUITE,
                    module: str | None = None) -> ScapBuild:
    """scap.ko for the kernel (arch, suite) boots: cached, or built now. BuildError says why not.

    Any dkms package built the same way can be named by `package` (from `package_suite`); `module`,
    when given, is the module name the caller expects (dkms.conf's BUILT_MODULE_NAME must agree).
    """
    started = time.monotonic()
    kh = resolve_headers(repo, arch, suite, log)
    source = fetch_scap_source(repo, package_suite, package)
    if module is not None and module != source.conf.module:
        raise BuildError(f"{source.package.name} {source.package.version} builds {source.conf.module}.ko, "
                         f"not {module}.ko (dkms.conf BUILT_MODULE_NAME[0])",
                         hint=f"declare the driver's module as {source.conf.module}.ko in matrix.yaml")
    reason = unbuildable_reason(source, arch, kh.release)
    if reason is not None:
        raise UnsupportedTarget(reason, hint=f"this (arch, kernel) cannot run {source.conf.module}.ko; skip it")
    compiler = require_compiler(arch, cache / "build" / "toolchains")
    key = scap_cache_key(source.package.sha256, header_sha256s(kh), compiler.version, compiler.make_vars)
    folder = "falco-kmod" if package == DKMS_PACKAGE else package  # the first one's cache stays where it was
    out = cache / "build" / folder / f"{arch.name}-{kh.release}-{key}"
    found = _cached(out, source, arch, kh, compiler, started)
    if found is not None:
        return found
    headers_dir = prepare_root(repo, kh, cache, log)
    out.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(out) + ".lock", timeout=_LOCK_TIMEOUT_S):
        found = _cached(out, source, arch, kh, compiler, started)
        if found is not None:
            return found
        return _build(source, kh, arch, compiler, headers_dir, out, started, log)


def _cached(out: Path, source: ScapSource, arch: ArchProfile, kh: KernelHeaders, compiler: Compiler,
            started: float) -> ScapBuild | None:
    ko, meta = out / f"{source.conf.module}.ko", out / "build.json"
    if not (ko.is_file() and meta.is_file()):
        return None
    recorded = json.loads(meta.read_text())
    return ScapBuild(ko, arch.name, kh.release, source.conf.version, source.package.version,
                     round(time.monotonic() - started, 3), True, compiler.description,
                     list(recorded.get("command", [])), dict(recorded.get("features", {})), recorded.get("seconds"))


def _build(source: ScapSource, kh: KernelHeaders, arch: ArchProfile, compiler: Compiler, headers_dir: Path,
           out: Path, started: float, log: Log) -> ScapBuild:
    files = {str(p.relative_to(source.root)): p for p in sorted(source.root.rglob("*")) if p.is_file()}
    build_dir = stage_sources(files, out)  # the probes write build.log files into their sources
    real_make = find_make()
    variables = make_variables(arch, compiler, headers_dir)
    tool_dir = write_tool_dir(out / "tools", tool_links(arch, compiler), real_make, variables,
                              os.environ.get("HOME"))
    command = make_command(real_make, build_path(tool_dir, compiler), headers_dir, build_dir, variables)
    log(f"{arch.name}: building {source.conf.module}.ko {source.conf.version} for {kh.release} "
        f"with {compiler.description}")
    env = dict(os.environ, LC_ALL="C", KBUILD_VERBOSE="0")
    done = subprocess.run(command, cwd=build_dir, env=env, capture_output=True, text=True, check=False)
    output = done.stdout + done.stderr
    (out / "build.log").write_text(f"$ {shlex.join(command)}\n{output}")
    built = build_dir / f"{source.conf.module}.ko"
    if done.returncode != 0 or not built.is_file():
        raise BuildError(f"{source.conf.module}.ko {source.conf.version} for {arch.name} {kh.release} "
                         f"({compiler.description}) failed:\n{scap_first_error(output)}",
                         hint=f"{reproduce_command(command, build_dir)}   (full log: {out / 'build.log'})")
    features = probe_features(output, [p.name for p in (build_dir / "configure").iterdir() if p.is_dir()])
    ko = out / built.name
    shutil.copy2(built, ko)
    for scratch in (build_dir, tool_dir):  # objects with debug info; kept only when a build fails
        shutil.rmtree(scratch, ignore_errors=True)
    seconds = round(time.monotonic() - started, 3)
    (out / "build.json").write_text(json.dumps({
        "arch": arch.name, "kernel_release": kh.release, "suite": kh.suite, "compiler": compiler.description,
        "dkms": {"package": source.package.name, "version": source.package.version, "suite": source.package.suite,
                 "sha256": source.package.sha256},
        "packages": {p.name: p.version for p in (kh.headers, kh.common, kh.kbuild)},
        "features": features, "seconds": seconds, "command": command,
    }, indent=2))
    return ScapBuild(ko, arch.name, kh.release, source.conf.version, source.package.version, seconds, False,
                     compiler.description, command, features, seconds)


# -- loading it in a guest -------------------------------------------------------------------------


@dataclass
class ScapLoad:
    """One (arch, kernel): scap.ko built, the guest booted with it, insmod, its devices, rmmod."""

    arch: str
    kernel: str  # the matrix's kernel label
    kernel_release: str | None = None
    build_seconds: float | None = None  # the build's own time (also when this call found it cached)
    build_cached: bool | None = None
    features: dict[str, bool] = field(default_factory=dict)
    boot_seconds: float | None = None
    cpus: int | None = None
    loaded: bool = False
    devices: list[str] = field(default_factory=list)  # /dev/scapN: one per possible CPU
    sys_module: bool = False
    unloaded: bool = False
    error: str | None = None
    console_log: str | None = None

    @property
    def ok(self) -> bool:
        return (self.error is None and self.loaded and self.sys_module and self.unloaded
                and self.cpus is not None and len(self.devices) >= self.cpus > 0)


def scap_devices(dev_listing: str) -> list[str]:
    """/dev/scap<N> names in an `ls /dev` output, in CPU order."""
    names = [name for name in dev_listing.split() if re.fullmatch(r"scap\d+", name)]
    return sorted(names, key=lambda name: int(name[4:]))


def check_scap_loads(guest: Guest, result: ScapLoad, guest_path: str = GUEST_PATH) -> None:
    """insmod scap.ko in a booted guest, record its devices and /sys/module entry, rmmod it."""
    result.cpus = int(guest.request("info").get("cpus") or 0)
    done = guest.exec(["insmod", "/" + guest_path])
    if done["rc"] != 0:
        dmesg = guest.exec(["dmesg"])["stdout"].splitlines()[-10:]
        result.error = f"insmod failed (rc {done['rc']}): {done['stderr'].strip()}; dmesg: {' | '.join(dmesg)}"
        return
    result.loaded = True
    result.devices = scap_devices(guest.exec(["ls", "/dev"])["stdout"])
    result.sys_module = guest.exec(["ls", "/sys/module/scap"])["rc"] == 0
    done = guest.exec(["rmmod", "scap"])
    result.unloaded = done["rc"] == 0 and guest.exec(["ls", "/sys/module/scap"])["rc"] != 0
    if not result.unloaded:
        result.error = f"rmmod scap failed (rc {done['rc']}): {done['stderr'].strip()}"


def scap_load_cell(ws: Workspace, arch_name: str, ref: KernelRef, run_dir: Path) -> ScapLoad:
    """Build scap.ko for (arch, kernel), boot that kernel with it in an overlay, check it loads.

    Never raises KmatrixError: a build, boot or guest problem lands in `error`.
    """
    import dataclasses

    from harness.archs import get_arch
    from harness.cells import CellResult, boot_with_retry, files_overlay
    from harness.runner import prepare

    arch = get_arch(arch_name)
    result = ScapLoad(arch.name, ref.label)
    cell_dir = run_dir / f"{arch.name}-{ref.label}-falco-kmod"
    cell_dir.mkdir(parents=True, exist_ok=True)
    try:
        if ref.suite is None:
            raise BuildError(f"scap.ko builds need Debian kernel headers; a user kernel ({ref.label}) has none here")
        build = build_scap_kmod(ws.repo, arch, ref.suite, ws.cache, log=ws.say)
        result.kernel_release, result.build_cached, result.features = build.kernel_release, build.cached, build.features
        result.build_seconds = build.built_in_s
        spec, _kernel, _image, _reason = prepare(ws, arch, ref)
        overlay = files_overlay([(build.ko, GUEST_PATH, 0o644)], cell_dir / "scap.cpio.gz")
        spec = dataclasses.replace(spec, overlays=(overlay,))
        record = CellResult(f"{arch.name}-{ref.label}-falco-kmod-load", arch.name, ref.label, "falco-kmod", "load")
        guest = boot_with_retry(spec, cell_dir, arch.tcg_boot_timeout_s, record)
        result.boot_seconds, result.console_log = record.timings.get("boot_s"), record.console_log
        try:
            check_scap_loads(guest, result)
            guest.poweroff()
        finally:
            guest.close()
    except KmatrixError as error:
        result.error = f"{type(error).__name__}: {error}" + (f" (hint: {error.hint})" if error.hint else "")
    return result
