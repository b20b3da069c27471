"""Boot cells: resolve kernel and guest image, choose the accelerator, boot, talk to the agent."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.accel import choose_accel
from harness.archs import ArchProfile, get_arch
from harness.debian import DebianRepo, host_mirror
from harness.doctor import qemu_version
from harness.errors import BootError, KmatrixError
from harness.images import KernelImage, fetch_kernel, user_kernel
from harness.matrix import KernelRef, Matrix, load_matrix
from harness.paths import cache_dir, default_matrix_path
from harness.rootfs import GuestImage, ImageBuilder
from harness.vm import BootSpec, Guest, Ready

Say = Callable[[str], None]


@dataclass
class Workspace:
    """Everything a run shares: the matrix, the repository client, the cache."""

    matrix: Matrix
    repo: DebianRepo
    cache: Path
    say: Say = field(default=lambda _m: None)
    matrix_path: Path = field(default_factory=default_matrix_path)  # its hash identifies a run's matrix revision

    @classmethod
    def open(
        cls,
        matrix_path: Path | None = None,
        say: Say | None = None,
        progress: Callable[[str, int, int | None], None] | None = None,
    ) -> Workspace:
        path = matrix_path or default_matrix_path()
        matrix = load_matrix(path)
        cache = cache_dir()
        mirror = os.environ.get("KMATRIX_MIRROR") or matrix.mirror or host_mirror()
        return cls(matrix, DebianRepo(mirror, cache, progress=progress), cache, say or (lambda _m: None), path)

    def kernel(self, arch: ArchProfile, ref: KernelRef) -> KernelImage:
        if ref.path is not None:
            return user_kernel(arch, Path(ref.path))
        assert ref.suite is not None
        return fetch_kernel(self.repo, arch, ref.suite, self.cache)

    def image(self, arch: ArchProfile) -> GuestImage:
        return ImageBuilder(self.repo, self.cache, log=self.say).build(arch, self.matrix.userland_suite(arch.name))

    def firmware(self, arch: ArchProfile) -> Path | None:
        if arch.firmware is None:
            return None
        fw = arch.firmware
        pkg, notes = self.repo.find_fetchable([fw.suite, *fw.fallback_suites], fw.debian_arch, fw.package)
        for note in notes:
            self.say(f"{arch.name}: {note.splitlines()[0]}")
        root = self.repo.unpack(pkg)
        path = root / fw.path
        if not path.exists():
            raise BootError(f"{fw.package} from {fw.suite} has no {fw.path}")
        return path


@dataclass
class BootResult:
    arch: str
    kernel_source: str
    kernel_release: str | None = None
    kernel_package: str | None = None
    accel: str | None = None
    accel_reason: str | None = None
    boot_seconds: float | None = None
    ready: bool = False
    uname_m: str | None = None
    uname_r: str | None = None
    python: str | None = None
    image_bytes: int | None = None
    error: str | None = None
    console_log: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def new_run_dir(base: Path | None = None, prefix: str = "run") -> Path:
    root = base or Path.cwd() / "runs"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / f"{prefix}-{stamp}-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepare(
    ws: Workspace, arch: ArchProfile, ref: KernelRef, *, mode: str = "agent", accel: str | None = None
) -> tuple[BootSpec, KernelImage, GuestImage, str]:
    kernel = ws.kernel(arch, ref)
    image = ws.image(arch)
    spec = BootSpec(arch, kernel.kernel, image.path, firmware=ws.firmware(arch), mode=mode)
    if accel:
        reason = "chosen on the command line"
    else:
        version = qemu_version(arch.qemu_binary)
        choice = choose_accel(spec, ws.cache, ".".join(map(str, version or ())))
        accel, reason = choice.accel, choice.reason
    spec = BootSpec(arch, kernel.kernel, image.path, accel=accel, firmware=spec.firmware, mode=mode)
    return spec, kernel, image, reason


def boot_cell(
    ws: Workspace,
    arch_name: str,
    ref: KernelRef,
    run_dir: Path,
    *,
    accel: str | None = None,
    timeout_s: float | None = None,
) -> BootResult:
    """Boot one (arch, kernel), ask the agent who it is, power off. Never raises KmatrixError."""
    arch = get_arch(arch_name)
    result = BootResult(arch=arch.name, kernel_source=ref.label)
    log = run_dir / f"{arch.name}-{ref.label}" / "console.log"
    result.console_log = str(log)
    try:
        spec, kernel, image, reason = prepare(ws, arch, ref, accel=accel)
        result.kernel_release, result.kernel_package = kernel.release, f"{kernel.package} {kernel.package_version}"
        result.accel, result.accel_reason, result.image_bytes = spec.accel, reason, image.size
        with Guest(spec, log) as guest:
            ready: Ready = guest.wait_ready(timeout_s or arch.tcg_boot_timeout_s)
            result.boot_seconds = ready.seconds
            result.uname_m, result.uname_r = ready.info.get("machine"), ready.info.get("release")
            result.python = ready.info.get("python")
            result.ready = True
            started = time.monotonic()
            guest.poweroff()
            ws.say(f"{arch.name}: powered off in {time.monotonic() - started:.1f} s")
    except KmatrixError as error:
        result.error = str(error).splitlines()[0]
    return result
