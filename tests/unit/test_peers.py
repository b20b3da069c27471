"""The throughput benchmark's peers without a VM: ftrace's page parser and orchestration on a fake
tracefs, the audit peer driven through stand-in auditd/auditctl scripts, and (slow) the auditd
bundle resolved from the Debian archive."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.guest import capture
from harness.guest.peers import (
    AUDIT_ADD_RULE,
    AUDIT_DEL_RULE,
    AUDIT_TRUSTED_APP,
    RB_MISSED_EVENTS,
    RB_MISSED_STORED,
    AuditPeer,
    FtracePeer,
    PageLayout,
    audit_conf,
    audit_pid_rule,
    audit_user_message,
    count_page,
    parse_audit_status,
)

ENTER, EXIT, OTHER = 443, 442, 7

# -- building ring-buffer pages ---------------------------------------------------------------------


class PageBuilder:
    """A trace_pipe_raw page: u64 timestamp, commit (4 or 8 bytes), then events, as the kernel lays them out."""

    def __init__(self, big_endian: bool = False, commit_size: int = 8, page_size: int = 4096) -> None:
        self.layout = PageLayout(8, commit_size, 8 + commit_size, page_size, big_endian)
        self.order = ">" if big_endian else "<"
        self.big = big_endian
        self.data = b""

    def _header(self, type_len: int, delta: int) -> bytes:
        word = (type_len << 27) | delta if self.big else type_len | (delta << 5)
        return struct.pack(self.order + "I", word)

    def _payload(self, type_id: int, size: int) -> bytes:
        body = struct.pack(self.order + "HBBi", type_id, 0, 0, 1234)  # common_type, flags, preempt, pid
        return (body + bytes(range(size)))[:size]

    def small(self, type_id: int, size: int, delta: int = 5) -> PageBuilder:
        """type_len 1..28: size (a multiple of 4, <= 112) bytes of data."""
        assert size % 4 == 0 and 4 <= size <= 112
        self.data += self._header(size // 4, delta) + self._payload(type_id, size)
        return self

    def big_event(self, type_id: int, size: int, delta: int = 5) -> PageBuilder:
        """type_len 0: array[0] holds the length (itself included), data follows."""
        self.data += self._header(0, delta) + struct.pack(self.order + "I", size + 4) + self._payload(type_id, size)
        self.data += bytes(-size % 4)
        return self

    def padding(self, size: int) -> PageBuilder:
        """A discarded event: type_len 29, time_delta != 0, array[0] bytes after the header."""
        assert size % 4 == 0 and size >= 4
        self.data += self._header(29, 1) + struct.pack(self.order + "I", size) + bytes(size - 4)
        return self

    def time_extend(self, kind: int = 30) -> PageBuilder:
        self.data += self._header(kind, 0x123) + struct.pack(self.order + "I", 0x456)
        return self

    def null_padding(self, junk: int = 40) -> PageBuilder:
        """type_len 29 with time_delta 0: the rest of the page is padding (junk after it is ignored)."""
        self.data += self._header(29, 0) + b"\xff" * junk
        return self

    def page(self, flags: int = 0, missed: int | None = None, commit: int | None = None) -> bytes:
        layout = self.layout
        length = len(self.data) if commit is None else commit
        body = self.data
        if missed is not None:
            flags |= RB_MISSED_EVENTS | RB_MISSED_STORED
            body += struct.pack(self.order + ("Q" if layout.commit_size == 8 else "I"), missed)
        head = struct.pack(self.order + "Q", 123456789)
        head += struct.pack(self.order + ("Q" if layout.commit_size == 8 else "I"), length | flags)
        page = head + body
        assert len(page) <= layout.page_size
        return page + bytes(layout.page_size - len(page))


def typical(builder: PageBuilder) -> PageBuilder:
    """Every kind of record: 3 syscall enters/exits of both sizes, 1 other event, extends, padding."""
    return (
        builder.small(ENTER, 64)
        .time_extend(30)
        .small(EXIT, 24)
        .padding(24)
        .big_event(ENTER, 64)
        .time_extend(31)
        .big_event(EXIT, 200)
        .small(OTHER, 16)
        .small(ENTER, 112)
    )


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("commit_size", [8, 4])
def test_count_page_counts_each_kind_of_event_exactly(big_endian: bool, commit_size: int) -> None:
    builder = typical(PageBuilder(big_endian, commit_size))
    page = builder.page()
    # every data event, whatever its type
    assert count_page(page, builder.layout) == (6, 0, len(builder.data), 0)
    # only the syscall tracepoints
    assert count_page(page, builder.layout, frozenset({ENTER, EXIT})) == (5, 1, len(builder.data), 0)
    assert count_page(page, builder.layout, frozenset({ENTER})) == (3, 3, len(builder.data), 0)


def test_count_page_stops_at_null_padding_and_ignores_what_lies_past_the_commit() -> None:
    builder = PageBuilder().small(ENTER, 64).small(EXIT, 24).null_padding()
    assert count_page(builder.page(), builder.layout)[:2] == (2, 0)
    # data past the commit is not read, even when it would parse as events
    committed = len(PageBuilder().small(ENTER, 64).data)
    more = PageBuilder().small(ENTER, 64).small(EXIT, 24).small(EXIT, 24)
    assert count_page(more.page(commit=committed), more.layout) == (1, 0, committed, 0)


def test_empty_and_full_pages() -> None:
    empty = PageBuilder()
    assert count_page(empty.page(), empty.layout) == (0, 0, 0, 0)
    full = PageBuilder()
    while len(full.data) + 68 <= full.layout.page_size - full.layout.data_offset:
        full.small(ENTER, 64)
    events = len(full.data) // 68
    assert count_page(full.page(), full.layout, frozenset({ENTER})) == (events, 0, len(full.data), 0)


def test_a_64k_page_as_ppc64le_kernels_use() -> None:
    builder = PageBuilder(page_size=65536)
    for _ in range(600):
        builder.small(ENTER, 64).small(EXIT, 24)
    assert count_page(builder.page(), builder.layout, frozenset({ENTER, EXIT}))[:2] == (1200, 0)


def test_missed_events_reported_by_the_page_header() -> None:
    builder = PageBuilder().small(ENTER, 64)
    assert count_page(builder.page(missed=4321), builder.layout)[3] == 4321
    assert count_page(builder.page(flags=RB_MISSED_EVENTS), builder.layout)[3] == -1  # lost, count unknown
    be = PageBuilder(big_endian=True, commit_size=4).small(ENTER, 64)
    assert count_page(be.page(missed=17), be.layout) == (1, 0, 68, 17)


def test_pages_that_do_not_parse_are_errors() -> None:
    builder = PageBuilder().small(ENTER, 64)
    with pytest.raises(ValueError, match="runs past the commit"):
        count_page(builder.page(commit=40), builder.layout)
    with pytest.raises(ValueError, match="beyond the page"):
        count_page(builder.page(commit=5000), builder.layout)
    with pytest.raises(ValueError, match="short page"):
        count_page(b"\0" * 8, builder.layout)


def test_page_layout_from_header_page() -> None:
    text = (
        "\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;\n"
        "\tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;\n"
        "\tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;\n"
        "\tfield: char data;\toffset:16;\tsize:4080;\tsigned:0;\n"
    )
    layout = PageLayout.parse(text, big_endian=False)
    assert (layout.commit_offset, layout.commit_size, layout.data_offset, layout.page_size) == (8, 8, 16, 4096)
    ppc = PageLayout.parse(text.replace("4080", "65520"), big_endian=False)
    assert ppc.page_size == 65536
    with pytest.raises(ValueError, match="no commit or data"):
        PageLayout.parse("nothing here")


# -- FtracePeer on a fake tracefs -------------------------------------------------------------------


def fake_tracefs(root: Path, pages: dict[int, list[bytes]] | None = None) -> Path:
    """The files FtracePeer uses, as regular files; trace_pipe_raw holds the pages to hand out."""
    files = {
        "trace": "",
        "tracing_on": "1\n",
        "buffer_size_kb": "7 (expanded: 1408)\n",
        "set_event_pid": "",
        "options/event-fork": "0\n",
        "options/overwrite": "1\n",
        "events/header_page": (
            "\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;\n"
            "\tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;\n"
            "\tfield: char data;\toffset:16;\tsize:4080;\tsigned:1;\n"
        ),
    }
    for event, number in (("sys_enter", ENTER), ("sys_exit", EXIT)):
        files[f"events/raw_syscalls/{event}/enable"] = "0\n"
        files[f"events/raw_syscalls/{event}/filter"] = "none\n"
        files[f"events/raw_syscalls/{event}/format"] = f"name: {event}\nID: {number}\nformat:\n"
    for cpu, cpu_pages in (pages or {0: []}).items():
        files[f"per_cpu/cpu{cpu}/stats"] = (
            "entries: 0\noverrun: 3\ncommit overrun: 0\nbytes: 0\noldest event ts:     0.000000\n"
            "now ts: 11290.099210\ndropped events: 40\nread events: 5\n"
        )
        (root / f"per_cpu/cpu{cpu}").mkdir(parents=True, exist_ok=True)
        (root / f"per_cpu/cpu{cpu}/trace_pipe_raw").write_bytes(b"".join(cpu_pages))
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_ftrace_unavailable_says_why(tmp_path: Path) -> None:
    assert "no tracefs at" in str(FtracePeer(str(tmp_path / "missing")).unavailable())
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not mounted" in str(FtracePeer(str(empty)).unavailable())
    (empty / "trace").write_text("")
    assert "no raw_syscalls tracepoints" in str(FtracePeer(str(empty)).unavailable())
    root = fake_tracefs(tmp_path / "full")
    assert FtracePeer(str(root)).unavailable() is None
    (root / "options/event-fork").unlink()
    assert "event-fork" in str(FtracePeer(str(root)).unavailable())
    (root / "options/event-fork").write_text("0\n")
    (root / "events/header_page").write_text("garbage\n")
    assert "header_page" in str(FtracePeer(str(root)).unavailable())


def test_ftrace_refuses_to_start_outside_a_guest(tmp_path: Path) -> None:
    assert "kmatrix.mode=" not in Path("/proc/cmdline").read_text()
    with pytest.raises(capture.NotInGuest):
        FtracePeer(str(fake_tracefs(tmp_path))).start(os.getpid())


def test_ftrace_start_consume_stop_on_a_fake_tracefs(tmp_path: Path) -> None:
    one = typical(PageBuilder())  # 5 syscall events, 1 other
    two = PageBuilder().small(EXIT, 24).small(ENTER, 64)
    root = fake_tracefs(tmp_path, {0: [one.page(), two.page(missed=9)]})
    peer = FtracePeer(str(root), buffer_kb=1024, allow_host=True)
    peer.start(os.getpid(), buffer_kb=2048)
    tids = sorted(int(t) for t in os.listdir(f"/proc/{os.getpid()}/task"))
    assert sorted(int(t) for t in (root / "set_event_pid").read_text().split()) == tids
    assert (root / "buffer_size_kb").read_text() == "2048"
    assert (root / "options/event-fork").read_text() == "1"
    assert (root / "options/overwrite").read_text() == "0"
    assert (root / "tracing_on").read_text() == "1"
    for event in ("sys_enter", "sys_exit"):
        assert (root / f"events/raw_syscalls/{event}/enable").read_text() == "1"
        assert (root / f"events/raw_syscalls/{event}/filter").read_text() == "0"
    assert peer.ids == frozenset({ENTER, EXIT})
    assert peer.consume(batch=1) == 5
    with pytest.raises(RuntimeError, match="already started"):
        peer.start(os.getpid())
    result = peer.stop()
    assert result["events"] == 7 and result["other_events"] == 1 and result["pages"] == 2
    assert result["bytes"] == len(one.data) + len(two.data)
    assert result["missed_in_stream"] == 9
    assert result["drops"] == 43  # overrun 3 + dropped events 40
    assert result["per_cpu"][0] == {
        "cpu": 0, "events": 7, "drops": 43, "overrun": 3, "dropped": 40, "commit_overrun": 0, "read_events": 5
    }  # fmt: skip
    # everything is put back: events off, no pid filter, the settings found before
    for event in ("sys_enter", "sys_exit"):
        assert (root / f"events/raw_syscalls/{event}/enable").read_text() == "0"
    assert (root / "set_event_pid").read_text() == ""
    assert (root / "tracing_on").read_text() == "1"
    assert (root / "buffer_size_kb").read_text() == "1408"
    assert (root / "options/event-fork").read_text() == "0"
    assert (root / "options/overwrite").read_text() == "1"
    with pytest.raises(RuntimeError, match="not started"):
        peer.stop()


def test_ftrace_start_of_a_missing_process(tmp_path: Path) -> None:
    peer = FtracePeer(str(fake_tracefs(tmp_path)), allow_host=True)
    with pytest.raises(RuntimeError, match="no process 999999999"):
        peer.start(999_999_999)
    assert (tmp_path / "tracing_on").read_text() == "1\n"  # nothing was touched


def test_ftrace_a_bad_page_is_an_error_and_start_failures_undo_everything(tmp_path: Path) -> None:
    bad = b"\0" * 8 + struct.pack("<Q", 9999) + bytes(4080)  # a commit beyond the page
    root = fake_tracefs(tmp_path, {0: [bad, bad]})
    peer = FtracePeer(str(root), allow_host=True)
    peer.start(os.getpid())
    with pytest.raises(RuntimeError, match="does not parse"):
        peer.consume()
    with pytest.raises(RuntimeError, match="does not parse"):
        peer.stop()  # the drain meets the second one
    assert (root / "events/raw_syscalls/sys_enter/enable").read_text() == "0"  # torn down all the same
    assert (root / "set_event_pid").read_text() == ""

    (root / "per_cpu/cpu0/trace_pipe_raw").unlink()  # cannot be opened: start fails half way
    with pytest.raises(RuntimeError, match="trace_pipe_raw"):
        peer.start(os.getpid())
    assert (root / "events/raw_syscalls/sys_exit/enable").read_text() == "0"
    assert (root / "options/event-fork").read_text() == "0"
    assert (root / "buffer_size_kb").read_text() == "1408"


# -- AuditPeer --------------------------------------------------------------------------------------


def test_audit_unavailable_without_the_binaries(tmp_path: Path) -> None:
    reason = AuditPeer(str(tmp_path / "peers/auditd")).unavailable()
    assert reason is not None and reason.startswith("auditd not in this guest image")
    assert str(tmp_path / "peers/auditd/sbin/auditd") in reason


def test_audit_refuses_to_start_outside_a_guest(tmp_path: Path) -> None:
    with pytest.raises(capture.NotInGuest):
        AuditPeer(str(tmp_path), workdir=str(tmp_path / "w")).prepare()


def conf_values(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def test_auditd_conf_logs_raw_locally_and_never_suspends_or_halts() -> None:
    values = conf_values(audit_conf("/tmp/kmx-audit"))
    assert values["log_file"] == "/tmp/kmx-audit/audit.log"
    assert values["log_format"] == "RAW"
    assert values["flush"] == "NONE"
    assert values["write_logs"] == "yes" and values["local_events"] == "yes"
    assert values["plugin_dir"] == "/tmp/kmx-audit/plugins.d"
    actions = {key: value for key, value in values.items() if key.endswith("_action")}
    assert set(actions) >= {
        "max_log_file_action",
        "space_left_action",
        "admin_space_left_action",
        "disk_full_action",
        "disk_error_action",
        "overflow_action",
    }
    assert set(actions.values()) == {"IGNORE"}
    assert int(values["space_left"]) > int(values["admin_space_left"])  # auditd's own sanity check
    assert values["use_libwrap"] == "no" and "tcp_listen_port" not in values


def test_parse_audit_status() -> None:
    text = "enabled 1\nfailure 1\npid 812\nrate_limit 0\nbacklog_limit 16384\nlost 7\nbacklog 0\n"
    text += "backlog_wait_time 15000\nloginuid_immutable 0 unlocked\n"
    status = parse_audit_status(text)
    assert status["enabled"] == 1 and status["pid"] == 812 and status["lost"] == 7
    assert status["loginuid_immutable"] == 0


# Stand-ins for auditd and auditctl: state lives in $KMX_FAKE_AUDIT (enabled, pid, lost, backlog_limit);
# every auditctl command line is appended to calls.
FAKE_AUDITD = """#!/bin/sh
S=$KMX_FAKE_AUDIT
printf '%s\n' "$*" > $S/auditd.args
[ -n "$LD_LIBRARY_PATH" ] && echo "$LD_LIBRARY_PATH" > $S/auditd.ldpath
trap 'echo 0 > $S/pid; exit 0' TERM
echo 1 > $S/enabled
echo $$ > $S/pid
while :; do sleep 0.05; done
"""
FAKE_AUDITCTL = """#!/bin/sh
S=$KMX_FAKE_AUDIT
printf '%s\n' "$*" >> $S/calls
case "$*" in *arch=b64*) [ -n "$KMX_FAKE_NO_MACHINE" ] && { echo "arch elf mapping not found" >&2; exit 255; };; esac
if [ "$1" = -s ]; then
  for k in enabled pid lost backlog_limit; do echo "$k $(cat $S/$k)"; done
  echo "failure 1"; echo "rate_limit 0"; echo "backlog 0"; echo "backlog_wait_time 15000"
  exit 0
