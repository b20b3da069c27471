"""The event schema, read from drivers/common/kmx_events.h itself (never a second copy).

The header is the single definition shared by the three drivers; this module parses its KMX_
defines and its KMX_DECODED table, and decodes events in the target's native byte order. It runs
in the guest (standard library only) and on the host (unit tests decode synthetic events).
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from pathlib import Path

from harness.guest.record import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


_HEADER_NAME = "kmx_events.h"
_DEFINE = re.compile(r"^#define\s+(KMX_[A-Z0-9_]+)\s+(\"[^\"]*\"|-?\d+)\s*(?:/\*.*)?$")
_DECODED_ROW = re.compile(r'X\((\d+),\s*(\w+),\s*"([^"]*)",\s*"([^"]*)"\)')


def header_path() -> Path:
    """The header: $KMX_SCHEMA_HEADER, the repository's drivers/common, or the guest's copy."""
    env = os.environ.get("KMX_SCHEMA_HEADER")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for root in (here.parent.parent.parent, Path("/opt/kmatrix")):
        candidate = root / "drivers" / "common" / _HEADER_NAME
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{_HEADER_NAME} not found (set KMX_SCHEMA_HEADER)")


@record
class ParamSpec:
    name: str
    type: str  # STR, BYTES, SOCKADDR, STRV, FD2, U64, S64
    source: str  # argN, argN/lenM, argN/ret, argN/*lenM, argN/16


@record
class SyscallSpec:
    id: int
    name: str
    enter: tuple[ParamSpec, ...]
    exit: tuple[ParamSpec, ...]


def _params(text: str) -> tuple[ParamSpec, ...]:
    specs = []
    for word in text.split():
        name, kind, source = word.split(":")
        specs.append(ParamSpec(name, kind, source))
    return tuple(specs)


class Schema:
    def __init__(self, defines: dict[str, int | str], syscalls: dict[int, SyscallSpec]) -> None:
        self.defines = defines
        self.syscalls = syscalls
        self.by_name = {spec.name: spec for spec in syscalls.values()}

    def const(self, name: str) -> int:
        value = self.defines[name]
        if not isinstance(value, int):
            raise TypeError(f"{name} is not an integer define")
        return value

    @property
    def param_types(self) -> dict[int, str]:
        return {int(v): k[len("KMX_PT_") :] for k, v in self.defines.items() if k.startswith("KMX_PT_")}

    @property
    def header_struct(self) -> struct.Struct:
        return struct.Struct("=" + str(self.defines["KMX_HDR_FORMAT"]))


def load_schema(path: Path | None = None) -> Schema:
    text = (path or header_path()).read_text()
    defines: dict[str, int | str] = {}
    for line in text.splitlines():
        match = _DEFINE.match(line.strip())
        if match:
            raw = match[2]
            defines[match[1]] = raw.strip('"') if raw.startswith('"') else int(raw)
    table = text[text.index("#define KMX_DECODED(X)") :]
    table = table[: table.index("\n\n")]
    syscalls = {}
    for row in _DECODED_ROW.finditer(table):
        spec = SyscallSpec(int(row[1]), row[2], _params(row[3]), _params(row[4]))
        syscalls[spec.id] = spec
    schema = Schema(defines, syscalls)
    if schema.header_struct.size != schema.const("KMX_HDR_SIZE"):
        raise ValueError(
            f"KMX_HDR_FORMAT is {schema.header_struct.size} bytes, KMX_HDR_SIZE says {schema.const('KMX_HDR_SIZE')}"
        )
    return schema


@record
class Param:
    type: str
    flags: int
    value: Any  # int, bytes, str, list[str], tuple[int, int]

    @property
    def fault(self) -> bool:
        return bool(self.flags & 1)

    @property
    def truncated(self) -> bool:
        return bool(self.flags & 2)


@record
class Event:
    ts_ns: int
    tid: int
    pid: int
    type: int
    params: tuple[Param, ...]
    cpu: int = -1
    cgroup_id: int = 0  # the task's cgroup v2 id (0: unknown), see harness.guest.containers
    pidns: int = 0  # inode number of its active pid namespace (0: unknown)

    # Fixed params (see the header): enter = nr, id, a0..a5; exit = nr, id, ret; IA32 events add
    # ia32_nr after them. KIND_MASK, F_IA32, ENTER and the fixed counts are the header's
    # KMX_EVT_KIND_MASK, KMX_EVT_F_IA32, KMX_EVT_SYS_ENTER, KMX_*_FIXED (a unit test holds them equal).
    KIND_MASK = 255
    F_IA32 = 256
    ENTER = 1
    ENTER_FIXED = 8
    EXIT_FIXED = 3
    UNMAPPED = (1 << 64) - 1

    @property
    def kind(self) -> int:
        """KMX_EVT_SYS_ENTER, KMX_EVT_SYS_EXIT, ... without the flag bits."""
        return self.type & self.KIND_MASK

    @property
    def ia32(self) -> bool:
        return bool(self.type & self.F_IA32)

    @property
    def fixed_count(self) -> int:
        """Params before the decoded ones."""
        base = self.ENTER_FIXED if self.kind == self.ENTER else self.EXIT_FIXED
        return base + 1 if self.ia32 else base

    @property
    def ia32_nr(self) -> int | None:
        """The i386 number of an IA32 event (None for a native one)."""
        if not self.ia32:
            return None
        return int(self.params[self.fixed_count - 1].value)

    @property
    def unmapped(self) -> bool:
        """An IA32 syscall with no x86_64 equivalent."""
        return self.ia32 and self.nr == self.UNMAPPED

    @property
    def nr(self) -> int:
        return int(self.params[0].value)

    @property
    def sc_id(self) -> int:
        return int(self.params[1].value)

    @property
    def args(self) -> tuple[int, ...]:
        return tuple(int(p.value) for p in self.params[2:8])

    @property
    def ret(self) -> int:
        return int(self.params[2].value)


class Decoder:
    """Decodes one event at a time from a buffer, in native byte order."""

    def __init__(self, schema: Schema, byteorder: str = "=") -> None:
        self.schema = schema
        self.header = struct.Struct(byteorder + str(schema.defines["KMX_HDR_FORMAT"]))
        self.byteorder = byteorder
        self.types = schema.param_types
        self._u64 = struct.Struct(byteorder + "Q")
        self._s64 = struct.Struct(byteorder + "q")
        self._fd2 = struct.Struct(byteorder + "ii")

    def decode(
        self, data: bytes | bytearray | memoryview | mmap.mmap, offset: int = 0, cpu: int = -1
    ) -> tuple[Event, int]:
        """The event at offset and its total length (hdr.len)."""
        ts, tid, pid, length, kind, nparams, cgroup_id, pidns, _reserved = self.header.unpack_from(data, offset)
        if length < self.header.size or nparams > 64:
            raise ValueError(f"corrupt event at {offset}: len {length}, nparams {nparams}")
        lens = struct.unpack_from(f"{self.byteorder}{nparams}H", data, offset + self.header.size)
        pos = offset + self.header.size + 2 * nparams
        params = []
        for plen in lens:
            if plen < 2 or pos + plen > offset + length:
                raise ValueError(f"corrupt param length {plen} in event at {offset}")
            ptype, flags = data[pos], data[pos + 1]
            payload = bytes(data[pos + 2 : pos + plen])
            params.append(Param(self.types.get(ptype, f"?{ptype}"), flags, self._value(ptype, payload)))
            pos += plen
        return Event(ts, tid, pid, kind, tuple(params), cpu, cgroup_id, pidns), length

    def _value(self, ptype: int, payload: bytes) -> Any:
        kind = self.types.get(ptype)
        if kind == "U64" and len(payload) == 8:
            return self._u64.unpack(payload)[0]
        if kind == "S64" and len(payload) == 8:
            return self._s64.unpack(payload)[0]
        if kind == "STR":
            return payload.decode("utf-8", errors="replace")
        if kind == "STRV":
            return [part.decode("utf-8", errors="replace") for part in payload.split(b"\0")] if payload else []
        if kind == "FD2" and len(payload) == 8:
            return self._fd2.unpack(payload)
        return payload


def encode_event(
    schema: Schema, ts: int, tid: int, pid: int, kind: int, params: list[tuple[str, int, bytes]], byteorder: str = "=",
    *, cgroup_id: int = 0, pidns: int = 0,
) -> bytes:
    """Build an event exactly as the drivers do (for tests and the fault drills)."""
    codes = {v: k for k, v in schema.param_types.items()}
    bodies = [bytes([codes[ptype], flags]) + payload for ptype, flags, payload in params]
    header_size = schema.const("KMX_HDR_SIZE")
    unpadded = header_size + 2 * len(bodies) + sum(len(b) for b in bodies)
    align = schema.const("KMX_ALIGN")
    total = (unpadded + align - 1) // align * align
    head = struct.pack(byteorder + str(schema.defines["KMX_HDR_FORMAT"]), ts, tid, pid, total, kind, len(bodies),
                       cgroup_id, pidns, 0)
    lens = struct.pack(f"{byteorder}{len(bodies)}H", *(len(b) for b in bodies))
    return head + lens + b"".join(bodies) + b"\0" * (total - unpadded)
