"""`kmatrix stat`, host side: per-syscall latency statistics of a whole guest, from one driver.

Builds the driver, boots the cell's kernel with it and runs the guest op `stat`
(harness/guest/latency.py), which captures every process, pairs enter/exit events per thread and
returns one row per (group, syscall); with `verify` also a known-duration workload's checks. This
module turns the reply into an `strace -c`-like table.

A stat run is not a matrix suite: its cell reuses the capture suite's applicability (the same driver
and kernel requirements) and the capture suite's runner (cells._run_guest_suite, private, imported
on purpose so that build, boot, retries and judging stay in one place), with op `stat`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from harness.cells import CellResult, _run_guest_suite
from harness.errors import ConfigError
from harness.guest.latency import SLACK_NS
from harness.matrix import Cell, KernelRef, Matrix

BY_CHOICES = ("system", "process", "container")
# The capture suite's applicability and runner serve stat cells (see the module's docstring).
SUITE = "capture"
GUEST_MARGIN_S = 180.0  # beyond the capture itself: loading the driver, the workload, pairing in Python


@dataclass(frozen=True)
class StatOptions:
    by: str = "system"
    duration_s: float = 2.0
    verify: bool = False
    repeats: int = 5
    slack_ms: float = SLACK_NS / 1e6  # with verify: a known call may overrun its requested time by this much
    command: tuple[str, ...] | None = None
    buffer_bytes: int = 8 << 20


def check_options(matrix: Matrix, driver: str, options: StatOptions) -> None:
    """Usage errors before anything is built or booted."""
    if options.by not in BY_CHOICES:
        raise ConfigError(f"--by {options.by!r} is not one of {', '.join(BY_CHOICES)}")
    if driver not in matrix.drivers:
        raise ConfigError(f"--driver {driver!r} is not in the matrix", hint=f"one of: {', '.join(matrix.drivers)}")
    consumer = matrix.drivers[driver].consumer
    if matrix.consumers[consumer].kind != "agent":
        readable = [name for name, spec in matrix.drivers.items() if matrix.consumers[spec.consumer].kind == "agent"]
        raise ConfigError(f"--driver {driver!r} is read by the command consumer {consumer}, and stat reads drivers "
                          "through the agent only", hint=f"one of: {', '.join(readable)}")
    if options.duration_s < 0 or options.repeats < 1 or options.slack_ms < 0:
        raise ConfigError("--duration and --slack-ms must be >= 0 and --repeats >= 1")


def run_stat_cell(ws: Any, arch: str, ref: KernelRef, driver: str, run_dir: Path,
                  options: StatOptions = StatOptions()) -> CellResult:
    """One (arch, kernel, driver): the guest's stat reply in `metrics`; `fail` when verification failed."""
    check_options(ws.matrix, driver, options)
    cell = Cell(arch, ref, driver, SUITE, ws.matrix.declared_min(driver, arch))
    params: dict[str, Any] = {
        "by": options.by,
        "duration_s": options.duration_s,
        "verify": options.verify,
        "repeats": options.repeats,
        "slack_ms": options.slack_ms,
        "buffer_bytes": options.buffer_bytes,
    }
    if options.command:
        params["command"] = list(options.command)
    result = _run_guest_suite(ws, cell, run_dir, fault=None, op="stat", params=params,
                              timeout_s=options.duration_s + GUEST_MARGIN_S)
    result.suite = "stat"
    if result.status == "fail" and "verification" in result.metrics:
        problems = result.metrics["verification"].get("problems") or ["verification failed"]
        result.reason = "; ".join(str(p) for p in problems)
    return result


# -- rendering ----------------------------------------------------------------------------------

def _ms(ns: int) -> str:
    return f"{ns / 1e6:.3f}"


def _us(ns: int) -> str:
    return f"{ns / 1e3:.1f}"


