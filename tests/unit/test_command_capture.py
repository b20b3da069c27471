"""The capture suite through sysdig (harness/guest/command_capture.py), on a real capture.

tests/unit/data/sysdig_aarch64_6.1.txt is `sysdig -r FILE -p '*%evt.num %thread.tid %evt.dir
%evt.type %evt.rawres %evt.args'` of Falco's kmod (scap 0.23.2) under sysdig 0.41.4 in an aarch64
bookworm 6.1 guest while the suite's workload ran; .record.json is that workload's own record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.guest import command_capture as cc
from harness.guest.workload import MARK_BEGIN, MARK_END, syscall_table
from harness.matrix import load_matrix
from harness.paths import default_matrix_path

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def events() -> list[cc.Event]:
    lines = (DATA / "sysdig_aarch64_6.1.txt").read_text().splitlines()
    return [e for e in (cc.parse_line(line) for line in lines) if e is not None]


@pytest.fixture(scope="module")
def calls() -> list[dict[str, Any]]:
    record: dict[str, Any] = json.loads((DATA / "sysdig_aarch64_6.1.record.json").read_text())
    return list(record["calls"])


def declared() -> list[dict[str, str]]:
    matrix = load_matrix(default_matrix_path())
    return [d.model_dump(exclude={"archs"}) for d in matrix.drivers["falco-kmod"].differences
            if d.archs is None or "aarch64" in d.archs]  # the capture below is aarch64's


def test_lines_parse_into_events_with_their_parameters(events: list[cc.Event]) -> None:
    openat = next(e for e in events if e.type == "openat" and e.res == 3)
    assert (openat.dir, openat.tid) == ("<", 118)
    assert openat.params["name"] == "/tmp/kmx-work/file-tok123"
    assert openat.params["mode"] == "0640"
    write = next(e for e in events if e.type == "write" and e.res == 30)
    assert write.params["data"] == "kmatrix write sentinel tok123."  # spaces inside a value
    generic = next(e for e in events if e.type == "getppid")
    assert generic.res is None and generic.params == {}  # <NA>: a generic event
    assert cc.parse_line("sysdig: warning, something") is None
    assert cc.parse_line("") is None


def test_rendering_matches_sysdig() -> None:
    assert cc.render_bytes(b"abc\n\x00z") == "abc..z"
    assert cc.render("bytes", {"fault": True}) == "NULL"
    sockaddr = bytes.fromhex("0200" + "4e86" + "7f000001") + bytes(8)
    assert cc.render("sockaddr", {"hex": sockaddr.hex()}) == "127.0.0.1:20102"
    assert cc.render("argv", ["busybox", "true", "x"]) == "busybox|true.x."
    assert cc.seen("peer", "tuple", {"tuple": "127.0.0.1:46376->127.0.0.1:20118"}) == "127.0.0.1:46376"
    assert cc.seen("fds", "fd1,fd2", {"fd1": "3(<p>)", "fd2": "4(<p>)"}) == "3,4"
    assert cc.seen("text", "name", {}) is None


def test_the_real_capture_passes_with_exactly_the_declared_differences(
    events: list[cc.Event], calls: list[dict[str, Any]]
) -> None:
    verdict = cc.verify(events, calls)
    judged = cc.judge(verdict, declared())
    assert judged["failures"] == []
    assert judged["stale_differences"] == []
    seen = {(d["call"], d["what"]): d["calls"] for d in judged["differences_seen"]}
    assert seen[("*", "enter event")] == len(calls)  # sysdig shows exit events only
    assert seen[("wait4", "return value")] == 2
    assert verdict.expected == len(calls) and verdict.verified == 0  # every call has some difference


def test_a_wrong_value_is_a_failure_no_declaration_covers(
    events: list[cc.Event], calls: list[dict[str, Any]]
) -> None:
    changed = json.loads(json.dumps(calls))
    write = next(c for c in changed if c["name"] == "write" and c["ret"] == 30)
    write["enter"]["data"] = {"hex": b"something else".hex()}
    bind = next(c for c in changed if c["name"] == "bind")
    bind["ret"] = -98
    judged = cc.judge(cc.verify(events, changed), declared())
    assert [(f["call"], f["what"]) for f in judged["failures"]] == [("write", "enter param data"),
                                                                    ("bind", "return value")]
    assert judged["calls_with_failures"] == 2


def test_a_missing_event_fails_and_an_unused_declaration_is_stale(
    events: list[cc.Event], calls: list[dict[str, Any]]
) -> None:
    without = [e for e in events if e.type != "renameat2"]
    extra = [*declared(), {"call": "kill", "what": "exit event", "why": "never happens"}]
    judged = cc.judge(cc.verify(without, calls), extra)
    assert [(f["call"], f["what"]) for f in judged["failures"]] == [("renameat2", "exit event")]
    assert {"call": "kill", "what": "exit event", "why": "never happens"} in judged["stale_differences"]


def _trace(events: list[cc.Event], tid: int, nr_of: dict[str, int]) -> str:
    """tracefs lines for the syscalls sysdig saw on tid (the real ones were not kept)."""
    back = {v: k for k, v in cc.SYSDIG_TYPES.items()}
    lines = []
    for e in events:
        name = back.get(e.type, e.type)
        if e.tid == tid and e.dir == "<" and name in nr_of:
            arg0 = int(e.params["fd"]) if name == "close" and e.params.get("fd", "").isdigit() else 0
            lines.append(f"python3-{tid} [000] ..... 1.0: sys_enter: NR {nr_of[name]} ({arg0:x}, 0, 0, 0, 0, 0)")
    return "\n".join(lines)


def test_the_oracle_compares_the_marked_sequences(events: list[cc.Event]) -> None:
    nr_of = syscall_table("aarch64")
    trace = _trace(events, 118, nr_of)
    result = cc.oracle(events, 118, trace, nr_of)
    assert result["ok"] and result["driver_count"] == result["tracefs_count"] > 40 and result["not_captured"] == {}
    assert f"({MARK_BEGIN:x}," in trace and f"({MARK_END:x}," in trace
    lost = [e for e in events if e.type != "listen"]
    result = cc.oracle(lost, 118, trace, nr_of)
    assert not result["ok"]
    assert result["first_difference"]["tracefs"][0] == "listen"


def test_syscalls_declared_not_captured_leave_the_oracle_and_are_counted(events: list[cc.Event]) -> None:
    nr_of = syscall_table("aarch64")
    trace = _trace(events, 118, nr_of)
    without = [e for e in events if e.type != "lseek"]  # as if the driver never captured lseek
    assert not cc.oracle(without, 118, trace, nr_of)["ok"]
    result = cc.oracle(without, 118, trace, nr_of, frozenset({"lseek"}))
    assert result["ok"] and result["not_captured"] == {"lseek": 1}
