"""The ia32 suite's expectations: the log the 32-bit programs (drivers/tools/ia32_calls.c) write.

Runs in the guest (standard library only). Each program logs every i386 syscall it made with what a
correct driver must report for it, translated to x86_64 (drivers/common/kmx_ia32.h):

    call <source> <x86_64 name | unmapped> <i386 nr> <ret, signed decimal> <flags: - | word,word>
    arg <index> <hex u64>
    enter|exit <param> str <hex> | bytes [<hex>] | strv [<hex of NUL-joined>] | fd2 <a> <b> | fault

`parse_log` turns it into the call dicts verify.verify_calls consumes (as workload.py records them),
plus the i386 side: "ia32_enter" (the i386 number the enter event carries), "ia32_exit" (the exit's,
or None when the exit is a native event: an execve into a 64-bit program, flag exit64) and "source"
(int80 or musl: the entry path).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Begin and end markers: close() of these fds fails with EBADF (the same as workload.py's).
MARK_BEGIN = 0x4B4D5842
MARK_END = 0x4B4D5845
NR_UNMAPPED = (1 << 64) - 1  # the nr of an IA32 event with no x86_64 equivalent
UNMAPPED = "unmapped"
SOURCES = ("int80", "musl")
FLAGS = ("exit64",)
_SIDES = ("enter", "exit")


def _hex(text: str) -> bytes:
    return bytes.fromhex(text)


def _value(kind: str, rest: list[str]) -> Any:
    """The JSON form verify.py compares a decoded param with."""
    if kind == "fault":
        if rest:
            raise ValueError("fault: no value expected")
        return {"fault": True}
    if kind == "fd2":
        if len(rest) != 2:
            raise ValueError("fd2: two ints expected")
        return [int(rest[0]), int(rest[1])]
    if kind not in ("str", "bytes", "strv"):
        raise ValueError(f"unknown value kind {kind!r}")
    if len(rest) > 1:
        raise ValueError(f"{kind}: one hex word expected")
    if kind == "str" and not rest:
        raise ValueError("str: hex expected")
    raw = _hex(rest[0]) if rest else b""
    if kind == "str":
        return raw.decode("utf-8")
    if kind == "bytes":
        return {"hex": raw.hex()}
    return [part.decode("utf-8") for part in raw.split(b"\0")] if rest else []


def _call(words: list[str], tid: int, nr64: dict[str, int]) -> dict[str, Any]:
    if len(words) != 6:
        raise ValueError("call: <source> <name> <i386 nr> <ret> <flags> expected")
    _, source, name, nr32_text, ret_text, flag_text = words
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}")
    if name == UNMAPPED:
        nr = NR_UNMAPPED
    elif name in nr64:
        nr = nr64[name]
    else:
        raise ValueError(f"{name!r} is not an x86_64 syscall")
    flags = [] if flag_text == "-" else flag_text.split(",")
    unknown = [flag for flag in flags if flag not in FLAGS]
    if unknown:
        raise ValueError(f"unknown flag {unknown[0]!r}")
    nr32 = int(nr32_text)
    if nr32 < 0:
        raise ValueError("negative i386 number")
    return {
        "name": name,
        "nr64": nr,
        "tid": tid,
        "ret": int(ret_text),
        "args": {},
        "enter": {},
        "exit": {},
        "ia32_enter": nr32,
        "ia32_exit": None if "exit64" in flags else nr32,
        "source": source,
    }


def parse_log(text: str, tid: int, nr64: dict[str, int]) -> list[dict[str, Any]]:
    """One call dict per `call` line, in order; ValueError naming the line for anything malformed.

    nr64 is the x86_64 syscall table (name -> number); tid the thread that made the calls.
    """
    calls: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words:
            continue
        try:
            kind = words[0]
            if kind == "call":
                calls.append(_call(words, tid, nr64))
                continue
            if not calls:
                raise ValueError(f"{kind} before any call line")
            current = calls[-1]
            if kind == "arg":
                if len(words) != 3:
                    raise ValueError("arg: <index> <hex> expected")
                index = int(words[1])
                if not 0 <= index < 6 or str(index) != words[1]:
                    raise ValueError(f"argument index {words[1]!r} is not 0..5")
                if words[1] in current["args"]:
                    raise ValueError(f"argument {index} given twice")
                value = int(words[2], 16)
                if not 0 <= value < 1 << 64 or words[2].startswith(("-", "+", "0x")):
                    raise ValueError(f"argument {words[2]!r} is not a u64 in hex")
                current["args"][words[1]] = value
            elif kind in _SIDES:
                if len(words) < 3:
                    raise ValueError(f"{kind}: <param> <kind> [value] expected")
                param = words[1]
                if param in current[kind]:
                    raise ValueError(f"{kind} param {param} given twice")
                current[kind][param] = _value(words[2], words[3:])
            else:
                raise ValueError(f"unknown line kind {kind!r}")
        except ValueError as error:
            raise ValueError(f"ia32 log line {number}: {error}: {line!r}") from None
    return calls
