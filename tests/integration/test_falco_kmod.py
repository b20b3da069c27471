"""Falco's kernel module (scap.ko from Debian's falcosecurity-scap-dkms) builds and loads in the guests.

Cells: the chosen profile's `kmod` capture cells (--kmatrix-profile, default ci: each of its
architectures' newest kernel; `full` for every kernel), narrowed by --kmatrix-arch, skipped where
the reference kmod does not run. Per cell: build scap.ko, boot the kernel with it in an overlay,
insmod it through the agent, one /dev/scapN per CPU and /sys/module/scap, rmmod it. Each cell's
record is written to its tmp_path as scap_load.json and printed (`pytest -rP` shows it).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from harness.archs import get_arch
from harness.matrix import Cell, applicability
from harness.pytest_plugin import selected_cells
from harness.runner import Workspace
from harness.thirdparty.falco import scap_load_cell

pytestmark = pytest.mark.vm


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "scap_cell" in metafunc.fixturenames:
        # The reference kmod's cells (falco-kmod, also kind kmod, shares them in profiles that select it).
        cells = [c for c in selected_cells(metafunc.config, "kmod", "capture")
                 if isinstance(c, Cell) and c.driver == "kmod"]
        metafunc.parametrize("scap_cell", [
            pytest.param(cell, id=f"{cell.arch}-{cell.kernel.label}", marks=[getattr(pytest.mark, f"arch_{cell.arch}")])
            for cell in cells
        ])


def test_scap_builds_and_loads(workspace: Workspace, scap_cell: Cell, tmp_path: Path) -> None:
    kernel = workspace.kernel(get_arch(scap_cell.arch), scap_cell.kernel)
    verdict = applicability(workspace.matrix, scap_cell, kernel.facts)
    if not verdict.runnable:
        pytest.skip(f"the reference kmod does not run here: {verdict.reason}")
    result = scap_load_cell(workspace, scap_cell.arch, scap_cell.kernel, tmp_path)
    (tmp_path / "scap_load.json").write_text(json.dumps(dataclasses.asdict(result), indent=2))
    print(f"{result.arch} {result.kernel_release}: build {result.build_seconds} s (cached {result.build_cached}), "
          f"boot {result.boot_seconds} s, loaded {result.loaded}, devices {result.devices}, rmmod {result.unloaded}")
    assert result.error is None, f"{result.error}\nconsole: {result.console_log}"
    assert result.kernel_release == kernel.release
    assert result.loaded and result.sys_module, result
    assert result.cpus and result.devices == [f"scap{n}" for n in range(result.cpus)], result
    assert result.unloaded, result
    assert result.features.get("0__SANITY"), result.features
