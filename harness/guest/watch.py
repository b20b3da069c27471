"""The agent's watch mode: notice, within seconds, that the driver it reads went away or stopped.

A thread polls every POLL_S:
  - kmod: /sys/module/<name> still there and live (initstate: a forced unload makes it "going"
    and waits for /dev/kmx to be closed; the watch then stops touching the device, so its owner
    can close it), /dev/kmx still the same device (st_rdev), and the module still capturing;
  - every driver: a heartbeat. Every HEARTBEAT_S the watch makes a syscall of its own (getppid;
    the capture includes the agent's own process) and checks that the driver's counters (events
    written plus drops) moved since the previous heartbeat. Links detached, programs replaced,
    probes unregistered or a capture stopped by someone else all stop that.
Each cause raises one alert: {"cause", "detail", "at" (time.monotonic())}.
"""

from __future__ import annotations

import os
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

POLL_S = 0.1
HEARTBEAT_S = 0.5
MISSED_HEARTBEATS = 2  # in a row before alerting: a busy guest may delay one


class DriverWatch:
    def __init__(self, driver: str, device: Any, module: str | None = None, device_path: str = "/dev/kmx") -> None:
        self.driver, self.device, self.module, self.device_path = driver, device, module, device_path
        self.rdev = os.stat(device_path).st_rdev if driver == "kmod" else None
        self.alerts: list[dict[str, Any]] = []
        self._causes: set[str] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="kmx-watch", daemon=True)
        self.device_usable = True  # False once the module is going: its ioctls fail, closing is all that is left

    def start(self) -> DriverWatch:
        self._thread.start()
        return self

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        self._thread.join(timeout=5)
        return list(self.alerts)

    def alerted(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.alerts)

    def _alert(self, cause: str, detail: str) -> None:
        with self._lock:
            if cause not in self._causes:
                self._causes.add(cause)
                self.alerts.append({"cause": cause, "detail": detail, "at": time.monotonic()})

    def _counted(self) -> int | None:
        if not self.device_usable:
            return None
        try:
            return int(sum(s.events + s.drops for s in self.device.stats()))
        except OSError:
            return None

    def _run(self) -> None:
        last_count = self._counted()
        next_beat = time.monotonic() + HEARTBEAT_S
        missed = 0
        while not self._stop.wait(POLL_S):
            if self.driver == "kmod":
                self._check_kmod()
            if time.monotonic() >= next_beat:
                os.getppid()  # the heartbeat: a syscall the driver must count
                count = self._counted()
                missed = missed + 1 if count is None or count == last_count else 0
                if missed >= MISSED_HEARTBEATS:
                    self._alert("heartbeat", f"the driver counted none of the last {missed} heartbeat syscalls")
                last_count = count if count is not None else last_count
                next_beat = time.monotonic() + HEARTBEAT_S

    def _check_kmod(self) -> None:
        if self.module:
            state = _read(f"/sys/module/{self.module}/initstate")
            if state is None:
                self.device_usable = False
                self._alert("module unloaded", f"/sys/module/{self.module} is gone")
            elif state != "live":
                self.device_usable = False
                self._alert("module unloading", f"/sys/module/{self.module}/initstate is {state}")
        try:
            if os.stat(self.device_path).st_rdev != self.rdev:
                self._alert("device replaced", f"{self.device_path} is another device now")
        except FileNotFoundError:
            self._alert("device removed", f"{self.device_path} is gone")
        if not self.device_usable:
            return
        try:
            if not self.device.get_info().capturing:
                self._alert("capture stopped", "the module says it is not capturing")
        except OSError as error:
            self._alert("device error", f"GET_INFO failed: {error}")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None