fi
while [ $# -gt 0 ]; do
  case "$1" in -e) echo "$2" > $S/enabled; shift;; -b) echo "$2" > $S/backlog_limit; shift;; esac
  shift
done
"""


@pytest.fixture
def fake_audit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[AuditPeer, Path]]:
    root, state = tmp_path / "peer", tmp_path / "state"
    (root / "sbin").mkdir(parents=True)
    (root / "lib").mkdir()
    state.mkdir()
    for name, text in (("auditd", FAKE_AUDITD), ("auditctl", FAKE_AUDITCTL)):
        (root / "sbin" / name).write_text(text)
        (root / "sbin" / name).chmod(0o755)
    for key, value in (("enabled", 0), ("pid", 0), ("lost", 5), ("backlog_limit", 64)):
        (state / key).write_text(f"{value}\n")
    monkeypatch.setenv("KMX_FAKE_AUDIT", str(state))
    peer = AuditPeer(
        str(root), workdir=str(tmp_path / "work"), state_file=str(tmp_path / "enabled-at"), allow_host=True
    )

    def netlink(message: bytes, what: str) -> None:
        """The kernel and auditd: a user message becomes a log record, a rule message is noted."""
        length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", message)
        assert length == len(message)
        with (state / "netlink").open("a") as handle:
            handle.write(f"{kind} {what}\n")
        if kind == AUDIT_TRUSTED_APP:
            text = message[16:].rstrip(b"\0").decode()
            with open(peer.log_path, "a") as log:
                log.write(f"type=TRUSTED_APP msg=audit(1.0:1): pid=1 uid=0 msg='{text}'\n")

    monkeypatch.setattr(peer, "_netlink", netlink)
    yield peer, state
    if peer._proc is not None:  # a failed test must not leave the stand-in running
        peer._proc.kill()
        peer._proc.wait()


def syscall_record(pid: int, serial: int) -> bytes:
    return (
        f"type=SYSCALL msg=audit(1700000000.{serial:03d}:{serial}): arch=c000003e syscall=110 success=yes exit=1 "
        f'a0=0 a1=0 a2=0 a3=0 items=0 ppid=1 pid={pid} auid=4294967295 uid=0 gid=0 comm="storm" exe="/s"\n'
        f"type=PROCTITLE msg=audit(1700000000.{serial:03d}:{serial}): proctitle=73746F726D\n"
    ).encode()


def test_audit_peer_runs_the_daemon_counts_the_storm_and_leaves_nothing(fake_audit: tuple[AuditPeer, Path]) -> None:
    peer, state = fake_audit
    assert peer.unavailable() is None
    peer.prepare()
    assert peer._proc is not None
    daemon = peer._proc.pid
    workdir = Path(peer.workdir)
    assert (state / "auditd.args").read_text().split() == ["-n", "-c", peer.workdir]
    assert (state / "auditd.ldpath").read_text().strip() == f"{peer.root}/lib"
    conf = workdir / "auditd.conf"
    assert conf_values(conf.read_text())["log_file"] == f"{peer.workdir}/audit.log"
    assert conf.stat().st_mode & 0o022 == 0
    assert "-b 16384 -r 0 -f 1 -e 1" in (state / "calls").read_text()

    storm = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        peer.start(storm.pid)
        assert f"-a always,exit -F arch=b64 -S all -F pid={storm.pid}" in (state / "calls").read_text()
        log = workdir / "audit.log"
        records = b"".join(syscall_record(storm.pid, i) for i in range(3))
        records += syscall_record(storm.pid + 1, 9) + syscall_record(1, 10)  # other processes: not counted
        log.write_bytes(records + syscall_record(storm.pid, 11)[:50])  # a record half written
        assert peer.consume() == 3
        with log.open("ab") as handle:
            handle.write(syscall_record(storm.pid, 11)[50:] + syscall_record(storm.pid, 12))
        (state / "lost").write_text("12\n")
        assert peer.consume() == 2
        assert peer.consume() == 0
        result = peer.stop()
    finally:
        storm.kill()
        storm.wait()
    assert result["events"] == 5 and result["drops"] == 7 and result["lost_total"] == 12
    # the log also holds the records sent to flush auditd's stdio buffer (two pages' worth)
    assert result["bytes"] > len(records) + len(syscall_record(storm.pid, 11) + syscall_record(storm.pid, 12))
    flushes = (state / "netlink").read_text().splitlines()
    assert flushes and all(line == f"{AUDIT_TRUSTED_APP} a flush record" for line in flushes)
    assert len(flushes) * 4000 >= 2 * os.sysconf("SC_PAGE_SIZE")
    assert result["auditd_exit"] == 0
    assert result["rule"] == f"-a always,exit -F arch=b64 -S all -F pid={storm.pid}"
    calls = (state / "calls").read_text().splitlines()
    assert "-D" in calls
    assert calls[-1] == "-b 64 -r 0 -f 1 -e 0 --backlog_wait_time 15000"  # the kernel's settings put back
    assert (state / "enabled").read_text().strip() == "0" and (state / "pid").read_text().strip() == "0"
    assert not workdir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(daemon, 0)


def test_audit_peer_refuses_a_storm_older_than_audit(fake_audit: tuple[AuditPeer, Path]) -> None:
    peer, state = fake_audit
    old = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.05)
        with pytest.raises(RuntimeError, match="started before audit was first enabled"):
            peer.start(old.pid)
    finally:
        old.kill()
        old.wait()
    # the failed start stopped the daemon and put the settings back
    assert peer._proc is None
    assert (state / "enabled").read_text().strip() == "0"
    assert "-D" not in (state / "calls").read_text().splitlines()  # no rule was added


def test_audit_peer_says_why_the_daemon_did_not_start(fake_audit: tuple[AuditPeer, Path]) -> None:
    peer, _state = fake_audit
    (Path(peer.auditd)).write_text("#!/bin/sh\necho 'Error - no such keyword' >&2\nexit 6\n")
    with pytest.raises(RuntimeError, match=r"exited with status 6 .*Error - no such keyword"):
        peer.prepare()
    assert peer._proc is None


# -- the auditd bundle (network or a warm cache) ----------------------------------------------------


def readelf_dynamic(path: Path) -> tuple[list[str], str | None]:
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    needed, soname = [], None
    for line in out.splitlines():
        if "(NEEDED)" in line:
            needed.append(line.split("[", 1)[1].split("]", 1)[0])
        elif "(SONAME)" in line:
            soname = line.split("[", 1)[1].split("]", 1)[0]
    return needed, soname


@pytest.mark.slow
@pytest.mark.parametrize("arch_name", ["x86_64", "s390x"])
def test_auditd_files_resolve_with_every_needed_library(workspace: Any, arch_name: str) -> None:
    from harness.archs import ARCHS
    from harness.bench.auditd import GUEST_ROOT, auditd_bundle, auditd_files, elf_dynamic
    from harness.rootfs import load_recipe

    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) is not installed")
    arch = ARCHS[arch_name]
    suite = workspace.matrix.userland_suite(arch_name)
    files = auditd_files(workspace.repo, suite, arch, workspace.cache)
    bundle = auditd_bundle(workspace.repo, suite, arch, workspace.cache)
    assert files == bundle.files
    guest = {guest_path: (source, mode) for source, guest_path, mode in files}
    assert guest[f"{GUEST_ROOT}/sbin/auditd"][1] == 0o755
    assert guest[f"{GUEST_ROOT}/sbin/auditctl"][1] == 0o755
    libs = {path.rsplit("/", 1)[1] for path in guest if path.startswith(f"{GUEST_ROOT}/lib/")}
    assert "libaudit.so.1" in libs
    assert "libgcc_s.so.1" in libs  # dlopened by glibc for pthread_cancel: auditd aborts on SIGTERM without it
    assert all(mode == 0o644 for path, (_s, mode) in guest.items() if "/lib/" in path)
    assert all(not source.is_symlink() and source.is_file() for source, _m in guest.values())
    # the packages come from the index (trixie renamed libauparse0 to libauparse0t64)
    assert {"auditd", "libaudit1", "libcap-ng0"} <= set(bundle.packages)
    assert any(name.startswith("libauparse0") for name in bundle.packages)

    # what the image keeps of libc6 (images/guest.yaml): libc, libm, libpthread, libdl, librt, the loader
    keep_names = {pattern.rsplit("/", 1)[1] for pattern in load_recipe().keep}
    from fnmatch import fnmatchcase

    def in_image_libc(name: str) -> bool:
        return any(fnmatchcase(name, pattern) for pattern in keep_names) and (
            name.startswith(("libc.so", "libm.so", "libpthread", "libdl", "librt", "ld"))
        )

    assert set(bundle.from_image) and all(in_image_libc(name) for name in bundle.from_image)
    for guest_path, (source, _mode) in guest.items():
        needed, soname = readelf_dynamic(source)
        assert (needed, soname) == elf_dynamic(source)  # the pure-Python reader agrees with readelf
        for name in needed:
            assert name in libs or in_image_libc(name), f"{guest_path} needs {name}"
        if "/lib/" in guest_path:
            assert soname == guest_path.rsplit("/", 1)[1]
    machine = {"x86_64": 62, "s390x": 22}[arch_name]
    head = guest[f"{GUEST_ROOT}/sbin/auditd"][0].read_bytes()[:20]
    assert struct.unpack_from("<H" if head[5] == 1 else ">H", head, 18)[0] == machine
    assert bundle.size < 8 << 20
    # a second call is served from the cache directory
    assert auditd_bundle(workspace.repo, suite, arch, workspace.cache).path == bundle.path


def test_audit_rule_without_an_arch_where_libaudit_knows_no_machine(
    fake_audit: tuple[AuditPeer, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # libaudit 4.1 has no loongarch64 in its machine table: -F arch=b64 cannot be resolved there
    peer, state = fake_audit
    monkeypatch.setitem(peer.env, "KMX_FAKE_NO_MACHINE", "1")
    peer.prepare()
    storm = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        peer.start(storm.pid)
        result = peer.stop()
    finally:
        storm.kill()
        storm.wait()
    rule = f"-a always,exit -S all -F pid={storm.pid}"
    assert result["rule"] == f"{rule} (netlink)"
    netlink = (state / "netlink").read_text().splitlines()
    assert netlink[0] == f"{AUDIT_ADD_RULE} the rule {rule}"
    assert f"{AUDIT_DEL_RULE} deleting {rule} (netlink)" in netlink
    assert result["events"] == 0 and (state / "enabled").read_text().strip() == "0"


def test_netlink_messages_are_laid_out_as_the_kernel_reads_them() -> None:
    message = audit_pid_rule(AUDIT_ADD_RULE, 4242, seq=7)
    assert len(message) == 16 + 3 * 4 + 64 * 4 * 4 + 4  # nlmsghdr + struct audit_rule_data, no strings
    length, kind, flags, seq, port = struct.unpack_from("=IHHII", message)
    assert (length, kind, flags, seq, port) == (len(message), AUDIT_ADD_RULE, 0x5, 7, 0)
    rule_flags, action, count = struct.unpack_from("=3I", message, 16)
    assert (rule_flags, action, count) == (0x04, 2, 1)  # exit filter, always, one field
    mask = struct.unpack_from("=64I", message, 28)
    assert mask[:63] == (0xFFFFFFFF,) * 63 and mask[63] == 0
    fields, values, fieldflags = (struct.unpack_from("=64I", message, 28 + 256 * i) for i in (1, 2, 3))
    assert (fields[0], values[0], fieldflags[0]) == (0, 4242, 0x40000000)  # AUDIT_PID, pid, Audit_equal
    assert not any(fields[1:] + values[1:] + fieldflags[1:])
    user = audit_user_message(b"hello", seq=3)
    assert struct.unpack_from("=IHHII", user) == (22, AUDIT_TRUSTED_APP, 0x5, 3, 0) and user[16:] == b"hello\0"
