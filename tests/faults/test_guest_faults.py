"""Fault drills 1-4: a guest that hangs, never boots, panics or oopses, or refuses the driver.

Each drill injects its fault for real on x86_64's newest kernel (fastest boot): a test-only agent
op or kernel command line (BootSpec.extra_cmdline), a test-only build define of a reference driver,
a module built for another kernel. It asserts the cell's status and reason, the wall time against
the timeout, that every QEMU is gone (read from /proc) and that the console log stays on disk.

Retry policy: only infrastructure errors (a boot that never reaches the agent) are retried, at most
BOOT_RETRIES times, each recorded in metrics["boot_retries"]; a failing cell boots exactly once.

Run one at a time (each boots a TCG guest): `pytest -m faults tests/faults/test_guest_faults.py`.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness import cells
from harness.archs import get_arch
from harness.cells import BOOT_RETRIES, CellResult, record_error, run_capture_cell
from harness.errors import BootError
from harness.matrix import Cell
from harness.runner import Workspace, prepare
from harness.vm import BootSpec, Guest, GuestCrash, process_alive, running_qemu_pids

pytestmark = [pytest.mark.faults, pytest.mark.vm, pytest.mark.arch_x86_64]

ARCH = "x86_64"
# Slack over a timeout: killing QEMU, and the crash scanner's wait (3 s) for the rest of a trace.
GRACE_S = 8.0
HANG_TIMEOUT_S = 20.0  # a hung request's timeout in drill 1
BOOT_TIMEOUT_S = 25.0  # drill 2's boot timeout (the profile's 120 s is for a busy host's real boots)
ONE_SIZE = (8 << 20,)  # one capture run is enough where the driver never gets that far


# -- /proc ---------------------------------------------------------------------------------------------




def _qemu_children(parent: int | None = None) -> list[int]:
    """Living QEMU processes whose parent is `parent` (this process by default)."""
    parent = os.getpid() if parent is None else parent
    found = []
    for pid in running_qemu_pids():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        if ppid == parent and process_alive(pid):
            found.append(pid)
    return found


def _assert_no_qemu_left(*pids: int) -> None:
    end = time.monotonic() + 5  # SIGKILL is asynchronous: a moment for the kernel to finish it
    while time.monotonic() < end and (_qemu_children() or any(process_alive(pid) for pid in pids)):
        time.sleep(0.2)
    assert _qemu_children() == [], "a QEMU of this test outlived its guest"
    assert [pid for pid in pids if process_alive(pid)] == []


@pytest.fixture(autouse=True)
def _no_qemu_before() -> None:
    # Guests run one at a time (a 2-core host); a left-over QEMU would also spoil the /proc checks.
    assert _qemu_children() == [], "a QEMU of an earlier test is still running"


# -- cells and injections -------------------------------------------------------------------------------


def _cell(ws: Workspace, driver: str, kernel_suite: str | None = None) -> Cell:
    """x86_64's capture cell of `driver` on the newest kernel (or on the kernel of `kernel_suite`)."""
    wanted = ws.matrix.newest_kernel(ARCH).suite if kernel_suite is None else kernel_suite
    return next(c for c in ws.matrix.cells("full", archs=[ARCH], drivers=[driver], suites=["capture"])
                if c.kernel.suite == wanted)


def _with_cmdline(monkeypatch: pytest.MonkeyPatch, *words: str) -> None:
    """Every guest a cell boots gets `words` on its kernel command line (BootSpec.extra_cmdline)."""
    real = cells.prepare  # type: ignore[attr-defined]

    def prepare_with_words(*args: Any, **kwargs: Any) -> Any:
        spec, kernel, image, reason = real(*args, **kwargs)
        return dataclasses.replace(spec, extra_cmdline=(*spec.extra_cmdline, *words)), kernel, image, reason

    monkeypatch.setattr(cells, "prepare", prepare_with_words)


