"""Fault drill 5: the harness itself is signalled mid-run (SIGINT, SIGTERM, SIGKILL).

A real `python -m harness run` over two x86_64 cells (kmod and bpf, capture suite) is started in a
subprocess; once its results.json holds the first finished cell and the second cell's QEMU is up, the
harness gets the signal. Then, read from /proc and the run directory:

- SIGINT / SIGTERM: exit 130 / 143, no QEMU of the run left, the finished cell in results.json, the
  run marked `interrupted`, its run marker (running.json) removed;
- SIGKILL: no QEMU survives (the parent-death signal), running.json is left behind, and the next
  `kmatrix run` (or `qualify`) warns "stale run directory ...: interrupted by SIGKILL or a crash ..." and marks
  that run's results.json interrupted, deleting nothing.

The guard-removal proofs run the same drills with a guard switched off
(KMATRIX_TEST_DISABLE_GUARD=interrupted-mark / stale-run) and show the drill's checks then fail.
One guest at a time; about a minute per drill under TCG.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import harness
from harness.runner import GUARD_ENV, RUN_MARKER
from harness.vm import process_alive, running_qemu_pids

pytestmark = [pytest.mark.faults, pytest.mark.vm, pytest.mark.arch_x86_64, pytest.mark.slow]

REPO = Path(harness.__file__).resolve().parent.parent
RUN_ARGS = ["--profile", "default", "--arch", "x86_64", "--driver", "kmod,bpf", "--suite", "capture"]
# A complete run that boots nothing: throughput cells are skips in `kmatrix run` (bench measures them).
QUICK_RUN_ARGS = ["--profile", "full", "--arch", "x86_64", "--driver", "kmod", "--suite", "throughput"]
FIRST_CELL_TIMEOUT_S = 600
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 128 + signal.SIGTERM}




def _ppid(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def _qemu_of(parent: int) -> list[int]:
    return [pid for pid in running_qemu_pids() if _ppid(pid) == parent and process_alive(pid)]


def _qemu_mentioning(run_dir: Path) -> list[int]:
    """Any live QEMU whose command line names a file of this run (its initrd lies in the run directory),
    whoever its parent is now: an orphan re-parented to init is found too."""
    found = []
    for pid in running_qemu_pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(run_dir) in cmdline and process_alive(pid):
            found.append(pid)
    return found


def _env(disable_guard: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KMATRIX_ACCEL": "tcg"}
    env.pop(GUARD_ENV, None)
    if disable_guard:
        env[GUARD_ENV] = disable_guard
    return env


def _results(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class Interrupted:
    proc: subprocess.Popen[bytes]
    run_dir: Path
    qemu: list[int]  # the second cell's QEMU, alive when the signal was sent
    log: Path  # the harness's stderr

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


def _start(args: list[str], run_dir: Path, log: Path, env: dict[str, str],
           command: str = "run") -> subprocess.Popen[bytes]:
    with open(log, "wb") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "harness", command, *args, "--matrix", str(REPO / "matrix.yaml"),
             "-o", str(run_dir)],
            cwd=run_dir.parent.parent,  # never the repository: ./runs there belongs to real runs
            stdout=handle, stderr=subprocess.STDOUT, env=env,
            # A shell's background job inherits SIGINT ignored; give the harness a terminal user's default.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def _interrupt_after_first_cell(tmp_path: Path, signum: int, disable_guard: str | None = None) -> Interrupted:
    """Start the two-cell run, wait for cell 1 in results.json and cell 2's QEMU, then send `signum`."""
    run_dir = tmp_path / "runs" / "run-drill"
    run_dir.parent.mkdir(parents=True)
    log = tmp_path / "harness.log"
    proc = _start(RUN_ARGS, run_dir, log, _env(disable_guard))
    try:
        deadline = time.monotonic() + FIRST_CELL_TIMEOUT_S
        qemu: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None:
            data = _results(run_dir)
            if data is not None and len(data.get("cells", [])) >= 1:
                qemu = _qemu_of(proc.pid)  # the second cell, booting or running its suite
                if qemu:
                    break
            time.sleep(0.2)
        assert proc.poll() is None, f"the run ended before the drill could signal it:\n{log.read_text()[-3000:]}"
        assert qemu, f"no first cell and second QEMU within {FIRST_CELL_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
        time.sleep(1.0)
        proc.send_signal(signum)
        proc.wait(timeout=60)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return Interrupted(proc, run_dir, qemu, log)


def _wait_dead(pids: list[int], timeout_s: float = 10) -> list[int]:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and any(process_alive(pid) for pid in pids):
        time.sleep(0.2)
    return [pid for pid in pids if process_alive(pid)]


