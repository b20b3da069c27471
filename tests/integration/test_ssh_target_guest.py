"""The capture suite through an SSH target (marker vm).

The target is a real SSH server: a kmatrix guest booted with QEMU user networking, Debian's
dropbear for its architecture, a forwarded loopback port and an ephemeral client key; its host key
is pinned from the console. The cell's kernel is the guest's, so the driver built for the cell
loads there. Nothing may be left behind: not the uploaded directory, not the module, not QEMU.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.remote.ssh import HostKeyError, SshTarget
from harness.remote.sshd_guest import boot_sshd_guest
from harness.report.schema import load_results
from harness.runner import Workspace
from harness.vm import process_alive, running_qemu_pids

pytestmark = pytest.mark.vm




@pytest.mark.parametrize(
    "arch",
    [pytest.param("x86_64", marks=pytest.mark.arch_x86_64), pytest.param("aarch64", marks=pytest.mark.arch_aarch64)],
)
def test_capture_suite_passes_through_an_ssh_target(workspace: Workspace, tmp_path: Path, arch: str) -> None:
    newest = workspace.matrix.newest_kernel(arch)
    cell = next(c for c in workspace.matrix.cells("full", archs=[arch], drivers=["kmod"], suites=["capture"])
                if c.kernel == newest)
    sshd = boot_sshd_guest(workspace, arch, newest, tmp_path / "sshd")
    qemu_pid = sshd.guest.pid
    assert qemu_pid is not None
    try:
        # Without the pinned fingerprint the real server's key is refused, its fingerprint shown.
        empty = tmp_path / "known_hosts"
        empty.write_text("")
        with pytest.raises(HostKeyError, match="unknown host key") as refused:
            SshTarget.connect(f"ssh://root@127.0.0.1:{sshd.port}?identity={sshd.identity}&known_hosts={empty}")
        assert sshd.host_key_fingerprint in str(refused.value)

        # Through the command line, as a user would: the fingerprint given with --host-key.
        run = subprocess.run(
            [sys.executable, "-m", "harness", "run", "--quiet", "--driver", "kmod", "--suite", "capture",
             "--arch", arch, "--kernel", newest.label, "-o", str(tmp_path / "run"),
             "--target", f"ssh://root@127.0.0.1:{sshd.port}?identity={sshd.identity}",
             "--host-key", sshd.host_key_fingerprint],
            capture_output=True, text=True, timeout=900, check=False,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        result = next(c for c in load_results(tmp_path / "run" / "results.json").cells if c.cell == cell.id)
        assert result.target.startswith(f"ssh://root@127.0.0.1:{sshd.port}")
        # The agent runs with the runner's opt-in (what lets a real machine, with no kmatrix.mode=, load drivers).
        with SshTarget.connect(sshd.url) as target:
            target.upload([])
            agent = target.start_agent(tmp_path / "env.log")
            agent.wait_ready(60)
            environment = agent.request("exec", timeout_s=30, argv=["env"])["stdout"]
            agent.poweroff()
        assert f"KMATRIX_REMOTE_TARGET=ssh://root@127.0.0.1:{sshd.port}\n" in environment
        leftovers = sshd.guest.exec(["sh", "-c", "ls -d /tmp/kmatrix.* 2>/dev/null; grep '^kmx ' /proc/modules; true"])
    finally:
        sshd.close()

    assert result.status == "pass", f"{result.reason}\nagent log: {result.logs}"
    metrics = result.metrics
    assert metrics["target"] == f"ssh://root@127.0.0.1:{sshd.port}"
    assert metrics["target_host_key"] == f"{sshd.host_key_fingerprint} (fingerprint)"
    assert metrics["verified_calls"] == metrics["expected_calls"] >= 40
    assert metrics["oracle"]["ok"] and metrics["oracle"]["driver_count"] == metrics["oracle"]["tracefs_count"]
    assert metrics["drops"] == 0
    assert len(metrics["per_buffer_size"]) == 3 and all(run["passed"] for run in metrics["per_buffer_size"])
    assert leftovers["stdout"] == "", f"left on the target: {leftovers['stdout']}"
    assert not process_alive(qemu_pid)
    assert qemu_pid not in set(running_qemu_pids())
