"""A kernel module declared only in matrix.yaml builds, loads and passes the capture suite (issue 10).

The module is a copy of drivers/kmod renamed to kmx_copy (its Kbuild builds kmx_copy.ko), declared
as `kmx-copy` in a copy of the repository's matrix.yaml: no Python knows it. On x86_64's newest
kernel the harness builds it through the kbuild adapter, boots the kernel with it and runs the
capture suite (insmod, capture, verify, rmmod kmx_copy), exactly as for the reference kmod.

Builds against Debian's headers and boots one guest (about a minute): part of the integration tests.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from harness.cells import run_capture_cell
from harness.matrix import load_matrix
from harness.paths import project_root
from harness.runner import Workspace

pytestmark = [pytest.mark.vm, pytest.mark.arch_x86_64]


def test_a_declared_copy_of_the_kmod_builds_loads_and_captures(tmp_path: Path) -> None:
    repo = project_root()
    copy = tmp_path / "kmx_copy"
    shutil.copytree(repo / "drivers" / "kmod", copy, ignore=shutil.ignore_patterns("kmx_decode.h", "*.o", "*.ko"))
    kbuild = (copy / "Kbuild").read_text()
    (copy / "Kbuild").write_text(kbuild.replace("obj-m := kmx.o\nkmx-y :=", "obj-m := kmx_copy.o\nkmx_copy-y :="))
    data = yaml.safe_load((repo / "matrix.yaml").read_text())
    data["drivers"]["kmx-copy"] = {**data["drivers"]["kmod"], "source": {"path": str(copy)},
                                   "module": "kmx_copy.ko", "version_from": "modinfo"}
    (tmp_path / "matrix.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    matrix = load_matrix(tmp_path / "matrix.yaml")
    ws = Workspace.open(matrix_path=tmp_path / "matrix.yaml")
    cell = next(c for c in matrix.cells("full", archs="x86_64", drivers="kmx-copy", suites="capture")
                if c.kernel == matrix.newest_kernel("x86_64"))
    result = run_capture_cell(ws, cell, tmp_path / "run", buffer_sizes=(8 << 20,))
    print(result.to_json())
    assert result.status == "pass", f"{result.reason}\nconsole: {result.console_log}"
    assert result.metrics.get("version_from") == "modinfo"
