"""Boot real Debian kernels under QEMU and talk to the agent (marker vm).

Which (arch, kernel) pairs: the --kmatrix-profile (default ci) and --kmatrix-arch options.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.archs import get_arch
from harness.kernel import parse_version
from harness.runner import Workspace, boot_cell, prepare
from harness.vm import Guest, running_qemu_pids

pytestmark = pytest.mark.vm


def test_boot_reaches_agent(workspace: Workspace, boot_target: tuple[str, str], tmp_path: Path) -> None:
    arch, label = boot_target
    ref = next(r for r in workspace.matrix.kernels(arch) if r.label == label)
    result = boot_cell(workspace, arch, ref, tmp_path)
    assert result.error is None, result.error
    assert result.ready
    assert result.uname_m == get_arch(arch).uname_m
    assert result.uname_r == result.kernel_release
    assert result.uname_r is not None
    assert parse_version(result.uname_r)[:2] >= ref.expect[:2]
    assert result.python and result.python.startswith("3.")


def test_agent_runs_commands_and_qemu_is_gone_after(workspace: Workspace, tmp_path: Path) -> None:
    arch = get_arch("x86_64")
    spec, kernel, _image, _reason = prepare(workspace, arch, workspace.matrix.newest_kernel("x86_64"))
    with Guest(spec, tmp_path / "console.log") as guest:
        guest.wait_ready(arch.tcg_boot_timeout_s)
        pid = guest.pid
        done = guest.exec(["uname", "-r"])
        assert done["rc"] == 0 and done["stdout"].strip() == kernel.release
        failing = guest.exec(["sh", "-c", "echo oops >&2; exit 3"])
        assert failing["rc"] == 3 and failing["stderr"].strip() == "oops"
        info = guest.request("info")
        assert info["ok"] and info["machine"] == "x86_64"
        unknown = guest.request("no-such-op")
        assert not unknown["ok"] and "unknown op" in unknown["error"]
    assert pid not in set(running_qemu_pids())
