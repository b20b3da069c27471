"""What the harness knows about one kernel: its release string, version and build config."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str) -> tuple[int, int, int]:
    """'6.12.95+deb12-amd64' -> (6, 12, 95); '5.10' -> (5, 10, 0)."""
    match = _VERSION.match(text.strip())
    if not match:
        raise ValueError(f"not a kernel version: {text!r} (expected MAJOR.MINOR[.PATCH])")
    return int(match[1]), int(match[2]), int(match[3] or 0)


def format_version(version: tuple[int, int, int]) -> str:
    return ".".join(str(part) for part in version)


def parse_config(text: str) -> dict[str, str]:
    """Parse a kernel .config: 'CONFIG_X=y' lines; '# CONFIG_X is not set' is recorded as 'n'."""
    config: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            config[key] = value.strip('"')
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            config[line[2:].split()[0]] = "n"
    return config


# Config options whose presence decides which drivers and suites can run; reported by `kmatrix list`.
CAPABILITIES: tuple[str, ...] = (
    "CONFIG_MODULES",
    "CONFIG_TRACEPOINTS",
    "CONFIG_FTRACE_SYSCALLS",
    "CONFIG_BPF_SYSCALL",
    "CONFIG_DEBUG_INFO_BTF",
    "CONFIG_IA32_EMULATION",
    "CONFIG_KPROBES",
    "CONFIG_AUDITSYSCALL",
)


@dataclass(frozen=True)
class KernelFacts:
    """A resolved kernel: exact release and its config, as read from the image package."""

    release: str  # `uname -r` inside the guest, e.g. "6.12.95+deb12-amd64"
    package_version: str  # Debian version of the image package, e.g. "6.12.95-1~bpo12+1"
    config: Mapping[str, str] = field(default_factory=dict)
    suite: str | None = None

    @property
    def version(self) -> tuple[int, int, int]:
        return parse_version(self.package_version if self.package_version else self.release)

    def enabled(self, option: str) -> bool:
        return self.config.get(option) in ("y", "m")

    def capabilities(self) -> dict[str, bool]:
        return {option: self.enabled(option) for option in CAPABILITIES}
