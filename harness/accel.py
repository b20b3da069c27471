"""Choose the accelerator: KVM only when a short probe boot proves it works, else TCG.

On some of these machines /dev/kvm exists but a guest hangs or QEMU asserts ("failed to set MSR
0x10a"), so its presence proves nothing. The probe boots the real guest with KVM and waits for the
agent; the verdict is cached per host boot (boot_id) and QEMU version, so it runs once.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from harness.errors import KmatrixError
from harness.vm import BootSpec, Guest

PROBE_TIMEOUT_S = 15.0  # a working KVM boot reaches the agent in ~2 s


@dataclass(frozen=True)
class AccelChoice:
    accel: str  # "kvm" or "tcg"
    reason: str


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def kvm_usable_for(arch_name: str) -> str | None:
    """None if KVM may be tried for this guest arch, else why not."""
    if os.environ.get("KMATRIX_ACCEL", "").lower() == "tcg":
        return "KMATRIX_ACCEL=tcg"
    if arch_name != os.uname().machine:
        return f"{arch_name} guest on a {os.uname().machine} host"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not available"
    return None


def choose_accel(spec: BootSpec, cache: Path, qemu_version: str) -> AccelChoice:
    why_not = kvm_usable_for(spec.arch.name)
    if why_not:
        return AccelChoice("tcg", why_not)
    verdict_file = cache / "accel" / f"{spec.arch.name}.json"
    verdict_file.parent.mkdir(parents=True, exist_ok=True)
    key = {"boot_id": _boot_id(), "qemu": qemu_version}
    with FileLock(str(verdict_file) + ".lock"):
        if verdict_file.exists():
            try:
                saved = json.loads(verdict_file.read_text())
                if saved.get("key") == key:
                    return AccelChoice(saved["accel"], saved["reason"])
            except (ValueError, KeyError):
                pass
        choice = _probe(spec)
        verdict_file.write_text(json.dumps({"key": key, "accel": choice.accel, "reason": choice.reason}))
    return choice


def _probe(spec: BootSpec) -> AccelChoice:
    probe_spec = BootSpec(
        spec.arch, spec.kernel, spec.initrd, accel="kvm", smp=spec.smp, memory_mb=spec.memory_mb, firmware=spec.firmware
    )
    with tempfile.TemporaryDirectory(prefix="kmatrix-kvm-probe-") as tmp:
        guest = Guest(probe_spec, Path(tmp) / "console.log")
        try:
            guest.start()
            ready = guest.wait_ready(PROBE_TIMEOUT_S)
            return AccelChoice("kvm", f"KVM probe boot reached the agent in {ready.seconds:.1f} s")
        except KmatrixError as error:
            first = str(error).splitlines()[0]
            return AccelChoice("tcg", f"KVM probe failed ({first}); using TCG")
        finally:
            guest.close()
