"""QEMU guests: command lines from arch profiles, boot, console session with the agent, teardown.

Every QEMU runs in its own session (pexpect gives it a pty) with a parent-death signal, and every
Guest is closed on success, error, timeout, Ctrl-C and SIGTERM, so no QEMU outlives its run.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import os
import re
import signal
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pexpect

from harness import protocol
from harness.archs import ArchProfile
from harness.errors import BootError, GuestError

# What a dying kernel prints; seeing any of these ends the session with the surrounding lines.
CRASH_PATTERNS = re.compile(
    r"Kernel panic - not syncing|Attempted to kill init|BUG: |Oops[:\s]|Unable to handle kernel|"
    r"general protection fault|kernel BUG at|Internal error: Oops"
)
# Where a crash report's call trace starts (x86: "Call Trace:", arm64/riscv: "Call trace:").
_CALL_TRACE = re.compile(r"Call [Tt]race:")
# A console line's kernel timestamp, "[   12.345678] ", stripped from excerpts kept in results.
_TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s?")
_PR_SET_PDEATHSIG = 1
# A kernel message on the console (printk.time=1): "[    1.234567] ...".
_KERNEL_MESSAGE = re.compile(r"\[\s*\d+\.\d{6}\]")


@dataclass(frozen=True)
class BootSpec:
    arch: ArchProfile
    kernel: Path
    initrd: Path
    accel: str = "tcg"  # "tcg" or "kvm"
    smp: int = 2
    memory_mb: int | None = None
    firmware: Path | None = None  # -bios file for arches whose firmware comes from Debian
    mode: str = "agent"  # "agent" or "shell"
    extra_cmdline: tuple[str, ...] = ()
    # TCG only: the guest clock advances 2**shift ns per instruction (-icount), so what the guest
    # times depends on the instructions it ran, not on how busy the host is. One vCPU thread.
    icount_shift: int | None = None
    # Extra gzip'd cpio archives appended to the initrd: the kernel unpacks concatenated archives
    # in order, so per-cell artifacts (a built driver, helpers) ride on the cached base image.
    overlays: tuple[Path, ...] = ()
    # User-mode networking with this host loopback port forwarded to the guest's port 22 (the SSH
    # test guest); None: no NIC at all, as every suite guest runs.
    ssh_forward_port: int | None = None

    def cmdline(self) -> str:
        words = [f"console={self.arch.console}"] if self.arch.console else []
        # panic=-1 + -no-reboot: a panic ends QEMU instead of hanging; printk.time lets the host
        # recognise kernel lines inside agent frames; loglevel=5 keeps boot chatter off the console.
        words += [
            "panic=-1",
            "oops=panic",
            "printk.time=1",
            "loglevel=5",
            "rdinit=/init",
            f"kmatrix.mode={self.mode}",
            *self.extra_cmdline,
        ]
        return " ".join(words)


def combine_initrd(spec: BootSpec, dest: Path) -> Path:
    """The initrd QEMU gets: the base image, or the base image followed by the overlays."""
    if not spec.overlays:
        return spec.initrd
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        for part in (spec.initrd, *spec.overlays):
            out.write(part.read_bytes())
    return dest


# virtio-net on the PCI bus everywhere but s390x, which has no PCI in its default machine: CCW.
_NIC_DEVICE = {"s390x": "virtio-net-ccw"}


def nic_args(spec: BootSpec) -> list[str]:
    """QEMU's NIC options: none, or a user-mode NIC whose guest port 22 is on 127.0.0.1:ssh_forward_port."""
    if spec.ssh_forward_port is None:
        return ["-nic", "none"]
    device = _NIC_DEVICE.get(spec.arch.name, "virtio-net-pci")
    # romfile= (PCI only): no option ROM to find on disk; the guest kernel needs none (no PXE boot).
    rom = ",romfile=" if device.endswith("-pci") else ""
    return [
        "-netdev",
        f"user,id=kmxnet,hostfwd=tcp:127.0.0.1:{spec.ssh_forward_port}-:22",
        "-device",
        f"{device},netdev=kmxnet{rom}",
    ]


