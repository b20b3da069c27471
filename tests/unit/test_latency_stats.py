"""`kmatrix stat`'s pure logic (harness/guest/latency.py, harness/stat.py): pairing enter/exit events
per thread, nearest-rank p99, grouping, the known workload's bounds, unpaired accounting."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from harness.cells import CellResult
from harness.errors import ConfigError
from harness.guest.latency import (
    MARK_BEGIN,
    MARK_END,
    SLACK_NS,
    Call,
    exec_name,
    nearest_rank,
    pair_events,
    process_names,
    summarize,
    syscall_names,
    unpaired_report,
    upper_bound_ns,
    verify_known,
)
from harness.guest.schema import load_schema
from harness.matrix import load_matrix
from harness.stat import StatOptions, check_options, render, stat_table

ENTER, EXIT = 1, 2
NR = {"read": 0, "write": 1, "close": 3, "nanosleep": 35, "exit_group": 231, "getpid": 39}
NAMES = syscall_names(NR)
MS = 1_000_000


@dataclass
class Ev:
    """Event-like: what the pairing reads of a decoded event."""

    kind: int
    nr: int
    tid: int
    ts_ns: int
    ret: int = 0
    pid: int = 0
    args: tuple[int, ...] = (0,)


def enter(nr: int, tid: int, ts: int, pid: int | None = None, arg0: int = 0) -> Ev:
    return Ev(ENTER, nr, tid, ts, 0, tid if pid is None else pid, (arg0, 0, 0, 0, 0, 0))


def exit_(nr: int, tid: int, ts: int, ret: int = 0, pid: int | None = None) -> Ev:
    return Ev(EXIT, nr, tid, ts, ret, tid if pid is None else pid)


def test_schema_kinds_are_what_the_tests_use() -> None:
    schema = load_schema()
    assert (schema.const("KMX_EVT_SYS_ENTER"), schema.const("KMX_EVT_SYS_EXIT")) == (ENTER, EXIT)


def test_pairs_per_thread_across_interleaving() -> None:
    events = [
        enter(NR["read"], 10, 100),
        enter(NR["write"], 11, 110),
        exit_(NR["write"], 11, 150, ret=5),
        exit_(NR["read"], 10, 400, ret=-11),
    ]
    pairing = pair_events(list(reversed(events)), ENTER, EXIT)  # input order does not matter: timestamps do
    assert pairing.unpaired_total() == 0
    got = {(c.tid, c.nr): (c.latency_ns, c.ret) for c in pairing.calls}
    assert got == {(10, NR["read"]): (300, -11), (11, NR["write"]): (40, 5)}


def test_unpaired_events_are_counted_not_dropped() -> None:
    events = [
        exit_(NR["read"], 1, 5),  # began before the capture
        enter(NR["getpid"], 2, 10),  # an enter whose exit was lost: replaced by the next enter
        enter(NR["write"], 2, 20),
        exit_(NR["write"], 2, 30),
        enter(NR["close"], 3, 40),
        exit_(NR["read"], 3, 50),  # another syscall's exit
        enter(NR["exit_group"], 4, 60),  # never returns
        enter(NR["nanosleep"], 5, 70),  # still sleeping at the end
    ]
    pairing = pair_events(events, ENTER, EXIT)
    assert [(c.tid, c.nr) for c in pairing.calls] == [(2, NR["write"])]
    report = unpaired_report(pairing, NAMES)
    assert report["exit_without_enter"] == {"read": 1}
    assert report["enter_replaced"] == {"getpid": 1, "close": 1}
    assert report["exit_mismatched"] == {"read": 1}
    assert report["enter_without_exit"] == {"exit_group": 1, "nanosleep": 1}
    assert report["no_return_expected"] == {"exit_group": 1}
    assert report["total"] == 6


def test_sigreturn_without_exit_is_expected() -> None:
    nr = {**NR, "rt_sigreturn": 15}
    events = [enter(15, 1, 10), enter(NR["read"], 1, 20), exit_(NR["read"], 1, 30)]
    report = unpaired_report(pair_events(events, ENTER, EXIT), syscall_names(nr))
    assert report["enter_replaced"] == {"rt_sigreturn": 1} and report["no_return_expected"] == {"rt_sigreturn": 1}


def test_process_names_from_comm_and_exec() -> None:
    names = process_names({1: "busybox", 2: "", 3: "python3", 4: "kworker"}, {1: "ls", 2: "sleep", 3: "python3.13"})
    assert names == {1: "busybox>ls", 2: "sleep", 3: "python3", 4: "kworker"}
    assert process_names({5: ""}, {}) == {5: "?"}


def test_exec_name_reads_the_filename_param() -> None:
    schema = load_schema()
    def event(filename: str, argv: list[str]) -> Any:
        params = (None,) * 8 + (type("P", (), {"value": filename})(), type("P", (), {"value": argv})())
        return type("E", (), {"params": params, "fixed_count": 8})()

    assert exec_name(event("/usr/bin/ls", ["ls", "-l"])) == "ls"
    assert exec_name(event("/proc/self/exe", ["sleep", "1"])) == "sleep"  # busybox sh running an applet
    assert exec_name(event("/bin/true", [])) == "true"
    assert exec_name(type("E", (), {"params": (), "fixed_count": 8})()) == ""
    spec = schema.by_name["execve"].enter
    assert (spec[0].name, spec[1].name) == ("filename", "argv")  # the decoded params exec_name reads


def test_order_is_by_timestamp_so_latencies_are_never_negative() -> None:
    # Equal stamps keep the input's order; an exit stamped before its enter cannot pair with it.
    pairing = pair_events([enter(NR["read"], 1, 10), exit_(NR["read"], 1, 10)], ENTER, EXIT)
    assert pairing.calls[0].latency_ns == 0
    pairing = pair_events([enter(NR["read"], 1, 20), exit_(NR["read"], 1, 10)], ENTER, EXIT)
    assert not pairing.calls
    assert (pairing.exit_without_enter, pairing.enter_without_exit) == ({NR["read"]: 1}, {NR["read"]: 1})


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([7], 7),
        (list(range(1, 101)), 99),  # ceil(0.99 * 100) = 99th value
        (list(range(1, 201)), 198),  # ceil(0.99 * 200) = 198
        (list(range(1, 51)), 50),  # ceil(0.99 * 50) = 50: the max
        (list(range(1, 1001)), 990),
    ],
)
def test_p99_is_nearest_rank(values: list[int], expected: int) -> None:
    assert nearest_rank(values, 99) == expected


def test_nearest_rank_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        nearest_rank([], 99)


def _calls() -> list[Call]:
    calls = []
    for i, latency in enumerate([10, 20, 30, 40]):
        calls.append(Call(100, 100, NR["read"], i * 1000, i * 1000 + latency, -1 if i == 0 else 1, 0))
    calls.append(Call(200, 201, NR["read"], 0, 500, 1, 0))
    calls.append(Call(200, 202, NR["write"], 0, 1000, 1, 0))
    return calls


def test_summary_for_the_whole_system() -> None:
    rows = summarize(_calls(), "system", NAMES)
    assert [(r["group"], r["syscall"]) for r in rows] == [("system", "write"), ("system", "read")]
    read = rows[1]
    assert (read["calls"], read["errors"], read["total_ns"], read["min_ns"], read["avg_ns"], read["max_ns"],
            read["p99_ns"]) == (5, 1, 600, 10, 120, 500, 500)


def test_summary_per_process() -> None:
    rows = summarize(_calls(), "process", NAMES, comms={200: "busybox"})
    # Processes by their total time (pid 200: 1500 ns first), then syscalls by total time.
    assert [(r["pid"], r["comm"], r["syscall"], r["calls"]) for r in rows] == [
        (200, "busybox", "write", 1), (200, "busybox", "read", 1), (100, "?", "read", 4)]
    assert rows[2]["p99_ns"] == 40 and rows[2]["errors"] == 1


def test_unknown_syscall_numbers_keep_a_name() -> None:
    rows = summarize([Call(1, 1, 999, 0, 5, 0, None)], "system", NAMES)
    assert rows[0]["syscall"] == "syscall_999"
    negative = [Call(1, 1, (1 << 32) - 1, 0, 5, 0, None), Call(1, 1, (1 << 64) - 2, 0, 5, 0, None)]
    assert {r["syscall"] for r in summarize(negative, "system", NAMES)} == {"syscall_-1", "syscall_-2"}


def test_grouping_by_container_uses_each_calls_attribution() -> None:
    calls = [Call(100, 100, NR["read"], 0, 10, 1, 0, cgroup_id=7, pidns=1),
             Call(300, 300, NR["read"], 0, 50, 1, 0, cgroup_id=9, pidns=2),
             Call(301, 301, NR["write"], 0, 70, 1, 0, cgroup_id=9, pidns=2)]
    labels = {(7, 1): "host", (9, 2): "docker:0123456789ab"}
    rows = summarize(calls, "container", NAMES, containers=labels)
    assert [(r["group"], r["syscall"], r["calls"]) for r in rows] == [
        ("docker:0123456789ab", "write", 1), ("docker:0123456789ab", "read", 1), ("host", "read", 1)]
    assert summarize(calls[:1], "container", NAMES)[0]["group"] == "?"  # no attribution known
    with pytest.raises(ValueError):
        summarize(calls, "pod", NAMES)


# -- verification -------------------------------------------------------------------------------

def _known(latencies_ms: list[float], tid: int = 7) -> tuple[list[Call], list[dict[str, Any]]]:
    """A paired capture of the known workload: markers, sleeps (10, 10, 20, 20) and the pipe read."""
    requested = [10, 10, 20, 20, 50]
    names = ["nanosleep"] * 4 + ["read"]
    ts = 1_000
    calls = [Call(tid, tid, NR["close"], ts, ts + 10, -9, MARK_BEGIN)]
    for name, latency in zip(names, latencies_ms, strict=True):
        ts += 100 * MS
        calls.append(Call(tid, tid, NR[name], ts, ts + int(latency * MS), 0, 0))
        calls.append(Call(tid, tid + 1, NR[name], ts, ts + 1, 0, 0))  # another thread's (the writer's): not counted
    calls.append(Call(tid, tid, NR["read"], ts + 200 * MS, ts + 200 * MS + 1, 0, 0))  # after the end marker:
    calls.append(Call(tid, tid, NR["close"], ts + 150 * MS, ts + 150 * MS + 10, -9, MARK_END))  # not counted
    expected = [{"name": n, "requested_ns": r * MS, "ret": 0} for n, r in zip(names, requested, strict=True)]
    return calls, expected


def test_known_calls_within_bounds_pass() -> None:
    calls, expected = _known([10.1, 12, 20, 31, 50.5])
    verdict = verify_known(calls, 7, expected, NR)
    assert verdict["ok"], verdict["problems"]
    assert [c["measured_ns"] for c in verdict["checks"]] == [10_100_000, 12 * MS, 20 * MS, 31 * MS, 50_500_000]
    assert verdict["bound"].startswith(f"requested <= measured <= requested + {SLACK_NS // MS} ms")


def _with_read_start(calls: list[Call], expected: list[dict[str, Any]], after_enter_ms: float) -> None:
    """The pipe read's requested time starts when the writer saw it blocked: after_enter_ms after its enter."""
    read = next(c for c in calls if c.tid == 7 and c.nr == NR["read"] and c.latency_ns > MS)
    expected[-1]["starts_ns"] = read.enter_ns + int(after_enter_ms * MS)


