"""The throughput benchmark's two peers, guest side: the kernel's ftrace and the audit subsystem.

Each peer captures the syscalls of one process (the storm) the way a real consumer would, and
reports what it delivered and what the kernel dropped, with the same interface as the drivers'
consumers:

    peer.unavailable() -> str | None    why it cannot run here, or None
    peer.prepare()                      what must happen before the storm is forked (audit only)
    peer.start(pid, buffer_kb=None)     capture every thread of pid (its threads exist already)
    peer.consume(batch=None) -> int     read what is ready now, without blocking: events consumed
    peer.stop() -> dict                 stop, drain, undo every setting: {"events", "drops", "bytes", ...}

FtracePeer enables raw_syscalls:sys_enter/sys_exit for the storm's threads (set_event_pid, with
event-fork) and reads every CPU's ring buffer as binary pages from per_cpu/cpu*/trace_pipe_raw,
counting the events on each page; drops are the kernel's per-CPU counters ("overrun",
"dropped events", "commit overrun").

AuditPeer runs Debian's auditd (shipped in an overlay under /opt/kmatrix/peers/auditd) with a
minimal configuration that logs RAW records to /tmp, adds one exit rule for every syscall of the
storm's pid, and counts the SYSCALL records the daemon wrote; drops are the kernel's "lost"
counter. The kernel only audits tasks forked after audit was first enabled in this boot (or every
task with audit=1 on the kernel command line), so prepare() must run before the storm is started;
start() refuses a storm that is older.

Both peers change kernel state, so they refuse to start outside a kmatrix guest unless constructed
with allow_host=True, and stop() leaves nothing behind (no events enabled, no rules, no daemon).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

from harness.guest.capture import refuse_outside_guest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


# ---------------------------------------------------------------------------------------------------
# Ring-buffer pages (kernel/trace/ring_buffer.c)

RB_MAX_SMALL_DATA_TYPE = 28  # type_len 1..28: type_len * 4 bytes of data follow the header
RB_PADDING = 29  # discarded event (array[0] + 4 bytes), or with time_delta 0 the rest of the page
RB_TIME_EXTEND = 30  # 8 bytes
RB_TIME_STAMP = 31  # absolute time stamp, 8 bytes
RB_MISSED_EVENTS = 1 << 31  # commit flags set by the reader when events were lost before the page
RB_MISSED_STORED = 1 << 30  # ... and the count is stored after the data
_COMMIT_MASK = RB_MISSED_STORED - 1
_FIELD = re.compile(r"field:\s*([^;]*?)\s*(\w+);\s*offset:\s*(\d+);\s*size:\s*(\d+);")


class PageLayout:
    """Where a ring-buffer page keeps its commit and data (from events/header_page)."""

    __slots__ = ("big_endian", "commit_offset", "commit_size", "data_offset", "page_size")

    def __init__(
        self,
        commit_offset: int = 8,
        commit_size: int = 8,
        data_offset: int = 16,
        page_size: int = 4096,
        big_endian: bool | None = None,
    ) -> None:
        self.commit_offset = commit_offset
        self.commit_size = commit_size
        self.data_offset = data_offset
        self.page_size = page_size
        self.big_endian = sys.byteorder == "big" if big_endian is None else big_endian

    @classmethod
    def parse(cls, header_page: str, big_endian: bool | None = None) -> PageLayout:
        """From the text of events/header_page: "field: local_t commit; offset:8; size:8; ..."."""
        fields = {m[2]: (int(m[3]), int(m[4])) for m in _FIELD.finditer(header_page)}
        if "commit" not in fields or "data" not in fields:
            raise ValueError(f"events/header_page names no commit or data field: {header_page.strip()!r}")
        (commit_offset, commit_size), (data_offset, data_size) = fields["commit"], fields["data"]
        if commit_size not in (4, 8) or data_size <= 0:
            raise ValueError(f"events/header_page has an unexpected layout: {header_page.strip()!r}")
        return cls(commit_offset, commit_size, data_offset, data_offset + data_size, big_endian)

    def __repr__(self) -> str:
        return (
            f"PageLayout(commit={self.commit_offset}+{self.commit_size}, data={self.data_offset}, "
            f"page={self.page_size}, {'big' if self.big_endian else 'little'}-endian)"
        )


def count_page(page: bytes, layout: PageLayout, ids: frozenset[int] | None = None) -> tuple[int, int, int, int]:
    """Count the data events of one ring-buffer page as trace_pipe_raw hands it out.

    Returns (events, other, data_bytes, missed): data events whose common_type is in ids (every
    data event when ids is None), the other data events, the bytes of event data on the page (its
    commit), and the events the kernel says were lost before this page (-1: lost, count unknown).
    Raises ValueError on a page that does not parse.
    """
    big = layout.big_endian
    co, cs, do = layout.commit_offset, layout.commit_size, layout.data_offset
    if len(page) < do:
        raise ValueError(f"short page: {len(page)} bytes, the header alone is {do}")
    commit = int.from_bytes(page[co : co + cs], "big" if big else "little")
    length = commit & _COMMIT_MASK
    if length > len(page) - do:
        raise ValueError(f"commit {length} is beyond the page ({len(page) - do} bytes of data)")
    missed = 0
    if commit & RB_MISSED_STORED:
        missed = int.from_bytes(page[do + length : do + length + cs], "big" if big else "little")
    elif commit & RB_MISSED_EVENTS:
        missed = -1
    words = struct.unpack_from(f"{'>' if big else '<'}{length // 4}I", page, do)
    n = len(words)
    events = other = 0
    i = 0
    while i < n:
        word = words[i]
        if big:
            type_len, delta = word >> 27, word & 0x07FFFFFF
        else:
            type_len, delta = word & 0x1F, word >> 5
        if type_len == 0:  # data, length in array[0] (counting itself)
            if i + 1 >= n:
                raise ValueError(f"event at byte {i * 4} has no length word")
            payload = i + 2
            nxt = i + 1 + (words[i + 1] + 3) // 4
            if words[i + 1] < 4:
                raise ValueError(f"event at byte {i * 4} has length {words[i + 1]}")
        elif type_len <= RB_MAX_SMALL_DATA_TYPE:
            payload = i + 1
            nxt = i + 1 + type_len
        elif type_len == RB_PADDING:
            if delta == 0:
                break  # the rest of the page is padding
            if i + 1 >= n:
                raise ValueError(f"padding at byte {i * 4} has no length word")
            nxt = i + 1 + (words[i + 1] + 3) // 4
            payload = -1
        else:  # RB_TIME_EXTEND, RB_TIME_STAMP
            nxt = i + 2
            payload = -1
        if nxt > n:
            raise ValueError(f"event at byte {i * 4} (type_len {type_len}) runs past the commit ({length} bytes)")
        if payload >= 0:
            if ids is None or (payload < nxt and ((words[payload] >> 16) if big else (words[payload] & 0xFFFF)) in ids):
                events += 1
            else:
                other += 1
        i = nxt
    return events, other, length, missed


def _parse_cpu_list(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus += range(int(first), int(last or first) + 1)
    return cpus


def _stats(text: str) -> dict[str, int]:
    """per_cpu/cpuN/stats: "entries: 0", "overrun: 12", "oldest event ts: 1.5", ..., integers only."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip().isdigit():
            out[key.strip()] = int(value.strip())
    return out


