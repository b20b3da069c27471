"""The adapter of each `build` kind, and the registry that picks one for a declared driver."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from harness.archs import get_arch
from harness.errors import BuildError, ConfigError
from harness.paths import project_root

if TYPE_CHECKING:
    from harness.matrix import Cell, DriverSpec, Matrix
    from harness.runner import Workspace

GUEST_DRIVER_DIR = "opt/kmatrix/drivers"
_MODINFO_VERSION = re.compile(rb"(?:^|\x00)version=([^\x00]{1,200})\x00")


@dataclass(frozen=True)
class DriverArtifact:
    """A built driver and where it goes in the guest."""

    path: Path
    guest_path: str  # relative to the guest's root
    cached: bool
    compiler: str
    details: dict[str, Any] = field(default_factory=dict)


class Adapter(Protocol):
    """Builds one declared driver for a cell and says where its object goes in the guest."""

    name: str  # the driver's name in matrix.yaml
    spec: DriverSpec

    @property
    def guest_path(self) -> str:
        """Where the built object goes, relative to the guest's root."""
        ...

    @property
    def per_kernel(self) -> bool:
        """Built per kernel (against its headers), or once per architecture."""
        ...

    def build(self, ws: Workspace, cell: Cell, fault: str | None) -> DriverArtifact:
        """The driver built (or found cached) for the cell's kernel; BuildError says why not."""
        ...


def source_folder(spec: DriverSpec) -> Path | None:
    """The folder a project or path source names (None for a Debian package)."""
    if spec.source.project is not None:
        return project_root() / spec.source.project
    if spec.source.path is not None:
        return Path(spec.source.path)
    return None


def modinfo_version(ko: Path) -> str | None:
    """A module's `version=` modinfo field (MODULE_VERSION), read from the .ko's bytes."""
    try:
        match = _MODINFO_VERSION.search(ko.read_bytes())
    except OSError:
        return None
    return match.group(1).decode(errors="replace") if match else None


def git_version(folder: Path) -> str | None:
    """The abbreviated revision that last changed `folder`, plus `-dirty` when it has changes."""
    try:
        last = subprocess.run(["git", "-C", str(folder), "log", "-1", "--format=%h", "--", "."],
                              capture_output=True, text=True, timeout=10, check=False)
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    revision = last.stdout.strip()
    if last.returncode != 0 or not revision:
        return None
    return revision + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


class _Base:
    """What every adapter shares: the declaration, the guest path, the kernel-headers check."""

    build_kind: ClassVar[str]
    per_kernel: bool = True

    def __init__(self, name: str, spec: DriverSpec) -> None:
        if spec.build != self.build_kind:
            raise ConfigError(f"driver {name} is declared `build: {spec.build}`, not {self.build_kind}")
        self.name = name
        self.spec = spec

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, module={self.spec.module!r}, source={self.folder})"

    @property
    def guest_path(self) -> str:
        return f"{GUEST_DRIVER_DIR}/{self.spec.module}"

    @property
    def folder(self) -> Path | None:
        return source_folder(self.spec)

    def _source_folder(self) -> Path:
        folder = self.folder
        if folder is None or not folder.is_dir():
            raise BuildError(f"driver {self.name}: source {folder} is not a folder",
                             hint=f"check drivers.{self.name}.source in matrix.yaml")
        return folder

    def _kernel_suite(self, cell: Cell) -> str:
        if cell.kernel.suite is None:
            raise BuildError(f"{self.spec.kind} builds need Debian kernel headers; a user kernel "
                             f"({cell.kernel.source}) has none here")
        return cell.kernel.suite

    def _no_fault(self, fault: str | None) -> None:
        if fault is not None:
            raise BuildError(f"driver {self.name}: build faults are for the project's own drivers, "
                             f"not a {self.build_kind} build", hint="run without --fault")

    def build(self, ws: Workspace, cell: Cell, fault: str | None) -> DriverArtifact:
        raise NotImplementedError

    def _version(self, artifact: Path, known: dict[str, str | None] | None = None) -> dict[str, Any]:
        """{"driver_version": ..., "version_from": ...} as the declaration's version_from says."""
        how = self.spec.version_from
        if how is None:
            return {}
        version: str | None
        if how == "git":
            folder = self.folder
            version = git_version(folder) if folder is not None else None
        elif how == "modinfo":
            version = modinfo_version(artifact)
        else:
            version = (known or {}).get(how)
        return {"driver_version": version, "version_from": how}


class KbuildAdapter(_Base):
    """`make -C <headers> M=<folder>` on the declared folder; the declared module is what it builds."""

    build_kind = "kbuild"

    def build(self, ws: Workspace, cell: Cell, fault: str | None) -> DriverArtifact:
        from harness.build.kmod import build_kmod

        suite = self._kernel_suite(cell)
        kmod = build_kmod(ws.repo, get_arch(cell.arch), suite, ws.cache, fault=fault, log=ws.say,
                          source=self._source_folder(), module=self.spec.module_name)
        return DriverArtifact(kmod.ko, self.guest_path, kmod.cached, kmod.compiler, self._version(kmod.ko))


