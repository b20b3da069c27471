"""Command consumers (harness/consumers.py): sysdig's self-contained bundle and its guest command lines."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.bench.auditd import elf_interpreter
from harness.consumers import ConsumerError, bundle_spec, guest_argv
from harness.errors import ConfigError
from harness.matrix import ConsumerSpec, load_matrix
from harness.paths import default_matrix_path


def sysdig() -> ConsumerSpec:
    return load_matrix(default_matrix_path()).consumers["sysdig"]


def test_the_bundle_carries_every_program_the_declaration_runs() -> None:
    spec = bundle_spec("sysdig", sysdig())
    assert (spec.roots, spec.binaries, spec.self_contained) == (("sysdig",), ("sysdig",), True)
    assert spec.guest_root == "opt/kmatrix/consumers/sysdig"
    with pytest.raises(ConsumerError, match="not a command consumer"):
        bundle_spec("agent", ConsumerSpec(kind="agent"))


def test_guest_commands_run_through_the_bundles_own_loader() -> None:
    class FakeBundle:  # only the two attributes guest_argv reads
        spec = bundle_spec("sysdig", sysdig())
        loader = "ld-linux-aarch64.so.1"

    root = "/opt/kmatrix/consumers/sysdig"
    assert guest_argv(FakeBundle(), ["sysdig", "-q", "-w", "{file}"]) == [  # type: ignore[arg-type]
        f"{root}/lib/ld-linux-aarch64.so.1", "--library-path", f"{root}/lib", f"{root}/sbin/sysdig",
        "-q", "-w", "{file}"]


def test_elf_interpreter_agrees_with_readelf() -> None:
    python = Path(sys.executable).resolve()  # an ELF executable with a PT_INTERP
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) is not installed")
    out = subprocess.run(["readelf", "-l", str(python)], capture_output=True, text=True, check=True).stdout
    expected = out.split("program interpreter: ", 1)[1].split("]", 1)[0] if "interpreter" in out else None
    assert elf_interpreter(python) == expected


def _with_difference(tmp_path: Path, difference: dict[str, Any]) -> Path:
    import yaml

    data = yaml.safe_load(default_matrix_path().read_text())
    data["drivers"]["falco-kmod"]["differences"] = [difference]
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("difference, message", [
    ({"call": "write", "what": "exit param", "why": "no name given"}, "is not a check of the suite"),
    ({"call": "write", "what": "return value", "why": "short"}, "why"),
    ({"call": "Write!", "what": "return value", "why": "a good enough reason"}, "call"),
])
def test_a_bad_difference_is_refused_naming_it(tmp_path: Path, difference: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_matrix(_with_difference(tmp_path, difference))
    assert "falco-kmod" in str(caught.value) and "differences" in str(caught.value)


def test_declared_differences_load(tmp_path: Path) -> None:
    difference = {"call": "write", "what": "enter param data", "why": "formats buffers otherwise"}
    matrix = load_matrix(_with_difference(tmp_path, difference))
    assert [d.model_dump(exclude={"archs"}) for d in matrix.drivers["falco-kmod"].differences] == [difference]


def test_an_architecture_without_the_consumers_package_is_a_skip_saying_so(tmp_path: Path) -> None:
    from harness.archs import get_arch
    from harness.cells import CellResult, record_error
    from harness.consumers import guest_consumer
    from harness.errors import UnsupportedTarget
    from harness.runner import Workspace

    class NoSysdig:  # the one call guest_consumer makes before bundling: the suite's index
        def packages(self, suite: str, debian_arch: str) -> dict[str, list[object]]:
            assert (suite, debian_arch) == ("sid", "loong64")
            return {"libc6": [object()]}

    ws = Workspace(load_matrix(default_matrix_path()), NoSysdig(), tmp_path)  # type: ignore[arg-type]
    assert guest_consumer(ws, get_arch("loongarch64"), "kmod") is None  # the agent reads kmod
    with pytest.raises(UnsupportedTarget) as caught:
        guest_consumer(ws, get_arch("loongarch64"), "falco-kmod")
    result = CellResult("c", "loongarch64", "sid", "falco-kmod", "capture")
    record_error(result, caught.value)
    assert (result.status, result.reason) == ("skip", "consumer sysdig: Debian sid has no sysdig for loong64, so "
                                              "nothing here reads falco-kmod on loongarch64")