def _tids(pid: int, proc: str = "/proc") -> list[int]:
    try:
        return sorted(int(name) for name in os.listdir(f"{proc}/{pid}/task") if name.isdigit())
    except OSError as error:
        raise RuntimeError(f"no process {pid} to capture ({proc}/{pid}/task: {error.strerror})") from None


class FtracePeer:
    """raw_syscalls tracepoints of one process, read as binary pages from every CPU's trace_pipe_raw."""

    name = "ftrace"
    events_per_syscall = 2  # sys_enter + sys_exit
    EVENTS = ("sys_enter", "sys_exit")
    DRAIN_LIMIT_S = 30.0

    def __init__(
        self,
        root: str = "/sys/kernel/tracing",
        buffer_kb: int = 8192,
        *,
        overwrite: bool = False,
        allow_host: bool = False,
        proc: str = "/proc",
    ) -> None:
        self.root = root.rstrip("/") or "/"
        self.buffer_kb = buffer_kb
        # Like the drivers, a full buffer drops new events (overwrite=False) instead of old ones.
        self.overwrite = overwrite
        self.allow_host = allow_host
        self.proc = proc
        self.layout: PageLayout | None = None
        self.ids: frozenset[int] = frozenset()
        self._fds: dict[int, int] = {}  # cpu -> trace_pipe_raw
        self._saved: dict[str, str] = {}
        self._started = False
        self._kb = buffer_kb
        self._reset_counts()

    def _reset_counts(self) -> None:
        self.events = 0
        self.other = 0
        self.bytes = 0
        self.pages = 0
        self.missed = 0  # counts the kernel stored on pages (overwrite mode)
        self.missed_unknown = 0  # pages flagged with losses of unknown count
        self.per_cpu: dict[int, int] = {}
        self._pages_last = 0

    # -- files ---------------------------------------------------------------------------------------

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def _read(self, rel: str) -> str:
        path = self._path(rel)
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError as error:
            raise RuntimeError(f"cannot read {path}: {error.strerror}") from None

    def _write(self, rel: str, value: str) -> None:
        """One write(2) of value (O_TRUNC: empties trace and set_event_pid when value is "")."""
        path = self._path(rel)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
            try:
                if value:
                    os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as error:
            raise RuntimeError(f"cannot write {value!r} to {path}: {error.strerror}") from None

    def _exists(self, rel: str) -> bool:
        return os.path.exists(self._path(rel))

    # -- interface -----------------------------------------------------------------------------------

    def unavailable(self) -> str | None:
        if not os.path.isdir(self.root):
            return f"no tracefs at {self.root}: the directory does not exist"
        if not self._exists("trace"):
            return f"tracefs is not mounted at {self.root} (no {self.root}/trace): mount -t tracefs tracefs {self.root}"
        for event in self.EVENTS:
            if not os.path.isdir(self._path(f"events/raw_syscalls/{event}")):
                return (
                    f"this kernel has no raw_syscalls tracepoints ({self.root}/events/raw_syscalls/{event} "
                    "missing: CONFIG_FTRACE_SYSCALLS off?)"
                )
        for rel, what in (
            ("events/header_page", "the ring-buffer page layout"),
            ("per_cpu", "per-CPU buffers"),
            ("set_event_pid", "event pid filtering (Linux 4.4+)"),
            ("options/event-fork", "event-fork (Linux 4.7+)"),
            ("buffer_size_kb", "buffer sizing"),
            ("tracing_on", "tracing_on"),
        ):
            if not self._exists(rel):
                return f"this kernel's tracefs lacks {what}: {self.root}/{rel} missing"
        if not os.access(self._path("tracing_on"), os.W_OK):
            return f"{self.root}/tracing_on is not writable (the peer must run as root)"
        try:
            PageLayout.parse(self._read("events/header_page"))
        except (RuntimeError, ValueError) as error:
            return str(error)
        return None

    def prepare(self) -> None:
        """Nothing to do before the storm is forked: set_event_pid takes the threads that exist."""

    def start(self, pid: int, buffer_kb: int | None = None) -> None:
        if self._started:
            raise RuntimeError("the ftrace peer is already started: stop() it first")
        if not self.allow_host:
            refuse_outside_guest()
        reason = self.unavailable()
        if reason is not None:
            raise RuntimeError(f"ftrace peer unavailable: {reason}")
        tids = _tids(pid, self.proc)
        self._kb = int(buffer_kb or self.buffer_kb)
        self.layout = PageLayout.parse(self._read("events/header_page"))
        self._saved = {
            rel: self._read(rel).strip()
            for rel in ("tracing_on", "buffer_size_kb", "options/event-fork", "options/overwrite")
            if self._exists(rel)
        }
        self._reset_counts()
        self._started = True
        try:
            self._write("tracing_on", "0")
            for event in self.EVENTS:
                self._write(f"events/raw_syscalls/{event}/enable", "0")
                if self._exists(f"events/raw_syscalls/{event}/filter"):
                    self._write(f"events/raw_syscalls/{event}/filter", "0")  # "0" clears a filter
            self._write("buffer_size_kb", str(self._kb))
            if "options/overwrite" in self._saved:
                self._write("options/overwrite", "1" if self.overwrite else "0")
            self._write("options/event-fork", "1")
            self._write("set_event_pid", " ".join(str(tid) for tid in tids))
            self._write("trace", "")  # empties every CPU's buffer and resets its counters
            self.ids = frozenset(self._event_id(event) for event in self.EVENTS)
            self._open_pipes()
            for event in self.EVENTS:
                self._write(f"events/raw_syscalls/{event}/enable", "1")
            self._write("tracing_on", "1")
        except BaseException:
            self._teardown([])
            raise

    def _event_id(self, event: str) -> int:
        """The event's common_type, from its format file ("ID: 443"; the id file needs CONFIG_PERF_EVENTS)."""
        rel = f"events/raw_syscalls/{event}/format"
        match = re.search(r"^ID:\s*(\d+)", self._read(rel), re.MULTILINE)
        if match is None:
            raise RuntimeError(f"{self._path(rel)} names no ID")
        return int(match[1])

    def _cpus(self) -> list[int]:
        present = sorted(int(name[3:]) for name in os.listdir(self._path("per_cpu")) if name[3:].isdigit())
        try:
            with open("/sys/devices/system/cpu/online", encoding="ascii") as handle:
                online = set(_parse_cpu_list(handle.read()))
        except (OSError, ValueError):
            return present
        return [cpu for cpu in present if cpu in online] or present

    def _open_pipes(self) -> None:
        for cpu in self._cpus():
            path = self._path(f"per_cpu/cpu{cpu}/trace_pipe_raw")
            try:
                self._fds[cpu] = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            except OSError as error:
                raise RuntimeError(f"cannot open {path}: {error.strerror}") from None
            self.per_cpu[cpu] = 0

    def consume(self, batch: int | None = None) -> int:
        """Read the whole pages ready on every CPU now (at most batch per CPU); the syscall events in them."""
        layout = self.layout
        if not self._fds or layout is None:
            return 0
        # Without a batch, a CPU gives at most one buffer's worth per call, so a producer faster
        # than this parser cannot keep consume() from returning.
        limit = batch if batch is not None else max(1, self._kb * 1024 // layout.page_size)
        found = pages = 0
        for cpu, fd in list(self._fds.items()):
            for _ in range(limit):
                try:
                    page = os.read(fd, layout.page_size)
                except BlockingIOError:
                    break
                except OSError as error:
                    if error.errno == errno.ENODEV:  # a CPU without a buffer (went offline)
                        os.close(self._fds.pop(cpu))
                        break
                    raise RuntimeError(f"reading cpu{cpu}'s trace_pipe_raw: {error.strerror}") from None
                if not page:
                    break
                try:
                    events, other, length, missed = count_page(page, layout, self.ids)
                except ValueError as error:
                    raise RuntimeError(f"cpu{cpu}'s trace_pipe_raw gave a page that does not parse: {error}") from None
                pages += 1
                found += events
                self.events += events
                self.pages += 1
                self.per_cpu[cpu] = self.per_cpu.get(cpu, 0) + events
                self.other += other
                self.bytes += length
                if missed < 0:
                    self.missed_unknown += 1
                else:
                    self.missed += missed
        self._pages_last = pages
        return found

    def stop(self) -> dict[str, Any]:
        if not self._started:
            raise RuntimeError("the ftrace peer was not started")
        errors: list[str] = []
        self._step(errors, lambda: self._write("tracing_on", "0"))
        deadline = time.monotonic() + self.DRAIN_LIMIT_S
        while self._fds and time.monotonic() < deadline:
            try:
                self.consume()
            except RuntimeError as error:
                errors.append(str(error))
                break
            if self._pages_last == 0:
                break
        stats: dict[int, dict[str, int]] = {}
        for cpu in sorted(self.per_cpu):
            rel = f"per_cpu/cpu{cpu}/stats"
            try:
                stats[cpu] = _stats(self._read(rel))
            except RuntimeError as error:
                errors.append(str(error))
                stats[cpu] = {}
        self._teardown(errors)
        per_cpu = []
        for cpu in sorted(self.per_cpu):
            s = stats[cpu]
            overrun, dropped, commit = s.get("overrun", 0), s.get("dropped events", 0), s.get("commit overrun", 0)
            per_cpu.append(
                {
                    "cpu": cpu,
                    "events": self.per_cpu[cpu],
                    "drops": overrun + dropped + commit,
                    "overrun": overrun,
                    "dropped": dropped,
                    "commit_overrun": commit,
                    "read_events": s.get("read events"),
                }
            )
        if errors:
            raise RuntimeError("stopping the ftrace peer: " + "; ".join(errors))
        return {
            "events": self.events,
            "drops": sum(int(entry["drops"] or 0) for entry in per_cpu),
            "bytes": self.bytes,
            "per_cpu": per_cpu,
            "other_events": self.other,
            "pages": self.pages,
            "missed_in_stream": self.missed,
            "missed_pages_unknown": self.missed_unknown,
            "buffer_kb": self._kb,
            "page_size": self.layout.page_size if self.layout else None,
            "overwrite": self.overwrite,
        }

    @staticmethod
    def _step(errors: list[str], action: Any) -> None:
        try:
            action()
        except RuntimeError as error:
            errors.append(str(error))

    def _teardown(self, errors: list[str]) -> None:
        """Undo start(): every step is tried; failures are appended to errors."""
        self._step(errors, lambda: self._write("tracing_on", "0"))
        for event in self.EVENTS:
            self._step(errors, lambda event=event: self._write(f"events/raw_syscalls/{event}/enable", "0"))
        self._step(errors, lambda: self._write("set_event_pid", ""))
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        for rel in ("options/event-fork", "options/overwrite", "buffer_size_kb", "tracing_on"):
            if rel in self._saved:
                value = self._saved[rel]
                if rel == "buffer_size_kb":  # "7 (expanded: 1408)" before the buffer was first used
                    match = re.search(r"expanded:\s*(\d+)", value)
                    value = match[1] if match else value.split()[0] if value.split() else value
                self._step(errors, lambda rel=rel, value=value: self._write(rel, value))
        self._saved = {}
        self._started = False


# ---------------------------------------------------------------------------------------------------
# Audit

AUDIT_CONF = """\
# Written by kmatrix's audit peer: local RAW log in {workdir}, nothing ever suspends or halts.
local_events = yes
write_logs = yes
log_file = {workdir}/audit.log
log_group = root
log_format = RAW
flush = NONE
freq = 0
max_log_file = 0
num_logs = 0
priority_boost = 4
name_format = NONE
max_log_file_action = IGNORE
space_left = 2
space_left_action = IGNORE
verify_email = no
action_mail_acct = root
admin_space_left = 1
admin_space_left_action = IGNORE
disk_full_action = IGNORE
disk_error_action = IGNORE
use_libwrap = no
tcp_listen_queue = 5
tcp_max_per_addr = 1
tcp_client_max_idle = 0
transport = TCP
distribute_network = no
q_depth = 2000
overflow_action = IGNORE
max_restarts = 0
plugin_dir = {workdir}/plugins.d
end_of_event_timeout = 2
"""

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_PUNCH_EVERY = 16 << 20  # give consumed log pages back to tmpfs every 16 MiB
_READ_CHUNK = 4 << 20


# Netlink audit messages for a rule auditctl cannot write (include/uapi/linux/audit.h).
NETLINK_AUDIT = 9
AUDIT_ADD_RULE = 1011
AUDIT_DEL_RULE = 1012
AUDIT_TRUSTED_APP = 1121  # a user message: free text
AUDIT_FILTER_EXIT = 0x04
AUDIT_ALWAYS = 2
AUDIT_PID = 0
AUDIT_EQUAL = 0x40000000
AUDIT_BITMASK_SIZE = 64
AUDIT_MAX_FIELDS = 64
_NLMSG_ERROR = 2
_NLM_F_REQUEST_ACK = 0x1 | 0x4


def audit_pid_rule(kind: int, pid: int, seq: int = 1) -> bytes:
    """A netlink AUDIT_ADD_RULE/AUDIT_DEL_RULE message for `-a always,exit -S all -F pid=<pid>`.

    struct audit_rule_data: flags, action, field_count, mask[64], fields[64], values[64],
    fieldflags[64], buflen, then no string buffer. "-S all" sets every mask word but the last, as
    libaudit does.
    """
    mask = [0xFFFFFFFF] * (AUDIT_BITMASK_SIZE - 1) + [0]
    fields = [AUDIT_PID] + [0] * (AUDIT_MAX_FIELDS - 1)
    values = [pid] + [0] * (AUDIT_MAX_FIELDS - 1)
    flags = [AUDIT_EQUAL] + [0] * (AUDIT_MAX_FIELDS - 1)
    body = struct.pack("=3I", AUDIT_FILTER_EXIT, AUDIT_ALWAYS, 1)
    body += struct.pack(f"={AUDIT_BITMASK_SIZE + 3 * AUDIT_MAX_FIELDS}I", *mask, *fields, *values, *flags)
    body += struct.pack("=I", 0)
    return struct.pack("=IHHII", 16 + len(body), kind, _NLM_F_REQUEST_ACK, seq, 0) + body


def audit_user_message(text: bytes, seq: int = 1) -> bytes:
    """A netlink AUDIT_TRUSTED_APP message: the kernel logs its text as a user record."""
    body = text + b"\0"
    return struct.pack("=IHHII", 16 + len(body), AUDIT_TRUSTED_APP, _NLM_F_REQUEST_ACK, seq, 0) + body


def _netlink_audit(message: bytes, what: str, timeout_s: float) -> None:
    """Send one audit request to the kernel and wait for its acknowledgement."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT) as sock:
            sock.settimeout(timeout_s)
            sock.bind((0, 0))
            sock.send(message)
            seq = struct.unpack_from("=I", message, 8)[0]
            while True:
                reply = sock.recv(65536)
                length, kind, _flags, reply_seq, _pid = struct.unpack_from("=IHHII", reply)
                if kind == _NLMSG_ERROR and reply_seq == seq:
                    code = struct.unpack_from("=i", reply, 16)[0]
                    if code:
                        raise RuntimeError(f"the kernel refused {what}: {os.strerror(-code)}")
                    return
                if length == 0:
                    raise RuntimeError(f"the kernel sent no acknowledgement for {what}")
    except OSError as error:
        raise RuntimeError(f"netlink audit request for {what} failed: {error}") from None


def audit_conf(workdir: str) -> str:
    return AUDIT_CONF.format(workdir=workdir)


def parse_audit_status(text: str) -> dict[str, int]:
    """auditctl -s: "enabled 1", "pid 123", "lost 0", "loginuid_immutable 0 unlocked", ..."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _uptime() -> float:
    with open("/proc/uptime", encoding="ascii") as handle:
        return float(handle.read().split()[0])


def _start_ticks(pid: int, tid: int, proc: str) -> int:
    with open(f"{proc}/{pid}/task/{tid}/stat", encoding="utf-8", errors="replace") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[19])  # field 22, starttime, counted after "pid (comm)"


