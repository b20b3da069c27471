"""Third-party consumers (matrix.yaml `consumers:` of kind `command`) in the guest.

A command consumer is a Debian package's program (sysdig) run in the guest beside the driver it
reads. Its package comes from the declared suite (sid for sysdig), usually newer than the guest
image's userland, so it travels as a self-contained bundle: the program, every library of its
closure and that suite's own glibc and dynamic loader under opt/kmatrix/consumers/<name>, run as
`<loader> --library-path <lib> <program> ...` so nothing of the image's older glibc is mixed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.archs import ArchProfile
from harness.bench.auditd import Bundle, BundleSpec, debian_bundle
from harness.errors import KmatrixError, UnsupportedTarget
from harness.matrix import ConsumerSpec
from harness.runner import Workspace

GUEST_CONSUMERS_DIR = "opt/kmatrix/consumers"
FILE_PLACEHOLDER = "{file}"


class ConsumerError(KmatrixError):
    """A consumer declaration the harness cannot run (no command, no package)."""


def bundle_spec(name: str, consumer: ConsumerSpec) -> BundleSpec:
    """The bundle carrying a command consumer's programs (every argv[0] it declares)."""
    if consumer.kind != "command" or consumer.debian is None or consumer.capture is None or consumer.read is None:
        raise ConsumerError(f"consumer {name} is not a command consumer with a Debian package, capture and read")
    programs = sorted({argv[0] for argv in (consumer.capture, consumer.read, consumer.version) if argv})
    return BundleSpec(
        name=f"consumer-{name}",
        roots=(consumer.debian.package,),
        binaries=tuple(programs),
        guest_root=f"{GUEST_CONSUMERS_DIR}/{name}",
        self_contained=True,
    )


@dataclass(frozen=True)
class GuestConsumer:
    """A command consumer ready for a guest: the overlay files and the argument lists to run there."""

    name: str
    bundle: Bundle
    capture: list[str]  # with FILE_PLACEHOLDER where the capture file goes
    read: list[str]
    version: list[str] | None

    @property
    def files(self) -> list[tuple[Path, str, int]]:
        return self.bundle.files

    def request(self) -> dict[str, Any]:
        """What the guest op needs (harness.guest.command.CommandConsumer.from_request)."""
        return {"name": self.name, "capture": self.capture, "read": self.read, "version": self.version,
                "placeholder": FILE_PLACEHOLDER}

    def details(self) -> dict[str, Any]:
        return {"consumer": self.name, "package": self.bundle.spec.roots[0],
                "package_version": self.bundle.packages.get(self.bundle.spec.roots[0]),
                "suite": self.bundle.suite, "bundle_bytes": self.bundle.size,
                "bundle_packages": len(self.bundle.packages)}


def guest_argv(bundle: Bundle, argv: list[str]) -> list[str]:
    """argv with its program replaced by the bundle's, run through the bundle's own loader."""
    root = "/" + bundle.spec.guest_root
    if bundle.loader is None:
        return [f"{root}/sbin/{argv[0]}", *argv[1:]]
    return [f"{root}/lib/{bundle.loader}", "--library-path", f"{root}/lib", f"{root}/sbin/{argv[0]}", *argv[1:]]


def guest_consumer(ws: Workspace, arch: ArchProfile, driver: str) -> GuestConsumer | None:
    """The driver's command consumer prepared for arch (None when the agent reads the driver)."""
    name = ws.matrix.drivers[driver].consumer
    spec = ws.matrix.consumers[name]
    if spec.kind == "agent":
        return None
    assert spec.debian is not None and spec.capture is not None and spec.read is not None  # validated
    if not ws.repo.packages(spec.debian.suite, arch.debian_arch).get(spec.debian.package):
        raise UnsupportedTarget(f"consumer {name}: Debian {spec.debian.suite} has no {spec.debian.package} for "
                                f"{arch.debian_arch}, so nothing here reads {driver} on {arch.name}")
    bundle = debian_bundle(ws.repo, spec.debian.suite, arch, ws.cache, bundle_spec(name, spec), log=ws.say)
    return GuestConsumer(
        name=name,
        bundle=bundle,
        capture=guest_argv(bundle, spec.capture),
        read=guest_argv(bundle, spec.read),
        version=guest_argv(bundle, spec.version) if spec.version else None,
    )