def test_the_pipe_reads_wait_for_its_writer_extends_its_bound() -> None:
    late = (upper_bound_ns(50 * MS) + 30 * MS) / MS  # 30 ms beyond the plain bound ...
    calls, expected = _known([10, 10, 20, 20, late])
    _with_read_start(calls, expected, 31)  # ... but the writer saw the reader blocked 31 ms after it entered
    verdict = verify_known(calls, 7, expected, NR)
    assert verdict["ok"], verdict["problems"]
    assert verdict["checks"][4]["waited_ns"] == 31 * MS
    assert verdict["checks"][4]["upper_bound_ns"] == upper_bound_ns(50 * MS) + 31 * MS
    _with_read_start(calls, expected, 29)
    assert not verify_known(calls, 7, expected, NR)["ok"]


def test_a_read_entered_after_the_writer_saw_it_blocked_fails() -> None:
    calls, expected = _known([10, 10, 20, 20, 50])
    _with_read_start(calls, expected, -1)  # a driver clock other than CLOCK_MONOTONIC could show this
    verdict = verify_known(calls, 7, expected, NR)
    assert not verdict["ok"] and "not the monotonic clock" in verdict["checks"][4]["why"]


def test_a_call_shorter_than_requested_fails() -> None:
    calls, expected = _known([10, 9.9, 20, 20, 50])
    verdict = verify_known(calls, 7, expected, NR)
    assert not verdict["ok"]
    assert [c["ok"] for c in verdict["checks"]] == [True, False, True, True, True]
    assert verdict["checks"][1]["why"] == "shorter than requested"


