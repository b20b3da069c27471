"""The container suite with each reference driver, on the profile's cells (marker vm).

Each runtime's cgroup layout (Docker, Kubernetes with cgroupfs, containerd and CRI-O, Podman) gets
a process in a new pid namespace, and one process stays on the host; every one must be attributed
from its events alone. A driver built to leave attribution out (fault="no_container") must fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cells import run_containers_cell
from harness.matrix import Cell
from harness.runner import Workspace

pytestmark = pytest.mark.vm


def test_containers_are_attributed(workspace: Workspace, containers_cell: Cell, tmp_path: Path) -> None:
    result = run_containers_cell(workspace, containers_cell, tmp_path)
    if result.status == "skip":
        pytest.skip(result.reason or "not applicable")
    assert result.status == "pass", f"{result.reason}\nconsole: {result.console_log}"
    layouts = {row["name"]: row for row in result.metrics["layouts"]}
    assert layouts["host"]["got"]["in_container"] is False
    for name in ("docker-cgroupfs", "docker-systemd", "kubernetes-cgroupfs", "kubernetes-containerd",
                 "kubernetes-crio", "podman"):
        got, expected = layouts[name]["got"], layouts[name]["expected"]
        assert got["in_container"] and got["container"] == expected["container"], name
        assert got["pidns"] != result.metrics["host_pidns"], name


@pytest.mark.arch_x86_64
@pytest.mark.parametrize("driver", ["kmod", "bpf", "modern_bpf"])
def test_a_driver_without_attribution_fails_the_suite(workspace: Workspace, tmp_path: Path, driver: str) -> None:
    newest = workspace.matrix.newest_kernel("x86_64")
    cell = next(c for c in workspace.matrix.cells("full", archs=["x86_64"], drivers=[driver], suites=["containers"])
                if c.kernel == newest)
    result = run_containers_cell(workspace, cell, tmp_path, fault="no_container")
    assert result.status == "fail", result.reason
    assert result.metrics["first_mismatch"]["what"] in ("in_container", "container", "pidns", "cgroup_id")
