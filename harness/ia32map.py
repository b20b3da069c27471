"""The IA32 -> x86_64 syscall map, read from drivers/common/ia32_map.json.

``drivers/common/gen_ia32_map.py`` writes the JSON together with ``kmx_ia32_map.h``, the tables the
drivers translate 32-bit calls with (``kmx_ia32.h``). This module only reads the JSON: to print it
(``kmatrix ia32-map``) and to translate an i386 call exactly as ``kmx_ia32_translate`` does, so the
host can predict the events a driver reports for a 32-bit task.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.paths import project_root

REGENERATE = "python drivers/common/gen_ia32_map.py"
HOWS = ("direct", "equivalent", "demultiplexed", "unmapped")

# kmx_ia32.h: sizes, the msgrcv demultiplexing and the argument codes.
TABLE = 512
SUB_TABLE = 32
IPC_MSGRCV = 12
IPC_MSGRCV_V1 = 25
ARG_PAGES = 0x20
ARG_PAIR = 0x40
ARG_USER32 = 0x80
ARG_ZERO = 0xFF
NR_UNMAPPED = (1 << 64) - 1
_U32 = 0xFFFFFFFF

# Reads size bytes of user memory at an address: the bytes, or None where the read would fault.
ReadUser = Callable[[int, int], bytes | None]


def map_path() -> Path:
    return project_root() / "drivers" / "common" / "ia32_map.json"


@dataclass(frozen=True)
class MapEntry:
    """One i386 number: how it maps, and kmx_ia32_map[ia32_nr] as the drivers have it."""

    ia32_nr: int
    ia32_name: str
    how: str  # one of HOWS
    kind: str  # KMX_IA32_<kind>
    x86_64_nr: int | None  # None: unmapped or demultiplexed
    x86_64_name: str | None
    count: int  # USER_ARRAY: u32 words read from the array at register 0
    args: tuple[int, ...]  # six argument codes
    transform: str
    reason: str  # unmapped: why


@dataclass(frozen=True)
class SubEntry:
    """A socketcall or ipc call (kmx_ia32_socketcall[call], kmx_ia32_ipc[call])."""

    call: int
    name: str
    x86_64_nr: int
    x86_64_name: str
    count: int  # socketcall: u32 words read from the array at register 1
    args: tuple[int, ...]
    transform: str


@dataclass(frozen=True)
class Ia32Map:
    generated_by: str
    sources: Mapping[str, Any]
    counts: Mapping[str, int]
    entries: tuple[MapEntry, ...]  # in number order
    socketcall: tuple[SubEntry, ...]
    ipc: tuple[SubEntry, ...]
    gaps: tuple[int, ...]  # numbers below the highest that are not i386 syscalls
    by_nr: Mapping[int, MapEntry] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_nr", {e.ia32_nr: e for e in self.entries})

    def entry(self, ia32_nr: int) -> MapEntry | None:
        return self.by_nr.get(ia32_nr)

    def named(self, ia32_name: str) -> MapEntry | None:
        return next((e for e in self.entries if e.ia32_name == ia32_name), None)

    def sub_entry(self, kind: str, call: int) -> SubEntry | None:
        """The socketcall (kind SOCKETCALL) or ipc (IPC) table's entry for call."""
        table = self.socketcall if kind == "SOCKETCALL" else self.ipc
        return next((s for s in table if s.call == call), None)


# -- loading ----------------------------------------------------------------------------------------


def _bad(path: Path, what: str) -> ConfigError:
    return ConfigError(f"IA32 map {path}: {what}", hint=f"regenerate it: {REGENERATE}")


def _codes(raw: Any, path: Path) -> tuple[int, ...]:
    if not isinstance(raw, list) or len(raw) != 6 or not all(type(c) is int and 0 <= c <= 0xFF for c in raw):
        raise _bad(path, f"argument codes {raw!r} are not six bytes")
    return tuple(raw)


