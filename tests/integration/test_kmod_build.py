"""Cross-build kmx.ko against real Debian headers from the mirror (marker slow; no VM).

Which kernels: the ci profile's cells (each of its architectures' newest kernel), narrowed by
--kmatrix-arch. Every .ko must be a relocatable ELF for the target's machine and byte order,
with the target kernel's vermagic; a second build must come from the cache.
"""

from __future__ import annotations

import struct

import pytest

from harness.archs import get_arch
from harness.build.kmod import build_kmod
from harness.runner import Workspace

pytestmark = pytest.mark.slow

# e_machine and EI_DATA (1: little-endian, 2: big-endian) per kmatrix architecture
ELF_MACHINE = {"x86_64": (62, 1), "aarch64": (183, 1), "s390x": (22, 2), "ppc64le": (21, 1), "riscv64": (243, 1),
               "loongarch64": (258, 1)}


def _ci_kernels(config: pytest.Config) -> list[tuple[str, str]]:
    from harness.matrix import load_matrix
    from harness.paths import default_matrix_path

    matrix = load_matrix(default_matrix_path())
    arch_filter = config.getoption("--kmatrix-arch")
    wanted = [a.strip() for a in arch_filter.split(",")] if arch_filter else None
    pairs: list[tuple[str, str]] = []
    for cell in matrix.cells("ci", drivers=["kmod"]):
        if cell.kernel.suite and (not wanted or cell.arch in wanted) and (cell.arch, cell.kernel.suite) not in pairs:
            pairs.append((cell.arch, cell.kernel.suite))
    return pairs


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kmod_target" in metafunc.fixturenames:
        metafunc.parametrize("kmod_target", [
            pytest.param(pair, id=f"{pair[0]}-{pair[1]}", marks=[getattr(pytest.mark, f"arch_{pair[0]}")])
            for pair in _ci_kernels(metafunc.config)
        ])


def test_kmod_builds_for_the_target(workspace: Workspace, kmod_target: tuple[str, str]) -> None:
    arch_name, suite = kmod_target
    arch = get_arch(arch_name)
    build = build_kmod(workspace.repo, arch, suite, workspace.cache)
    data = build.ko.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, "not a 64-bit ELF"
    machine, endian = ELF_MACHINE[arch_name]
    assert data[5] == endian
    e_type, e_machine = struct.unpack_from("<HH" if endian == 1 else ">HH", data, 16)
    assert (e_type, e_machine) == (1, machine)  # ET_REL for this CPU
    assert f"vermagic={build.kernel_release} ".encode() in data
    assert b"license=GPL" in data
    assert build.command[0] in ("make", "env") and "modules" in build.command

    again = build_kmod(workspace.repo, arch, suite, workspace.cache)
    assert again.cached and again.ko == build.ko and again.kernel_release == build.kernel_release