def test_a_call_beyond_the_bound_fails() -> None:
    late = (upper_bound_ns(50 * MS) + 1) / MS
    calls, expected = _known([10, 10, 20, 20, late])
    verdict = verify_known(calls, 7, expected, NR)
    assert not verdict["ok"] and verdict["checks"][4]["why"].startswith("longer than requested")
    assert upper_bound_ns(10 * MS) == 10 * MS + SLACK_NS


def test_the_slack_is_the_requests() -> None:
    calls, expected = _known([10, 10, 20, 20, 50 + 30.5])
    assert verify_known(calls, 7, expected, NR)["ok"]
    verdict = verify_known(calls, 7, expected, NR, slack_ns=30 * MS)
    assert not verdict["ok"] and verdict["slack_ns"] == 30 * MS
    assert verdict["checks"][4]["why"] == "longer than requested + 30 ms"
    assert "requested + 30 ms" in verdict["bound"]


def test_a_missing_call_fails() -> None:
    calls, expected = _known([10, 10, 20, 20, 50])
    calls = [c for c in calls if not (c.tid == 7 and c.nr == NR["read"] and c.latency_ns > MS)]  # the pipe read lost
    verdict = verify_known(calls, 7, expected, NR)
    assert not verdict["ok"]
    assert verdict["checks"][-1] == {"syscall": "read", "requested_ns": 50 * MS,
                                     "upper_bound_ns": upper_bound_ns(50 * MS), "measured_ns": None, "ok": False,
                                     "why": "not measured"}
    assert "4 calls" in verdict["problems"][0]


