"""QEMU command lines per architecture, compared with golden files.

Regenerate after an intended change with: KMATRIX_REGEN_GOLDEN=1 pytest tests/unit/test_qemu_cmdline.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.archs import ARCH_NAMES, ARCHS
from harness.vm import BootSpec, qemu_command

GOLDEN = Path(__file__).parent.parent / "golden" / "qemu"


def spec_for(arch: str, accel: str = "tcg", mode: str = "agent") -> BootSpec:
    profile = ARCHS[arch]
    firmware = Path("/cache/firmware/QEMU_EFI.fd") if profile.firmware else None
    return BootSpec(
        profile,
        Path(f"/cache/kernels/{arch}/vmlinuz"),
        Path(f"/cache/images/{arch}.cpio.gz"),
        accel=accel,
        firmware=firmware,
        mode=mode,
    )


CASES = [(arch, "tcg", "agent") for arch in ARCH_NAMES] + [("x86_64", "kvm", "agent"), ("aarch64", "tcg", "shell")]


@pytest.mark.parametrize(("arch", "accel", "mode"), CASES, ids=[f"{a}-{c}-{m}" for a, c, m in CASES])
def test_qemu_command_matches_golden(arch: str, accel: str, mode: str) -> None:
    argv = qemu_command(spec_for(arch, accel, mode))
    golden = GOLDEN / f"{arch}-{accel}-{mode}.json"
    if os.environ.get("KMATRIX_REGEN_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(json.dumps(argv, indent=1) + "\n")
    assert golden.exists(), f"no golden file {golden}; run with KMATRIX_REGEN_GOLDEN=1"
    assert argv == json.loads(golden.read_text())


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_every_boot_ends_qemu_on_panic(arch: str) -> None:
    argv = qemu_command(spec_for(arch))
    assert "-no-reboot" in argv
    cmdline = argv[argv.index("-append") + 1]
    assert "panic=-1" in cmdline.split()
    assert "printk.time=1" in cmdline.split()


def test_console_argument_per_arch() -> None:
    consoles = {arch: spec_for(arch).cmdline().split()[0] for arch in ARCH_NAMES}
    assert consoles["aarch64"] == "console=ttyAMA0"
    assert consoles["ppc64le"] == "console=hvc0"
    assert not consoles["s390x"].startswith("console=")  # SCLP is the default console


def test_icount_runs_one_tcg_thread_with_an_instruction_clock() -> None:
    import dataclasses

    argv = qemu_command(dataclasses.replace(spec_for("aarch64"), icount_shift=3))
    assert argv[argv.index("-accel") + 1] == "tcg,thread=single"
    assert argv[argv.index("-icount") + 1] == "shift=3,sleep=off"
    assert "-icount" not in qemu_command(spec_for("aarch64"))


def test_icount_under_kvm_is_refused() -> None:
    import dataclasses

    with pytest.raises(ValueError, match="needs TCG"):
        qemu_command(dataclasses.replace(spec_for("x86_64", "kvm"), icount_shift=3))
