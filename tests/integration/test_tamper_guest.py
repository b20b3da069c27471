"""The tamper suite with each reference driver, on the profile's cells (marker vm).

Another process takes the driver away while the agent's watch mode runs; every action the kernel
lets through must be alerted on within 5 s, and every action it refuses (with its errno) must raise
nothing. What the kernels here allow is asserted too, so a change in it shows.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cells import run_tamper_cell
from harness.matrix import Cell
from harness.runner import Workspace

pytestmark = pytest.mark.vm


def test_tampering_is_alerted(workspace: Workspace, tamper_cell: Cell, tmp_path: Path) -> None:
    result = run_tamper_cell(workspace, tamper_cell, tmp_path)
    if result.status == "skip":
        pytest.skip(result.reason or "not applicable")
    assert result.status == "pass", f"{result.reason}\nconsole: {result.console_log}"
    actions = {a["action"]: a for a in result.metrics["actions"]}
    for action in actions.values():
        assert not action["false_alarms"], action
        if action["tamper"]["done"]:
            assert action["latency_s"] is not None and action["latency_s"] <= 5.0, action
    if tamper_cell.driver == "kmod":
        assert not actions["rmmod"]["tamper"]["done"]  # the open device holds the module
        for name in ("device removed", "capture stopped"):
            assert actions[name]["tamper"]["done"] and actions[name]["alerts"], actions[name]
    else:
        assert actions["capture retargeted"]["tamper"]["done"]
        assert [a["cause"] for a in actions["capture retargeted"]["alerts"]] == ["heartbeat"]
