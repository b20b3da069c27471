"""`kmatrix stat`, guest side: per-syscall latency statistics over a whole-system capture.

Like `strace -c`, but for every process of the guest and from the drivers' own events: each
syscall's latency is its exit event's timestamp minus its enter event's, on the same thread (the
drivers stamp both with the kernel's CLOCK_MONOTONIC: ktime_get_ns, bpf_ktime_get_ns). Calls are
grouped per (group, syscall): the whole system, or per process (tgid). Per group and syscall: count,
errors (return value < 0), total, min, avg, max and p99 by the nearest-rank method (the smallest
latency that at least 99% of the calls do not exceed: sorted[ceil(0.99 n) - 1]).

Pairing: events are ordered by timestamp; per thread, an enter waits for the next exit of the same
syscall number. What cannot be paired is counted per syscall, never silently dropped: an exit with
no enter (the syscall began before the capture), an enter with no exit (still blocked when the
capture stopped, or a call that never returns: exit, exit_group), an enter followed by another enter
or by another syscall's exit (an event lost, or a call that does not return such as rt_sigreturn).

The agent's own syscalls (this process: draining buffers, sleeping between drains) are left out and
counted, so the table shows the system, not its observer.

With `verify`, a known-duration workload runs as its own process (this module run as __main__):
`nanosleep` (or clock_nanosleep where an architecture lacks nanosleep) of 10 ms and of 20 ms,
`repeats` times each, then one `read` on a pipe that a writer thread fills 50 ms after it saw the
reader blocked in that read (/proc/self/task/TID/syscall). Each is a raw syscall through libc's
syscall() with the architecture's number, so exactly that syscall happens. Every such call must be
measured at least its requested time and at most requested + a slack (SLACK_NS, 100 ms, unless the
request says otherwise; see upper_bound_ns); the pipe read's bound also adds the time from its enter
until the writer saw it blocked (the writer reads CLOCK_MONOTONIC then, the drivers' clock: a read
entered after that instant fails the check too).
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import struct
import subprocess
import sys
import threading
import time

from harness.guest.capture import module_loaded, open_consumer, refuse_outside_guest
from harness.guest.schema import load_schema
from harness.guest.workload import syscall_table

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any

# Begin and end markers of the known workload: close() of these fds fails with EBADF.
MARK_BEGIN = 0x4B4D5353
MARK_END = 0x4B4D5354
SLEEPS_MS = (10, 20)
PIPE_DELAY_MS = 50
DEFAULT_REPEATS = 5
# Upper bound of a known call: requested + SLACK_NS (the default; a request's slack_ms replaces it).
# Under QEMU TCG the guest's timer fires late by as long as QEMU's vCPU thread waits for a host CPU,
# and the woken thread then has to run: measured on a shared 2-CPU host over six architectures and
# three drivers, sleeps overran by 0.6 to 10 ms typically, and by up to 48 ms (loongarch64, 20 ms
# sleep) while other guests ran; 50 ms would be at that edge, so the default is 100 ms. It still
# catches a latency off by a unit (us for ms) or paired with the wrong exit over the whole sequence.
SLACK_NS = 100_000_000
DRAIN_INTERVAL_S = 0.05
BY_CHOICES = ("system", "process", "container")
# Calls that do not return to their caller: an enter without an exit (or followed by the thread's
# next enter, for the sigreturns) is their nature, reported apart as expected.
NO_RETURN = ("exit", "exit_group", "rt_sigreturn", "sigreturn")


def upper_bound_ns(requested_ns: int, slack_ns: int = SLACK_NS) -> int:
    return requested_ns + slack_ns


def nearest_rank(sorted_values: Sequence[int], percentile: float) -> int:
    """The nearest-rank percentile of ascending values: sorted[ceil(p/100 * n) - 1] (n >= 1)."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(percentile / 100 * len(sorted_values)))
    return int(sorted_values[rank - 1])


class Call:
    """One paired syscall."""

    __slots__ = ("arg0", "cgroup_id", "enter_ns", "exit_ns", "nr", "pid", "pidns", "ret", "tid")

    def __init__(self, pid: int, tid: int, nr: int, enter_ns: int, exit_ns: int, ret: int, arg0: int | None,
                 cgroup_id: int = 0, pidns: int = 0) -> None:
        self.pid, self.tid, self.nr = pid, tid, nr
        self.enter_ns, self.exit_ns, self.ret, self.arg0 = enter_ns, exit_ns, ret, arg0
        self.cgroup_id, self.pidns = cgroup_id, pidns  # the enter event's container attribution

    @property
    def latency_ns(self) -> int:
        return self.exit_ns - self.enter_ns


