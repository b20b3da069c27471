"""IA32 events: the schema's flag and extra fixed param, decoded and verified call by call."""

from __future__ import annotations

import struct

from harness.guest.ia32 import chain_argv, marked_sequences
from harness.guest.schema import Decoder, Event, encode_event, load_schema
from harness.guest.verify import verify_calls

SCHEMA = load_schema()
ENTER, EXIT = SCHEMA.const("KMX_EVT_SYS_ENTER"), SCHEMA.const("KMX_EVT_SYS_EXIT")
IA32 = SCHEMA.const("KMX_EVT_F_IA32")
NR64 = {"lseek": 8, "openat": 257, "execve": 59, "close": 3}


def u64(value: int) -> tuple[str, int, bytes]:
    return ("U64", 0, struct.pack("=Q", value & (1 << 64) - 1))


def s64(value: int) -> tuple[str, int, bytes]:
    return ("S64", 0, struct.pack("=q", value))


def decode(blob: bytes) -> Event:
    return Decoder(SCHEMA).decode(blob)[0]


def enter(nr: int, args: list[int], ia32_nr: int | None, extra: list[tuple[str, int, bytes]] | None = None) -> Event:
    sc_id = SCHEMA.by_name["lseek"].id if nr == 8 else 0
    params = [u64(nr), u64(sc_id), *(u64(a) for a in args)]
    kind = ENTER
    if ia32_nr is not None:
        params.append(u64(ia32_nr))
        kind |= IA32
    return decode(encode_event(SCHEMA, 1, 100, 100, kind, params + (extra or [])))


def exit_(nr: int, ret: int, ia32_nr: int | None) -> Event:
    params = [u64(nr), u64(0), s64(ret)]
    kind = EXIT
    if ia32_nr is not None:
        params.append(u64(ia32_nr))
        kind |= IA32
    return decode(encode_event(SCHEMA, 2, 100, 100, kind, params))


def llseek_call(**over: object) -> dict[str, object]:
    call: dict[str, object] = {"name": "lseek", "nr64": 8, "tid": 100, "ret": 0x10000000A,
                               "args": {"0": 3, "1": 0x10000000A, "2": 0}, "enter": {}, "exit": {},
                               "ia32_enter": 140, "ia32_exit": 140}
    call.update(over)
    return call


def test_event_constants_are_the_headers() -> None:
    assert SCHEMA.const("KMX_EVT_KIND_MASK") == Event.KIND_MASK
    assert Event.F_IA32 == IA32
    assert Event.ENTER == ENTER
    assert SCHEMA.const("KMX_ENTER_FIXED") == Event.ENTER_FIXED
    assert SCHEMA.const("KMX_EXIT_FIXED") == Event.EXIT_FIXED
    assert SCHEMA.const("KMX_IA32_EXTRA_FIXED") == 1
    assert SCHEMA.const("KMX_NR_IA32_UNMAPPED_VALUE") == Event.UNMAPPED


def test_ia32_event_carries_its_i386_number_after_the_fixed_params() -> None:
    event = enter(8, [3, 0x10000000A, 0, 0, 0, 0], 140)
    assert event.kind == ENTER and event.ia32 and event.ia32_nr == 140
    assert event.nr == 8 and event.args == (3, 0x10000000A, 0, 0, 0, 0)
    assert event.fixed_count == 9
    out = exit_(8, 0x10000000A, 140)
    assert out.ret == 0x10000000A and out.ia32_nr == 140 and out.fixed_count == 4
    native = exit_(8, 5, None)
    assert not native.ia32 and native.ia32_nr is None and native.fixed_count == 3


def test_unmapped_event() -> None:
    event = enter(Event.UNMAPPED, [0, 0, 0, 0, 0, 0], 17)
    assert event.unmapped and event.ia32_nr == 17
    assert not enter(8, [0] * 6, 140).unmapped


def test_translated_call_verifies() -> None:
    events = [enter(8, [3, 0x10000000A, 0, 0, 0, 0], 140), exit_(8, 0x10000000A, 140)]
    verdict = verify_calls(SCHEMA, events, [llseek_call()], NR64)
    assert verdict.ok, verdict.mismatches


def test_wrong_i386_number_or_native_event_is_a_mismatch() -> None:
    events = [enter(8, [3, 0x10000000A, 0, 0, 0, 0], 19), exit_(8, 0x10000000A, 19)]
    verdict = verify_calls(SCHEMA, events, [llseek_call()], NR64)
    assert verdict.mismatches[0]["what"] == "enter ia32_nr"
    native = [enter(8, [3, 0x10000000A, 0, 0, 0, 0], None), exit_(8, 0x10000000A, None)]
    verdict = verify_calls(SCHEMA, native, [llseek_call()], NR64)
    assert verdict.mismatches[0]["what"] == "enter event kind"


def test_execve_exit_of_the_new_personality() -> None:
    call = {"name": "execve", "nr64": 59, "tid": 100, "ret": 0, "args": {}, "enter": {}, "exit": {},
            "ia32_enter": 11, "ia32_exit": None}
    events = [enter(59, [0] * 6, 11), exit_(59, 0, None)]
    assert verify_calls(SCHEMA, events, [call], NR64).ok
    events = [enter(59, [0] * 6, 11), exit_(59, 0, 11)]
    verdict = verify_calls(SCHEMA, events, [call], NR64)
    assert verdict.mismatches[0]["what"] == "exit event kind"


def test_native_capture_calls_reject_ia32_events() -> None:
    call = {"name": "lseek", "tid": 100, "ret": 0, "args": {}, "enter": {}, "exit": {}}
    verdict = verify_calls(SCHEMA, [enter(8, [0] * 6, 19), exit_(8, 0, 19)], [call], NR64)
    assert verdict.mismatches[0]["what"] == "enter event kind"


def test_marked_sequences_finds_every_run() -> None:
    begin, end = 0x4B4D5842, 0x4B4D5845
    seq = [(6, begin), (4, 1), (5, 2), (6, end), (11, 0), (6, begin), (20, None), (6, end), (6, begin), (1, 0)]
    assert marked_sequences(seq, 6) == [[4, 5], [20]]


def test_chain_execs_musl_then_a_64_bit_program() -> None:
    argv = chain_argv("/t", "/w", "T1")
    assert argv[0] == "ia32_int80" and argv[3] == "/t/ia32_musl" and argv[7] == "/bin/busybox"
