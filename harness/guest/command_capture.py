"""The capture suite through a third-party consumer command (sysdig reading Falco's kmod), guest side.

The same deterministic workload as the reference drivers' suite (harness.guest.workload) runs while
the consumer captures the whole system to a file (`sysdig -q -w FILE`); the file is read back with
the declared `read` command, whose `-p` format prints one line per event:

    *%evt.num %thread.tid %evt.dir %evt.type %evt.rawres %evt.args

Every call of the workload's record is then checked against the events of its thread: the enter
event, the exit event, the return value and every decoded parameter the suite expects, under
sysdig's names and formatting (SYSDIG_TYPES, PARAMS below). The tracefs oracle compares the
sequence of syscalls between the workload's markers. A check Falco's driver legitimately does
differently is not loosened here: it still fails, and is accepted only when the driver's
matrix.yaml declaration lists it under `differences` (call, what, why); the result carries every
difference seen, and a declared difference that did not occur is reported as stale.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
import time

from harness.guest import tracefs
from harness.guest.capture import dmesg_lines, load_module, module_name, refuse_outside_guest, unload_module
from harness.guest.command import CommandConsumer, ConsumerFailed
from harness.guest.verify import marked_sequence
from harness.guest.workload import MARK_BEGIN, MARK_END, syscall_table

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# sysdig's event type for a syscall where its name is not the syscall's.
SYSDIG_TYPES = {"pwrite64": "pwrite", "pread64": "pread", "_llseek": "llseek"}
# (syscall, side, suite param) -> (sysdig param, how the expected value is rendered). Parameters the
# suite expects on the enter event are on the exit event in Falco's libs (they carry both).
PARAMS: dict[tuple[str, str, str], tuple[str, str]] = {
    ("openat", "enter", "path"): ("name", "text"),
    ("write", "enter", "data"): ("data", "bytes"),
    ("pwrite64", "enter", "data"): ("data", "bytes"),
    ("sendto", "enter", "data"): ("data", "bytes"),
    ("read", "exit", "data"): ("data", "bytes"),
    ("pread64", "exit", "data"): ("data", "bytes"),
    ("recvfrom", "exit", "data"): ("data", "bytes"),
    ("newfstatat", "enter", "path"): ("path", "text"),
    ("mkdirat", "enter", "path"): ("path", "text"),
    ("renameat2", "enter", "oldpath"): ("oldpath", "text"),
    ("renameat2", "enter", "newpath"): ("newpath", "text"),
    ("renameat", "enter", "oldpath"): ("oldpath", "text"),
    ("renameat", "enter", "newpath"): ("newpath", "text"),
    ("unlinkat", "enter", "path"): ("name", "text"),
    ("bind", "enter", "addr"): ("addr", "sockaddr"),
    ("connect", "enter", "addr"): ("addr", "sockaddr"),
    ("accept4", "exit", "addr"): ("tuple", "peer"),
    ("pipe2", "exit", "fds"): ("fd1,fd2", "fds"),
    ("nanosleep", "enter", "req"): ("interval", "timespec"),
    ("execve", "enter", "filename"): ("filename", "text"),
    ("execve", "enter", "argv"): ("exe,args", "argv"),
}
_ARG = re.compile(r"(\w+)=(.*?)(?= \w+=|$)")
_INT_PREFIX = re.compile(r"-?\d+")


class Event:
    __slots__ = ("dir", "num", "params", "res", "tid", "type")

    def __init__(self, num: int, tid: int, direction: str, kind: str, res: int | None, params: dict[str, str]):
        self.num, self.tid, self.dir, self.type, self.res, self.params = num, tid, direction, kind, res, params


def parse_line(line: str) -> Event | None:
    """One `-p` line; None for a line that is not an event (a warning sysdig printed)."""
    fields = line.split(" ", 5)
    if len(fields) < 5 or not fields[0].isdigit() or fields[2] not in ("<", ">"):
        return None
    try:
        tid = int(fields[1])
    except ValueError:
        return None
    res = int(fields[4]) if _INT_PREFIX.fullmatch(fields[4]) else None  # <NA>: the event has no return value
    args = fields[5] if len(fields) > 5 else ""
    return Event(int(fields[0]), tid, fields[2], fields[3], res, dict(_ARG.findall(args.rstrip())))


def render_bytes(data: bytes) -> str:
    """sysdig's default (-A-less) rendering of a buffer: printable ASCII kept, anything else '.'."""
    return "".join(chr(b) if 32 <= b < 127 else "." for b in data)


