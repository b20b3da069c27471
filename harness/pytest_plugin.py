"""pytest integration: choose the matrix cells that `vm` tests run on, and share one workspace.

Options: --kmatrix-profile (default: ci), --kmatrix-arch (comma list). Unit tests never use these.
"""

from __future__ import annotations

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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    del config
    for item in items:
        if "vm" in item.keywords:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def workspace() -> Iterator[object]:
    from harness.runner import Workspace

    yield Workspace.open()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path


__all__ = ["ARCH_NAMES", "selected_boot_targets"]