class Pairing:
    """Paired calls and what could not be paired, per reason and syscall number."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.exit_without_enter: dict[int, int] = {}
        self.enter_without_exit: dict[int, int] = {}  # still open when the capture ended
        self.enter_replaced: dict[int, int] = {}  # an enter followed by another enter on its thread
        self.exit_mismatched: dict[int, int] = {}  # an exit of another syscall than the open enter

    def unpaired_total(self) -> int:
        return sum(sum(d.values()) for d in (self.exit_without_enter, self.enter_without_exit,
                                             self.enter_replaced, self.exit_mismatched))


def _bump(counts: dict[int, int], nr: int) -> None:
    counts[nr] = counts.get(nr, 0) + 1


def pair_events(events: Iterable[Any], enter_kind: int, exit_kind: int) -> Pairing:
    """Pair enter and exit events per thread, in timestamp order (ties keep the input's order)."""
    result = Pairing()
    open_enter: dict[int, Any] = {}
    for event in sorted(events, key=lambda e: e.ts_ns):
        kind = event.kind
        if kind == enter_kind:
            previous = open_enter.get(event.tid)
            if previous is not None:
                _bump(result.enter_replaced, previous.nr)
            open_enter[event.tid] = event
        elif kind == exit_kind:
            enter = open_enter.pop(event.tid, None)
            if enter is None:
                _bump(result.exit_without_enter, event.nr)
            elif enter.nr != event.nr:
                _bump(result.enter_replaced, enter.nr)
                _bump(result.exit_mismatched, event.nr)
            else:
                args = getattr(enter, "args", None)
                call = Call(enter.pid, event.tid, event.nr, enter.ts_ns, event.ts_ns, event.ret,
                            int(args[0]) if args else None, getattr(enter, "cgroup_id", 0), getattr(enter, "pidns", 0))
                result.calls.append(call)
    for enter in open_enter.values():
        _bump(result.enter_without_exit, enter.nr)
    return result


def syscall_names(nr_of: dict[str, int]) -> dict[int, str]:
    names: dict[int, str] = {}
    for name, nr in sorted(nr_of.items()):
        names.setdefault(nr, name)
    return names


def name_of(names: dict[int, str], nr: int) -> str:
    """The syscall's name; an unknown number by its value, read as signed (-1: no syscall, as s390x's
    kmod reports a new thread's first return from clone)."""
    if nr in names:
        return names[nr]
    for bits in (32, 64):
        if 1 << (bits - 1) <= nr < 1 << bits:
            return f"syscall_{nr - (1 << bits)}"
    return f"syscall_{nr}"


def group_key(call: Call, by: str, containers: dict[tuple[int, int], str] | None = None) -> str:
    if by == "system":
        return "system"
    if by == "process":
        return str(call.pid)
    if by == "container":
        return (containers or {}).get((call.cgroup_id, call.pidns), "?")
    raise ValueError(f"by must be one of {', '.join(BY_CHOICES)}, not {by!r}")


def container_labels(calls: Iterable[Call]) -> dict[tuple[int, int], str]:
    """(cgroup id, pid namespace) -> "runtime:<12 hex>" (a container), "host", or "pidns:<inode>" (a pid
    namespace of its own in no container cgroup), from the guest's cgroup2 mount (harness.guest.containers)."""
    from harness.guest.containers import CgroupPaths, attribute, host_pidns

    paths, host_ns, labels = CgroupPaths(), host_pidns(), {}
    for key in {(call.cgroup_id, call.pidns) for call in calls}:
        seen = attribute(key[0], key[1], paths, host_ns)
        container = seen["container"]
        if container:
            labels[key] = f"{container['runtime']}:{container['id'][:12]}"
        else:
            labels[key] = f"pidns:{key[1]}" if seen["in_container"] else "host"
    return labels


def summarize(calls: Iterable[Call], by: str, names: dict[int, str],
              comms: dict[int, str] | None = None,
              containers: dict[tuple[int, int], str] | None = None) -> list[dict[str, Any]]:
    """One row per (group, syscall): calls, errors, total/min/avg/max/p99 ns. Rows are ordered by
    group (the system, or pids by their total time, largest first), then total time, largest first."""
    groups: dict[str, dict[int, list[int]]] = {}
    errors: dict[tuple[str, int], int] = {}
    for call in calls:
        key = group_key(call, by, containers)
        groups.setdefault(key, {}).setdefault(call.nr, []).append(call.latency_ns)
        if call.ret < 0:
            errors[(key, call.nr)] = errors.get((key, call.nr), 0) + 1
    rows: list[dict[str, Any]] = []
    totals = {key: sum(sum(v) for v in per_nr.values()) for key, per_nr in groups.items()}
    for key in sorted(groups, key=lambda k: (-totals[k], k)):
        group_rows = []
        for nr, latencies in groups[key].items():
            latencies.sort()
            total = sum(latencies)
            row: dict[str, Any] = {
                "group": key,
                "syscall": name_of(names, nr),
                "nr": nr,
                "calls": len(latencies),
                "errors": errors.get((key, nr), 0),
                "total_ns": total,
                "min_ns": latencies[0],
                "avg_ns": total // len(latencies),
                "max_ns": latencies[-1],
                "p99_ns": nearest_rank(latencies, 99),
            }
            if by == "process":
                row["pid"] = int(key)
                row["comm"] = (comms or {}).get(int(key), "?")
            group_rows.append(row)
        group_rows.sort(key=lambda r: (-r["total_ns"], r["syscall"]))
        rows += group_rows
    return rows


def unpaired_report(pairing: Pairing, names: dict[int, str]) -> dict[str, Any]:
    def named(counts: dict[int, int]) -> dict[str, int]:
        return {name_of(names, nr): n for nr, n in sorted(counts.items(), key=lambda item: -item[1])}

    open_ends = named(pairing.enter_without_exit)
    replaced = named(pairing.enter_replaced)
    expected: dict[str, int] = {}
    for counts in (open_ends, replaced):
        for name, n in counts.items():
            if name in NO_RETURN:
                expected[name] = expected.get(name, 0) + n
    return {
        "total": pairing.unpaired_total(),
        "exit_without_enter": named(pairing.exit_without_enter),
        "enter_without_exit": open_ends,
        "enter_replaced": replaced,
        "no_return_expected": expected,
        "exit_mismatched": named(pairing.exit_mismatched),
    }


def verify_known(calls: Sequence[Call], tid: int, expected: Sequence[dict[str, Any]],
                 nr_of: dict[str, int], slack_ns: int = SLACK_NS) -> dict[str, Any]:
    """Check the known workload's calls: those of its thread between the markers whose syscall is one
    of the expected ones, in order, each measured in [requested, upper_bound_ns(requested, slack_ns)]."""
    close_nr = nr_of["close"]
    mine = sorted((c for c in calls if c.tid == tid), key=lambda c: c.enter_ns)
    begin = next((i for i, c in enumerate(mine) if c.nr == close_nr and c.arg0 == MARK_BEGIN), None)
    end = next((i for i, c in enumerate(mine) if c.nr == close_nr and c.arg0 == MARK_END), None)
    checks: list[dict[str, Any]] = []
    problems: list[str] = []
    if begin is None or end is None or end < begin:
        problems.append(f"markers not found among thread {tid}'s paired calls (begin {begin}, end {end})")
        window: list[Call] = []
    else:
        wanted = {nr_of[str(e["name"])] for e in expected}
        window = [c for c in mine[begin + 1 : end] if c.nr in wanted]
    if not problems and len(window) != len(expected):
        problems.append(f"{len(window)} calls of {sorted({str(e['name']) for e in expected})} measured on thread "
                        f"{tid}, {len(expected)} made")
    for want, got in zip(expected, window, strict=False):
        requested = int(want["requested_ns"])
        check: dict[str, Any] = {"syscall": want["name"], "requested_ns": requested,
                                 "upper_bound_ns": upper_bound_ns(requested, slack_ns), "ret": want.get("ret")}
        if got.nr != nr_of[str(want["name"])]:
            check.update(measured_ns=None, ok=False, why=f"syscall {got.nr} measured where {want['name']} was made")
            checks.append(check)
            continue
        # A call whose requested time started after its enter (the pipe read: when the writer saw it
        # blocked, by CLOCK_MONOTONIC, the drivers' clock) gets that wait added to its upper bound.
        waited = 0
        if want.get("starts_ns") is not None:
            waited = int(want["starts_ns"]) - got.enter_ns
            check["waited_ns"] = waited
        high = upper_bound_ns(requested, slack_ns) + max(waited, 0)
        latency = got.latency_ns
        check.update(upper_bound_ns=high, measured_ns=latency, ok=requested <= latency <= high and waited >= 0)
        if waited < 0:
            check["why"] = (f"entered {-waited / 1e6:.3f} ms after the writer saw it blocked (CLOCK_MONOTONIC): "
                            "the driver's clock is not the monotonic clock")
        elif latency < requested:
            check["why"] = "shorter than requested"
        elif latency > high:
            check["why"] = f"longer than requested + {slack_ns / 1e6:g} ms"
        checks.append(check)
    for want in expected[len(window):]:
        checks.append({"syscall": want["name"], "requested_ns": int(want["requested_ns"]),
                       "upper_bound_ns": upper_bound_ns(int(want["requested_ns"]), slack_ns), "measured_ns": None,
                       "ok": False, "why": "not measured"})
    failed = [c for c in checks if not c["ok"]]
    return {
        "ok": not problems and not failed and len(checks) == len(expected) > 0,
        "bound": f"requested <= measured <= requested + {slack_ns / 1e6:g} ms (the pipe read: + its wait "
                 "until the writer saw it blocked)",
        "slack_ns": slack_ns,
        "checks": checks,
        "problems": problems + [f"{c['syscall']} {c['requested_ns'] / 1e6:g} ms: {c.get('why')} "
                                f"(measured {None if c['measured_ns'] is None else c['measured_ns'] / 1e6} ms)"
                                for c in failed],
    }


# -- the known workload (its own process) -------------------------------------------------------

class KnownWorkload:
    def __init__(self, repeats: int) -> None:
        self.nr = syscall_table(os.uname().machine)
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.syscall.restype = ctypes.c_long
        self.tid = int(self.libc.syscall(ctypes.c_long(self.nr["gettid"])))
        self.repeats = repeats
        self.calls: list[dict[str, Any]] = []
        self.blocked_by = ""
        self.polls = 0
        self.seen_ns = 0

    def raw(self, name: str, *args: int) -> int:
        ctypes.set_errno(0)
        value = int(self.libc.syscall(ctypes.c_long(self.nr[name]), *(ctypes.c_long(a) for a in args)))
        return -ctypes.get_errno() if value == -1 and ctypes.get_errno() else value

    def sleep(self, ms: int, record: bool = True) -> None:
        timespec = ctypes.create_string_buffer(struct.pack("=qq", ms // 1000, (ms % 1000) * 1_000_000))
        if "nanosleep" in self.nr:
            name, ret = "nanosleep", self.raw("nanosleep", ctypes.addressof(timespec), 0)
        else:  # clock_nanosleep(CLOCK_MONOTONIC, 0, req, NULL)
            name, ret = "clock_nanosleep", self.raw("clock_nanosleep", 1, 0, ctypes.addressof(timespec), 0)
        if record:
            self.calls.append({"name": name, "requested_ns": ms * 1_000_000, "ret": ret})

    def reader_blocked(self) -> bool:
        """Is the main thread inside its read()? /proc's syscall file names the call a blocked
        thread is in; where it is missing, the thread's state (S, twice, 20 ms apart) has to do.
        Plain os calls: the check must cost little, since its lag is part of the read's latency."""
        base = f"/proc/self/task/{self.tid}"
        try:
            fd = os.open(f"{base}/syscall", os.O_RDONLY)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                words = os.read(fd, 64).split()
            finally:
                os.close(fd)
            self.blocked_by = "syscall"
            return bool(words) and words[0] == str(self.nr["read"]).encode()
        self.blocked_by = "stat"
        for attempt in range(2):
            fd = os.open(f"{base}/stat", os.O_RDONLY)
            try:
                state = os.read(fd, 512).rsplit(b")", 1)[1].split()[0]
            finally:
                os.close(fd)
            if state != b"S":
                return False
            if attempt == 0:
                time.sleep(0.02)
        return True

    def writer(self, fd: int, delay_ms: int) -> None:
        polls = 0
        while not self.reader_blocked():
            polls += 1
            time.sleep(0.001)
        self.polls = polls
        self.seen_ns = time.monotonic_ns()
        if delay_ms:
            self.sleep(delay_ms, record=False)  # on this thread: not one of the checked calls
        os.write(fd, b"x")

    def pipe_round(self, delay_ms: int) -> int:
        """read() on a pipe from this thread; a writer thread fills it delay_ms after it saw this
        thread blocked in that read. The read's return value."""
        read_fd, write_fd = os.pipe()
        writer = threading.Thread(target=self.writer, args=(write_fd, delay_ms))
        writer.start()
        buffer = ctypes.create_string_buffer(8)
        ret = self.raw("read", read_fd, ctypes.addressof(buffer), 1)
        writer.join()
        os.close(read_fd)
        os.close(write_fd)
        return ret

    def run(self) -> None:
        # Warm-up, before the begin marker: under TCG the first run of code (a thread's start, the
        # writer's checks) is translated first, which would delay the measured read's release.
        self.pipe_round(1)
        self.sleep(1, record=False)
        self.raw("close", MARK_BEGIN)
        for ms in SLEEPS_MS:
            for _ in range(self.repeats):
                self.sleep(ms)
        ret = self.pipe_round(PIPE_DELAY_MS)
        self.calls.append({"name": "read", "requested_ns": PIPE_DELAY_MS * 1_000_000, "ret": ret,
                           "starts_ns": self.seen_ns})
        self.raw("close", MARK_END)


def workload_main(repeats: int) -> int:
    """Protocol on stdio: prints {"pid", "tid"}, waits for a line on stdin, runs, prints the record."""
    workload = KnownWorkload(repeats)
    print(json.dumps({"pid": os.getpid(), "tid": workload.tid}), flush=True)
    sys.stdin.readline()
    workload.run()
    print(json.dumps({"calls": workload.calls, "tid": workload.tid, "blocked_by": workload.blocked_by,
                      "writer_polls": workload.polls}), flush=True)
    return 0


# -- the op ---------------------------------------------------------------------------------------

def _comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return None


def exec_name(event: Any) -> str:
    """The program an execve enter starts, as ps names it: argv[0]'s base name (busybox runs its
    applets as /proc/self/exe with argv[0] the applet), else the filename's; "" when neither is there."""
    try:
        filename, argv = (event.params[event.fixed_count + i].value for i in (0, 1))
    except (IndexError, AttributeError, ValueError):
        return ""
    for value in (argv[0] if isinstance(argv, list) and argv else None, filename):
        if isinstance(value, str) and value.rstrip("/"):
            return value.rstrip("/").rsplit("/", 1)[-1]
    return ""


def process_names(comms: dict[int, str], execs: dict[int, str]) -> dict[int, str]:
    """Per pid: its comm, or the program it exec'd during the capture when that differs (a fork of
    busybox sh that ran ls: "busybox>ls"); "?" when neither is known (it exited before it was seen)."""
    names: dict[int, str] = {}
    for pid in comms.keys() | execs.keys():
        comm, program = comms.get(pid, ""), execs.get(pid, "")
        if comm and program and not program.startswith(comm) and not comm.startswith(program[:15]):
            names[pid] = f"{comm}>{program}"
        else:
            names[pid] = comm or program or "?"
    return names


def op_stat(request: dict[str, Any]) -> dict[str, Any]:
    """Request: driver, artifact, buffer_bytes, duration_s, by (system or process), verify, repeats,
    slack_ms (the known calls' allowed overrun), command (argv run as the load). The capture lasts
    duration_s, or while the known workload or the command runs if that is longer. Result: rows,
    unpaired, drops, verification, passed."""
    refuse_outside_guest()
    by = str(request.get("by", "system"))
    if by not in BY_CHOICES:
        raise ValueError(f"by must be one of {', '.join(BY_CHOICES)}, not {by!r}")
    if by == "container":
        from harness.guest.container_suite import mount_cgroup2

        mount_cgroup2()  # cgroup ids are resolved to paths under it
    driver = str(request.get("driver", "kmod"))
    artifact = str(request["artifact"])
    buffer_bytes = int(request.get("buffer_bytes", 8 << 20))
    command = request.get("command")
    if command is not None and (not isinstance(command, list) or not all(isinstance(a, str) for a in command)):
        raise ValueError("command must be a list of strings")
    schema = load_schema()
    with module_loaded(driver, artifact, buffer_bytes):
        device = open_consumer(schema, driver, artifact, tgid=0, snaplen=64, buffer_bytes=buffer_bytes)
        try:
            return _stat(schema, device, request, by, command)
        finally:
            device.close()


def _stat(schema: Any, device: Any, request: dict[str, Any], by: str, command: list[str] | None) -> dict[str, Any]:
    verify = bool(request.get("verify"))
    duration_s = float(request.get("duration_s", 0 if verify or command else 2))
    timeout_s = float(request.get("timeout_s", 120))
    machine = os.uname().machine
    nr_of = syscall_table(machine)
    names = syscall_names(nr_of)
    known: subprocess.Popen[str] | None = None
    hello: dict[str, Any] = {}
    if verify:
        known = subprocess.Popen([sys.executable, "-S", "-m", "harness.guest.latency", "--workload",
                                  str(int(request.get("repeats", DEFAULT_REPEATS)))],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert known.stdin and known.stdout
        hello = json.loads(known.stdout.readline())
    me = os.getpid()
    events: list[Any] = []
    comms: dict[int, str] = {}  # /proc/PID/comm when the process was first seen (gone: "")
    execs: dict[int, str] = {}  # the program a process last exec'd, from the execve enter's filename
    execve_nr = nr_of.get("execve", -1)
    enter_kind = schema.const("KMX_EVT_SYS_ENTER")
    self_events = 0

    def take() -> None:
        nonlocal self_events
        for event in device.drain():
            if event.pid == me:
                self_events += 1
                continue
            events.append(event)
            if by == "process":
                if event.nr == execve_nr and event.kind == enter_kind:
                    execs[event.pid] = exec_name(event)
                if event.pid not in comms:
                    comms[event.pid] = _comm(event.pid) or ""

    device.start()
    started = time.monotonic()
    load: subprocess.Popen[bytes] | None = None
    try:
        if known is not None:
            assert known.stdin
            known.stdin.write("go\n")
            known.stdin.flush()
        if command:
            load = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while True:
            take()
            elapsed = time.monotonic() - started
            running = [p for p in (known, load) if p is not None and p.poll() is None]
            if elapsed >= duration_s and not running:
                break
            if elapsed > max(duration_s, timeout_s):
                for proc in running:
                    proc.kill()
                raise TimeoutError(f"the load still ran after {timeout_s:.0f} s")
            time.sleep(DRAIN_INTERVAL_S)
    finally:
        device.stop()
    captured_s = time.monotonic() - started
    take()
    stats = device.stats()
    pairing = pair_events(events, enter_kind, schema.const("KMX_EVT_SYS_EXIT"))
    calls = pairing.calls
    rows = summarize(calls, by, names, process_names(comms, execs),
                     container_labels(calls) if by == "container" else None)
    result: dict[str, Any] = {
        "by": by,
        "machine": machine,
        "percentile_method": "nearest-rank: p99 = sorted[ceil(0.99 n) - 1]",
        "captured_s": round(captured_s, 3),
        "events": len(events),
        "paired_calls": len(pairing.calls),
        "self_events_excluded": self_events,
        "agent_pid": me,
        "unpaired": unpaired_report(pairing, names),
        "drops": sum(s.drops for s in stats),
        "rows": rows,
        "passed": True,
    }
    if load is not None:
        result["command"] = {"argv": command, "rc": load.returncode,
                             "stderr": (load.stderr.read() if load.stderr else b"").decode(errors="replace")[-2000:]}
    if known is not None:
        assert known.stdout
        record = json.loads(known.stdout.readline())
        known.wait(timeout=30)
        slack_ns = int(float(request.get("slack_ms", SLACK_NS / 1e6)) * 1e6)
        verification = verify_known(pairing.calls, int(hello["tid"]), record["calls"], nr_of, slack_ns)
        verification.update(pid=int(hello["pid"]), tid=int(hello["tid"]), blocked_by=record.get("blocked_by"),
                            writer_polls=record.get("writer_polls"))
        if result["drops"]:
            verification["problems"].append(f"{result['drops']} events dropped")
        result["verification"] = verification
        result["passed"] = bool(verification["ok"])
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--workload":
        sys.exit(workload_main(int(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_REPEATS))
    sys.exit("usage: python -m harness.guest.latency --workload [REPEATS]")