def render(kind: str, value: Any) -> str:
    """The expected value as sysdig prints it."""
    if isinstance(value, dict) and value.get("fault"):
        return "NULL"
    if kind == "bytes":
        return render_bytes(bytes.fromhex(value["hex"]))
    if kind in ("sockaddr", "peer"):
        raw = bytes.fromhex(value["hex"])
        port = struct.unpack(">H", raw[2:4])[0]
        return f"{socket.inet_ntoa(raw[4:8])}:{port}"
    if kind == "timespec":
        seconds, nanoseconds = struct.unpack("=qq", bytes.fromhex(value["hex"]))
        return str(seconds * 1_000_000_000 + nanoseconds)
    if kind == "fds":
        return f"{value[0]},{value[1]}"
    if kind == "argv":
        return f"{value[0]}|{''.join(arg + '.' for arg in value[1:])}"
    return str(value)


def seen(kind: str, names: str, params: dict[str, str]) -> str | None:
    """The event's value for a mapped parameter, in render()'s form; None when sysdig has none."""
    keys = names.split(",")
    if any(key not in params for key in keys):
        return None
    values = [params[key] for key in keys]
    if kind == "peer":
        return values[0].split("->", 1)[0]
    if kind in ("timespec", "fds"):
        return ",".join((m.group(0) if (m := _INT_PREFIX.match(v)) else v) for v in values)
    if kind == "argv":
        return "|".join(values)
    return values[0]


class Verdict:
    def __init__(self, expected: int) -> None:
        self.expected, self.verified = expected, 0
        self.mismatches: list[dict[str, Any]] = []

    def fail(self, call: dict[str, Any], what: str, expected: Any, got: Any) -> None:
        self.mismatches.append({"call": call["name"], "tid": call["tid"], "what": what, "expected": expected,
                                "got": got})


def verify(events: list[Event], calls: list[dict[str, Any]]) -> Verdict:
    """Every check of every call; a call is verified when none of its checks failed."""
    by_tid: dict[int, list[Event]] = {}
    for event in events:
        by_tid.setdefault(event.tid, []).append(event)
    cursor: dict[int, int] = {}
    verdict = Verdict(len(calls))
    for call in calls:
        before = len(verdict.mismatches)
        names = [call["name"], *call.get("alt", [])]
        types = {SYSDIG_TYPES.get(name, name) for name in names}
        stream = by_tid.get(call["tid"], [])
        start = cursor.get(call["tid"], 0)
        found = next((i for i in range(start, len(stream)) if stream[i].dir == "<" and stream[i].type in types), None)
        if found is None:
            verdict.fail(call, "exit event", f"{'/'.join(sorted(types))} on tid {call['tid']}", "none found")
            continue
        cursor[call["tid"]] = found + 1
        exit_event = stream[found]
        enter = next((e for e in reversed(stream[start:found]) if e.dir == ">" and e.type in types), None)
        if enter is None:
            verdict.fail(call, "enter event", f"{exit_event.type} before its exit", "none found")
        if call.get("args"):
            # sysdig prints decoded parameters only, never the six argument registers.
            verdict.fail(call, "raw arguments", {k: hex(v) for k, v in call["args"].items()}, "not reported")
        if exit_event.res != call["ret"]:
            verdict.fail(call, "return value", call["ret"], exit_event.res)
        for side in ("enter", "exit"):
            for param, value in call.get(side, {}).items():
                mapped = PARAMS.get((call["name"], side, param))
                if mapped is None:
                    verdict.fail(call, f"{side} param {param}", value, "no sysdig parameter maps to it")
                    continue
                want, got = render(mapped[1], value), seen(mapped[1], mapped[0], exit_event.params)
                if got != want:
                    verdict.fail(call, f"{side} param {param}", want, got if got is not None else "missing")
        if len(verdict.mismatches) == before:
            verdict.verified += 1
    return verdict


