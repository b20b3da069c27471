"""Protocol faults injected by a real agent in a real x86_64 guest (markers faults, vm).

The agent's test-only op `damage_next` (only with kmatrix.test=1 on the kernel command line) makes
the next frame it sends damaged on the console: "flip" changes a payload byte so the checksum no
longer holds (the host must ask for that frame again and get the right answer), "cut" writes half
the frame and exits (the host must end the request with an error, never a result).
tests/faults/test_protocol_faults.py drives the same host code with finer-grained damage.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.archs import get_arch
from harness.errors import GuestError
from harness.runner import Workspace, prepare
from harness.vm import Guest, process_alive

pytestmark = [pytest.mark.faults, pytest.mark.vm, pytest.mark.arch_x86_64]


def _guest(ws: Workspace, log: Path) -> Guest:
    arch = get_arch("x86_64")
    spec, _kernel, _image, _reason = prepare(ws, arch, ws.matrix.newest_kernel("x86_64"))
    guest = Guest(dataclasses.replace(spec, extra_cmdline=("kmatrix.test=1",)), log)
    guest.start()
    guest.wait_ready(arch.tcg_boot_timeout_s)
    return guest


def test_a_frame_with_a_bad_checksum_is_sent_again_and_then_believed(workspace: Workspace, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []
    real = Guest._ask_resend

    def spy(self: Guest, seq: int) -> None:
        asked.append(seq)
        real(self, seq)

    monkeypatch.setattr(Guest, "_ask_resend", spy)
    guest = _guest(workspace, tmp_path / "console.log")
    try:
        reply = guest.request("damage_next", timeout_s=60, how="flip")
        assert reply["ok"] and reply["armed"] == "flip"  # the reply itself was the damaged frame
        assert len(asked) == 1, asked
        assert guest.request("info", timeout_s=60)["ok"] and len(asked) == 1  # later frames are clean
        guest.poweroff()
    finally:
        guest.close()


def test_an_agent_dying_mid_frame_is_an_error_never_a_result(workspace: Workspace,
                                                                          tmp_path: Path) -> None:
    guest = _guest(workspace, tmp_path / "console.log")
    pid = guest.pid
    try:
        with pytest.raises(GuestError, match=r"during request damage_next"):
            guest.request("damage_next", timeout_s=60, how="cut")
    finally:
        guest.close()
    assert pid is not None and not process_alive(pid)
