"""Per-architecture syscall tables (name <-> number), read from drivers/common/syscalls/<arch>.json.

The JSON files are generated from each architecture's own UAPI headers (Debian's linux-libc-dev) by
``drivers/common/gen_syscalls.py``; this module only reads them. Architectures are kmatrix's names,
plus ``x86`` for the i386 ABI that x86_64 kernels run through IA32 emulation.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.paths import project_root

TABLE_ARCHS: tuple[str, ...] = ("x86_64", "aarch64", "s390x", "ppc64le", "riscv64", "loongarch64", "x86")
REGENERATE = "python drivers/common/gen_syscalls.py"


def tables_dir() -> Path:
    return project_root() / "drivers" / "common" / "syscalls"


@dataclass(frozen=True)
class SyscallTable:
    arch: str
    source: Mapping[str, Any]
    by_name: Mapping[str, int]  # in number order
    by_number: Mapping[int, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_number: dict[int, str] = {}
        for name, number in self.by_name.items():
            if number in by_number:
                raise ConfigError(
                    f"{self.arch} syscall table: {by_number[number]} and {name} both have number {number}",
                    hint=f"regenerate it: {REGENERATE} --arch {self.arch}",
                )
            by_number[number] = name
        object.__setattr__(self, "by_number", by_number)

    def number(self, name: str) -> int:
        """The syscall's number on this architecture; ConfigError (with close matches) when it has none."""
        try:
            return self.by_name[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self.by_name), n=4, cutoff=0.6)
            hint = f"close matches: {', '.join(close)}" if close else f"see `kmatrix syscalls --arch {self.arch}`"
            raise ConfigError(f"no syscall {name!r} on {self.arch}", hint=hint) from None

    def name(self, nr: int) -> str | None:
        return self.by_number.get(nr)

    @property
    def names(self) -> tuple[str, ...]:
        """Every syscall name, in number order."""
        return tuple(self.by_name)

    def items(self) -> list[tuple[str, int]]:
        """(name, number) pairs in number order."""
        return list(self.by_name.items())

    def __contains__(self, name: object) -> bool:
        return name in self.by_name

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_name)

    def __len__(self) -> int:
        return len(self.by_name)


def _check_arch(arch: str) -> None:
    if arch not in TABLE_ARCHS:
        close = difflib.get_close_matches(arch, TABLE_ARCHS, n=1)
        guess = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(
            f"no syscall table for architecture {arch!r}",
            hint=f"{guess}choose one of: {', '.join(TABLE_ARCHS)} (x86 is the ia32 ABI)",
        )


def load_table(arch: str, directory: Path | None = None) -> SyscallTable:
    """The table of ``arch`` (a kmatrix arch name, or ``x86`` for ia32)."""
    _check_arch(arch)
    return _load(arch, directory or tables_dir())


@functools.cache
def _load(arch: str, directory: Path) -> SyscallTable:
    path = directory / f"{arch}.json"
    hint = f"regenerate it: {REGENERATE} --arch {arch}"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"syscall table {path} is missing", hint=hint) from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"syscall table {path} cannot be read: {e}", hint=hint) from None
    syscalls = doc.get("syscalls") if isinstance(doc, dict) else None
    if not isinstance(syscalls, dict) or doc.get("arch") != arch or not syscalls:
        raise ConfigError(f"syscall table {path} is not the {arch} table (arch/syscalls fields)", hint=hint)
    if not all(isinstance(n, str) and type(v) is int and v >= 0 for n, v in syscalls.items()):
        raise ConfigError(f"syscall table {path} has a non-integer or negative number", hint=hint)
    ordered = dict(sorted(syscalls.items(), key=lambda item: (item[1], item[0])))
    source = doc.get("source")
    return SyscallTable(arch=arch, source=dict(source) if isinstance(source, dict) else {}, by_name=ordered)


def cli_syscalls(arch: str, as_json: bool) -> tuple[str, int]:
    """What ``kmatrix syscalls --arch A [--json]`` prints, and its exit code.

    Text: one ``name number`` line per syscall in number order (names padded to one column).
    JSON: {"arch", "source", "syscalls"} as in the table file.
    """
    table = load_table(arch)
    if as_json:
        doc = {"arch": table.arch, "source": dict(table.source), "syscalls": dict(table.by_name)}
        return json.dumps(doc, indent=2), 0
    width = max(len(name) for name in table.names)
    return "\n".join(f"{name:<{width}} {number}" for name, number in table.items()), 0
