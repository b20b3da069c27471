"""The minimum profile on real Debian kernels: s390x's oldest kernel (bookworm 6.1) has no BTF, so
the CO-RE probe's minimum cell falls forward to 6.12 and says why (marker slow: fetches kernels)."""

from __future__ import annotations

import pytest

from harness.cells import minimum_text, settle_kernel
from harness.runner import Workspace

pytestmark = [pytest.mark.slow, pytest.mark.arch_s390x]


def test_minimum_falls_forward_on_real_kernels(workspace: Workspace) -> None:
    cell = next(iter(workspace.matrix.cells("minimum", archs=["s390x"], drivers=["modern_bpf"], suites=["capture"])))
    settled, kernel, verdict, notes = settle_kernel(workspace, cell, "minimum")
    assert verdict.runnable, verdict.reason
    assert kernel.facts.enabled("CONFIG_DEBUG_INFO_BTF")
    assert settled.kernel.suite == "bookworm-backports"
    assert len(notes) == 1 and "lacks CONFIG_DEBUG_INFO_BTF" in notes[0] and notes[0].startswith("bookworm (")
    assert minimum_text(settled, kernel.release) == "declared 5.8, tested 6.12"
    kmod = next(iter(workspace.matrix.cells("minimum", archs=["s390x"], drivers=["kmod"], suites=["capture"])))
    settled, kernel, verdict, notes = settle_kernel(workspace, kmod, "minimum")
    assert settled.kernel.suite == "bookworm" and verdict.runnable and notes == []
