"""The agent's watch mode (harness/guest/watch.py) against a stand-in device: alerts and their timing."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from harness.guest import watch as watch_module
from harness.guest.kmxdev import CpuStats, DeviceInfo
from harness.guest.watch import DriverWatch


class Device:
    """Counts a heartbeat event on every stats() call until stopped, like a capturing driver would."""

    def __init__(self) -> None:
        self.count = 0
        self.delivering = True
        self.capturing = True

    def stats(self) -> list[CpuStats]:
        if self.delivering:
            self.count += 2
        return [CpuStats(0, True, self.count, 0, 0)]

    def get_info(self) -> DeviceInfo:
        return DeviceInfo(3, 1, 1 << 20, 1 << 20, 64, self.capturing)


def wait_for(watch: DriverWatch, seconds: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not watch.alerted():
        time.sleep(0.02)
    return watch.alerted()


def fast(monkeypatch: Any) -> None:
    monkeypatch.setattr(watch_module, "POLL_S", 0.01)
    monkeypatch.setattr(watch_module, "HEARTBEAT_S", 0.05)


def test_a_healthy_driver_raises_nothing(monkeypatch: Any, tmp_path: Path) -> None:
    fast(monkeypatch)
    node = tmp_path / "kmx"
    node.write_text("")
    watch = DriverWatch("kmod", Device(), None, str(node)).start()
    time.sleep(0.4)
    assert watch.stop() == []


def test_a_driver_that_stops_delivering_is_alerted_by_the_heartbeat(monkeypatch: Any) -> None:
    fast(monkeypatch)
    device = Device()
    watch = DriverWatch("modern_bpf", device).start()
    time.sleep(0.2)
    device.delivering = False
    stopped = time.monotonic()
    alerts = wait_for(watch, 2)
    watch.stop()
    assert [a["cause"] for a in alerts] == ["heartbeat"]
    assert alerts[0]["at"] - stopped < 0.5  # two missed heartbeats of 0.05 s, polled every 0.01 s


def test_kmod_device_removal_and_a_stopped_capture_are_named(monkeypatch: Any, tmp_path: Path) -> None:
    fast(monkeypatch)
    node = tmp_path / "kmx"
    node.write_text("")
    device = Device()
    watch = DriverWatch("kmod", device, None, str(node)).start()
    node.unlink()
    assert wait_for(watch, 2)[0]["cause"] == "device removed"
    device.capturing = False
    time.sleep(0.2)
    causes = [a["cause"] for a in watch.stop()]
    assert causes[:2] == ["device removed", "capture stopped"]
    assert len(causes) == len(set(causes))  # each cause once
