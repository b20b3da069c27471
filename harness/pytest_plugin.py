"""pytest integration: choose the matrix cells that `vm` tests run on, and share one workspace.

Options: --kmatrix-profile (default: ci), --kmatrix-arch (comma list). Unit tests never use these.
With pytest-xdist, `pytest -n auto` starts as many workers as this host can run guests side by side.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.archs import ARCH_NAMES


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kmatrix")
    group.addoption("--kmatrix-profile", default="ci", help="matrix profile whose cells vm tests run (default: ci)")
    group.addoption("--kmatrix-arch", default=None, help="only these architectures (comma list)")
    group.addoption(
        "--kmatrix-kernels",
        default="newest",
        choices=["newest", "all"],
        help="boot tests: each arch's newest kernel, or all of its kernels",
    )


def selected_boot_targets(config: pytest.Config) -> list[tuple[str, str]]:
    """(arch, kernel label) pairs for boot tests, from the profile and filters."""
    from harness.matrix import load_matrix
    from harness.paths import default_matrix_path

    matrix = load_matrix(default_matrix_path())
    arch_filter = config.getoption("--kmatrix-arch")
    wanted = [a.strip() for a in arch_filter.split(",")] if arch_filter else None
    pairs: list[tuple[str, str]] = []
    for cell in matrix.cells(config.getoption("--kmatrix-profile")):
        if wanted and cell.arch not in wanted:
            continue
        refs = matrix.kernels(cell.arch) if config.getoption("--kmatrix-kernels") == "all" else [cell.kernel]
        for ref in refs:
            if (cell.arch, ref.label) not in pairs:
                pairs.append((cell.arch, ref.label))
    return pairs


def selected_cells(config: pytest.Config, driver_kind: str | None, suite: str) -> list[object]:
    """Cells of the chosen profile for one suite (and one driver kind, or every kind)."""
    from harness.matrix import load_matrix
    from harness.paths import default_matrix_path

    matrix = load_matrix(default_matrix_path())
    arch_filter = config.getoption("--kmatrix-arch")
    wanted = [a.strip() for a in arch_filter.split(",")] if arch_filter else None
    return [cell for cell in matrix.cells(config.getoption("--kmatrix-profile"))
            if cell.suite == suite and driver_kind in (None, matrix.drivers[cell.driver].kind)
            and (not wanted or cell.arch in wanted)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "capture_cell" in metafunc.fixturenames:
        cells = selected_cells(metafunc.config, None, "capture")
        metafunc.parametrize("capture_cell", [
            pytest.param(cell, id=cell.id, marks=[getattr(pytest.mark, f"arch_{cell.arch}")])  # type: ignore[attr-defined]
            for cell in cells
        ])
    for suite in ("containers", "permissions", "tamper", "redaction"):
        if f"{suite}_cell" in metafunc.fixturenames:
            cells = selected_cells(metafunc.config, None, suite)
            metafunc.parametrize(f"{suite}_cell", [
                pytest.param(cell, id=cell.id, marks=[getattr(pytest.mark, f"arch_{cell.arch}")])  # type: ignore[attr-defined]
                for cell in cells
            ])
    if "ia32_cell" in metafunc.fixturenames:
        cells = [c for c in selected_cells(metafunc.config, None, "ia32") if c.arch == "x86_64"]  # type: ignore[attr-defined]
        metafunc.parametrize("ia32_cell", [pytest.param(cell, id=cell.id) for cell in cells])  # type: ignore[attr-defined]
    if "boot_target" in metafunc.fixturenames:
        pairs = selected_boot_targets(metafunc.config)
        metafunc.parametrize(
            "boot_target",
            [
                pytest.param(pair, id=f"{pair[0]}-{pair[1]}", marks=[getattr(pytest.mark, f"arch_{pair[0]}")])
                for pair in pairs
            ],
        )


def host_cpus() -> int:
    """CPUs this process may run on (a container's or taskset's limit, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_guest() -> int:
    """Busy host threads per guest: one per guest vCPU, plus QEMU's main loop / I/O thread."""
    from dataclasses import fields

    from harness.vm import BootSpec

    smp = next(f.default for f in fields(BootSpec) if f.name == "smp")
    assert isinstance(smp, int)
    return smp + 1


def auto_num_workers(cpus: int) -> int:
    """Workers for `-n auto`: each runs one guest at a time, and an overcommitted TCG guest times out."""
    return max(1, cpus // threads_per_guest())


def per_worker(path: Path) -> Path:
    """`path` without xdist; `path/gw0` etc. in an xdist worker, so process-wide output never collides."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return path / worker if worker else path


# optionalhook: the hook is pytest-xdist's; without xdist installed pytest must not reject it.
@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    del config
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # an explicit override: xdist's own implementation reads it
    return auto_num_workers(host_cpus())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    del config
    for item in items:
        if "vm" in item.keywords:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def workspace() -> Iterator[object]:
    """One per xdist worker. Its cache is shared on purpose: every cache entry is written under a
    file lock, so workers download and build each kernel and image once between them."""
    from harness.runner import Workspace

    yield Workspace.open()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """Per test (and so per worker): console logs and results of concurrent guests never mix."""
    return tmp_path


__all__ = ["ARCH_NAMES", "auto_num_workers", "host_cpus", "per_worker", "selected_boot_targets", "threads_per_guest"]
