"""The console protocol: frames survive kernel noise, and nothing unverified becomes a message."""

from __future__ import annotations

import pytest

from harness import protocol
from harness.protocol import CorruptFrame, Frame, FrameScanner


def frames(items: list[Frame | CorruptFrame]) -> list[Frame]:
    return [item for item in items if isinstance(item, Frame)]


def test_round_trip() -> None:
    line = protocol.encode(7, {"type": "ready", "n": [1, 2], "s": "h\u00e9llo\n"})
    got = FrameScanner().feed("boot noise\r\n" + line + "\r\n")
    assert got == [Frame(7, {"type": "ready", "n": [1, 2], "s": "h\u00e9llo\n"})]


def test_split_across_reads_at_every_offset() -> None:
    line = protocol.encode(3, {"type": "result", "id": 1, "stdout": "x" * 50})
    for cut in range(1, len(line)):
        scanner = FrameScanner()
        assert scanner.feed(line[:cut]) == []
        assert frames(scanner.feed(line[cut:])) == [Frame(3, {"type": "result", "id": 1, "stdout": "x" * 50})]


def test_kernel_line_inside_a_frame_is_removed() -> None:
    line = protocol.encode(4, {"type": "ready", "release": "6.12.0"})
    middle = len(line) // 2
    noisy = line[:middle] + "[   12.345678] random: crng init done\r\n" + line[middle:]
    assert frames(FrameScanner().feed(noisy)) == [Frame(4, {"type": "ready", "release": "6.12.0"})]


def test_kernel_line_with_leading_newline_inside_a_frame() -> None:
    line = protocol.encode(5, {"a": 1})
    noisy = line[:20] + "\r\n[    3.000001] virtio: something\r\n" + line[20:]
    assert frames(FrameScanner().feed(noisy)) == [Frame(5, {"a": 1})]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.replace('"ok"', '"OK"'),  # payload changed: checksum fails
        lambda s: s.replace("|", "|9", 2),  # declared length changed
        lambda s: s[:-12] + s[-11:],  # one byte lost
    ],
)
def test_corruption_is_reported_never_parsed(mutate: object) -> None:
    line = protocol.encode(9, {"type": "result", "status": "ok"})
    bad = mutate(line)  # type: ignore[operator]
    got = FrameScanner().feed(bad)
    assert frames(got) == []
    assert len(got) == 1 and isinstance(got[0], CorruptFrame)


def test_frame_cut_short_by_a_new_frame() -> None:
    first = protocol.encode(1, {"a": 1})
    second = protocol.encode(2, {"b": 2})
    got = FrameScanner().feed(first[:15] + "\n" + second)
    assert isinstance(got[0], CorruptFrame)
    assert frames(got) == [Frame(2, {"b": 2})]


def test_agent_exit_mid_message_yields_nothing() -> None:
    scanner = FrameScanner()
    line = protocol.encode(1, {"type": "result", "id": 1})
    assert scanner.feed(line[: len(line) - 3]) == []
    assert scanner.pending.startswith(protocol.START)


def test_non_object_payload_rejected() -> None:
    raw = b"[1,2]"
    body = f"1|{len(raw)}|{protocol.checksum(raw)}|[1,2]"
    with pytest.raises(protocol.ProtocolError, match="not an object"):
        protocol.decode_body(body)
