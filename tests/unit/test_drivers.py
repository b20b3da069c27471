"""harness.drivers: one adapter per declared `build`, chosen from matrix.yaml alone (issue 10).

The reference drivers, Falco's module and a renamed copy of the reference kmod declared only in a
matrix file all go through the same registry; no build runs here (builds need kernel headers and
take minutes: tests/integration/test_declared_kmod.py builds and loads the copy under `-m vm`).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import cells
from harness.archs import ArchProfile
from harness.build import kmod as kmod_build
from harness.build.kmod import KmodBuild, driver_sources
from harness.drivers import (
    ADAPTERS,
    GUEST_DRIVER_DIR,
    CoreBpfAdapter,
    DkmsAdapter,
    KbuildAdapter,
    LegacyBpfAdapter,
    PrebuiltAdapter,
    adapter_for,
    modinfo_version,
)
from harness.errors import BuildError, ConfigError, UnsupportedTarget
from harness.images import KernelImage
from harness.kernel import KernelFacts
from harness.matrix import BUILD_KINDS, Cell, KernelRef, Matrix, applicability, load_matrix
from harness.paths import project_root
from harness.runner import Workspace
from harness.thirdparty import falco

REPO = project_root()
RELEASE = "6.12.95+deb12-amd64"
CONFIG = {"CONFIG_MODULES": "y", "CONFIG_TRACEPOINTS": "y", "CONFIG_BPF_SYSCALL": "y", "CONFIG_DEBUG_INFO_BTF": "y"}


class FakeWorkspace(Workspace):
    """A matrix; kernels synthesized instead of fetched."""

    def kernel(self, arch: ArchProfile, ref: KernelRef) -> KernelImage:
        return KernelImage(arch.name, str(ref.suite), RELEASE, "linux-image", "6.12.95-1", Path("/dev/null"), None,
                           CONFIG)


def workspace(matrix: Matrix, tmp_path: Path) -> FakeWorkspace:
    return FakeWorkspace(matrix, repo=None, cache=tmp_path)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def real() -> Matrix:
    return load_matrix(REPO / "matrix.yaml")


def _cell(matrix: Matrix, driver: str, arch: str = "x86_64", suite: str = "capture") -> Cell:
    return next(c for c in matrix.cells("full", archs=arch, drivers=driver, suites=suite)
                if c.kernel == matrix.newest_kernel(arch))


def test_one_adapter_per_build() -> None:
    assert set(ADAPTERS) == set(BUILD_KINDS)
    assert all(cls.build_kind == build for build, cls in ADAPTERS.items())


def test_the_reference_drivers_and_falco_through_the_registry(real: Matrix) -> None:
    kmod, bpf, modern, scap = (adapter_for(real, name) for name in ("kmod", "bpf", "modern_bpf", "falco-kmod"))
    assert isinstance(kmod, KbuildAdapter) and kmod.folder == REPO / "drivers" / "kmod"
    assert kmod.spec.module_name == "kmx" and kmod.guest_path == f"{GUEST_DRIVER_DIR}/kmx.ko"
    assert isinstance(bpf, LegacyBpfAdapter) and bpf.guest_path == "opt/kmatrix/drivers/kmx_legacy.bpf.o"
    assert isinstance(modern, CoreBpfAdapter) and modern.guest_path == "opt/kmatrix/drivers/kmx_modern.bpf.o"
    assert kmod.per_kernel and bpf.per_kernel and not modern.per_kernel
    assert isinstance(scap, DkmsAdapter) and scap.guest_path == falco.GUEST_PATH and scap.folder is None


def test_unknown_driver(real: Matrix) -> None:
    with pytest.raises(ConfigError, match="'nope' is not in the matrix"):
        adapter_for(real, "nope")


def _recording_build_kmod(calls: list[dict[str, Any]], tmp_path: Path) -> Any:
    def fake(repo: object, arch: ArchProfile, suite: str, cache: Path, **kwargs: Any) -> KmodBuild:
        calls.append({"arch": arch.name, "suite": suite, **kwargs})
        ko = tmp_path / f"{kwargs['module']}.ko"
        ko.write_bytes(b"\x7fELF\0\0version=1.2.3\0srcversion=ABC\0")
        return KmodBuild(ko, arch.name, RELEASE, 0.1, True, "gcc (fake)", ["make"])

    return fake


def test_build_driver_dispatches_kmod_through_kbuild(real: Matrix, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(kmod_build, "build_kmod", _recording_build_kmod(calls, tmp_path))
    artifact = cells.build_driver(workspace(real, tmp_path), "kmod", _cell(real, "kmod"), "swap_args")
    assert artifact.guest_path == "opt/kmatrix/drivers/kmx.ko" and artifact.path == tmp_path / "kmx.ko"
    assert artifact.cached and artifact.compiler == "gcc (fake)"
    assert calls == [{"arch": "x86_64", "suite": "bookworm-backports", "fault": "swap_args", "log": calls[0]["log"],
                      "source": REPO / "drivers" / "kmod", "module": "kmx"}]
    assert artifact.details["version_from"] == "git"  # declared; the revision itself depends on the checkout


def test_build_driver_dispatches_falco_through_dkms(real: Matrix, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def fake(repo: object, arch: ArchProfile, suite: str, cache: Path, **kwargs: Any) -> falco.ScapBuild:
        calls.append({"arch": arch.name, "suite": suite, **{k: v for k, v in kwargs.items() if k != "log"}})
        return falco.ScapBuild(tmp_path / "scap.ko", arch.name, RELEASE, "0.23.2", "0.23.2-6", 15.0, False, "gcc",
                               ["make"], {"0__SANITY": True})

    monkeypatch.setattr(falco, "build_scap_kmod", fake)
    artifact = cells.build_driver(workspace(real, tmp_path), "kmod", _cell(real, "falco-kmod"), None)
    assert calls == [{"arch": "x86_64", "suite": "bookworm-backports", "package": "falcosecurity-scap-dkms",
                      "package_suite": "sid", "module": "scap"}]
    assert artifact.guest_path == falco.GUEST_PATH and artifact.path == tmp_path / "scap.ko"
    assert artifact.details == {"dkms_package": "falcosecurity-scap-dkms 0.23.2-6", "features": {"0__SANITY": True},
                                "driver_version": "0.23.2", "version_from": "dkms-conf"}
    with pytest.raises(BuildError, match="build faults are for the project's own drivers"):
        cells.build_driver(workspace(real, tmp_path), "kmod", _cell(real, "falco-kmod"), "swap_args")


def test_build_driver_refuses_a_user_kernel_and_a_wrong_kind(real: Matrix, tmp_path: Path) -> None:
    cell = _cell(real, "kmod")
    mine = Cell(cell.arch, KernelRef("x86_64", (6, 6, 0), "mine", path=tmp_path), "kmod", "capture")
    with pytest.raises(BuildError, match=r"kmod builds need Debian kernel headers; a user kernel \(.*\) has none"):
        cells.build_driver(workspace(real, tmp_path), "kmod", mine, None)
    with pytest.raises(BuildError, match="declared kind kmod, not bpf"):
        cells.build_driver(workspace(real, tmp_path), "bpf", cell, None)


def test_project_bpf_pipelines_compile_their_own_folder_only(real: Matrix, tmp_path: Path) -> None:
    data = yaml.safe_load((REPO / "matrix.yaml").read_text())
    data["drivers"]["bpf"]["source"] = {"path": str(tmp_path)}
    matrix = _matrix(data, tmp_path)
    with pytest.raises(BuildError, match="the bpf-legacy build compiles drivers/bpf"):
        cells.build_driver(workspace(matrix, tmp_path), "bpf", _cell(matrix, "bpf"), None)


def test_prebuilt_objects(tmp_path: Path) -> None:
    data = yaml.safe_load((REPO / "matrix.yaml").read_text())
    given = tmp_path / "objects"
    data["drivers"]["mine"] = {"kind": "kmod", "source": {"path": str(given)}, "build": "prebuilt",
                               "module": "mine.ko", "consumer": "agent", "version_from": "modinfo",
                               "min_kernel": {"x86_64": "5.0"}}
    matrix = _matrix(data, tmp_path)
    adapter = adapter_for(matrix, "mine")
    assert isinstance(adapter, PrebuiltAdapter)
    cell = _cell(matrix, "mine")
    given.mkdir()
    with pytest.raises(BuildError, match=r"no prebuilt mine\.ko for x86_64") as info:
        cells.build_driver(workspace(matrix, tmp_path), "kmod", cell, None)
    assert info.value.hint is not None and f"x86_64/{RELEASE}/mine.ko" in info.value.hint
    (given / "x86_64").mkdir()
    (given / "x86_64" / "mine.ko").write_bytes(b"\0\0version=0.9\0")
    artifact = cells.build_driver(workspace(matrix, tmp_path), "kmod", cell, None)
    assert artifact.path == given / "x86_64" / "mine.ko" and artifact.guest_path == "opt/kmatrix/drivers/mine.ko"
    assert artifact.details == {"driver_version": "0.9", "version_from": "modinfo"}


def test_modinfo_version(tmp_path: Path) -> None:
    ko = tmp_path / "m.ko"
    ko.write_bytes(b"junk\0srcversion=XYZ\0version=2.0.1-rc1\0license=GPL\0")
    assert modinfo_version(ko) == "2.0.1-rc1"
    ko.write_bytes(b"junk\0srcversion=XYZ\0")
    assert modinfo_version(ko) is None
    assert modinfo_version(tmp_path / "none.ko") is None


def test_a_source_that_rules_the_target_out_is_a_skip(tmp_path: Path) -> None:
    result = cells.CellResult("c", "loongarch64", "sid", "falco-kmod", "capture")
    cells.record_error(result, UnsupportedTarget("scap 0.23.2 does not support loongarch64: ..."))
    assert (result.status, result.reason) == ("skip", "scap 0.23.2 does not support loongarch64: ...")


def test_a_command_consumer_is_read_by_the_capture_suite_only(real: Matrix, tmp_path: Path) -> None:
    ws = workspace(real, tmp_path)
    assert cells.consumer_gap(ws, _cell(real, "kmod")) is None
    assert cells.consumer_gap(ws, _cell(real, "falco-kmod")) is None  # the capture suite reads sysdig
    ia32 = dataclasses.replace(_cell(real, "falco-kmod"), suite="ia32")
    gap = cells.consumer_gap(ws, ia32)
    assert gap == ("suite ia32 cannot read driver falco-kmod through consumer sysdig: it reads drivers "
                   "through agent consumers only")


# ---------------------------------------------------------------------------------------------
# Another out-of-tree kmod: a renamed copy of the reference kmod, declared only in matrix.yaml


def _matrix(data: dict[str, Any], where: Path) -> Matrix:
    path = where / "matrix.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_matrix(path)


def renamed_copy(tmp_path: Path, module: str = "kmx_copy") -> Path:
    """drivers/kmod copied to tmp_path/<module>, its Kbuild building <module>.ko."""
    copy = tmp_path / module
    shutil.copytree(REPO / "drivers" / "kmod", copy, ignore=shutil.ignore_patterns("kmx_decode.h", "*.o", "*.ko"))
    kbuild = (copy / "Kbuild").read_text()
    assert "obj-m := kmx.o\nkmx-y :=" in kbuild
    (copy / "Kbuild").write_text(kbuild.replace("obj-m := kmx.o\nkmx-y :=", f"obj-m := {module}.o\n{module}-y :="))
    return copy


def copy_matrix(tmp_path: Path) -> tuple[Matrix, Path]:
    """The repository's matrix.yaml plus `kmx-copy`, its source given relative to the matrix file."""
    copy = renamed_copy(tmp_path)
    data = yaml.safe_load((REPO / "matrix.yaml").read_text())
    data["drivers"]["kmx-copy"] = {**data["drivers"]["kmod"], "source": {"path": copy.name},
                                   "module": "kmx_copy.ko", "version_from": "modinfo"}
    return _matrix(data, tmp_path), copy


