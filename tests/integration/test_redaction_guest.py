"""The redaction suite with each reference driver, on the profile's cells (marker vm).

With redaction on, a secret at the start, middle and end of a written buffer, one cut by the
snapshot length, a key cut by it, a buffer without secrets and a sendto are captured exactly as
harness.guest.redaction.redact says; the flags say which were redacted and which truncated.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cells import run_redaction_cell
from harness.matrix import Cell
from harness.runner import Workspace

pytestmark = pytest.mark.vm


def test_secrets_are_redacted_in_the_kernel(workspace: Workspace, redaction_cell: Cell, tmp_path: Path) -> None:
    result = run_redaction_cell(workspace, redaction_cell, tmp_path)
    if result.status == "skip":
        pytest.skip(result.reason or "not applicable")
    assert result.status == "pass", f"{result.reason}\nconsole: {result.console_log}"
    cases = {case["case"]: case for case in result.metrics["cases"]}
    assert cases["start"]["captured"] == "password=******* rest"
    assert cases["none"]["captured"] == "nothing secret here" and cases["none"]["flags"] == 0
    assert cases["value split by the snapshot"]["captured"].endswith("password=*****")
    assert cases["sendto"]["captured"] == "token=*****;ok"