class AuditPeer:
    """Debian's auditd writing a RAW log of every syscall of one process, counted as it grows."""

    name = "auditd"
    events_per_syscall = 1  # one SYSCALL record per syscall

    def __init__(
        self,
        root: str = "/opt/kmatrix/peers/auditd",
        *,
        workdir: str = "/tmp/kmx-audit",
        backlog: int = 16384,
        backlog_wait_time: int | None = None,
        timeout_s: float = 10.0,
        state_file: str = "/run/kmx-audit-enabled-at",
        allow_host: bool = False,
        proc: str = "/proc",
    ) -> None:
        self.root = root.rstrip("/")
        self.auditd = f"{self.root}/sbin/auditd"
        self.auditctl = f"{self.root}/sbin/auditctl"
        self.workdir = workdir.rstrip("/")
        self.log_path = f"{self.workdir}/audit.log"
        self.backlog = backlog
        # None keeps the kernel's: a task that finds the backlog full waits that long before the
        # record is lost (so the storm is throttled rather than events dropped).
        self.backlog_wait_time = backlog_wait_time
        self.timeout_s = timeout_s
        self.state_file = state_file
        self.allow_host = allow_host
        self.proc = proc
        self.env = {**os.environ, "LD_LIBRARY_PATH": f"{self.root}/lib"}
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None
        self._initial: dict[str, int] = {}
        self._rule: list[str] = []
        self._rule_pid: int | None = None
        self._lost0 = 0
        self._log_fd: int | None = None
        self._pattern: re.Pattern[bytes] | None = None
        self._offset = 0
        self._punched = 0
        self._partial = b""
        self.events = 0
        self._memory_mark: float | None = None

    # -- commands ------------------------------------------------------------------------------------

    def _auditctl(self, *args: str) -> str:
        command = f"auditctl {' '.join(args)}"
        try:
            done = subprocess.run(
                [self.auditctl, *args],
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                env=self.env,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{command} did not finish within {self.timeout_s:.0f} s") from None
        except OSError as error:
            raise RuntimeError(f"{command} could not run: {error.strerror}") from None
        if done.returncode != 0:
            said = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
            raise RuntimeError(f"{command} failed with status {done.returncode}: {' / '.join(said[-3:])}")
        return done.stdout

    def _netlink(self, message: bytes, what: str) -> None:
        _netlink_audit(message, what, self.timeout_s)

    def status(self) -> dict[str, int]:
        return parse_audit_status(self._auditctl("-s"))

    def conf(self) -> str:
        return audit_conf(self.workdir)

    # -- interface -----------------------------------------------------------------------------------

    def unavailable(self) -> str | None:
        for binary in (self.auditd, self.auditctl):
            if not os.path.isfile(binary):
                return (
                    f"auditd not in this guest image: {binary} missing (boot with the overlay of "
                    "harness.bench.auditd.auditd_files)"
                )
            if not os.access(binary, os.X_OK):
                return f"{binary} is not executable"
        try:
            status = self.status()
        except RuntimeError as error:
            if "while loading shared libraries" in str(error):
                return f"the audit peer's binaries cannot run in this image: {error}"
            if "audit=0" in _cmdline():
                return f"the kernel was booted with audit=0, which disables audit until reboot ({error})"
            return f"the kernel's audit is not usable (CONFIG_AUDIT off, or not allowed here): {error}"
        if "enabled" not in status:
            return "auditctl -s printed no audit status"
        if status["enabled"] == 2:
            return "audit is locked (enabled 2): rules cannot change until reboot"
        daemon = status.get("pid", 0)
        if daemon and (self._proc is None or daemon != self._proc.pid):
            return f"another audit daemon (pid {daemon}) is registered with the kernel"
        return None

    def prepare(self) -> None:
        """Start auditd and enable audit; the kernel audits only tasks forked after this."""
        if self._proc is not None:
            return
        if not self.allow_host:
            refuse_outside_guest()
        reason = self.unavailable()
        if reason is not None:
            raise RuntimeError(f"audit peer unavailable: {reason}")
        self._initial = self.status()
        shutil.rmtree(self.workdir, ignore_errors=True)
        os.makedirs(f"{self.workdir}/plugins.d", mode=0o700)
        conf = f"{self.workdir}/auditd.conf"
        with open(conf, "w", encoding="ascii") as handle:
            handle.write(self.conf())
        os.chmod(conf, 0o640)  # auditd refuses a config others can write
        self._stderr = open(f"{self.workdir}/auditd.stderr", "wb")  # noqa: SIM115 (closed in stop)
        try:
            self._proc = subprocess.Popen(
                [self.auditd, "-n", "-c", self.workdir],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
                env=self.env,
            )
        except OSError as error:
            self._stderr.close()
            raise RuntimeError(f"cannot run {self.auditd}: {error.strerror}") from None
        try:
            self._wait_registered()
            args = ["-b", str(self.backlog), "-r", "0", "-f", "1", "-e", "1"]
            if self.backlog_wait_time is not None:
                args += ["--backlog_wait_time", str(self.backlog_wait_time)]
            self._auditctl(*args)
            self._mark_enabled()
        except BaseException:
            self._shutdown([])
            raise
        time.sleep(0.03)  # a task forked from now on starts at least one clock tick after the mark

    def _wait_registered(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.timeout_s
        while True:
            rc = self._proc.poll()
            if rc is not None:
                raise RuntimeError(
                    f"auditd -n -c {self.workdir} exited with status {rc} before registering with the kernel: "
                    f"{self._diagnose()}"
                )
            if self.status().get("pid") == self._proc.pid:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"auditd (pid {self._proc.pid}) did not register with the kernel within {self.timeout_s:.0f} s"
                )
            time.sleep(0.05)

    def _diagnose(self) -> str:
        """auditd -n says why only to syslog: run it once in the foreground (-f) for its stderr."""
        try:
            done = subprocess.run(
                [self.auditd, "-f", "-c", self.workdir],
                capture_output=True,
                text=True,
                timeout=3,
                env=self.env,
                check=False,
            )
            said = done.stderr
        except subprocess.TimeoutExpired as error:  # it started this time: nothing to learn
            said = error.stderr.decode(errors="replace") if isinstance(error.stderr, bytes) else (error.stderr or "")
        except OSError as error:
            return f"cannot run {self.auditd}: {error.strerror}"
        lines = [line for line in said.splitlines() if line.strip()]
        return " / ".join(lines[-4:]) or "it printed nothing"

    def _mark_enabled(self) -> None:
        """Record (once per boot) the uptime by which audit had first been enabled."""
        if self._enabled_at() is not None:
            return
        try:
            with open(self.state_file, "w", encoding="ascii") as handle:
                handle.write(f"{_uptime():.2f}\n")
        except OSError:
            self._memory_mark = _uptime()  # no writable state file: good for this process only

    def _enabled_at(self) -> float | None:
        try:
            with open(self.state_file, encoding="ascii") as handle:
                value = float(handle.read().split()[0])
        except (OSError, ValueError, IndexError):
            return self._memory_mark
        return value if value <= _uptime() else None  # a file from an earlier boot

    def check_auditable(self, pid: int) -> None:
        """Raise unless every thread of pid was forked after audit was first enabled (or audit=1 at boot)."""
        if "audit=1" in _cmdline():
            return
        enabled_at = self._enabled_at()
        tids = _tids(pid, self.proc)
        hz = os.sysconf("SC_CLK_TCK")
        early: list[int] = []
        for tid in tids:
            try:
                start = _start_ticks(pid, tid, self.proc)
            except (OSError, IndexError, ValueError):
                continue  # the thread has exited
            # Uptime is read to 1/100 s after enabling: a start a full 1/100 s later is surely after it.
            if enabled_at is None or start * 100 < (round(enabled_at * 100) + 1) * hz:
                early.append(tid)
        if early:
            raise RuntimeError(
                f"process {pid} ({len(early)} of its threads, e.g. {early[0]}) was started before audit was first "
                "enabled in this boot, and the kernel audits only tasks forked after that: call prepare() before "
                "starting the storm, or boot with audit=1"
            )

    def start(self, pid: int, buffer_kb: int | None = None) -> None:
        """Capture every syscall of pid (buffer_kb is not used: the kernel's backlog is `backlog` records)."""
        if self._rule:
            raise RuntimeError("the audit peer is already started: stop() it first")
        self.prepare()
        try:
            self.check_auditable(pid)
            self._lost0 = self.status().get("lost", 0)
            rule = ["-a", "always,exit", "-F", "arch=b64", "-S", "all", "-F", f"pid={pid}"]
            try:
                self._auditctl(*rule)
            except RuntimeError as error:
                # libaudit maps b64 through uname's machine and knows no loongarch64 (4.1: "arch elf
                # mapping not found"; without the field: "Error detecting machine type"). The kernel
                # takes the same rule without an arch field (it then covers every ABI) over netlink.
                rule = ["-a", "always,exit", "-S", "all", "-F", f"pid={pid}"]
                what = f"the rule {' '.join(rule)}"
                try:
                    self._netlink(audit_pid_rule(AUDIT_ADD_RULE, pid), what)
                except RuntimeError as again:
                    raise RuntimeError(f"{error}; over netlink: {again}") from None
                rule.append("(netlink)")
        except BaseException:
            self._shutdown([])
            raise
        self._rule = rule
        self._rule_pid = pid
        self._pattern = re.compile(rb"^type=SYSCALL [^\n]* pid=%d " % pid, re.MULTILINE)
        self._offset = self._punched = 0
        self._partial = b""
        self.events = 0

    def consume(self, batch: int | None = None) -> int:
        """The SYSCALL records of the storm auditd appended to its log since the last call."""
        if self._pattern is None:
            return 0
        if self._log_fd is None:
            try:
                self._log_fd = os.open(self.log_path, os.O_RDONLY)
            except FileNotFoundError:
                return 0
            except OSError as error:
                raise RuntimeError(f"cannot open {self.log_path}: {error.strerror}") from None
        found = 0
        chunks = 0
        while batch is None or chunks < batch:
            data = os.pread(self._log_fd, _READ_CHUNK, self._offset + len(self._partial))
            if not data:
                break
            chunks += 1
            data = self._partial + data
            end = data.rfind(b"\n") + 1
            found += len(self._pattern.findall(data, 0, end))
            self._offset += end
            self._partial = data[end:]
        self.events += found
        if self._offset - self._punched >= _PUNCH_EVERY:
            self._punch()
        return found

    def _punch(self) -> None:
        """Give the log's consumed pages back to tmpfs; offsets (and auditd's appends) are unchanged."""
        upto = self._offset & ~0xFFFF
        if upto <= self._punched or self._log_fd is None:
            return
        try:
            import ctypes  # only when the log grows large

            libc = ctypes.CDLL(None, use_errno=True)
            libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
            if libc.fallocate(self._log_fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, 0, upto) == 0:
                self._punched = upto
                return
        except (OSError, AttributeError):
            pass
        self._punched = self._offset  # not supported here: do not try again for a while

    def stop(self) -> dict[str, Any]:
        if not self._rule:
            raise RuntimeError("the audit peer was not started")
        errors: list[str] = []
        rule = " ".join(self._rule)
        if self._rule[-1] == "(netlink)" and self._rule_pid is not None:
            try:
                self._netlink(audit_pid_rule(AUDIT_DEL_RULE, self._rule_pid), f"deleting {rule}")
            except RuntimeError as error:
                errors.append(str(error))
        try:
            self._auditctl("-D")  # every rule: the guest has no others
        except RuntimeError as error:
            errors.append(str(error))
        self._rule = []
        lost = self._lost0
        deadline = time.monotonic() + self.timeout_s
        while True:  # let auditd take what the kernel still queues before it goes
            try:
                status = self.status()
            except RuntimeError as error:
                errors.append(str(error))
                break
            lost = status.get("lost", lost)
            if status.get("backlog", 0) == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        warnings: list[str] = []
        try:
            self._flush_log()
        except RuntimeError as error:  # the count may miss the last few records; the run still counts
            warnings.append(str(error))
        exit_status = self._shutdown(errors)
        try:
            self.consume()
            if self._partial and self._pattern is not None:  # a last record without its newline
                self.events += len(self._pattern.findall(self._partial + b"\n"))
            size = os.fstat(self._log_fd).st_size if self._log_fd is not None else 0
        except (OSError, RuntimeError) as error:
            errors.append(f"reading {self.log_path}: {error}")
            size = self._offset
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None
        self._pattern = None
        shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise RuntimeError("stopping the audit peer: " + "; ".join(errors))
        if exit_status is not None and exit_status < 0:
            warnings.append(
                f"auditd died of signal {-exit_status} when asked to stop (sid's 4.1.2 crashes in libauparse on "
                "SIGTERM); the storm's records had been flushed to the log before"
            )
        return {
            "events": self.events,
            "drops": max(0, lost - self._lost0),
            "bytes": size,
            "lost_total": lost,
            "lost_at_start": self._lost0,
            "backlog_limit": self.backlog,
            "auditd_exit": exit_status,
            "rule": rule,
            "warnings": warnings,
        }

    def _flush_log(self) -> None:
        """Push the storm's last records out of auditd's stdio buffer before it is stopped.

        auditd writes its log through stdio (a buffer of st_blksize, a page on tmpfs) and only
        flushes it on a clean exit; sid's auditd 4.1.2 segfaults in libauparse on SIGTERM. Records
        of our own (AUDIT_TRUSTED_APP user messages) worth two buffers come after the storm's, so
        once the log has grown by all of them but one buffer, every storm record is in the file.
        """
        if self._proc is None or self._proc.poll() is not None:
            return
        try:
            before = os.stat(self.log_path)
        except OSError:
            return
        text = b"kmatrix audit peer: flushing the log " + b"." * 4000
        total = seq = 0
        while total < 2 * before.st_blksize:
            seq += 1
            self._netlink(audit_user_message(text, seq), "a flush record")
            total += len(text)
        deadline = time.monotonic() + self.timeout_s
        while os.stat(self.log_path).st_size - before.st_size < total - before.st_blksize:
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise RuntimeError(
                    f"auditd did not write {seq} flush records to {self.log_path} within {self.timeout_s:.0f} s: "
                    "the storm's last records may be missing from the count"
                )
            time.sleep(0.02)

    def _shutdown(self, errors: list[str]) -> int | None:
        """Stop auditd and put the kernel's audit settings back; failures are appended to errors."""
        exit_status: int | None = None
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self.timeout_s)
                except subprocess.TimeoutExpired:
                    errors.append(f"auditd (pid {proc.pid}) ignored SIGTERM for {self.timeout_s:.0f} s: killed")
                    proc.kill()
                    proc.wait(timeout=self.timeout_s)
            exit_status = proc.returncode
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._rule:
            try:
                self._auditctl("-D")
            except RuntimeError as error:
                errors.append(str(error))
            self._rule = []
        restore = []
        for key, flag in (("backlog_limit", "-b"), ("rate_limit", "-r"), ("failure", "-f"), ("enabled", "-e")):
            if key in self._initial:
                restore += [flag, str(self._initial[key])]
        if "backlog_wait_time" in self._initial:
            restore += ["--backlog_wait_time", str(self._initial["backlog_wait_time"])]
        if restore:
            try:
                self._auditctl(*restore)
            except RuntimeError as error:
                errors.append(str(error))
        return exit_status


def _cmdline() -> list[str]:
    try:
        with open("/proc/cmdline", encoding="utf-8", errors="replace") as handle:
            return handle.read().split()
    except OSError:
        return []