def documented(mismatch: dict[str, Any], differences: list[dict[str, str]]) -> dict[str, str] | None:
    """The declared difference that covers a mismatch (call '*' covers every call)."""
    return next((d for d in differences if d["call"] in ("*", mismatch["call"]) and d["what"] == mismatch["what"]),
                None)


def judge(verdict: Verdict, differences: list[dict[str, str]]) -> dict[str, Any]:
    """Split mismatches into documented differences and failures; a call whose every mismatch is
    documented counts as verified-with-differences."""
    failures: list[dict[str, Any]] = []
    accepted: list[dict[str, Any]] = []
    for mismatch in verdict.mismatches:
        difference = documented(mismatch, differences)
        (accepted if difference else failures).append(mismatch)
    used = {(d["call"], d["what"]) for m in accepted if (d := documented(m, differences))}
    summary: dict[tuple[str, str], dict[str, Any]] = {}
    for mismatch in accepted:
        difference = documented(mismatch, differences)
        assert difference is not None
        key = (difference["call"], difference["what"])
        entry = summary.setdefault(key, {**difference, "calls": 0, "example": mismatch})
        entry["calls"] += 1
    failed_calls = {(m["call"], m["tid"]) for m in failures}
    return {
        "failures": failures,
        "differences_seen": list(summary.values()),
        "stale_differences": [d for d in differences if (d["call"], d["what"]) not in used],
        "calls_with_failures": len(failed_calls),
    }