def test_a_renamed_copy_of_the_kmod_needs_only_a_declaration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    matrix, copy = copy_matrix(tmp_path)
    # It validates, and expands into cells exactly where kmod does.
    spec = matrix.drivers["kmx-copy"]
    assert (spec.kind, spec.source.path, spec.build, spec.module_name) == ("kmod", str(copy), "kbuild", "kmx_copy")
    for profile in ("full", "minimum"):
        ours = matrix.cells(profile, drivers="kmx-copy")
        theirs = matrix.cells(profile, drivers="kmod")
        assert [(c.arch, c.kernel, c.suite, c.declared_min) for c in ours] == [
            (c.arch, c.kernel, c.suite, c.declared_min) for c in theirs]
        assert all(c.id.endswith(f"-kmx-copy-{c.suite}") for c in ours)
    # Applicable like kmod: before the kernel is known, and with its config (present or lacking).
    lacking = KernelFacts(RELEASE, "6.12.95-1", {"CONFIG_MODULES": "y"})
    complete = KernelFacts(RELEASE, "6.12.95-1", CONFIG)
    for cell in matrix.cells("full", drivers="kmx-copy"):
        twin = Cell(cell.arch, cell.kernel, "kmod", cell.suite, cell.declared_min)
        for facts in (None, lacking, complete):
            ours_verdict, twin_verdict = applicability(matrix, cell, facts), applicability(matrix, twin, facts)
            assert (ours_verdict.runnable, ours_verdict.pending) == (twin_verdict.runnable, twin_verdict.pending)
            assert (ours_verdict.reason or "").replace("kmx-copy", "kmod") == (twin_verdict.reason or "")
    # The adapter is the kbuild adapter, on the copy's folder and module name.
    adapter = adapter_for(matrix, "kmx-copy")
    assert isinstance(adapter, KbuildAdapter)
    assert adapter.folder == copy and adapter.spec.module_name == "kmx_copy"
    assert adapter.guest_path == "opt/kmatrix/drivers/kmx_copy.ko"
    # What kbuild would compile: the copy's files as kmod/, the project's event schema as common/.
    staged = driver_sources(source=copy)
    assert staged["kmod/Kbuild"] == copy / "Kbuild" and "obj-m := kmx_copy.o" in staged["kmod/Kbuild"].read_text()
    assert staged["kmod/kmx_main.c"] == copy / "kmx_main.c" and staged["kmod/gen_decode.py"] == copy / "gen_decode.py"
    assert staged["common/kmx_events.h"] == REPO / "drivers" / "common" / "kmx_events.h"
    assert {n for n in staged if n.startswith("kmod/")} == {n for n in driver_sources() if n.startswith("kmod/")}
    # build_driver hands the declaration to build_kmod unchanged (the build itself is the vm test's).
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(kmod_build, "build_kmod", _recording_build_kmod(calls, tmp_path))
    cell = _cell(matrix, "kmx-copy")
    artifact = cells.build_driver(workspace(matrix, tmp_path), matrix.drivers[cell.driver].kind, cell, None)
    assert [(c["source"], c["module"], c["suite"]) for c in calls] == [(copy, "kmx_copy", "bookworm-backports")]
    assert artifact.guest_path == "opt/kmatrix/drivers/kmx_copy.ko" and artifact.path == tmp_path / "kmx_copy.ko"
    assert artifact.details == {"driver_version": "1.2.3", "version_from": "modinfo"}


