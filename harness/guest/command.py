"""A third-party consumer command (sysdig) in the guest: capture to a file, stop it, read it back.

Guest side of matrix.yaml's `consumers:` of kind `command`. The host (harness.consumers) sends the
argument lists already pointing into the consumer's bundle; `{file}` in them is the capture file.
A capture counts as started once the command holds every device of the driver open (one
/dev/<module>N per CPU for Falco's kmod), so no event of the workload that follows is lost to a
late start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class ConsumerFailed(RuntimeError):
    """The consumer command exited, never started capturing, or could not read its capture back."""

    details: dict[str, Any] | None = None  # the agent adds these to its error reply


class CommandConsumer:
    def __init__(self, name: str, capture: list[str], read: list[str], version: list[str] | None,
                 placeholder: str = "{file}") -> None:
        self.name, self.capture_argv, self.read_argv, self.version_argv = name, capture, read, version
        self.placeholder = placeholder
        self.process: subprocess.Popen[bytes] | None = None
        self.file = ""
        self.log = ""

    @classmethod
    def from_request(cls, request: dict[str, Any]) -> CommandConsumer:
        spec = request["consumer"]
        return cls(str(spec["name"]), list(spec["capture"]), list(spec["read"]),
                   list(spec["version"]) if spec.get("version") else None, str(spec.get("placeholder", "{file}")))

    def _fill(self, argv: list[str]) -> list[str]:
        return [arg.replace(self.placeholder, self.file) for arg in argv]

    def version(self) -> str | None:
        if not self.version_argv:
            return None
        done = subprocess.run(self.version_argv, capture_output=True, text=True, timeout=60, check=False)
        return (done.stdout + done.stderr).strip().splitlines()[0] if done.returncode == 0 else None

    def start(self, capture_file: str, device_prefix: str, *, timeout_s: float = 60.0) -> float:
        """Start capturing into capture_file; return once every /dev/<device_prefix>N is open (seconds)."""
        self.file = capture_file
        self.log = capture_file + ".log"
        with open(self.log, "wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(self._fill(self.capture_argv), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        wanted = device_count(device_prefix)
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                raise ConsumerFailed(f"{self.name} exited with status {self.process.returncode} before capturing "
                                     f"({describe_status(self.process.returncode)}): {self.log_tail()}")
            if wanted and open_devices(self.process.pid, device_prefix) >= wanted and os.path.exists(capture_file):
                return round(time.monotonic() - started, 3)
            time.sleep(0.05)
        self.kill()
        raise ConsumerFailed(f"{self.name} did not open all {wanted} /dev/{device_prefix}N within {timeout_s:.0f} s: "
                             f"{self.log_tail()}")

    def stop(self, *, timeout_s: float = 60.0) -> int:
        """SIGINT (the consumer flushes and closes its file), then wait; its exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                raise ConsumerFailed(f"{self.name} did not exit within {timeout_s:.0f} s of SIGINT") from None
        return int(self.process.returncode)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def read(self, *, timeout_s: float = 300.0) -> list[str]:
        """The capture file read back with the read command, one line per event."""
        done = subprocess.run(self._fill(self.read_argv), capture_output=True, timeout=timeout_s, check=False)
        if done.returncode != 0:
            raise ConsumerFailed(f"{self.name} could not read {self.file} back (status {done.returncode}): "
                                 f"{done.stderr.decode(errors='replace')[-500:]}")
        return done.stdout.decode(errors="replace").splitlines()

    def log_tail(self, chars: int = 400) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as handle:
                return handle.read()[-chars:].strip() or "(no output)"
        except OSError:
            return "(no output)"


def describe_status(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def device_count(prefix: str) -> int:
    return sum(1 for name in os.listdir("/dev") if name.startswith(prefix) and name[len(prefix):].isdigit())


def open_devices(pid: int, prefix: str) -> int:
    """How many distinct /dev/<prefix>N the process holds open."""
    seen = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        name = target.rsplit("/", 1)[-1]
        if target.startswith("/dev/") and name.startswith(prefix) and name[len(prefix):].isdigit():
            seen.add(name)
    return len(seen)
