"""The capture suite with each reference driver, on the profile's cells (marker vm).

Also proves the suite can fail: each driver built with a deliberate fault (write's arguments
swapped, a build define only tests use) must be reported as a mismatch.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cells import run_capture_cell
from harness.matrix import Cell
from harness.runner import Workspace

pytestmark = pytest.mark.vm


def test_capture_passes(workspace: Workspace, capture_cell: Cell, tmp_path: Path) -> None:
    result = run_capture_cell(workspace, capture_cell, tmp_path)
    if result.status == "skip":
        pytest.skip(result.reason or "not applicable")
    assert result.status == "pass", f"{result.reason}\nconsole: {result.console_log}"
    metrics = result.metrics
    assert metrics["verified_calls"] == metrics["expected_calls"] >= 40
    assert metrics["oracle"]["ok"] and metrics["oracle"]["driver_count"] == metrics["oracle"]["tracefs_count"]
    assert metrics["drops"] == 0


@pytest.mark.arch_x86_64
@pytest.mark.parametrize("driver", ["kmod", "bpf", "modern_bpf"])
def test_fault_injected_driver_fails_the_suite(workspace: Workspace, tmp_path: Path, driver: str) -> None:
    newest = workspace.matrix.newest_kernel("x86_64")
    cell = next(c for c in workspace.matrix.cells("full", archs=["x86_64"], drivers=[driver], suites=["capture"])
                if c.kernel == newest)
    result = run_capture_cell(workspace, cell, tmp_path, fault="swap_args", buffer_sizes=(8 << 20,))
    assert result.status == "fail", result.reason
    first = result.metrics["first_mismatch"]
    assert first["call"] == "write" and first["what"] == "arg0"