def test_a_missing_source_folder_is_a_build_error(tmp_path: Path) -> None:
    matrix, copy = copy_matrix(tmp_path)
    shutil.rmtree(copy)
    with pytest.raises(BuildError, match=r"driver kmx-copy: source .*kmx_copy is not a folder"):
        cells.build_driver(workspace(matrix, tmp_path), "kmod", _cell(matrix, "kmx-copy"), None)


def test_build_kmod_stages_the_declared_folder(tmp_path: Path) -> None:
    """Without a Kbuild the folder's Makefile is kbuild's input; no gen_decode.py, no decode table."""
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "Makefile").write_text("obj-m := plain.o\n")
    (plain / "plain.c").write_text("/* a module */\n")
    staged = driver_sources(source=plain)
    assert {n for n in staged if n.startswith("kmod/")} == {"kmod/Makefile", "kmod/plain.c"}
    build_dir = tmp_path / "b"
    build_dir.mkdir()
    kmod_build._generate_decode(build_dir)  # nothing to generate: no error, no file
    assert not (build_dir / "kmx_decode.h").exists()
    with pytest.raises(BuildError, match="is not a folder"):
        driver_sources(source=tmp_path / "gone")


@pytest.mark.parametrize(("artifact", "name"), [("/opt/kmatrix/drivers/kmx.ko", "kmx"),
                                                ("/opt/kmatrix/drivers/kmx_copy.ko", "kmx_copy"),
                                                ("/tmp/up/opt/kmatrix/drivers/my-mod.ko", "my_mod"),
                                                ("scap.ko", "scap")])
def test_the_guest_unloads_a_module_by_its_own_name(artifact: str, name: str) -> None:
    from harness.guest.capture import module_name

    assert module_name(artifact) == name


def test_the_bench_measures_every_declared_driver(real: Matrix, tmp_path: Path) -> None:
    from harness.bench.results import SubjectResult
    from harness.bench.run import bench_drivers

    assert bench_drivers(real) == ["kmod", "bpf", "modern_bpf", "falco-kmod"]  # falco-kmod read by sysdig
    matrix, _copy = copy_matrix(tmp_path)
    assert bench_drivers(matrix) == ["kmod", "bpf", "modern_bpf", "falco-kmod", "kmx-copy"]
    loaded = SubjectResult.model_validate({"subject": "kmx-copy", "status": "skip", "reason": "r"})
    assert loaded.kind == "driver"
    assert SubjectResult.model_validate({"subject": "auditd", "status": "skip"}).kind == "peer"