def oracle(events: list[Event], tid: int, trace_text: str, nr_of: dict[str, int],
           not_captured: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The workload thread's syscalls between the markers: sysdig's exit events vs tracefs's enters.

    Syscalls the driver is declared not to capture (`not captured` differences) are taken out of
    the tracefs side first, and counted."""
    name_of = {nr: name for name, nr in nr_of.items()}
    back = {sysdig: name for name, sysdig in SYSDIG_TYPES.items()}
    marker_fd = {MARK_BEGIN, MARK_END}
    theirs = []
    for event in events:
        if event.tid != tid or event.dir != "<":
            continue
        name = back.get(event.type, event.type)
        if name not in nr_of:
            continue  # switch, procexit, signaldeliver: the libs' own events
        fd = event.params.get("fd", "")
        arg0 = int(fd) if name == "close" and fd.lstrip("-").isdigit() and int(fd) in marker_fd else None
        theirs.append((nr_of[name], arg0))
    mine = marked_sequence(theirs, nr_of["close"], MARK_BEGIN, MARK_END)
    traced = marked_sequence(tracefs.parse_enters(trace_text, tid), nr_of["close"], MARK_BEGIN, MARK_END)
    skipped = {nr_of[name] for name in not_captured if name in nr_of}
    removed: dict[str, int] = {}
    for nr in traced:
        if nr in skipped:
            removed[name_of[nr]] = removed.get(name_of[nr], 0) + 1
    traced = [nr for nr in traced if nr not in skipped]
    ok = mine == traced and len(traced) > 0
    first = None
    if not ok:
        index = next((i for i, (a, b) in enumerate(zip(mine, traced, strict=False)) if a != b),
                     min(len(mine), len(traced)))
        first = {"index": index, "driver": [name_of.get(n, n) for n in mine[index:index + 5]],
                 "tracefs": [name_of.get(n, n) for n in traced[index:index + 5]]}
    return {"ok": ok, "driver_count": len(mine), "tracefs_count": len(traced), "first_difference": first,
            "not_captured": removed}


def op_capture_command(request: dict[str, Any]) -> dict[str, Any]:
    """Request: artifact (the kmod), consumer (harness.consumers.GuestConsumer.request()), token,
    differences (the driver's declared ones). Result: the reference suite's fields plus the
    differences seen and the consumer's version."""
    refuse_outside_guest()
    artifact = str(request["artifact"])
    consumer = CommandConsumer.from_request(request)
    differences = [dict(d) for d in request.get("differences", [])]
    token = str(request.get("token", os.getpid()))
    timings: dict[str, float] = {}
    started = time.monotonic()
    load_module(artifact, {})
    timings["load_s"] = round(time.monotonic() - started, 3)
    try:
        version = consumer.version()
        return _run(consumer, module_name(artifact), token, differences, timings) | {"consumer_version": version}
    finally:
        consumer.kill()
        problem = unload_module(module_name(artifact))
        if problem:
            print(f"rmmod {module_name(artifact)}: {problem}", file=sys.stderr)


def show_unhandled_signals() -> None:
    """debug.exception-trace=1: the kernel logs where a process died of SIGSEGV/SIGBUS (pc, library,
    ESR on arm64), which turns a consumer's bare 'Bus error' into a precise failure."""
    try:
        with open("/proc/sys/debug/exception-trace", "w", encoding="ascii") as handle:
            handle.write("1")
    except OSError:
        pass  # not on every architecture


def _run(consumer: CommandConsumer, device_prefix: str, token: str, differences: list[dict[str, str]],
         timings: dict[str, float]) -> dict[str, Any]:
    workload = subprocess.Popen([sys.executable, "-S", "-m", "harness.guest.workload", token],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert workload.stdin and workload.stdout
    tid = int(json.loads(workload.stdout.readline())["tid"])
    capture_file = f"/tmp/kmx-{token}.scap"
    trace = tracefs.SyscallTrace()
    trace.start(tid)
    before = len(dmesg_lines())
    show_unhandled_signals()
    try:
        timings["consumer_start_s"] = consumer.start(capture_file, device_prefix)
    except ConsumerFailed as error:
        workload.kill()
        trace.stop()
        # What the kernel logged while the consumer opened the driver goes with the failure (cells put
        # it in metrics); the kernel's line on the consumer's fatal signal joins the reason.
        logged = dmesg_lines()[before:]
        fatal = next((line.split("] ", 1)[-1] for line in logged if "unhandled" in line), None)
        failure = ConsumerFailed(f"{error}; kernel: {fatal}" if fatal else str(error))
        failure.details = {"dmesg": logged[-20:]}
        raise failure from error
    began = time.monotonic()
    workload.stdin.write("go\n")
    workload.stdin.flush()
    record = json.loads(workload.stdout.readline())
    workload.wait(timeout=60)
    timings["workload_s"] = round(time.monotonic() - began, 3)
    status = consumer.stop()
    trace_text = trace.stop()
    capture_bytes = os.path.getsize(capture_file) if os.path.exists(capture_file) else 0
    began = time.monotonic()
    lines = consumer.read()
    timings["read_s"] = round(time.monotonic() - began, 3)
    os.unlink(capture_file)
    events = [e for e in (parse_line(line) for line in lines) if e is not None]
    tids = {call["tid"] for call in record["calls"]}
    mine = [e for e in events if e.tid in tids]
    verdict = verify(mine, record["calls"])
    judged = judge(verdict, differences)
    not_captured = frozenset(d["call"] for d in differences if d["what"] == "not captured")
    check = oracle(mine, tid, trace_text, syscall_table(os.uname().machine), not_captured)
    for difference in differences:  # the oracle is what sees these
        if difference["what"] == "not captured" and check["not_captured"].get(difference["call"]):
            judged["stale_differences"].remove(difference)
            judged["differences_seen"].append({**difference, "calls": check["not_captured"][difference["call"]]})
    oracle_documented = not check["ok"] and any(d["what"] == "oracle" for d in differences)
    failures = judged["failures"]
    passed = not failures and (check["ok"] or oracle_documented) and status in (0, -2, 130)
    return {
        "passed": passed,
        "events": len(events),
        "workload_events": len(mine),
        "capture_bytes": capture_bytes,
        "consumer_exit_status": status,
        "expected_calls": verdict.expected,
        "verified_calls": verdict.expected - judged["calls_with_failures"],
        "exactly_verified_calls": verdict.verified,
        "mismatches": failures[:5],
        "first_mismatch": failures[0] if failures else None,
        "differences_seen": judged["differences_seen"],
        "stale_differences": judged["stale_differences"],
        "oracle": {**check, "documented": oracle_documented},
        "timings": timings,
        "tid": tid,
    }
