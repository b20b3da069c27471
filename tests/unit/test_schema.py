"""The event schema comes from the C header; decoding and verification work on synthetic events."""

from __future__ import annotations

import struct

import pytest

from harness.guest.kmxdev import ioctl_number
from harness.guest.schema import Decoder, Schema, encode_event, load_schema
from harness.guest.verify import marked_sequence, timestamps_monotonic, verify_calls


@pytest.fixture(scope="module")
def schema() -> Schema:
    return load_schema()


def u64(value: int) -> tuple[str, int, bytes]:
    return ("U64", 0, struct.pack("=Q", value & (2**64 - 1)))


def s64(value: int) -> tuple[str, int, bytes]:
    return ("S64", 0, struct.pack("=q", value))


def test_header_constants(schema: Schema) -> None:
    assert schema.const("KMX_HDR_SIZE") == 48 == schema.header_struct.size
    assert schema.const("KMX_EVT_SYS_ENTER") == 1
    assert schema.by_name["openat"].enter[0].name == "path"
    assert schema.by_name["read"].exit[0].source == "arg1/ret"
    assert len(schema.syscalls) == schema.const("KMX_SC_MAX") - 1


@pytest.mark.parametrize("order", ["<", ">"])
def test_round_trip_both_byte_orders(schema: Schema, order: str) -> None:
    params = [("U64", 0, struct.pack(order + "Q", 257)), ("STR", 2, b"/tmp/x"), ("BYTES", 1, b""),
              ("STRV", 0, b"a\0bc"), ("FD2", 0, struct.pack(order + "ii", 3, 4))]
    raw = encode_event(schema, 10, 11, 12, 1, params, byteorder=order, cgroup_id=4242, pidns=4026531836)
    assert len(raw) % 8 == 0
    event, length = Decoder(schema, order).decode(raw)
    assert length == len(raw)
    assert (event.ts_ns, event.tid, event.pid, event.type) == (10, 11, 12, 1)
    assert (event.cgroup_id, event.pidns) == (4242, 4026531836)
    assert [p.value for p in event.params] == [257, "/tmp/x", b"", ["a", "bc"], (3, 4)]
    assert event.params[1].truncated and event.params[2].fault


def test_corrupt_length_is_refused(schema: Schema) -> None:
    raw = bytearray(encode_event(schema, 1, 2, 3, 1, [u64(1)]))
    struct.pack_into("=H", raw, schema.const("KMX_HDR_SIZE"), 200)  # param length beyond the event
    with pytest.raises(ValueError, match="corrupt"):
        Decoder(schema).decode(bytes(raw))


def enter(schema: Schema, tid: int, nr: int, args: list[int], extra: list[tuple[str, int, bytes]]) -> bytes:
    return encode_event(schema, 1, tid, tid, 1, [u64(nr), u64(0), *(u64(a) for a in args), *extra])


def leave(schema: Schema, tid: int, nr: int, ret: int, extra: list[tuple[str, int, bytes]] | None = None) -> bytes:
    return encode_event(schema, 2, tid, tid, 2, [u64(nr), u64(0), s64(ret), *(extra or [])])


def decode_all(schema: Schema, blobs: list[bytes]) -> list:  # type: ignore[type-arg]
    return [Decoder(schema).decode(blob)[0] for blob in blobs]


def test_verify_accepts_matching_and_reports_first_mismatch(schema: Schema) -> None:
    nr_of = {"write": 1, "getpid": 39}
    call = {"name": "write", "nr": 1, "tid": 7, "ret": 5, "args": {"0": 3, "1": 4096, "2": 5},
            "enter": {"data": {"hex": b"hello".hex()}}, "exit": {}}
    good = decode_all(schema, [enter(schema, 7, 1, [3, 4096, 5, 0, 0, 0], [("BYTES", 0, b"hello")]),
                               leave(schema, 7, 1, 5)])
    verdict = verify_calls(schema, good, [call], nr_of)
    assert verdict.ok and verdict.verified == 1

    swapped = decode_all(schema, [enter(schema, 7, 1, [5, 4096, 3, 0, 0, 0], [("BYTES", 0, b"hello")]),
                                  leave(schema, 7, 1, 5)])
    verdict = verify_calls(schema, swapped, [call], nr_of)
    assert not verdict.ok
    assert verdict.mismatches[0] == {"call": "write", "tid": 7, "what": "arg0", "expected": "0x3", "got": "0x5"}

    wrong_ret = decode_all(schema, [enter(schema, 7, 1, [3, 4096, 5, 0, 0, 0], [("BYTES", 0, b"hello")]),
                                    leave(schema, 7, 1, -9)])
    assert verify_calls(schema, wrong_ret, [call], nr_of).mismatches[0]["what"] == "return value"

    missing_exit = decode_all(schema, [enter(schema, 7, 1, [3, 4096, 5, 0, 0, 0], [("BYTES", 0, b"hello")])])
    assert verify_calls(schema, missing_exit, [call], nr_of).mismatches[0]["what"] == "exit event after enter"

    assert verify_calls(schema, [], [call], nr_of).mismatches[0]["got"] == "none found"


def test_marked_sequence_and_monotonic(schema: Schema) -> None:
    seq = [(3, 0x4B4D5842), (1, 5), (39, None), (3, 0x4B4D5845), (1, 1)]
    assert marked_sequence(seq, 3, 0x4B4D5842, 0x4B4D5845) == [1, 39]
    assert marked_sequence(seq[:3], 3, 0x4B4D5842, 0x4B4D5845) == [1, 39]
    events = decode_all(schema, [leave(schema, 1, 1, 0), leave(schema, 1, 1, 0)])
    assert timestamps_monotonic(events) == []


@pytest.mark.parametrize(("machine", "direction", "size", "expected"), [
    ("x86_64", "r", 32, 0x80206B04),
    ("aarch64", "", 0, 0x6B01),
    ("s390x", "w", 4, 0x40046B03),
    ("ppc64le", "r", 32, 0x40206B04),
    ("ppc64le", "", 0, 0x20006B01),
    ("ppc64le", "w", 8, 0x80086B06),
    ("riscv64", "rw", 32, 0xC0206B05),
])
def test_ioctl_numbers_per_arch(machine: str, direction: str, size: int, expected: int) -> None:
    nr = {"r": 4, "": 1, "w": 3 if size == 4 else 6, "rw": 5}[direction]
    assert ioctl_number(machine, direction, 107, nr, size) == expected
