"""Run a list of cells, one after another, keeping results.json current after every cell.

`kmatrix run` and `kmatrix qualify` both come here. Every finished cell is written at once (the
versioned schema of harness/report/schema.py), so a run that is interrupted, or killed, keeps what
it measured; an interrupted run is marked so. While it runs, a live table (rich) shows each cell's
status and elapsed time when stderr is a terminal; otherwise one line per cell.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from harness.cells import SUITE_RUNNERS, CellResult, settle_kernel
from harness.matrix import Cell, applicability
from harness.report.schema import RunResults, new_run_results, record_from_cell, save_results
from harness.runner import Workspace, guard_disabled, remove_run_marker, write_run_marker

THROUGHPUT_REASON = "measured by `kmatrix bench` (one guest per arch and kernel measures every driver)"
STATUS_STYLE = {"pass": "green", "fail": "red", "error": "magenta", "skip": "yellow", "running": "cyan",
                "queued": "dim"}


@dataclass(frozen=True)
class RunPlan:
    cells: list[Cell]
    run_dir: Path
    profile: str
    shard: str | None = None  # "I/N" when the cells are one shard of the profile
    fault: str | None = None  # test-only driver fault injection
    target: str | None = None  # ssh://user@host[:port][?fingerprint=SHA256:...]: that machine, not QEMU


def run_one(ws: Workspace, cell: Cell, plan: RunPlan) -> CellResult:
    """One cell through its suite's runner; suites without a runner here are skips with the reason."""
    runner = SUITE_RUNNERS.get(cell.suite)
    if runner is not None:
        return runner(ws, cell, plan.run_dir, fault=plan.fault, target=plan.target)
    static = applicability(ws.matrix, cell, None)
    if not (static.runnable or static.pending):
        reason = static.reason
    elif cell.suite == "throughput":
        reason = THROUGHPUT_REASON
    else:
        reason = f"this kmatrix version has no runner for suite {cell.suite} yet"
    return CellResult(cell.id, cell.arch, cell.kernel.label, cell.driver, cell.suite, status="skip", reason=reason)


def kernel_source(cell: Cell) -> str:
    return f"debian:{cell.kernel.suite}" if cell.kernel.suite else str(cell.kernel.path)


class Progress:
    """The live table of a run (or plain lines when `live` is False)."""

    def __init__(self, cells: list[Cell], console: Console, *, live: bool, quiet: bool) -> None:
        self.cells = cells
        self.console = console
        self.quiet = quiet
        self.state: dict[str, tuple[str, float | None, str]] = {c.id: ("queued", None, "") for c in cells}
        self.started: dict[str, float] = {}
        self.live = Live(self._table(), console=console, refresh_per_second=2, transient=False,
                         get_renderable=self._table) if live and not quiet else None

    def __enter__(self) -> Progress:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.live is not None:
            self.live.stop()

    def running(self, cell: Cell) -> None:
        self.started[cell.id] = time.monotonic()
        self.state[cell.id] = ("running", None, "")
        if self.live is None and not self.quiet:
            self.console.print(f"[bold]{cell.id}[/]: running")

    def finished(self, cell: Cell, result: CellResult) -> None:
        elapsed = time.monotonic() - self.started.get(cell.id, time.monotonic())
        self.state[cell.id] = (result.status, elapsed, result.reason or "")
        if self.live is None and not self.quiet:
            reason = f" ({escape(result.reason)})" if result.reason else ""
            self.console.print(f"{cell.id}: {result.status} in {elapsed:.0f} s{reason}", soft_wrap=True)

    def _table(self) -> Table:
        table = Table(title="kmatrix run", expand=False)
        for column in ("cell", "status", "elapsed s", "reason"):
            table.add_column(column)
        now = time.monotonic()
        for cell in self.cells:
            status, elapsed, reason = self.state[cell.id]
            if status == "running":
                elapsed = now - self.started[cell.id]
            table.add_row(cell.id, f"[{STATUS_STYLE.get(status, '')}]{status}[/]",
                          "" if elapsed is None else f"{elapsed:.0f}", escape(reason[:100]))
        return table


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP ignored while the interrupted results are written: a second Ctrl-C (or a
    supervisor's repeated SIGTERM) must not cut that write short. SIGKILL still ends the process;
    the run marker then reports the run to the next one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(signum, handler)


def run_plan(ws: Workspace, plan: RunPlan, *, console: Console, live: bool, quiet: bool,
             on_result: Callable[[CellResult], None] | None = None) -> RunResults:
    """Every cell of the plan; results.json rewritten after each. Interrupted (Ctrl-C, SIGTERM):
    the finished cells are saved with `interrupted` set, then the interruption goes on. While it runs,
    run_dir/running.json names this process; a run killed outright leaves it for the next run to report
    (harness.runner.find_stale_runs)."""
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    matrix_path = ws.matrix_path
    records: list[Any] = []
    created: str | None = None

    def save(interrupted: bool) -> RunResults:
        nonlocal created
        results = new_run_results(records, profile=plan.profile, shard=plan.shard, matrix_path=matrix_path,
                                  interrupted=interrupted, created=created)
        created = results.created
        save_results(results, plan.run_dir / "results.json")
        return results

    results = save(False)
    write_run_marker(plan.run_dir)
    with Progress(plan.cells, console, live=live, quiet=quiet) as progress:
        try:
            for planned in plan.cells:
                progress.running(planned)
                cell = planned
                if plan.profile == "minimum":  # the kernel it really runs on may be a later one
                    cell, _kernel, _verdict, notes = settle_kernel(ws, planned, plan.profile)
                    for note in notes:
                        ws.say(f"{cell.arch} {cell.driver}: {note}")
                result = run_one(ws, cell, plan)
                progress.finished(planned, result)
                # The runner's target has no options (key paths, fingerprints): that one goes in reports.
                target = str(result.metrics.get("target") or ("qemu" if plan.target is None else "ssh"))
                records.append(record_from_cell(result, target=target, kernel_source=kernel_source(cell)))
                results = save(False)
                if on_result is not None:
                    on_result(result)
        except BaseException:
            if not guard_disabled("interrupted-mark"):
                with _signals_held():
                    save(True)
                    remove_run_marker(plan.run_dir)  # results.json itself now says the run was interrupted
            raise
    remove_run_marker(plan.run_dir)
    return results
