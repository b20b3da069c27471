"""The redaction suite, guest side: with redaction on, secrets in written and sent buffers reach the
capture as '*', exactly as harness.guest.redaction.redact says, and everything else stays readable.

A child process writes each case to /dev/null (write) or sends it over UDP (sendto) while the
driver captures it with a 32-byte snapshot, so that cases can straddle the snapshot length.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from harness.guest.capture import load_module, module_name, open_consumer, refuse_outside_guest, unload_module
from harness.guest.redaction import DEFAULT_KEYS, redact
from harness.guest.schema import load_schema

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SNAPLEN = 32
# (name, syscall, bytes): a secret at the start, in the middle, at the end, none, its value cut
# by the snapshot length, its key cut by it, and one sent over a socket.
CASES = (
    ("start", "write", b"password=hunter2 rest"),
    ("middle", "write", b"user=bob&token=abc123&x=1"),
    ("end", "write", b"note secret=s3cr3t"),
    ("none", "write", b"nothing secret here"),
    ("value split by the snapshot", "write", b"0123456789abcdefghpassword=0123456789"),
    ("key split by the snapshot", "write", b"0123456789abcdefghijklmnopassword=xyz"),
    ("sendto", "sendto", b"token=t0k3n;ok"),
)


def child() -> int:
    """The writer: prints its pid, waits for a line, writes every case, prints "done". Each call is
    the raw syscall by the architecture's own number (glibc sends through socketcall or sendmsg on
    some architectures: s390x's sendto() is not the sendto syscall)."""
    import ctypes
    import struct

    from harness.guest.workload import syscall_table

    nr = syscall_table(os.uname().machine)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    print(json.dumps({"pid": os.getpid()}), flush=True)
    sys.stdin.readline()
    null = os.open("/dev/null", os.O_WRONLY)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    addr = ctypes.create_string_buffer(struct.pack("=H", socket.AF_INET) + struct.pack(">H", 9)
                                       + socket.inet_aton("127.0.0.1") + bytes(8))
    for _name, call, data in CASES:
        buf = ctypes.create_string_buffer(data, len(data))
        if call == "write":
            args = [null, ctypes.addressof(buf), len(data)]
        else:
            args = [udp.fileno(), ctypes.addressof(buf), len(data), 0, ctypes.addressof(addr), 16]
        libc.syscall(ctypes.c_long(nr[call]), *(ctypes.c_long(a) for a in args))
    print("done", flush=True)
    return 0


def op_redaction(request: dict[str, Any]) -> dict[str, Any]:
    """Request: driver, artifact. Result: per case, what was captured vs the reference."""
    refuse_outside_guest()
    schema = load_schema()
    driver, artifact = str(request.get("driver", "kmod")), str(request["artifact"])
    if driver == "kmod":
        load_module(artifact, {"redact": 1})
    try:
        return _run(schema, driver, artifact)
    finally:
        if driver == "kmod":
            problem = unload_module(module_name(artifact))
            if problem:
                print(f"rmmod: {problem}", file=sys.stderr)


def _run(schema: Any, driver: str, artifact: str) -> dict[str, Any]:
    writer = subprocess.Popen([sys.executable, "-S", "-m", "harness.guest.redaction_suite"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert writer.stdin and writer.stdout
    pid = int(json.loads(writer.stdout.readline())["pid"])
    device = open_consumer(schema, driver, artifact, tgid=pid, snaplen=SNAPLEN, buffer_bytes=1 << 20,
                           redact_keys=() if driver == "kmod" else DEFAULT_KEYS)
    try:
        device.start()
        writer.stdin.write("go\n")
        writer.stdin.flush()
        writer.stdout.readline()
        writer.wait(timeout=60)
        device.stop()
        events = [e for e in device.drain() if e.tid == pid]
    finally:
        device.close()
    enter = schema.const("KMX_EVT_SYS_ENTER")
    ids = {schema.by_name[name].id for name in ("write", "sendto")}
    # After "go" the writer's writes and sends are the cases, in order, then its "done" line.
    captured = [e for e in events if e.kind == enter and e.sc_id in ids and len(e.params) > 8]
    redacted_flag, trunc_flag = schema.const("KMX_PF_REDACTED"), schema.const("KMX_PF_TRUNC")
    results, mismatches = [], []
    for index, (name, call, data) in enumerate(CASES):
        want, want_redacted = redact(data[:SNAPLEN], DEFAULT_KEYS)
        want_flags = (redacted_flag if want_redacted else 0) | (trunc_flag if len(data) > SNAPLEN else 0)
        event = captured[index] if index < len(captured) else None
        got = None if event is None else event.params[8].value
        flags = None if event is None else event.params[8].flags
        row = {"case": name, "syscall": call, "sent": data.decode(), "expected": want.decode(),
               "captured": None if got is None else got.decode(errors="replace"), "expected_flags": want_flags,
               "flags": flags}
        results.append(row)
        if got != want or flags != want_flags:
            mismatches.append({"call": name, "tid": pid, "what": "captured bytes and flags",
                               "expected": f"{want!r} flags {want_flags}", "got": f"{got!r} flags {flags}"})
    return {
        "passed": not mismatches,
        "snaplen": SNAPLEN,
        "keys": [key.decode() for key in DEFAULT_KEYS],
        "cases": results,
        "expected_calls": len(CASES),
        "verified_calls": len(CASES) - len(mismatches),
        "mismatches": mismatches,
        "first_mismatch": mismatches[0] if mismatches else None,
    }


if __name__ == "__main__":
    sys.exit(child())