def _map_entry(raw: Mapping[str, Any], path: Path) -> MapEntry:
    try:
        entry = MapEntry(**{**raw, "args": _codes(raw.get("args"), path)})
    except TypeError as error:
        raise _bad(path, f"entry {raw.get('ia32_nr')!r}: {error}") from None
    if entry.how not in HOWS or type(entry.ia32_nr) is not int or not 0 <= entry.ia32_nr < TABLE:
        raise _bad(path, f"entry {entry.ia32_nr!r} ({entry.ia32_name}) is malformed")
    return entry


def _sub_entry(raw: Mapping[str, Any], path: Path) -> SubEntry:
    try:
        sub = SubEntry(**{**raw, "args": _codes(raw.get("args"), path)})
    except TypeError as error:
        raise _bad(path, f"sub-table entry {raw.get('call')!r}: {error}") from None
    if type(sub.call) is not int or not 0 <= sub.call < SUB_TABLE:
        raise _bad(path, f"sub-table call {sub.call!r} is out of range")
    return sub


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _bad(path, "missing") from None
    except (OSError, ValueError) as error:
        raise _bad(path, f"cannot be read: {error}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise _bad(path, "has no entries list")
    return doc


def load_map(path: Path | None = None) -> Ia32Map:
    """The committed map (or the one at path)."""
    return _load(path or map_path())


@functools.cache
def _load(path: Path) -> Ia32Map:
    doc = _read(path)
    entries = tuple(sorted((_map_entry(e, path) for e in doc["entries"]), key=lambda e: e.ia32_nr))
    if len({e.ia32_nr for e in entries}) != len(entries):
        raise _bad(path, "an i386 number has two entries")
    return Ia32Map(
        generated_by=str(doc.get("generated_by", "")),
        sources=dict(doc.get("sources") or {}),
        counts={str(k): int(v) for k, v in (doc.get("counts") or {}).items()},
        entries=entries,
        socketcall=tuple(_sub_entry(s, path) for s in doc.get("socketcall") or []),
        ipc=tuple(_sub_entry(s, path) for s in doc.get("ipc") or []),
        gaps=tuple(int(g["ia32_nr"]) for g in doc.get("gaps") or []),
    )


# -- translating, as kmx_ia32_translate does --------------------------------------------------------


@dataclass(frozen=True)
class Translation:
    nr: int  # the x86_64 number, or NR_UNMAPPED
    args: tuple[int, ...]  # the x86_64 call's six arguments (the raw 32-bit registers when unmapped)
    kind: str  # the i386 number's kind (LLSEEK matters at exit)


def _pick(values: Sequence[int], index: int) -> int:
    index &= 7
    return values[index] if index < 6 else 0


def _read_u32(read_user: ReadUser, address: int) -> int | None:
    data = read_user(address, 4)
    return None if data is None else int.from_bytes(data[:4], "little")


def arg_value(code: int, values: Sequence[int], read_user: ReadUser) -> int:
    """One argument code applied to six registers or words (kmx_ia32_arg)."""
    if code == ARG_ZERO:
        return 0
    if code & ARG_USER32:
        word = _read_u32(read_user, _pick(values, code) + (4 if code & 8 else 0))
        return word or 0
    if code & ARG_PAIR:
        return _pick(values, code) | _pick(values, code >> 3) << 32
    if code & ARG_PAGES:
        return _pick(values, code) << 12
    return _pick(values, code)


def _words(read_user: ReadUser, base: int, count: int) -> list[int] | None:
    """count u32 words at base, padded with zeros to six; None on a fault (kmx_ia32_words)."""
    words = [0] * 6
    for i in range(min(count, 6)):
        word = _read_u32(read_user, base + 4 * i)
        if word is None:
            return None
        words[i] = word
    return words


def translate(ia32: Ia32Map, nr32: int, regs_in: Sequence[int], read_user: ReadUser) -> Translation:
    """The x86_64 call a driver reports for i386 syscall nr32 with registers regs_in."""
    regs = [r & _U32 for r in regs_in[:6]]
    unmapped = Translation(NR_UNMAPPED, tuple(regs), "UNMAPPED")
    entry = ia32.entry(nr32) if 0 <= nr32 < TABLE else None
    if entry is None or entry.kind == "UNMAPPED":
        return unmapped
    codes, count, source = entry.args, entry.count, regs
    nr = entry.x86_64_nr or 0
    if entry.kind in ("SOCKETCALL", "IPC"):
        call = regs[0] if entry.kind == "SOCKETCALL" else regs[0] & 0xFFFF
        if entry.kind == "IPC" and call == IPC_MSGRCV and regs[0] >> 16:
            call = IPC_MSGRCV_V1
        sub = ia32.sub_entry(entry.kind, call) if call < SUB_TABLE else None
        if sub is None:
            return unmapped
        codes, count, nr = sub.args, sub.count, sub.x86_64_nr
    if entry.kind in ("SOCKETCALL", "USER_ARRAY"):
        words = _words(read_user, regs[1 if entry.kind == "SOCKETCALL" else 0], count)
        if words is None:
            return unmapped
        source = words
    return Translation(nr, tuple(arg_value(c, source, read_user) for c in codes), entry.kind)


def exit_ret(call: Translation, regs_in: Sequence[int], ret: int, read_user: ReadUser) -> int:
    """The return value a driver reports: _llseek's 0 becomes the offset stored at register 3."""
    if call.kind != "LLSEEK" or ret != 0:
        return ret
    data = read_user(regs_in[3] & _U32, 8)
    return ret if data is None else int.from_bytes(data[:8], "little", signed=True)


# -- the command line -------------------------------------------------------------------------------


def _target(nr: int | None, name: str | None) -> str:
    return f"{nr} {name}"


def entry_line(e: MapEntry, width: int) -> str:
    head = f"{e.ia32_nr:>3} {e.ia32_name:<{width}} -> "
    if e.how == "unmapped":
        return f"{head}unmapped  [{e.reason}]"
    if e.how == "demultiplexed":
        return f"{head}demultiplexed  [{e.transform}: see below]"
    detail = f"{e.how}; {e.transform}" if e.transform else e.how
    return f"{head}{_target(e.x86_64_nr, e.x86_64_name)}  [{detail}]"


def sub_lines(title: str, subs: Sequence[SubEntry]) -> list[str]:
    width = max((len(s.name) for s in subs), default=0)
    lines = ["", title]
    for s in subs:
        lines.append(f"{s.call:>3} {s.name:<{width}} -> {_target(s.x86_64_nr, s.x86_64_name)}  [{s.transform}]")
    return lines


def counts_line(ia32: Ia32Map) -> str:
    counts = ", ".join(f"{ia32.counts.get(how, 0)} {how}" for how in HOWS)
    return f"{ia32.counts.get('ia32_numbers', len(ia32.entries))} i386 syscalls: {counts}; {len(ia32.gaps)} gaps"


def render_text(ia32: Ia32Map) -> str:
    width = max(len(e.ia32_name) for e in ia32.entries)
    lines = [entry_line(e, width) for e in ia32.entries]
    lines += sub_lines("socketcall (ebx = call; w0..w5 = the u32 words at ecx):", ia32.socketcall)
    ipc_title = f"ipc (call = ebx & 0xffff, {IPC_MSGRCV_V1} for msgrcv with ebx >> 16; first..fifth = ecx..ebp):"
    lines += sub_lines(ipc_title, ia32.ipc)
    if ia32.gaps:
        lines += ["", f"not i386 syscall numbers: {', '.join(str(g) for g in ia32.gaps)}"]
    return "\n".join([*lines, "", counts_line(ia32)])


def cli_ia32_map(as_json: bool) -> tuple[str, int]:
    """What ``kmatrix ia32-map [--json]`` prints, and its exit code."""
    ia32 = load_map()
    if as_json:
        return map_path().read_text(encoding="utf-8").rstrip("\n"), 0
    return render_text(ia32), 0
