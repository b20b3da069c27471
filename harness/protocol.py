"""Framing shared by the host and the guest agent (standard library only: it runs in the guest).

Both sides talk over the guest's serial console, where the kernel may print at any moment, even in
the middle of a line the agent is writing. Every message is therefore one framed line:

    <<KMX|<seq>|<len>|<crc32>|<json payload>|KMX>>

`len` and `crc32` cover the payload bytes exactly (UTF-8 of ASCII-only JSON). The scanner removes
kernel log lines that landed inside a frame (they carry a `[ seconds.micro]` timestamp, forced on by
`printk.time=1`) and only accepts a frame whose length and checksum match; anything else is reported
as corrupt, so the receiver can ask for it again by sequence number. Nothing unverified is ever
parsed into a result.
"""

from __future__ import annotations

import json
import re
import zlib

from harness.guest.record import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


VERSION = 1
START = "<<KMX|"
END = "|KMX>>"
# A kernel log line as printed on a console with printk.time=1: "[   12.345678] message\r\n".
# Some consoles also prefix it with a newline when the cursor was mid-line.
_KERNEL_LINE = re.compile(r"\r?\n?\[\s*\d+\.\d+\][^\n]*\r?\n")
_HEADER = re.compile(r"(\d+)\|(\d+)\|([0-9a-f]{8})\|")
# Frames longer than this are refused: a corrupted length field must not make the scanner wait forever.
MAX_PAYLOAD = 16 * 1024 * 1024
# Test-only: the protocol fault drill's guard-removal proof (tests/faults/test_protocol_faults.py)
# turns checksum verification off to show a tampered frame would then be taken for a result.
VERIFY_CHECKSUM = True


class ProtocolError(Exception):
    """A frame that cannot be trusted."""


def checksum(data: bytes) -> str:
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def encode(seq: int, message: dict[str, Any]) -> str:
    """One framed line (without the trailing newline)."""
    payload = json.dumps(message, ensure_ascii=True, separators=(",", ":"), sort_keys=True)
    raw = payload.encode("ascii")
    return f"{START}{seq}|{len(raw)}|{checksum(raw)}|{payload}{END}"


@record
class Frame:
    seq: int
    message: dict[str, Any]


@record
class CorruptFrame:
    """A frame start was seen but its content did not verify; `seq` is known if the header survived."""

    seq: int | None
    reason: str
    raw: str


def decode_body(body: str) -> Frame:
    """Verify and decode what lies between START and END (kernel lines already removed)."""
    header = _HEADER.match(body)
    if not header:
        raise ProtocolError(f"bad frame header: {body[:40]!r}")
    seq, length, crc = int(header[1]), int(header[2]), header[3]
    payload = body[header.end() :]
    raw = payload.encode("utf-8", errors="replace")
    if len(raw) != length:
        raise ProtocolError(f"frame {seq}: length {len(raw)} != declared {length}")
    if VERIFY_CHECKSUM and checksum(raw) != crc:
        raise ProtocolError(f"frame {seq}: checksum {checksum(raw)} != declared {crc}")
    try:
        message = json.loads(payload)
    except ValueError as error:
        raise ProtocolError(f"frame {seq}: payload is not JSON: {error}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"frame {seq}: payload is not an object")
    return Frame(seq, message)


def strip_kernel_lines(text: str) -> str:
    return _KERNEL_LINE.sub("", text)


class FrameScanner:
    """Incremental scanner: feed console text, get verified frames and corrupt-frame reports back."""

    def __init__(self) -> None:
        self._buffer = ""

    @property
    def pending(self) -> str:
        """Text after the last complete frame (a frame in progress, or console noise)."""
        return self._buffer

    @property
    def incomplete(self) -> bool:
        """A frame has started and not ended: if the sender stops now (EOF), that frame is lost."""
        return self._buffer.startswith(START)

    def feed(self, text: str) -> list[Frame | CorruptFrame]:
        self._buffer += text
        results: list[Frame | CorruptFrame] = []
        while True:
            start = self._buffer.find(START)
            if start < 0:
                # Keep a tail that could be the beginning of a marker split across reads.
                self._buffer = self._buffer[-(len(START) - 1) :]
                return results
            end = self._buffer.find(END, start + len(START))
            if end < 0:
                self._buffer = self._buffer[start:]
                if len(self._buffer) > MAX_PAYLOAD + 4096:
                    results.append(CorruptFrame(None, "frame never ended", self._buffer[:200]))
                    self._buffer = self._buffer[len(START) :]
                    continue
                return results
            nested = self._buffer.find(START, start + len(START), end)
            if nested >= 0:
                # A frame start inside another frame: the first one lost its end; drop it.
                results.append(_corrupt(self._buffer[start + len(START) : nested], "frame cut short"))
                self._buffer = self._buffer[nested:]
                continue
            body = strip_kernel_lines(self._buffer[start + len(START) : end])
            self._buffer = self._buffer[end + len(END) :]
            try:
                results.append(decode_body(body))
            except ProtocolError as error:
                results.append(_corrupt(body, str(error)))


def _corrupt(body: str, reason: str) -> CorruptFrame:
    header = _HEADER.match(body)
    return CorruptFrame(int(header[1]) if header else None, reason, body[:200])


def route(items: list[Frame | CorruptFrame], frames: list[Frame], ask_resend: Callable[[int], None]) -> int:
    """The host's handling of what a scanner found: verified frames appended to `frames`, a resend
    asked for each corrupt frame whose sequence number survived; how many could not be asked for."""
    unrecoverable = 0
    for item in items:
        if isinstance(item, Frame):
            frames.append(item)
        elif item.seq is not None:
            ask_resend(item.seq)
        else:
            unrecoverable += 1
    return unrecoverable
