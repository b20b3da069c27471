"""The ia32 suite, guest side (x86_64 only): 32-bit programs under capture, every call verified.

A launcher child (this agent, forked) waits until the driver captures, then execs the freestanding
`int $0x80` program (a 64 -> 32 execve); that one runs its calls and execs the 32-bit musl program
(32 -> 32), whose calls go through the vDSO entry, and which execs a 64-bit busybox (32 -> 64). Each
program logs, on fd 3, every call with the x86_64 syscall, arguments, decoded params and return
value a correct driver reports for it (harness/guest/ia32_log.py reads that); the events must match
call by call, and the i386 numbers between the programs' markers must be the ones the kernel's own
raw_syscalls tracepoint saw.
"""

from __future__ import annotations

import fcntl
import os
import select
import time

from harness.guest import tracefs
from harness.guest.capture import module_loaded, open_consumer, refuse_outside_guest
from harness.guest.ia32_log import MARK_BEGIN, MARK_END, parse_log
from harness.guest.schema import load_schema
from harness.guest.verify import timestamps_monotonic, verify_calls
from harness.guest.workload import syscall_table

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

TOOLS = "/opt/kmatrix/tools"
I386_CLOSE = 6
I386_EXECVE = 11
LOG_FD = 3
LOG_TIMEOUT_S = 60.0


def chain_argv(tools: str, workdir: str, token: str) -> list[str]:
    """argv of the first program: int80, which execs musl, which execs busybox (64-bit)."""
    return [
        "ia32_int80", workdir, token,
        f"{tools}/ia32_musl", "ia32_musl", workdir, token,
        "/bin/busybox", "busybox", "true", f"ia32-exec-{token}",
    ]  # fmt: skip


def marked_sequences(seq: list[tuple[int, int | None]], close_nr: int) -> list[list[int]]:
    """Every run of syscall numbers between a begin marker and the next end marker."""
    runs: list[list[int]] = []
    current: list[int] | None = None
    for nr, arg0 in seq:
        if nr == close_nr and arg0 == MARK_BEGIN:
            current = []
        elif nr == close_nr and arg0 == MARK_END and current is not None:
            runs.append(current)
            current = None
        elif current is not None:
            current.append(nr)
    return runs


def op_ia32(request: dict[str, Any]) -> dict[str, Any]:
    """Request: driver, artifact, token, [tools, buffer_bytes, snaplen]. Result: as the capture suite's."""
    refuse_outside_guest()
    if os.uname().machine != "x86_64":
        raise RuntimeError(f"the ia32 suite runs on x86_64 guests, this is {os.uname().machine}")
    schema = load_schema()
    driver = str(request.get("driver", "kmod"))
    artifact = str(request["artifact"])
    buffer_bytes = int(request.get("buffer_bytes", 8 << 20))
    with module_loaded(driver, artifact, buffer_bytes):
        return _run(schema, driver, artifact, request, buffer_bytes)


def _spawn(argv: list[str], program: str) -> tuple[int, int, int]:
    """A child that waits for one byte on a pipe, then execs program; (pid, go fd, log fd)."""
    go_read, go_write = os.pipe()
    log_read, log_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the launcher: no Python beyond these few calls before the exec
        try:
            os.close(go_write)
            os.close(log_read)
            # go_read may itself be fd 3: move it above before fd 3 becomes the log
            go = fcntl.fcntl(go_read, fcntl.F_DUPFD_CLOEXEC, 10)
            os.close(go_read)
            os.dup2(log_write, LOG_FD, inheritable=True)
            os.read(go, 1)
            os.execv(program, argv)
        finally:
            os._exit(127)
    os.close(go_read)
    os.close(log_write)
    return pid, go_write, log_read


def _read_all(fd: int, timeout_s: float) -> str:
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the ia32 programs wrote no end of log within {timeout_s:.0f} s")
        ready, _w, _x = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks).decode("ascii", errors="replace")
        chunks.append(chunk)