def stat_table(rows: list[dict[str, Any]], by: str, title: str, limit: int | None = None) -> Table:
    """Like `strace -c`: per group, syscalls by total time; % time is the share of the group's total."""
    table = Table(title=title)
    if by == "process":
        table.add_column("pid", justify="right")
        table.add_column("comm")
    elif by == "container":
        table.add_column("container")
    for column in ("% time", "total ms", "calls", "errors", "min us", "avg us", "max us", "p99 us", "syscall"):
        table.add_column(column, justify="left" if column == "syscall" else "right")
    totals: dict[str, int] = {}
    for row in rows:
        totals[row["group"]] = totals.get(row["group"], 0) + int(row["total_ns"])
    shown: dict[str, int] = {}
    for row in rows:
        shown[row["group"]] = shown.get(row["group"], 0) + 1
        if limit is not None and shown[row["group"]] > limit:
            continue
        share = 100 * row["total_ns"] / totals[row["group"]] if totals[row["group"]] else 0.0
        cells = [f"{share:.2f}", _ms(row["total_ns"]), str(row["calls"]), str(row["errors"] or ""),
                 _us(row["min_ns"]), _us(row["avg_ns"]), _us(row["max_ns"]), _us(row["p99_ns"]), row["syscall"]]
        if by == "process":
            cells = [str(row.get("pid", row["group"])), str(row.get("comm", "?")), *cells]
        elif by == "container":
            cells = [row["group"], *cells]
        table.add_row(*cells)
    return table


def verification_table(verification: dict[str, Any]) -> Table:
    table = Table(title=f"verification: {verification.get('bound')}")
    for column in ("syscall", "requested ms", "measured ms", "upper bound ms", "ok"):
        table.add_column(column, justify="left" if column == "syscall" else "right")
    for check in verification.get("checks", []):
        measured = check.get("measured_ns")
        table.add_row(str(check["syscall"]), _ms(int(check["requested_ns"])),
                      "-" if measured is None else _ms(int(measured)), _ms(int(check["upper_bound_ns"])),
                      "[green]yes[/]" if check.get("ok") else f"[red]no[/] {check.get('why', '')}")
    return table


def unpaired_line(metrics: dict[str, Any]) -> str:
    unpaired = metrics.get("unpaired") or {}
    parts = []
    for key, label in (("exit_without_enter", "exits without enter (began before the capture)"),
                       ("enter_without_exit", "enters without exit (still in the call at the end, or no return)"),
                       ("enter_replaced", "enters followed by another enter"),
                       ("exit_mismatched", "exits of another syscall than the open enter")):
        counts = unpaired.get(key) or {}
        if counts:
            top = ", ".join(f"{name} {n}" for name, n in list(counts.items())[:6])
            parts.append(f"{sum(counts.values())} {label}: {top}")
    expected = unpaired.get("no_return_expected") or {}
    if expected:
        parts.append("of which calls that never return, as expected: "
                     + ", ".join(f"{name} {n}" for name, n in expected.items()))
    return "unpaired: " + ("; ".join(parts) if parts else "none")


def render(result: CellResult, limit: int | None = None) -> RenderableType:
    """The cell's table(s) and a summary, for the terminal."""
    head = f"{result.arch} {result.kernel} ({result.kernel_release or '?'}) {result.driver}"
    if result.status == "skip":
        return Text(f"{head}: skip: {result.reason}")
    metrics = result.metrics
    if "rows" not in metrics:
        return Text(f"{head}: {result.status}: {result.reason}")
    by = str(metrics.get("by", "system"))
    title = (f"kmatrix stat: {head}, by {by}, {metrics.get('captured_s')} s captured, {metrics.get('events')} events, "
             f"{metrics.get('paired_calls')} calls, {metrics.get('drops')} drops")
    parts: list[RenderableType] = [stat_table(metrics["rows"], by, title, limit)]
    parts.append(Text(f"{unpaired_line(metrics)}\nthe agent's own {metrics.get('self_events_excluded')} events "
                      f"(pid {metrics.get('agent_pid')}) are left out; p99 is {metrics.get('percentile_method')}"))
    if "verification" in metrics:
        parts.append(verification_table(metrics["verification"]))
    timings = ", ".join(f"{k} {v}" for k, v in result.timings.items())
    verdict = {"pass": "[green]pass[/]", "fail": "[red]fail[/]"}.get(result.status, result.status)
    parts.append(Text.from_markup(f"{escape(head)}: {verdict}" + (f": {escape(result.reason)}" if result.reason else "")
                                  + f" ({escape(timings)})"))
    return Group(*parts)
