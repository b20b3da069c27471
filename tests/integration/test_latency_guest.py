"""`kmatrix stat` in a real guest, on the profile's capture cells (marker vm): every process captured,
enter/exit paired, and the known-duration workload (nanosleep 10 ms and 20 ms, a pipe read released
50 ms after its reader blocked) measured within the stated bound by each reference driver."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.guest.latency import SLACK_NS
from harness.matrix import Cell
from harness.runner import Workspace
from harness.stat import StatOptions, run_stat_cell

pytestmark = pytest.mark.vm

REPEATS = 3


def test_stat_verify_passes(workspace: Workspace, capture_cell: Cell, tmp_path: Path) -> None:
    result = run_stat_cell(workspace, capture_cell.arch, capture_cell.kernel, capture_cell.driver, tmp_path,
                           StatOptions(verify=True, duration_s=1.0, repeats=REPEATS))
    if result.status == "skip":
        pytest.skip(result.reason or "not applicable")
    assert result.status == "pass", f"{result.reason}\nconsole: {result.console_log}"
    metrics = result.metrics
    verification = metrics["verification"]
    assert verification["ok"] and verification["slack_ns"] == SLACK_NS
    checks = verification["checks"]
    assert [c["syscall"] for c in checks][-1] == "read" and len(checks) == 2 * REPEATS + 1
    for check in checks:
        assert check["requested_ns"] <= check["measured_ns"] <= check["upper_bound_ns"], check
    assert metrics["drops"] == 0
    names = {row["syscall"] for row in metrics["rows"]}
    assert {"read", "close"} <= names and names & {"nanosleep", "clock_nanosleep"}
    for row in metrics["rows"]:
        assert row["min_ns"] <= row["avg_ns"] <= row["max_ns"] and row["min_ns"] <= row["p99_ns"] <= row["max_ns"]
        assert row["total_ns"] >= row["max_ns"] and row["calls"] >= 1
    assert metrics["unpaired"]["total"] >= 0 and metrics["self_events_excluded"] > 0


@pytest.mark.arch_x86_64
def test_stat_per_process(workspace: Workspace, tmp_path: Path) -> None:
    """By process: the known workload's own rows carry its pid, and its sleeps are all there."""
    ref = workspace.matrix.newest_kernel("x86_64")
    result = run_stat_cell(workspace, "x86_64", ref, "kmod", tmp_path,
                           StatOptions(by="process", verify=True, duration_s=0, repeats=REPEATS))
    assert result.status == "pass", f"{result.reason}\nconsole: {result.console_log}"
    pid = result.metrics["verification"]["pid"]
    mine = {row["syscall"]: row for row in result.metrics["rows"] if row["pid"] == pid}
    # The checked sleeps, plus the writer thread's 50 ms sleep and the warm-up round's two 1 ms sleeps.
    assert mine["nanosleep"]["calls"] == 2 * REPEATS + 3
    assert mine["nanosleep"]["max_ns"] >= 50_000_000
    assert all(row["group"] == str(row["pid"]) for row in result.metrics["rows"])
    assert result.metrics["agent_pid"] not in {row["pid"] for row in result.metrics["rows"]}


@pytest.mark.arch_x86_64
def test_stat_per_container(workspace: Workspace, tmp_path: Path) -> None:
    """By container: a shell that moves itself into a Docker-named cgroup gets its own group; the rest is host."""
    ref = workspace.matrix.newest_kernel("x86_64")
    cid = "ab" * 32
    cgroup = f"/sys/fs/cgroup/docker/{cid}"
    script = f"mkdir -p {cgroup} && echo $$ > {cgroup}/cgroup.procs && ls / > /dev/null && sleep 0.2"
    result = run_stat_cell(workspace, "x86_64", ref, "kmod", tmp_path,
                           StatOptions(by="container", duration_s=0, command=("sh", "-c", script)))
    assert result.status == "pass", f"{result.reason}\nconsole: {result.console_log}"
    groups = {row["group"]: row for row in result.metrics["rows"]}
    assert set(groups) == {"host", f"docker:{cid[:12]}"}
    docker = {row["syscall"] for row in result.metrics["rows"] if row["group"] == f"docker:{cid[:12]}"}
    assert "execve" in docker  # ls and sleep, run from inside the container's cgroup
