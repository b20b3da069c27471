"""No QEMU outlives the harness: SIGTERM and SIGINT mid-boot leave none (checked in /proc)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.vm import process_alive, running_qemu_pids

pytestmark = [pytest.mark.vm, pytest.mark.arch_x86_64]




def _children_qemu(parent: int) -> list[int]:
    found = []
    for pid in running_qemu_pids():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        if ppid == parent:
            found.append(pid)
    return found


def _boot_until_qemu_runs(tmp_path: Path) -> tuple[subprocess.Popen[bytes], list[int]]:
    """Start `kmatrix boot` in a child process and wait until its QEMU exists."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "boot", "--arch", "x86_64", "--accel", "tcg", "-o", str(tmp_path), "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # A shell's background job inherits SIGINT ignored, and Python then keeps ignoring it: give
        # the harness the default disposition a terminal user's would have.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 240
    qemu: list[int] = []
    while time.monotonic() < deadline and not qemu and proc.poll() is None:
        time.sleep(0.2)
        qemu = _children_qemu(proc.pid)
    assert qemu, "QEMU never started"
    return proc, qemu


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_boot_leaves_no_qemu(signum: int, tmp_path: Path) -> None:
    proc, qemu = _boot_until_qemu_runs(tmp_path)
    time.sleep(1.0)  # mid-boot
    proc.send_signal(signum)
    proc.wait(timeout=30)
    time.sleep(0.5)
    assert [pid for pid in qemu if process_alive(pid)] == []
    assert proc.returncode in (130, 128 + signal.SIGTERM)


def test_sigkill_of_the_harness_kills_qemu_too(tmp_path: Path) -> None:
    proc, qemu = _boot_until_qemu_runs(tmp_path)
    proc.kill()
    proc.wait(timeout=30)
    end = time.monotonic() + 10
    while time.monotonic() < end and any(process_alive(pid) for pid in qemu):
        time.sleep(0.2)
    assert not any(process_alive(pid) for pid in qemu), "QEMU survived SIGKILL of its parent"


def test_boot_failure_is_retried_once_and_recorded(workspace: object, tmp_path: Path) -> None:
    """A boot that never reaches the agent (here: a 0.5 s deadline) is retried once, then reported."""
    from harness.archs import get_arch
    from harness.cells import BOOT_RETRIES, CellResult, boot_with_retry
    from harness.errors import BootError
    from harness.runner import Workspace, prepare

    assert isinstance(workspace, Workspace)
    spec, _kernel, _image, _reason = prepare(workspace, get_arch("x86_64"), workspace.matrix.newest_kernel("x86_64"),
                                             accel="tcg")
    result = CellResult("c", "x86_64", "k", "kmod", "capture")
    with pytest.raises(BootError, match="timed out"):
        boot_with_retry(spec, tmp_path, 0.5, result)
    assert len(result.metrics["boot_retries"]) == BOOT_RETRIES == 1
    assert (tmp_path / "console.log").exists() and (tmp_path / "console.retry1.log").exists()
    time.sleep(0.5)
    assert _children_qemu(os.getpid()) == []
