"""The tamper suite, guest side: the agent's watch mode must alert within ALERT_WITHIN_S when another
process takes its driver away, and must not alert while nobody does.

Per action, a fresh capture of the agent's own process with a DriverWatch (harness.guest.watch);
one quiet second (no alert allowed), then harness.guest.tamperer runs the action as a separate
process. An action the kernel refuses (rmmod of a module in use: EBUSY; BPF_LINK_DETACH or
BPF_LINK_UPDATE on a link type without them: EOPNOTSUPP) is recorded as prevented, with the
kernel's answer, and must raise no alert; an action that succeeded must be alerted on in time.
What an action removed is put back (the device node, the module) before the next one.

    kmod:             rmmod, rmmod -f, rm /dev/kmx, a capture STOP from another process
    bpf, modern_bpf:  links detached, programs replaced, the probe's target map rewritten
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

from harness.guest.capture import load_module, module_name, open_consumer, refuse_outside_guest, unload_module
from harness.guest.schema import load_schema
from harness.guest.watch import DriverWatch

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ALERT_WITHIN_S = 5.0
QUIET_S = 1.0
PROG_PREFIX = "kmx_sys_"


def actions(driver: str, module: str) -> list[tuple[str, list[str]]]:
    if driver == "kmod":
        return [("rmmod", ["rmmod", module]), ("rmmod -f", ["rmmod-force", module]),
                ("device removed", ["rm-device", "/dev/kmx"]), ("capture stopped", ["stop-capture", "/dev/kmx"])]
    return [("links detached", ["detach-links", PROG_PREFIX]), ("programs replaced", ["replace-programs", PROG_PREFIX]),
            ("capture retargeted", ["retarget", PROG_PREFIX])]


def _tamperer(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-S", "-m", "harness.guest.tamperer", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _tamper_result(process: subprocess.Popen[str]) -> dict[str, Any]:
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    try:
        reply: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        reply = {"done": False, "detail": f"tamperer exited {process.returncode}: {err.strip()[-300:]}",
                 "errno": None}
    return reply


def _one(schema: Any, driver: str, artifact: str, name: str, argv: list[str]) -> dict[str, Any]:
    module = module_name(artifact)
    if driver == "kmod":
        load_module(artifact, {})
    device_node = os.stat("/dev/kmx") if driver == "kmod" else None
    device: Any = open_consumer(schema, driver, artifact, tgid=os.getpid(), snaplen=64, buffer_bytes=1 << 20)
    watch = None
    try:
        device.start()
        watch = DriverWatch(driver, device, module if driver == "kmod" else None).start()
        time.sleep(QUIET_S)
        false_alarms = watch.alerted()
        began = time.monotonic()
        process = _tamperer(argv)
        deadline = began + ALERT_WITHIN_S
        while time.monotonic() < deadline and not watch.alerted()[len(false_alarms):]:
            if process.poll() is not None and time.monotonic() - began > 1.0 and not watch.alerted():
                break  # finished a second ago and nothing noticed: refused, or missed (judged below)
            time.sleep(0.05)
        if not watch.device_usable:
            device.close()  # the module is going: what the agent does on that alert, so the unload can finish
            device = None
        tampered = _tamper_result(process)
        if not tampered["done"]:
            time.sleep(1.0)  # a refused action: make sure nothing is raised after it either
        else:
            while time.monotonic() < deadline and not watch.alerted()[len(false_alarms):]:
                time.sleep(0.05)
        alerts = watch.stop()
        new = alerts[len(false_alarms):]
        latency = round(new[0]["at"] - began, 3) if new else None
        if false_alarms:
            verdict, ok = "alert before any tampering", False
        elif tampered["done"]:
            ok = latency is not None and latency <= ALERT_WITHIN_S
            verdict = f"detected in {latency} s" if ok else f"not detected within {ALERT_WITHIN_S:.0f} s"
        else:
            ok = not new
            verdict = "prevented by the kernel" if ok else "alert although the kernel refused the action"
        return {"action": name, "tamper": tampered, "alerts": [{k: v for k, v in a.items() if k != "at"} for a in new],
                "false_alarms": false_alarms, "latency_s": latency, "verdict": verdict, "ok": ok}
    finally:
        if watch is not None:
            watch.stop()
        if device is not None:
            with contextlib.suppress(OSError):
                device.close()
        if driver == "kmod":
            _restore_kmod(module, device_node)


def _restore_kmod(module: str, node: os.stat_result | None) -> None:
    """Put /dev/kmx back if it was removed, and unload the module if it is still there (a forced
    unload finishes once the device is closed: wait for it)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _initstate(module) == "going":
        time.sleep(0.1)
    if node is not None and os.path.isdir(f"/sys/module/{module}") and not os.path.exists("/dev/kmx"):
        os.mknod("/dev/kmx", node.st_mode, node.st_rdev)
    if os.path.isdir(f"/sys/module/{module}"):
        problem = unload_module(module)
        if problem:
            print(f"rmmod {module}: {problem}", file=sys.stderr)


def _initstate(module: str) -> str | None:
    try:
        with open(f"/sys/module/{module}/initstate", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None


def op_tamper(request: dict[str, Any]) -> dict[str, Any]:
    """Request: driver, artifact. Result: per action, what the tamperer did, the alerts and latency."""
    refuse_outside_guest()
    schema = load_schema()
    driver, artifact = str(request.get("driver", "kmod")), str(request["artifact"])
    results = [_one(schema, driver, artifact, name, argv) for name, argv in actions(driver, module_name(artifact))]
    mismatches = [{"call": r["action"], "tid": 0, "what": "watch", "expected":
                   f"an alert within {ALERT_WITHIN_S:.0f} s" if r["tamper"]["done"] else "no alert",
                   "got": r["verdict"]} for r in results if not r["ok"]]
    detected = [r for r in results if r["tamper"]["done"]]
    return {
        "passed": not mismatches and bool(detected),
        "actions": results,
        "detected": len(detected),
        "prevented": len(results) - len(detected),
        "expected_calls": len(results),
        "verified_calls": len(results) - len(mismatches),
        "mismatches": mismatches,
        "first_mismatch": mismatches[0] if mismatches else (
            None if detected else {"call": "every action", "tid": 0, "what": "tampering",
                                   "expected": "at least one action that succeeds", "got": "all prevented"}),
    }