def qemu_command(spec: BootSpec, initrd: Path | None = None) -> list[str]:
    arch = spec.arch
    machine = ",".join([arch.machine, *arch.machine_args])
    accel = spec.accel
    if spec.icount_shift is not None:
        if spec.accel != "tcg":
            raise ValueError(f"-icount needs TCG, not {spec.accel}")
        accel = "tcg,thread=single"  # icount cannot run vCPUs in parallel threads
    argv = [arch.qemu_binary, "-machine", machine, "-accel", accel]
    if spec.accel == "kvm":
        argv += ["-cpu", "host"]
    elif arch.cpu:
        argv += ["-cpu", arch.cpu]
    argv += ["-smp", str(spec.smp), "-m", str(spec.memory_mb or arch.memory_mb)]
    if spec.icount_shift is not None:
        # sleep=off: an idle guest's clock jumps to its next timer, so idle time costs no wall time.
        argv += ["-icount", f"shift={spec.icount_shift},sleep=off"]
    if spec.firmware is not None:
        argv += ["-bios", str(spec.firmware)]
    elif arch.bios:
        argv += ["-bios", arch.bios]
    argv += [
        "-nographic",
        "-monitor",
        "none",
        *nic_args(spec),
        "-no-reboot",
        "-kernel",
        str(spec.kernel),
        "-initrd",
        str(initrd or spec.initrd),
        "-append",
        spec.cmdline(),
    ]
    return argv


def _deadline(timeout_s: float) -> float:
    """The monotonic moment a boot or request wait gives up: the guard that ends a hung guest.

    One function so that fault drill 1 (tests/faults/test_guest_faults.py) can switch the guard off
    in a child process and show that without it a hung request never ends.
    """
    return time.monotonic() + timeout_s