def _run(schema: Any, driver: str, artifact: str, request: dict[str, Any], buffer_bytes: int) -> dict[str, Any]:
    tools = str(request.get("tools", TOOLS))
    token = str(request.get("token", os.getpid()))
    workdir = f"/tmp/kmx-ia32-{token}"
    os.makedirs(workdir, exist_ok=True)
    program = f"{tools}/ia32_int80"
    argv = chain_argv(tools, workdir, token)
    timings: dict[str, float] = {}
    pid, go, log_fd = _spawn(argv, program)
    device = None
    try:
        started = time.monotonic()
        device = open_consumer(
            schema,
            driver,
            artifact,
            tgid=pid,
            snaplen=int(request.get("snaplen", schema.const("KMX_SNAPLEN_DEFAULT"))),
            buffer_bytes=buffer_bytes,
        )
        timings["open_s"] = round(time.monotonic() - started, 3)
        trace = tracefs.SyscallTrace()
        trace.start(pid)
        device.start()
        began = time.monotonic()
        try:
            os.write(go, b"g")
        except BrokenPipeError:
            _pid, status = os.waitpid(pid, 0)
            raise RuntimeError(f"the launcher of {program} exited before it was told to start "
                               f"(exit code {os.waitstatus_to_exitcode(status)})") from None
        log_text = _read_all(log_fd, LOG_TIMEOUT_S)
        _pid, status = os.waitpid(pid, 0)
        device.stop()
        timings["workload_s"] = round(time.monotonic() - began, 3)
        trace_text = trace.stop()
        events = device.drain()
        stats = device.stats()
    finally:
        os.close(go)
        os.close(log_fd)
        if device is not None:
            device.close()
    nr64 = syscall_table("x86_64")
    calls = [_launcher_execve(pid, program, argv, nr64), *parse_log(log_text, pid, nr64)]
    return _verdict(schema, events, stats, calls, nr64, trace_text, pid, status, timings)


def _launcher_execve(pid: int, program: str, argv: list[str], nr64: dict[str, int]) -> dict[str, Any]:
    """The 64 -> 32 execve: a native enter, and an IA32 exit (the new program's personality)."""
    return {
        "name": "execve",
        "nr64": nr64["execve"],
        "tid": pid,
        "ret": 0,
        "args": {},
        "enter": {"filename": program, "argv": argv},
        "exit": {},
        "ia32_enter": None,
        "ia32_exit": I386_EXECVE,
        "source": "launcher",
    }


def _verdict(
    schema: Any,
    events: list[Any],
    stats: list[Any],
    calls: list[dict[str, Any]],
    nr64: dict[str, int],
    trace_text: str,
    pid: int,
    status: int,
    timings: dict[str, float],
) -> dict[str, Any]:
    verdict = verify_calls(schema, events, calls, nr64)
    enter = schema.const("KMX_EVT_SYS_ENTER")
    # Oracle: the numbers the tracepoint saw (i386 ones for IA32 events), driver vs tracefs.
    seen = [(e.ia32_nr if e.ia32 else e.nr, e.args[0]) for e in events if e.tid == pid and e.kind == enter]
    driver_runs = marked_sequences(seen, I386_CLOSE)
    trace_runs = marked_sequences(tracefs.parse_enters(trace_text, pid), I386_CLOSE)
    oracle_ok = driver_runs == trace_runs and len(trace_runs) == 2 and all(trace_runs)
    drops = sum(s.drops for s in stats)
    monotonic = timestamps_monotonic(events)
    ia32_events = sum(1 for e in events if e.ia32)
    unmapped = sorted({e.ia32_nr for e in events if e.unmapped and e.ia32_nr is not None})
    exit_code = os.waitstatus_to_exitcode(status)
    passed = verdict.ok and oracle_ok and drops == 0 and not monotonic and exit_code == 0
    by_source: dict[str, int] = {}
    for call in calls:
        by_source[call.get("source", "?")] = by_source.get(call.get("source", "?"), 0) + 1
    return {
        "passed": passed,
        "events": len(events),
        "ia32_events": ia32_events,
        "unmapped_ia32_numbers": unmapped,
        "expected_calls": verdict.expected,
        "verified_calls": verdict.verified,
        "calls_by_program": by_source,
        "distinct_syscalls": len({c["name"] for c in calls}),
        "mismatches": verdict.mismatches[:5],
        "first_mismatch": verdict.mismatches[0] if verdict.mismatches else None,
        "oracle": {
            "ok": oracle_ok,
            "driver_count": sum(len(r) for r in driver_runs),
            "tracefs_count": sum(len(r) for r in trace_runs),
            "runs": [len(r) for r in trace_runs],
            "first_difference": None if oracle_ok else {"driver": driver_runs, "tracefs": trace_runs},
        },
        "drops": drops,
        "chain_exit_code": exit_code,
        "timestamps_monotonic": not monotonic,
        "timings": timings,
        "tid": pid,
    }
