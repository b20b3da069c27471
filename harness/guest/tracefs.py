"""The independent oracle: the kernel's own raw_syscalls tracepoints, read through tracefs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path("/sys/kernel/tracing")
_ENTER = re.compile(r"-(\d+)\s+\[(\d+)\].*?sys_enter: NR (-?\d+) \(([0-9a-f, ]*)\)")
_EXIT = re.compile(r"-(\d+)\s+\[(\d+)\].*?sys_exit: NR (-?\d+) = (-?\d+)")


def _write(path: Path, value: str) -> None:
    path.write_text(value)


class SyscallTrace:
    """raw_syscalls:sys_enter/sys_exit for one thread, via a `common_pid` filter."""

    def __init__(self, root: Path = ROOT) -> None:
        self.root = root
        self.events = root / "events" / "raw_syscalls"
        if not self.events.is_dir():
            raise RuntimeError(f"{self.events} missing: tracefs not mounted or no syscall tracepoints")

    def start(self, tid: int) -> None:
        _write(self.root / "tracing_on", "0")
        _write(self.root / "trace", "")
        _write(self.root / "buffer_size_kb", "4096")
        _write(self.events / "filter", f"common_pid == {tid}")
        _write(self.events / "enable", "1")
        _write(self.root / "tracing_on", "1")

    def stop(self) -> str:
        _write(self.root / "tracing_on", "0")
        _write(self.events / "enable", "0")
        _write(self.events / "filter", "0")
        return (self.root / "trace").read_text(errors="replace")


def parse_enters(text: str, tid: int) -> list[tuple[int, int | None]]:
    """(nr, first argument) of every sys_enter line of that thread, in order."""
    out: list[tuple[int, int | None]] = []
    for line in text.splitlines():
        match = _ENTER.search(line)
        if match and int(match[1]) == tid:
            args = [a.strip() for a in match[4].split(",") if a.strip()]
            out.append((int(match[3]), int(args[0], 16) if args else None))
    return out


def count_lines(text: str, tid: int) -> tuple[int, int]:
    enters = sum(1 for line in text.splitlines() if (m := _ENTER.search(line)) and int(m[1]) == tid)
    exits = sum(1 for line in text.splitlines() if (m := _EXIT.search(line)) and int(m[1]) == tid)
    return enters, exits