def _with_boot_timeout(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Cells wait `seconds` for the agent (the real boot_with_retry, retries and all)."""
    real = cells.boot_with_retry

    def short(spec: BootSpec, cell_dir: Path, _timeout_s: float, result: CellResult) -> Guest:
        return real(spec, cell_dir, seconds, result)

    monkeypatch.setattr(cells, "boot_with_retry", short)


@pytest.fixture
def boots(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pid of every QEMU started during the test, in order (Guest.start counted)."""
    started: list[int] = []
    real: Callable[[Guest], None] = Guest.start

    def counting(self: Guest) -> None:
        real(self)
        assert self.pid is not None
        started.append(self.pid)

    monkeypatch.setattr(Guest, "start", counting)
    return started


def _spec(ws: Workspace, *words: str) -> BootSpec:
    spec, _kernel, _image, _reason = prepare(ws, get_arch(ARCH), ws.matrix.newest_kernel(ARCH))
    return dataclasses.replace(spec, extra_cmdline=words)


def _assert_booted_once(result: CellResult, boots: list[int], cell_dir: Path) -> None:
    """A failing cell is never retried: one QEMU, no retry recorded, no second console log."""
    assert len(boots) == 1, f"booted {len(boots)} times"
    assert "boot_retries" not in result.metrics
    assert not (cell_dir / "console.retry1.log").exists()


# -- drill 1: the guest hangs after boot ------------------------------------------------------------------


def test_hung_request_ends_as_error_within_its_timeout(workspace: Workspace, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch, boots: list[int]) -> None:
    """The agent blocks forever in the suite's op (kmatrix.test.hang=capture): the cell is `error`,
    "timed out after 20 s in request capture", within the timeout plus grace; QEMU is killed; the
    console log stays. A timeout after boot is not retried."""
    _with_cmdline(monkeypatch, "kmatrix.test.hang=capture")
    cell = _cell(workspace, "kmod")
    result = run_capture_cell(workspace, cell, tmp_path, buffer_sizes=ONE_SIZE, timeout_s=HANG_TIMEOUT_S)
    assert result.status == "error", result
    assert f"timed out after {HANG_TIMEOUT_S:.0f} s in request capture" in (result.reason or "")
    assert HANG_TIMEOUT_S <= result.timings["run_s"] <= HANG_TIMEOUT_S + GRACE_S, result.timings
    _assert_no_qemu_left(*boots)
    log = Path(result.console_log or "")
    assert log.is_file() and log.stat().st_size > 0
    _assert_booted_once(result, boots, tmp_path / cell.id)


def test_test_only_ops_need_the_test_flag() -> None:
    """The test-only ops exist only on a guest booted with the drills' flags, never on a run's guest."""
    from harness.guest.agent import test_handlers

    assert test_handlers("console=ttyS0 panic=-1 rdinit=/init kmatrix.mode=agent") == {}
    assert set(test_handlers("kmatrix.mode=agent kmatrix.test=1")) == {"hang", "damage_next"}
    assert set(test_handlers("kmatrix.mode=agent kmatrix.test.hang=capture,ia32")) == {"capture", "ia32"}


# The guard-removal proof runs in a child process: with the guard off the request never ends, and
# only the child's own kill timeout (below) ends it, so it cannot hang the test run.
_HANG_CHILD = textwrap.dedent("""
    import dataclasses, math, sys, time
    from pathlib import Path
    import harness.vm as vm
    from harness.archs import get_arch
    from harness.runner import Workspace, prepare

    ws = Workspace.open()
    arch = get_arch("x86_64")
    spec, _k, _i, _r = prepare(ws, arch, ws.matrix.newest_kernel("x86_64"))
    guest = vm.Guest(dataclasses.replace(spec, extra_cmdline=("kmatrix.test=1",)), Path(sys.argv[1]))
    guest.start()
    guest.wait_ready(arch.tcg_boot_timeout_s)
    if sys.argv[2] == "off":
        vm._deadline = lambda timeout_s: math.inf  # the timeout guard removed
    print("ready", guest.pid, flush=True)
    started = time.monotonic()
    try:
        guest.request("hang", timeout_s=float(sys.argv[3]))
        print("ended answered", flush=True)
    except Exception as error:
        print("ended", round(time.monotonic() - started, 1), str(error).splitlines()[0], flush=True)
    finally:
        guest.close()
""")


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.strip())

    threading.Thread(target=read, daemon=True).start()
    return lines