class DkmsAdapter(_Base):
    """A Debian dkms package's module, its configure probes run as dkms would (cross tools on PATH)."""

    build_kind = "dkms"

    def build(self, ws: Workspace, cell: Cell, fault: str | None) -> DriverArtifact:
        from harness.thirdparty.falco import build_scap_kmod

        self._no_fault(fault)
        suite = self._kernel_suite(cell)
        package = self.spec.source.debian
        if package is None:  # the matrix allows dkms builds of debian sources only
            raise BuildError(f"driver {self.name}: a dkms build needs a debian source")
        built = build_scap_kmod(ws.repo, get_arch(cell.arch), suite, ws.cache, log=ws.say,
                                package=package.package, package_suite=package.suite,
                                module=self.spec.module_name)
        details: dict[str, Any] = {"dkms_package": f"{package.package} {built.package_version}",
                                   "features": built.features}
        details.update(self._version(built.ko, {"package": built.package_version, "dkms-conf": built.version}))
        return DriverArtifact(built.ko, self.guest_path, built.cached, built.compiler, details)


class _ProjectBpf(_Base):
    """The project's own BPF pipelines compile one folder each; a declaration naming another says so."""

    expected: ClassVar[str]

    def _check_folder(self) -> None:
        folder = self._source_folder().resolve()
        wanted = (project_root() / self.expected).resolve()
        if folder != wanted:
            raise BuildError(f"driver {self.name}: the {self.build_kind} build compiles {self.expected} "
                             f"(the kmx probe's pipeline), not {folder}",
                             hint=f"declare source: {{project: {self.expected}}}, or build: prebuilt with "
                                  "your objects")


class LegacyBpfAdapter(_ProjectBpf):
    """The legacy eBPF probe, per kernel (its headers), through clang's two steps."""

    build_kind = "bpf-legacy"
    expected = "drivers/bpf"

    def build(self, ws: Workspace, cell: Cell, fault: str | None) -> DriverArtifact:
        from harness.build.bpf_legacy import build_legacy_bpf

        self._check_folder()
        suite = self._kernel_suite(cell)
        legacy = build_legacy_bpf(ws.repo, get_arch(cell.arch), suite, ws.cache, fault=fault, log=ws.say)
        return DriverArtifact(legacy.obj, self.guest_path, legacy.cached, legacy.compiler,
                              {"attach": legacy.attach, "programs": legacy.programs, **self._version(legacy.obj)})


class CoreBpfAdapter(_ProjectBpf):
    """The CO-RE probe, once per architecture (against its BTF's vmlinux.h)."""

    build_kind = "bpf-core"
    expected = "drivers/modern_bpf"
    per_kernel = False

    def build(self, ws: Workspace, cell: Cell, fault: str | None) -> DriverArtifact:
        from harness.build.bpf_modern import build_modern_bpf

        self._check_folder()
        modern = build_modern_bpf(ws.repo, get_arch(cell.arch), ws.cache, fault=fault, log=ws.say)
        return DriverArtifact(modern.obj, self.guest_path, modern.cached, modern.compiler,
                              {"vmlinux_source": modern.vmlinux_source, **self._version(modern.obj)})


class PrebuiltAdapter(_Base):
    """Objects given: FOLDER/<arch>/<release>/MODULE, FOLDER/<arch>/MODULE or FOLDER/MODULE."""

    build_kind = "prebuilt"
    per_kernel = False

    def candidates(self, arch: str, release: str | None) -> list[Path]:
        folder = self._source_folder()
        found = [folder / arch / release / self.spec.module] if release else []
        return [*found, folder / arch / self.spec.module, folder / self.spec.module]

    def build(self, ws: Workspace, cell: Cell, fault: str | None) -> DriverArtifact:
        self._no_fault(fault)
        release = ws.kernel(get_arch(cell.arch), cell.kernel).release if self.spec.kind == "kmod" else None
        tried = self.candidates(cell.arch, release)
        for path in tried:
            if path.is_file():
                return DriverArtifact(path, self.guest_path, True, "prebuilt", self._version(path))
        raise BuildError(f"driver {self.name}: no prebuilt {self.spec.module} for {cell.arch} "
                         f"{release or cell.kernel.label}", hint=f"looked for: {', '.join(map(str, tried))}")


# The registry: matrix.yaml's `build` -> its adapter.
ADAPTERS: dict[str, type[_Base]] = {
    cls.build_kind: cls for cls in (KbuildAdapter, DkmsAdapter, LegacyBpfAdapter, CoreBpfAdapter, PrebuiltAdapter)
}


def adapter_for(matrix: Matrix, driver: str) -> Adapter:
    """The adapter for a declared driver, chosen by its `build`."""
    try:
        spec = matrix.drivers[driver]
    except KeyError:
        raise ConfigError(f"driver {driver!r} is not in the matrix",
                          hint=f"drivers: {', '.join(matrix.drivers)}") from None
    try:
        cls = ADAPTERS[spec.build]
    except KeyError:  # the matrix validates builds against BUILD_KINDS: a kind without an adapter
        raise ConfigError(f"driver {driver}: no adapter for build {spec.build!r}",
                          hint=f"adapters: {', '.join(ADAPTERS)}") from None
    adapter: Adapter = cls(driver, spec)
    return adapter
