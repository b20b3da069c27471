"""The harness never loads a driver on the host: the guest-side loader refuses outside a kmatrix guest."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.guest import capture


def test_capture_refuses_on_the_host() -> None:
    # This machine's kernel command line has no kmatrix.mode=: nothing may be loaded here.
    assert "kmatrix.mode=" not in Path("/proc/cmdline").read_text()
    with pytest.raises(capture.NotInGuest, match="not a kmatrix guest"):
        capture.op_capture({"driver": "kmod", "artifact": "/nonexistent/kmx.ko"})
    with pytest.raises(capture.NotInGuest):
        capture.load_module("/nonexistent/kmx.ko", {})


def test_guard_accepts_a_guest_command_line(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0 panic=-1 rdinit=/init kmatrix.mode=agent\n")
    capture.refuse_outside_guest(str(cmdline))  # does not raise
    cmdline.write_text("console=ttyS0 quiet\n")
    with pytest.raises(capture.NotInGuest):
        capture.refuse_outside_guest(str(cmdline))


def test_guard_accepts_only_the_ssh_runners_opt_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0 quiet\n")
    # What harness.remote.ssh puts in the command it starts on a --target machine.
    capture.refuse_outside_guest(str(cmdline), {capture.REMOTE_TARGET_ENV: "ssh://root@arm-box:2222"})
    for value in ("", "1", "yes"):  # anything but the runner's target URL is no opt-in
        with pytest.raises(capture.NotInGuest, match="--target"):
            capture.refuse_outside_guest(str(cmdline), {capture.REMOTE_TARGET_ENV: value})
    monkeypatch.setenv(capture.REMOTE_TARGET_ENV, "ssh://root@127.0.0.1:2222")
    capture.refuse_outside_guest(str(cmdline))  # read from the process environment by default
    monkeypatch.delenv(capture.REMOTE_TARGET_ENV)
    with pytest.raises(capture.NotInGuest):
        capture.refuse_outside_guest(str(cmdline))
