"""What this host has and lacks for each architecture, and the apt actions that fix it.

`kmatrix doctor` reports; `kmatrix setup` carries out the plan, printing every apt action. On a
Debian 12 host QEMU comes from bookworm-backports (QEMU 7.2 cannot boot loongarch64's EFI kernel),
with the backports source written from the mirror URI the host's apt sources already use.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.archs import ARCHS, ArchProfile
from harness.errors import ConfigError, KmatrixError

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
BACKPORTS_SOURCE = Path("/etc/apt/sources.list.d/kmatrix-backports.sources")
MIN_QEMU = {"loongarch64": (8, 0)}


def debian_release(path: Path = Path("/etc/os-release")) -> str:
    """'bookworm' or 'trixie' (or whatever VERSION_CODENAME says)."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "unknown"


def qemu_version(binary: str) -> tuple[int, int] | None:
    path = shutil.which(binary)
    if not path:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"version (\d+)\.(\d+)", out)
    return (int(match[1]), int(match[2])) if match else None


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None  # the exact command that fixes it
    packages: tuple[str, ...] = ()  # apt packages that fix it
    backports: bool = False


@dataclass
class ArchReport:
    arch: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


def _qemu_packages(arch: ArchProfile, release: str) -> tuple[str, ...]:
    return arch.qemu_packages.get(release, arch.qemu_packages.get("trixie", ()))


def check_arch(arch: ArchProfile, release: str) -> ArchReport:
    report = ArchReport(arch.name)
    version = qemu_version(arch.qemu_binary)
    packages = _qemu_packages(arch, release)
    use_backports = release == "bookworm"
    install = (
        f"kmatrix setup   (apt-get install{' -t bookworm-backports' if use_backports else ''} {' '.join(packages)})"
    )
    needed = MIN_QEMU.get(arch.name)
    if version is None:
        report.checks.append(Check("qemu", False, f"{arch.qemu_binary} not found", install, packages, use_backports))
    elif needed and version < needed:
        report.checks.append(
            Check(
                "qemu",
                False,
                f"{arch.qemu_binary} {version[0]}.{version[1]} is older than "
                f"{needed[0]}.{needed[1]}, which {arch.name} needs",
                install,
                packages,
                use_backports,
            )
        )
    else:
        report.checks.append(Check("qemu", True, f"{arch.qemu_binary} {version[0]}.{version[1]}"))
    if arch.firmware:
        report.checks.append(
            Check(
                "firmware",
                True,
                f"{arch.firmware.package} from {arch.firmware.suite} "
                "(fetched through the repository client when first needed)",
            )
        )
    if arch.bios == "default" and arch.name == "riscv64":
        fw = Path("/usr/share/qemu/opensbi-riscv64-generic-fw_dynamic.bin")
        report.checks.append(
            Check(
                "firmware",
                fw.exists(),
                str(fw) if fw.exists() else "OpenSBI missing",
                None if fw.exists() else "kmatrix setup   (apt-get install opensbi)",
                ("opensbi",),
            )
        )
    report.checks.append(_accel_check(arch))
    report.checks.append(_compiler_check(arch, release))
    return report


def _compiler_check(arch: ArchProfile, release: str) -> Check:
    from harness.build.toolchain import find_compiler, gcc_package, missing_compiler_hint

    try:
        found = find_compiler(arch)
    except KmatrixError as error:
        found, detail = None, str(error).splitlines()[0]
    else:
        detail = found.description if found else "no compiler for kernel modules"
    if found:
        return Check("compiler", True, detail)
    package = "gcc" if arch.name == os.uname().machine else gcc_package(arch.cross_triple)
    return Check("compiler", False, detail, missing_compiler_hint(arch, release), (package,))


def installed(package: str) -> bool:
    done = subprocess.run(["dpkg-query", "-W", "-f", "${Status}", package], capture_output=True, text=True,
                          check=False)
    return done.returncode == 0 and "install ok installed" in done.stdout


