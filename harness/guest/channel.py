"""The guest's end of the console protocol: framed lines out, framed requests in."""

from __future__ import annotations

import contextlib
import os
import select
import termios
import tty
from collections import OrderedDict

from harness import protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_RESEND_WINDOW = 256


class Channel:
    def __init__(self, in_fd: int = 0, out_fd: int = 1) -> None:
        self._in = in_fd
        self._out = out_fd
        self._seq = 0
        self._sent: OrderedDict[int, str] = OrderedDict()
        self._scanner = protocol.FrameScanner()
        self.damage_next: str | None = None  # test-only: "flip" or "cut" the next frame sent
        self._inbox: list[protocol.Frame] = []
        # Raw input: no echo of the host's requests, no line-length limit, no CR mangling.
        # Not a tty (tests over pipes): nothing to set.
        with contextlib.suppress(termios.error):
            tty.setraw(self._in, termios.TCSANOW)

    def send(self, message: dict[str, Any]) -> int:
        self._seq += 1
        line = protocol.encode(self._seq, message)
        self._sent[self._seq] = line
        while len(self._sent) > _RESEND_WINDOW:
            self._sent.popitem(last=False)
        if self.damage_next is not None:  # test-only (fault drills): the kept copy stays clean
            self._write_damaged(line)
        else:
            self._write(line)
        return self._seq

    def _write_damaged(self, line: str) -> None:
        """Test-only: "flip" one payload character (the checksum no longer holds), or "cut" the frame
        in the middle and exit, as an agent that dies mid-message."""
        how, self.damage_next = self.damage_next, None
        middle = len(line) // 2
        if how == "cut":
            os.write(self._out, ("\n" + line[:middle]).encode("ascii"))
            os._exit(3)
        at = line.index("{") + 2  # the payload's first key's first letter: the header (and seq) intact
        self._write(line[:at] + ("X" if line[at] != "X" else "Y") + line[at + 1 :])

    def resend(self, seq: int) -> None:
        line = self._sent.get(seq)
        if line is None:
            self.send({"type": "error", "error": f"frame {seq} is no longer kept for resending"})
        else:
            self._write(line)

    def _write(self, line: str) -> None:
        # One write per frame (with a leading newline so a frame never starts mid kernel line).
        data = ("\n" + line + "\n").encode("ascii")
        while data:
            written = os.write(self._out, data)
            data = data[written:]

    def receive(self, timeout_s: float | None = None) -> protocol.Frame | None:
        """The next verified request; asks for a resend of corrupt ones. None on timeout or EOF."""
        while not self._inbox:
            ready, _, _ = select.select([self._in], [], [], timeout_s)
            if not ready:
                return None
            chunk = os.read(self._in, 65536)
            if not chunk:
                return None
            for item in self._scanner.feed(chunk.decode("ascii", errors="replace")):
                if isinstance(item, protocol.Frame):
                    self._inbox.append(item)
                else:
                    self.send({"type": "nak", "seq": item.seq, "reason": item.reason})
        return self._inbox.pop(0)