def test_missing_markers_fail() -> None:
    calls, expected = _known([10, 10, 20, 20, 50])
    verdict = verify_known([c for c in calls if c.arg0 != MARK_END], 7, expected, NR)
    assert not verdict["ok"] and "markers not found" in verdict["problems"][0]


# -- host side ----------------------------------------------------------------------------------

def test_container_grouping_is_accepted() -> None:
    matrix = load_matrix(Path(__file__).resolve().parents[2] / "matrix.yaml")
    check_options(matrix, "kmod", StatOptions(by="container"))


def test_only_drivers_the_agent_reads() -> None:
    matrix = load_matrix(Path(__file__).resolve().parents[2] / "matrix.yaml")
    with pytest.raises(ConfigError, match="command consumer"):
        check_options(matrix, "falco-kmod", StatOptions())
    with pytest.raises(ConfigError, match="not in the matrix"):
        check_options(matrix, "nope", StatOptions())
    check_options(matrix, "modern_bpf", StatOptions(by="process"))


def test_render_shows_rows_unpaired_and_verification() -> None:
    calls, expected = _known([10.2, 10.3, 20.1, 20.4, 51])
    verification = verify_known(calls, 7, expected, NR)
    pairing = pair_events([exit_(NR["read"], 1, 5), enter(NR["exit_group"], 2, 6)], ENTER, EXIT)
    result = CellResult("x", "x86_64", "bookworm-backports", "kmod", "stat", status="pass", kernel_release="6.12.0")
    result.metrics = {"by": "system", "rows": summarize(calls, "system", NAMES), "captured_s": 1.5, "events": 30,
                      "paired_calls": len(calls), "drops": 0, "unpaired": unpaired_report(pairing, NAMES),
                      "self_events_excluded": 12, "agent_pid": 1, "percentile_method": "nearest-rank",
                      "verification": verification}
    console = Console(record=True, width=200)
    console.print(render(result))
    text = console.export_text()
    assert "nanosleep" in text and "p99 us" in text and "% time" in text
    assert "1 exits without enter" in text and "exit_group 1" in text and "never return" in text
    assert f"requested + {SLACK_NS // MS} ms" in text and "pass" in text


def test_render_names_each_rows_container() -> None:
    calls = [Call(100, 100, NR["read"], 0, 10_000, 1, 0, cgroup_id=7, pidns=1),
             Call(300, 300, NR["read"], 0, 50_000, 1, 0, cgroup_id=9, pidns=2)]
    rows = summarize(calls, "container", NAMES, containers={(7, 1): "host", (9, 2): "docker:0123456789ab"})
    console = Console(record=True, width=200)
    console.print(stat_table(rows, "container", "t"))
    text = console.export_text()
    assert "docker:0123456789ab" in text and "host" in text
