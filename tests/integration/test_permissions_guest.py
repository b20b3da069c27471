"""The permission suite with each reference driver, on the profile's cells (marker vm).

kmod: /dev/kmx is root:<device_gid> 0640; a user outside the group gets EACCES, one inside captures
read-only. BPF: an unprivileged user gets EPERM loading either probe; the modern probe captures for
a user holding exactly CAP_BPF and CAP_PERFMON (ambient). A module whose device anyone may open
(fault="open_device") must fail the suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cells import run_permissions_cell
from harness.matrix import Cell
from harness.runner import Workspace

pytestmark = pytest.mark.vm


def test_permissions(workspace: Workspace, permissions_cell: Cell, tmp_path: Path) -> None:
    result = run_permissions_cell(workspace, permissions_cell, tmp_path)
    if result.status == "skip":
        pytest.skip(result.reason or "not applicable")
    assert result.status == "pass", f"{result.reason}\nconsole: {result.console_log}"
    attempts = result.metrics["attempts"]
    assert not attempts["user"]["ok"] and attempts["user"]["uid"] != 0
    if permissions_cell.driver == "kmod":
        assert result.metrics["device"] == {"uid": 0, "gid": 4242, "mode": "0o640"}
        assert attempts["user in group"]["ok"] and attempts["user in group"]["read_only"]
    if permissions_cell.driver == "modern_bpf":
        assert attempts["user with CAP_BPF, CAP_PERFMON"]["ok"]
        assert attempts["user with CAP_BPF, CAP_PERFMON"]["cap_eff"] == f"{(1 << 39) | (1 << 38):016x}"


@pytest.mark.arch_x86_64
def test_a_device_anyone_may_open_fails_the_suite(workspace: Workspace, tmp_path: Path) -> None:
    newest = workspace.matrix.newest_kernel("x86_64")
    cell = next(c for c in workspace.matrix.cells("full", archs=["x86_64"], drivers=["kmod"], suites=["permissions"])
                if c.kernel == newest)
    result = run_permissions_cell(workspace, cell, tmp_path, fault="open_device")
    assert result.status == "fail", result.reason
    assert result.metrics["first_mismatch"]["what"] == "owner, group and mode"
