"""The ia32 suite (32-bit programs on x86_64) with each reference driver (marker vm).

It must be able to fail: each driver built to ignore IA32 tasks (KMX_FAULT_NO_IA32, a build
define only tests use) reports i386 numbers as if they were x86_64 ones, and the suite says so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cells import run_ia32_cell
from harness.matrix import Cell
from harness.runner import Workspace

pytestmark = [pytest.mark.vm, pytest.mark.arch_x86_64]


def test_ia32_passes(workspace: Workspace, ia32_cell: Cell, tmp_path: Path) -> None:
    result = run_ia32_cell(workspace, ia32_cell, tmp_path)
    if result.status == "skip":
        pytest.skip(result.reason or "not applicable")
    assert result.status == "pass", f"{result.reason}\nconsole: {result.console_log}"
    metrics = result.metrics
    assert metrics["verified_calls"] == metrics["expected_calls"] >= 40
    assert metrics["distinct_syscalls"] >= 20
    assert metrics["unmapped_ia32_numbers"], "the programs make unmapped i386 syscalls: they must be reported"
    assert metrics["oracle"]["ok"] and metrics["oracle"]["runs"] == [r for r in metrics["oracle"]["runs"] if r > 20]


@pytest.mark.parametrize("driver", ["kmod", "bpf", "modern_bpf"])
def test_driver_without_translation_fails_the_suite(workspace: Workspace, tmp_path: Path, driver: str) -> None:
    newest = workspace.matrix.newest_kernel("x86_64")
    cell = next(c for c in workspace.matrix.cells("full", archs=["x86_64"], drivers=[driver], suites=["ia32"])
                if c.kernel == newest)
    result = run_ia32_cell(workspace, cell, tmp_path, fault="no_ia32")
    assert result.status == "fail", result.reason
    assert result.metrics["first_mismatch"] is not None