def _die_with_parent() -> None:
    """Runs in the child before exec: QEMU gets SIGKILL if the harness dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass


_LIVE: weakref.WeakSet[Guest] = weakref.WeakSet()


def kill_all_guests() -> int:
    """Close every running guest (signal handlers and atexit call this). Returns how many."""
    guests = list(_LIVE)
    for guest in guests:
        guest.close()
    return len(guests)


@dataclass
class ConsoleLog:
    """Everything QEMU printed, kept on disk and in memory for excerpts."""

    path: Path
    text: str = ""
    _handle: TextIO | None = field(default=None, repr=False)

    def append(self, chunk: str) -> None:
        self.text += chunk
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
        self._handle.write(chunk)
        self._handle.flush()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.text.replace("\r", "").splitlines()[-lines:])

    def around(self, index: int, before: int = 10, after: int = 40) -> str:
        lines = self.text.replace("\r", "")
        line_no = lines[:index].count("\n")
        split = lines.splitlines()
        return "\n".join(split[max(0, line_no - before) : line_no + after])

    def close(self) -> None:
        if self._handle:
            self._handle.close()
            self._handle = None


class GuestCrash(GuestError):
    """The guest kernel panicked, oopsed or lost init; the message carries the console excerpt.

    `headline` is the first crash line (e.g. "BUG: kernel NULL pointer dereference, address: 0"),
    `call_trace` the trace's frames without timestamps (empty when the kernel printed none).
    """

    def __init__(self, message: str, *, hint: str | None = None, headline: str = "", excerpt: str = "",
                 call_trace: tuple[str, ...] = ()) -> None:
        super().__init__(message, hint=hint)
        self.headline = headline
        self.excerpt = excerpt
        self.call_trace = call_trace


def crash_headline(text: str, start: int) -> str:
    """The whole console line holding the crash pattern found at `start`, without its timestamp."""
    begin = text.rfind("\n", 0, start) + 1
    end = text.find("\n", start)
    line = text[begin : end if end >= 0 else len(text)].replace("\r", "")
    return _TIMESTAMP.sub("", line).strip()


def call_trace(text: str, start: int = 0, limit: int = 40) -> tuple[str, ...]:
    """The frames of the first call trace at or after `start` (timestamps stripped), up to `limit`."""
    found = _CALL_TRACE.search(text, start)
    if not found:
        return ()
    frames: list[str] = []
    for raw in text[found.end() :].replace("\r", "").splitlines()[1:]:
        line = _TIMESTAMP.sub("", raw)
        # Frames are indented (" func+0x1a/0x20", " ? func...", " <TASK>"); the trace ends at the
        # first line that is not (the register dump, "Kernel panic ...", "---[ end trace").
        if not line.startswith((" ", "\t")) or len(frames) >= limit:
            break
        frames.append(line.strip())
        if line.strip() == "</TASK>":
            break
    return tuple(frames)


@dataclass(frozen=True)
class Ready:
    seconds: float  # from QEMU start to the agent's ready frame
    info: dict[str, Any]


class Guest:
    """One QEMU process and the console session with the agent inside it."""

    def __init__(self, spec: BootSpec, log_path: Path) -> None:
        self.spec = spec
        self.log = ConsoleLog(log_path)
        self.argv = qemu_command(spec)
        self._child: pexpect.spawn | None = None
        self._scanner = protocol.FrameScanner()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._frames: list[protocol.Frame] = []
        self._next_id = 0
        self._started = 0.0
        self._crash_scan_from = 0
        self._unrecoverable = 0  # corrupt frames whose sequence number was lost: no resend can be asked

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        initrd = combine_initrd(self.spec, self.log.path.parent / "initrd.cpio.gz")
        self.argv = qemu_command(self.spec, initrd)
        try:
            self._child = pexpect.spawn(
                self.argv[0],
                self.argv[1:],
                encoding=None,
                echo=False,
                preexec_fn=_die_with_parent,
                dimensions=(50, 200),
            )
        except pexpect.ExceptionPexpect as error:
            raise BootError(
                f"cannot start {self.argv[0]}: {error}",
                hint="run `kmatrix doctor` to see which QEMU packages are missing",
            ) from None
        self._started = time.monotonic()
        _LIVE.add(self)

    def wait_ready(self, timeout_s: float) -> Ready:
        frame = self._wait_frame(lambda m: m.get("type") == "ready", timeout_s, phase="boot")
        return Ready(round(time.monotonic() - self._started, 3), frame.message)

    def __enter__(self) -> Guest:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            if child.isalive():
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except OSError:
                    child.kill(signal.SIGKILL)
            with contextlib.suppress(pexpect.ExceptionPexpect):
                child.close(force=True)
        self.log.close()
        _LIVE.discard(self)

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    # -- requests --------------------------------------------------------------------------
    def request(self, op: str, timeout_s: float = 60, **fields: Any) -> dict[str, Any]:
        """Send one request to the agent and wait for its result (ok is checked by the caller)."""
        self._next_id += 1
        request_id = self._next_id
        self._send({"type": "request", "id": request_id, "op": op, **fields})
        frame = self._wait_frame(
            lambda m: m.get("type") == "result" and m.get("id") == request_id, timeout_s, phase=f"request {op}"
        )
        return frame.message

    def exec(self, argv: list[str], timeout_s: float = 60) -> dict[str, Any]:
        result = self.request("exec", timeout_s=timeout_s + 10, argv=argv, timeout=timeout_s)
        if not result.get("ok"):
            raise GuestError(f"guest could not run {argv}: {result.get('error')}")
        return result

    def poweroff(self, timeout_s: float = 30) -> None:
        self.request("poweroff", timeout_s=timeout_s)
        deadline = time.monotonic() + timeout_s
        while self._child is not None and self._child.isalive() and time.monotonic() < deadline:
            self._pump(0.2)

    def interact(self) -> None:
        """Hand the console to the user (for `kmatrix boot --shell`)."""
        if self._child is None:
            raise GuestError("guest is not running")
        self._child.interact(escape_character=None)

    # -- console plumbing ------------------------------------------------------------------
    def _send(self, message: dict[str, Any]) -> None:
        if self._child is None:
            raise GuestError("guest is not running")
        self._child.send((protocol.encode(0, message) + "\n").encode("ascii"))

    def _pump(self, timeout_s: float) -> bool:
        """Read what QEMU printed; False at EOF."""
        assert self._child is not None
        try:
            data = self._child.read_nonblocking(65536, timeout=timeout_s)
        except pexpect.TIMEOUT:
            return True
        except pexpect.EOF:
            return False
        text = self._decoder.decode(data)
        self.log.append(text)
        self._unrecoverable += protocol.route(self._scanner.feed(text), self._frames, self._ask_resend)
        return True

    def _ask_resend(self, seq: int) -> None:
        self._send({"type": "resend", "seq": seq})

    def _lost_note(self, phase: str) -> str:
        """Why the awaited frame is missing, when the console shows it was lost on the way."""
        what = "ready" if phase == "boot" else "result"
        if self._scanner.incomplete:
            return f" ({what} frame incomplete: the guest stopped in the middle of a frame)"
        if self._unrecoverable:
            return (f" ({what} frame incomplete: {self._unrecoverable} frame(s) arrived corrupt with no sequence "
                    "number left to ask for again)")
        return ""

    def _check_crash(self) -> None:
        match = CRASH_PATTERNS.search(self.log.text, max(0, self._crash_scan_from - 200))
        self._crash_scan_from = len(self.log.text)
        if not match:
            return
        # Give the kernel a moment to print the rest of the trace before QEMU exits.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and self._pump(0.2):
            pass
        excerpt = self.log.around(match.start())
        headline = crash_headline(self.log.text, match.start())
        trace = call_trace(self.log.text, match.start())
        # A crashed kernel serves no more requests (panic=-1 normally ends QEMU already): kill it.
        self.close()
        raise GuestCrash(
            f"guest kernel crashed ({headline or match.group(0).strip()}):\n{excerpt}",
            hint=f"full console log: {self.log.path}",
            headline=headline,
            excerpt=excerpt,
            call_trace=trace,
        )

    def _no_kernel_output(self) -> str:
        """A note for boot errors when the kernel printed nothing here (e.g. a wrong console=)."""
        if _KERNEL_MESSAGE.search(self.log.text):
            return ""
        return (f" (no kernel message reached this console: is console={self.spec.arch.console} "
                "the guest's serial console?)")

    def _wait_frame(self, wanted: Any, timeout_s: float, *, phase: str) -> protocol.Frame:
        if self._child is None:
            raise GuestError("guest is not running")
        deadline = _deadline(timeout_s)
        while True:
            for frame in self._frames:
                if wanted(frame.message):
                    self._frames.remove(frame)
                    return frame
            self._check_crash()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                error = BootError if phase == "boot" else GuestError
                note = (self._no_kernel_output() if phase == "boot" else "") + self._lost_note(phase)
                message = (f"timed out after {timeout_s:.0f} s in {phase}{note}; last console lines:\n"
                           f"{self.log.tail(15)}")
                # The agent is stuck (or never started): nothing more will come, and a guest left
                # running would outlive a caller that forgets to close it. Its console log stays.
                self.close()
                raise error(message, hint=f"full console log: {self.log.path}")
            if not self._pump(min(remaining, 0.5)):
                self._check_crash()
                error = BootError if phase == "boot" else GuestError
                note = (self._no_kernel_output() if phase == "boot" else "") + self._lost_note(phase)
                message = f"QEMU exited during {phase}{note}; last console lines:\n{self.log.tail(15)}"
                self.close()  # reap it
                raise error(message, hint=f"command: {' '.join(self.argv)}")


def process_alive(pid: int) -> bool:
    """Running: a zombie waiting for its reaper counts as dead (used by tests and fault drills)."""
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


def running_qemu_pids(pattern: str = "qemu-system-") -> Iterator[int]:
    """QEMU processes on this host, read from /proc (used by tests and fault drills)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if pattern in os.path.basename(cmd):
            yield int(entry.name)