# -- the outcomes each drill requires (functions, so the guard-removal proofs can show them failing) ----


def check_interrupted_outcome(run: Interrupted, signum: int) -> None:
    assert run.proc.returncode == EXIT_CODES[signum], run.stderr()[-2000:]
    assert _wait_dead(run.qemu) == [], "QEMU outlived the interrupted harness"
    assert _qemu_mentioning(run.run_dir) == []
    data = _results(run.run_dir)
    assert data is not None, "results.json is missing or unreadable"
    cells = data["cells"]
    assert len(cells) == 1 and cells[0]["cell"] == "x86_64-bookworm-backports-kmod-capture", cells
    assert cells[0]["status"] in ("pass", "fail", "error", "skip")
    assert data["interrupted"] is True, "the interrupted run is not marked interrupted in results.json"
    assert not (run.run_dir / RUN_MARKER).exists(), "run marker left although results.json says interrupted"


def check_stale_reported(killed: Interrupted, next_log: str, next_rc: int) -> None:
    assert next_rc == 0, next_log[-2000:]
    warning = f"stale run directory {killed.run_dir}: interrupted by SIGKILL or a crash at about"
    assert warning in next_log, f"no stale-run warning from the next run:\n{next_log}"
    assert "1 cell(s) recorded; results.json marked interrupted" in next_log, next_log
    data = _results(killed.run_dir)
    assert data is not None and data["interrupted"] is True and len(data["cells"]) == 1
    marker = json.loads((killed.run_dir / RUN_MARKER).read_text())  # still there: nothing is deleted
    assert marker["pid"] == killed.proc.pid and "stale_reported" in marker


def _next_run(tmp_path: Path, name: str, disable_guard: str | None = None, command: str = "run") -> tuple[int, str]:
    """A quick complete `kmatrix run` (or `qualify --no-bench`) beside the drill's run directory."""
    run_dir = tmp_path / "runs" / name
    log = tmp_path / f"{name}.log"
    args = [*QUICK_RUN_ARGS, "--no-bench"] if command == "qualify" else QUICK_RUN_ARGS
    proc = _start(args, run_dir, log, _env(disable_guard), command)
    proc.wait(timeout=120)
    assert not (run_dir / RUN_MARKER).exists(), "a cleanly ended run left its marker"
    return proc.returncode, log.read_text(errors="replace")


# -- the drills -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_run_keeps_results_and_marks_interrupted(signum: int, tmp_path: Path) -> None:
    run = _interrupt_after_first_cell(tmp_path, signum)
    check_interrupted_outcome(run, signum)


def test_sigkill_mid_run_is_reported_by_the_next_run(tmp_path: Path) -> None:
    killed = _interrupt_after_first_cell(tmp_path, signal.SIGKILL)
    assert killed.proc.returncode == -signal.SIGKILL
    assert _wait_dead(killed.qemu) == [], "QEMU survived SIGKILL of the harness (parent-death signal)"
    assert _qemu_mentioning(killed.run_dir) == []
    before = _results(killed.run_dir)
    assert before is not None and before["interrupted"] is False and len(before["cells"]) == 1
    assert json.loads((killed.run_dir / RUN_MARKER).read_text())["pid"] == killed.proc.pid
    rc, log = _next_run(tmp_path, "run-next")
    check_stale_reported(killed, log, rc)
    # Reported once: the run after that does not repeat it (the marker records the report).
    rc, log = _next_run(tmp_path, "run-after")
    assert rc == 0 and "stale run directory" not in log, log


# -- guard-removal proofs ---------------------------------------------------------------------------------


def test_drill_fails_without_interrupted_marking(tmp_path: Path) -> None:
    run = _interrupt_after_first_cell(tmp_path, signal.SIGTERM, disable_guard="interrupted-mark")
    with pytest.raises(AssertionError, match="not marked interrupted"):
        check_interrupted_outcome(run, signal.SIGTERM)


def test_drill_fails_without_stale_run_detection(tmp_path: Path) -> None:
    killed = _interrupt_after_first_cell(tmp_path, signal.SIGKILL)
    rc, log = _next_run(tmp_path, "run-unguarded", disable_guard="stale-run")
    with pytest.raises(AssertionError, match="no stale-run warning"):
        check_stale_reported(killed, log, rc)
    # The same state, the guard back on: the drill passes (this time the next command is `qualify`).
    rc, log = _next_run(tmp_path, "run-guarded", command="qualify")
    check_stale_reported(killed, log, rc)