def _accel_check(arch: ArchProfile) -> Check:
    host = os.uname().machine
    if arch.name != host:
        return Check("accel", True, "tcg (no KVM across architectures)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Check("accel", True, "tcg (/dev/kvm not available)")
    return Check("accel", True, "kvm if a probe boot succeeds, else tcg")


def check_host() -> list[Check]:
    checks = []
    gpgv = shutil.which("gpgv")
    checks.append(Check("gpgv", bool(gpgv), gpgv or "gpgv not found", None if gpgv else "kmatrix setup", ("gpgv",)))
    checks.append(
        Check(
            "keyring",
            KEYRING.exists(),
            str(KEYRING) if KEYRING.exists() else f"{KEYRING} missing",
            None if KEYRING.exists() else "kmatrix setup",
            ("debian-archive-keyring",),
        )
    )
    try:
        import ziglang  # noqa: F401

        checks.append(Check("zig", True, "ziglang (PyPI) installed"))
    except ImportError:
        checks.append(
            Check("zig", True, "ziglang not installed (needed from the driver issues on; pip install 'kmatrix[zig]')")
        )
    return checks


@dataclass
class SetupPlan:
    release: str
    packages: list[str]
    backports_packages: list[str]
    add_backports_source: bool

    @property
    def empty(self) -> bool:
        return not (self.packages or self.backports_packages)


def plan_setup(archs: list[str] | None = None) -> SetupPlan:
    release = debian_release()
    if release not in ("bookworm", "trixie", "forky", "sid"):
        raise ConfigError(
            f"unsupported host release {release!r} (from /etc/os-release)",
            hint="kmatrix supports Debian 12 (bookworm) and Debian 13 (trixie) hosts",
        )
    packages: set[str] = set()
    backports: set[str] = set()
    for check in check_host():
        if not check.ok:
            packages.update(check.packages)
    for name in archs or list(ARCHS):
        for check in check_arch(ARCHS[name], release).checks:
            if not check.ok:
                (backports if check.backports else packages).update(check.packages)
    if backports:
        # QEMU packages share qemu-system-common: take every one from backports, never a mix.
        for arch in ARCHS.values():
            backports.update(_qemu_packages(arch, release))
    from harness.build.toolchain import required_packages

    # Kernel module builds: cross compilers, make, and what kbuild's host tools need.
    packages.update(p for p in required_packages(release) if not installed(p))
    return SetupPlan(release, sorted(packages), sorted(backports), bool(backports) and not BACKPORTS_SOURCE.exists())


def backports_source_text(mirror: str) -> str:
    return (
        "# Written by `kmatrix setup`: QEMU >= 8 for loongarch64 on Debian 12.\n"
        f"Types: deb\nURIs: {mirror}\nSuites: bookworm-backports\nComponents: main\n"
        f"Signed-By: {KEYRING}\n"
    )


def run_setup(plan: SetupPlan, mirror: str, say: Callable[[str], None]) -> None:
    if os.geteuid() != 0:
        raise KmatrixError(
            "kmatrix setup installs Debian packages and must run as root",
            hint="run it with sudo, or install what `kmatrix doctor` lists yourself",
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt(*args: str) -> None:
        argv = ["apt-get", *args]
        say("$ " + " ".join(argv))
        done = subprocess.run(argv, env=env, check=False)
        if done.returncode != 0:
            raise KmatrixError(
                f"{' '.join(argv)} failed with exit code {done.returncode}",
                hint="see apt's output above; fix the host's apt sources and run kmatrix setup again",
            )

    if plan.add_backports_source:
        say(f"writing {BACKPORTS_SOURCE} (bookworm-backports from the host's own mirror)")
        BACKPORTS_SOURCE.write_text(backports_source_text(mirror))
    if plan.empty:
        say("nothing to install")
        return
    apt("update")
    if plan.packages:
        apt("install", "-y", "--no-install-recommends", *plan.packages)
    if plan.backports_packages:
        apt("install", "-y", "--no-install-recommends", "-t", "bookworm-backports", *plan.backports_packages)