def _next_line(lines: queue.Queue[str], prefix: str, timeout_s: float) -> str | None:
    end = time.monotonic() + timeout_s
    while (left := end - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            return None
        if line.startswith(prefix):
            return line
    return None


@pytest.mark.parametrize("guard", ["on", "off"])
def test_hang_guard_removal(workspace: Workspace, tmp_path: Path, guard: str) -> None:
    """The `hang` agent op (kmatrix.test=1) with the timeout guard (harness.vm._deadline) on, and
    switched off in the child: on, the request ends within 10 s + grace ("timed out after 10 s in
    request hang"); off, it is still waiting long after, so drill 1's assertion would fail."""
    del workspace  # the child opens its own; the fixture only makes sure kernel and image are cached
    timeout_s = 10.0
    proc = subprocess.Popen(
        [sys.executable, "-c", _HANG_CHILD, str(tmp_path / "console.log"), guard, str(timeout_s)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=Path(__file__).resolve().parents[2],
    )
    try:
        lines = _lines(proc)
        ready = _next_line(lines, "ready", get_arch(ARCH).tcg_boot_timeout_s + 60)
        assert ready is not None, "the child's guest never became ready"
        qemu = int(ready.split()[1])
        ended = _next_line(lines, "ended", timeout_s + GRACE_S)
        if guard == "on":
            assert ended is not None and f"timed out after {timeout_s:.0f} s in request hang" in ended, ended
            assert float(ended.split()[1]) <= timeout_s + GRACE_S
            assert proc.wait(timeout=30) == 0
        else:
            assert ended is None, f"without its guard the hung request still ended: {ended}"
            assert process_alive(qemu), "the guest went away by itself: the proof proves nothing"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)  # QEMU follows through its parent-death signal
        proc.wait(timeout=30)
    end = time.monotonic() + 10
    while time.monotonic() < end and process_alive(qemu):
        time.sleep(0.2)
    assert not process_alive(qemu), "QEMU outlived the child that ran it"
    assert (tmp_path / "console.log").stat().st_size > 0


# -- drill 2: the guest never boots -------------------------------------------------------------------------


# rdinit= a later word wins: init is busybox sleeping (after "--": init's arguments), the agent never starts.
NEVER_BOOTS = ("rdinit=/bin/busybox", "--", "sleep", "3600")


def test_guest_that_never_boots_is_an_error_at_the_boot_timeout(
        workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, boots: list[int]) -> None:
    """No ready frame ever arrives: `error` "timed out after 25 s in boot" with the last console lines,
    retried BOOT_RETRIES times (each recorded), each attempt's QEMU killed and its log kept."""
    _with_cmdline(monkeypatch, *NEVER_BOOTS)
    _with_boot_timeout(monkeypatch, BOOT_TIMEOUT_S)
    cell = _cell(workspace, "kmod")
    started = time.monotonic()
    result = run_capture_cell(workspace, cell, tmp_path, buffer_sizes=ONE_SIZE)
    booting = time.monotonic() - started - result.timings.get("build_s", 0.0)
    assert result.status == "error", result
    reason = result.reason or ""
    assert f"timed out after {BOOT_TIMEOUT_S:.0f} s in boot" in reason
    cell_dir = tmp_path / cell.id
    last_attempt = (cell_dir / f"console.retry{BOOT_RETRIES}.log").read_text(errors="replace")
    console = reason.split("last console lines:\n", 1)[1]
    assert console.strip(), reason
    assert console.splitlines()[-1].strip() in last_attempt.replace("\r", "")
    assert len(boots) == BOOT_RETRIES + 1
    assert len(result.metrics["boot_retries"]) == BOOT_RETRIES
    assert all("timed out" in retry for retry in result.metrics["boot_retries"])
    assert booting <= (BOOT_RETRIES + 1) * (BOOT_TIMEOUT_S + GRACE_S), booting
    assert (cell_dir / "console.log").stat().st_size > 0
    _assert_no_qemu_left(*boots)


def test_guest_with_a_wrong_console_is_an_error_naming_it(workspace: Workspace, tmp_path: Path) -> None:
    """console= names a port that is not there (ttyS3): nothing reaches the host, the agent has no
    console and init powers off; `error` (a boot error, so retried) whose message says that no kernel
    message arrived and names the console."""
    spec = _spec(workspace)
    spec = dataclasses.replace(spec, arch=dataclasses.replace(spec.arch, console="ttyS3"))
    result = CellResult("c", ARCH, "k", "kmod", "capture")
    started = time.monotonic()
    with pytest.raises(BootError) as raised:
        cells.boot_with_retry(spec, tmp_path, BOOT_TIMEOUT_S, result)
    assert time.monotonic() - started <= (BOOT_RETRIES + 1) * (BOOT_TIMEOUT_S + GRACE_S)
    record_error(result, raised.value)
    assert result.status == "error"
    assert "no kernel message reached this console: is console=ttyS3" in (result.reason or "")
    assert len(result.metrics["boot_retries"]) == BOOT_RETRIES
    _assert_no_qemu_left()


# -- drill 3: kernel panic and driver oops --------------------------------------------------------------------


def test_kernel_panic_is_a_fail_with_its_trace(workspace: Workspace, tmp_path: Path) -> None:
    """`echo c > /proc/sysrq-trigger` through the agent's exec op: the request raises GuestCrash at
    once (panic=-1 ends QEMU), which a cell records as `fail` with the panic line and call trace."""
    guest = Guest(_spec(workspace), tmp_path / "console.log")
    try:
        guest.start()
        guest.wait_ready(get_arch(ARCH).tcg_boot_timeout_s)
        pid = guest.pid
        assert pid is not None
        started = time.monotonic()
        with pytest.raises(GuestCrash) as raised:
            guest.exec(["/bin/sh", "-c", "echo c > /proc/sysrq-trigger"], timeout_s=60)
        assert time.monotonic() - started < 30, "a panic must end the request at once, not at its timeout"
    finally:
        guest.close()
    result = CellResult("c", ARCH, "k", "kmod", "capture")
    record_error(result, raised.value)
    assert result.status == "fail"
    crash = result.metrics["crash"]
    assert "sysrq triggered crash" in crash["headline"] and crash["headline"] in (result.reason or "")
    assert any("sysrq" in frame for frame in crash["call_trace"]), crash["call_trace"]
    assert (tmp_path / "console.log").is_file()
    _assert_no_qemu_left(pid)


def test_driver_oops_on_load_is_a_fail_with_its_trace(workspace: Workspace, tmp_path: Path,
                                                      boots: list[int]) -> None:
    """The kmod built with fault="oops_on_load" dereferences NULL in its init: oops=panic ends QEMU;
    the cell is `fail` (booted once, not a hang) with the oops and the call trace."""
    cell = _cell(workspace, "kmod")
    result = run_capture_cell(workspace, cell, tmp_path, fault="oops_on_load", buffer_sizes=ONE_SIZE)
    assert result.status == "fail", result
    crash = result.metrics["crash"]
    assert "NULL pointer dereference" in crash["headline"], crash
    assert crash["headline"] in (result.reason or "")
    assert "kmx_init" in crash["excerpt"]  # the RIP line names the module's init
    assert any("do_init_module" in frame or "do_one_initcall" in frame for frame in crash["call_trace"]), crash
    assert result.timings["run_s"] < 60, "an oops must end the cell at once"
    _assert_booted_once(result, boots, tmp_path / cell.id)
    _assert_no_qemu_left(*boots)


# -- drill 4: the driver fails to load ------------------------------------------------------------------------


# What a kernel logs when it refuses a module built for another kernel. 6.12 refuses bookworm's 6.1
# module at the first check, before vermagic: "module kmx: .gnu.linkonce.this_module section size
# must match the kernel's built struct module size at run time" (measured).
MODULE_MISMATCH = (
    ".gnu.linkonce.this_module section size must match",
    "kmx: version magic '6.1.",
    "kmx: disagrees about version of symbol",
)


def test_module_of_another_kernel_is_refused_with_the_kernels_words(
        workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, boots: list[int]) -> None:
    """The kmod really built for bookworm's 6.1 and loaded on the 6.12 guest: `fail` with the
    kernel's own lines refusing it (struct module size / vermagic / symbol versions) in the reason
    and metrics."""
    old = cells.build_driver(workspace, "kmod", _cell(workspace, "kmod", "bookworm"), None)
    monkeypatch.setattr(cells, "build_driver", lambda *_args, **_kwargs: old)
    cell = _cell(workspace, "kmod")
    result = run_capture_cell(workspace, cell, tmp_path, buffer_sizes=ONE_SIZE)
    assert result.status == "fail", result
    refusal = [line for line in result.metrics["dmesg"] if any(words in line for words in MODULE_MISMATCH)]
    assert refusal, result.metrics["dmesg"]
    assert all(line in (result.reason or "") for line in refusal)
    _assert_booted_once(result, boots, tmp_path / cell.id)
    _assert_no_qemu_left(*boots)


def test_unknown_symbol_is_refused_with_the_kernels_words(workspace: Workspace, tmp_path: Path,
                                                          boots: list[int]) -> None:
    """fault="unknown_symbol": the module calls kallsyms_lookup_name, not exported to modules: `fail`
    with dmesg's "Unknown symbol" line."""
    cell = _cell(workspace, "kmod")
    result = run_capture_cell(workspace, cell, tmp_path, fault="unknown_symbol", buffer_sizes=ONE_SIZE)
    assert result.status == "fail", result
    unknown = [line for line in result.metrics["dmesg"] if "kmx: Unknown symbol kallsyms_lookup_name" in line]
    assert unknown, result.metrics["dmesg"]
    assert unknown[0] in (result.reason or "")
    _assert_booted_once(result, boots, tmp_path / cell.id)
    _assert_no_qemu_left(*boots)


def test_verifier_rejection_is_a_fail_with_the_verifiers_words(workspace: Workspace, tmp_path: Path,
                                                               boots: list[int]) -> None:
    """fault="verifier_reject": modern_bpf's sys_enter program reads past a map value: `fail` with
    the verifier's own lines in the reason."""
    cell = _cell(workspace, "modern_bpf")
    result = run_capture_cell(workspace, cell, tmp_path, fault="verifier_reject", buffer_sizes=ONE_SIZE)
    assert result.status == "fail", result
    reason = result.reason or ""
    assert "verifier log of kmx_sys_enter" in reason, reason
    assert "invalid access to map value" in reason, reason
    _assert_booted_once(result, boots, tmp_path / cell.id)
    _assert_no_qemu_left(*boots)
