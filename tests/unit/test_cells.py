"""Choosing the kernel a cell runs on: the minimum profile falls forward past kernels that lack
what the driver needs, and says so."""

from __future__ import annotations

from pathlib import Path

from harness.archs import ArchProfile
from harness.cells import minimum_text, settle_kernel
from harness.images import KernelImage
from harness.matrix import KernelRef, load_matrix
from harness.paths import project_root
from harness.runner import Workspace

RELEASES = {"bookworm": "6.1.0-50-s390x", "bookworm-backports": "6.12.95+deb12-s390x"}


class FakeWorkspace(Workspace):
    """The real matrix; kernels synthesized instead of fetched (6.1 without BTF, 6.12 with)."""

    def kernel(self, arch: ArchProfile, ref: KernelRef) -> KernelImage:
        release = RELEASES[str(ref.suite)]
        btf = "y" if ref.suite == "bookworm-backports" else "n"
        config = {"CONFIG_MODULES": "y", "CONFIG_TRACEPOINTS": "y", "CONFIG_BPF_SYSCALL": "y",
                  "CONFIG_DEBUG_INFO_BTF": btf}
        return KernelImage(arch.name, str(ref.suite), release, "linux-image", release.split("-")[0] + "-1",
                           Path("/dev/null"), None, config)


def workspace(tmp_path: Path) -> FakeWorkspace:
    return FakeWorkspace(load_matrix(project_root() / "matrix.yaml"), repo=None, cache=tmp_path)  # type: ignore[arg-type]


def test_minimum_falls_forward_past_a_kernel_without_btf(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    cell = next(c for c in ws.matrix.cells("minimum", archs=["s390x"], drivers=["modern_bpf"], suites=["capture"]))
    assert cell.kernel.suite == "bookworm"
    settled, kernel, verdict, notes = settle_kernel(ws, cell, "minimum")
    assert settled.kernel.suite == "bookworm-backports" and verdict.runnable
    assert notes == ["bookworm (6.1.0-50-s390x) passed over: kernel 6.1.0 lacks CONFIG_DEBUG_INFO_BTF "
                     "(required by modern_bpf)"]
    assert minimum_text(settled, kernel.release) == "declared 5.8, tested 6.12"


def test_other_profiles_and_static_skips_do_not_fall_forward(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    cell = next(c for c in ws.matrix.cells("minimum", archs=["s390x"], drivers=["kmod"], suites=["ia32"]))
    settled, _kernel, verdict, notes = settle_kernel(ws, cell, "minimum")
    assert settled.kernel == cell.kernel and not verdict.runnable and notes == []
    assert verdict.reason == "suite ia32 runs only on x86_64"
    full = next(c for c in ws.matrix.cells("full", archs=["s390x"], drivers=["modern_bpf"], suites=["capture"])
                if c.kernel.suite == "bookworm")
    settled, _kernel, verdict, notes = settle_kernel(ws, full, "full")
    assert settled.kernel.suite == "bookworm" and not verdict.runnable and notes == []
