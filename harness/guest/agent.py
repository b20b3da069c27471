"""Guest agent: announces itself, then serves requests from the host until told to power off.

Requests are {"type": "request", "id": N, "op": NAME, ...}; every request gets exactly one
{"type": "result", "id": N, "ok": bool, ...} back. A host that saw a corrupt frame sends
{"type": "resend", "seq": S}.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
import traceback

from harness.guest.bench import op_bench
from harness.guest.capture import op_capture
from harness.guest.channel import Channel
from harness.guest.container_suite import op_containers
from harness.guest.ia32 import op_ia32
from harness.guest.latency import op_stat
from harness.guest.permission_suite import op_permissions
from harness.guest.redaction_suite import op_redaction
from harness.guest.tamper_suite import op_tamper

TYPE_CHECKING = False  # typing stays out of the guest image; mypy reads the branch below
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Handler = Callable[[dict[str, Any]], dict[str, Any]]


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def system_info() -> dict[str, Any]:
    uname = os.uname()
    return {
        "release": uname.release,
        "machine": uname.machine,
        "kernel_version": uname.version,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "uptime_s": float(read_text("/proc/uptime").split()[0] or 0),
        "btf": os.path.exists("/sys/kernel/btf/vmlinux"),
        "tracefs": os.path.isdir("/sys/kernel/tracing/events"),
        "cmdline": read_text("/proc/cmdline").strip(),
    }


def op_info(_request: dict[str, Any]) -> dict[str, Any]:
    return system_info()


def op_exec(request: dict[str, Any]) -> dict[str, Any]:
    argv = request["argv"]
    if not isinstance(argv, list) or not all(isinstance(arg, str) for arg in argv):
        raise ValueError("exec needs argv: a list of strings")
    started = time.monotonic()
    done = subprocess.run(
        argv,
        capture_output=True,
        timeout=float(request.get("timeout", 60)),
        input=request.get("stdin", "").encode(),
        check=False,
    )
    return {
        "rc": done.returncode,
        "stdout": done.stdout.decode(errors="replace"),
        "stderr": done.stderr.decode(errors="replace"),
        "seconds": round(time.monotonic() - started, 6),
    }


def op_read_file(request: dict[str, Any]) -> dict[str, Any]:
    return {"text": read_text(str(request["path"]))}


def op_hang(_request: dict[str, Any]) -> dict[str, Any]:
    """Test-only: never answers (a stuck agent), for the host's timeout guard to end."""
    while True:
        time.sleep(3600)


# Test-only switches on the kernel command line, set by the fault drills (tests/faults) through
# BootSpec.extra_cmdline and never by a run: `kmatrix.test=1` adds the ops in TEST_HANDLERS;
# `kmatrix.test.hang=OP[,OP...]` makes those ops hang instead of running.
TEST_FLAG = "kmatrix.test=1"
TEST_HANG_PREFIX = "kmatrix.test.hang="
_CHANNEL: list[Channel] = []  # the agent's channel, for op_damage_next


def op_damage_next(request: dict[str, Any]) -> dict[str, Any]:
    """Test-only: damage the next frame this agent sends ("flip" a payload byte, or "cut" it and exit)."""
    how = str(request.get("how"))
    if how not in ("flip", "cut"):
        raise ValueError(f"damage_next: how must be flip or cut, not {how!r}")
    _CHANNEL[0].damage_next = how
    return {"armed": how}


TEST_HANDLERS: dict[str, Handler] = {"hang": op_hang, "damage_next": op_damage_next}


def test_handlers(cmdline: str) -> dict[str, Handler]:
    """The test-only handlers the kernel command line asks for (none on every real run)."""
    words = cmdline.split()
    handlers: dict[str, Handler] = dict(TEST_HANDLERS) if TEST_FLAG in words else {}
    for word in words:
        if word.startswith(TEST_HANG_PREFIX):
            handlers.update((op, op_hang) for op in word[len(TEST_HANG_PREFIX) :].split(",") if op)
    return handlers


HANDLERS: dict[str, Handler] = {
    "info": op_info,
    "exec": op_exec,
    "read_file": op_read_file,
    "capture": op_capture,
    "ia32": op_ia32,
    "bench": op_bench,
    "containers": op_containers,
    "permissions": op_permissions,
    "tamper": op_tamper,
    "redaction": op_redaction,
    "stat": op_stat,
}


_RESERVED = ("ok", "error", "traceback", "type", "id")  # reply keys an error's details never replace


def serve(channel: Channel) -> None:
    handlers = {**HANDLERS, **test_handlers(read_text("/proc/cmdline"))}
    _CHANNEL[:] = [channel]
    channel.send({"type": "ready", **system_info()})
    while True:
        frame = channel.receive()
        if frame is None:
            return
        message = frame.message
        if message.get("type") == "resend":
            channel.resend(int(message.get("seq", -1)))
            continue
        request_id = message.get("id")
        op = str(message.get("op"))
        if op == "poweroff":
            channel.send({"type": "result", "id": request_id, "ok": True})
            return
        handler = handlers.get(op)
        if handler is None:
            reply: dict[str, Any] = {"ok": False, "error": f"unknown op {op!r}; known: {sorted(handlers)}"}
        else:
            try:
                reply = {"ok": True, **handler(message)}
            except Exception as error:  # any failure is reported, never fatal to the agent
                reply = {"ok": False, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
                # What the failure found out (e.g. the kernel's lines about a refused module).
                details = getattr(error, "details", None)
                if isinstance(details, dict):
                    reply.update({k: v for k, v in details.items() if k not in _RESERVED})
        channel.send({"type": "result", "id": request_id, **reply})


def main() -> int:
    serve(Channel())
    return 0


if __name__ == "__main__":
    sys.exit(main())
