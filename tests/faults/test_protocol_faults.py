"""Fault drill 9: protocol faults on the console, end to end through the real host and agent code.

In place of QEMU, `harness.vm.qemu_command` launches a fake guest: a small Python program that runs
the REAL guest agent (harness.guest.agent.serve over harness.guest.channel.Channel, so resends are
served by the real code) with the capture op answering a canned reply, and a writer that injects one
fault into the first write of the result frame:

- bad-checksum: the payload is tampered with at the same length (a failing result turned into
  `"passed":true `), so only the crc32 can catch it;
- garbled: line noise (NUL, escape sequences, bytes that are not UTF-8) lands inside the payload;
- garbled-header: the frame header itself is noise, so its sequence number is lost;
- kernel-lines: kernel log lines land inside the frame, written in several pieces;
- cut-short: the frame stops half-way and the next frame starts;
- exit-mid-message: the agent writes half the result frame and exits.

Each runs the real cell path (harness.cells.run_capture_cell: Guest over a pty, FrameScanner, resend
requests, the verdict) and checks the outcome: a resend is requested and the true result wins, the
kernel lines are removed with no resend, or the cell is an error, never a pass, when the result
frame did not arrive complete. The guard-removal proof switches off checksum verification
(harness.protocol.VERIFY_CHECKSUM) and shows the tampered frame then becomes a false pass.
No QEMU is started; each drill takes about a second (garbled-header: its 3 s request timeout).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import harness
import harness.vm
from harness import protocol
from harness.archs import get_arch
from harness.cells import CellResult, DriverArtifact, run_capture_cell
from harness.images import KernelImage
from harness.kernel import CAPABILITIES
from harness.matrix import load_matrix
from harness.runner import Workspace
from harness.vm import BootSpec

pytestmark = [pytest.mark.faults]

REPO = Path(harness.__file__).resolve().parent.parent
REQUEST_TIMEOUT_S = 3.0
# Whether harness/vm.py names a lost result frame as such (see the report of this drill for the patch).
VM_NAMES_INCOMPLETE = "frame incomplete" in Path(harness.vm.__file__).read_text()

MISMATCH = {"call": "openat", "tid": 42, "what": "path", "expected": "/tmp/kmx-a", "got": "/tmp/kmx-b"}
PASSING = {"passed": True, "verified_calls": 47, "expected_calls": 47, "first_mismatch": None, "drops": 0}
FAILING = {"passed": False, "verified_calls": 46, "expected_calls": 47, "first_mismatch": MISMATCH, "drops": 0}

# The fake guest. argv: scenario, reply (JSON), log file. It logs every frame the host sends it.
FAKE_GUEST = r'''
import json, os, sys, time
sys.path.insert(0, REPO)
from harness.guest import agent
from harness.guest.channel import Channel

scenario, reply, log_path = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
KERNEL_LINES = ["\r\n[   12.345678] random: crng init done\r\n",
                "[    3.000001] virtio_blk virtio1: [vda] 1 sectors\r\n",
                "\n[  100.000002] NOHZ tick-stop error: local softirq work is pending, handler #08!!!\r\n"]


def log(entry):
    with open(log_path, "a") as handle:
        handle.write(json.dumps(entry) + "\n")


class FaultyChannel(Channel):
    faulted = False

    def receive(self, timeout_s=None):
        frame = super().receive(timeout_s)
        if frame is not None:
            log(frame.message)
        return frame

    def _write(self, line):
        if scenario == "clean" or self.faulted or '"type":"result"' not in line or '"passed"' not in line:
            return super()._write(line)
        self.faulted = True
        log({"injected": scenario})
        out = 1
        if scenario == "bad-checksum":
            assert '"passed":false' in line
            super()._write(line.replace('"passed":false', '"passed":true '))  # same length: only the crc32 knows
        elif scenario == "garbled":
            cut = len(line) * 2 // 3
            os.write(out, ("\n" + line[:cut]).encode() + b"\x00\x1b[2J\xff\xfe noise" + (line[cut:] + "\n").encode())
        elif scenario == "garbled-header":
            head = line.index("{")
            os.write(out, ("\n<<KMX|" + "#?%|&&|zz~~" + line[head:] + "\n").encode())
        elif scenario == "kernel-lines":
            cuts = [len(line) // 4, len(line) // 2, len(line) * 3 // 4]
            pieces = [line[:cuts[0]], line[cuts[0]:cuts[1]], line[cuts[1]:cuts[2]], line[cuts[2]:]]
            os.write(out, b"\n")
            for piece, kernel_line in zip(pieces, [*KERNEL_LINES, ""]):
                os.write(out, (piece + kernel_line).encode())
                time.sleep(0.05)  # separate reads on the host
            os.write(out, b"\n")
        elif scenario == "cut-short":
            os.write(out, ("\n" + line[: len(line) // 2] + "\n").encode())
            time.sleep(0.1)
            super()._write(line)
        elif scenario == "exit-mid-message":
            os.write(out, ("\n" + line[: len(line) // 2]).encode())
            os._exit(0)
        else:
            raise SystemExit(f"unknown scenario {scenario!r}")


agent.HANDLERS["capture"] = lambda request: dict(reply)
agent.serve(FaultyChannel())
'''.replace("REPO", repr(str(REPO)))


@dataclasses.dataclass
class Drill:
    result: CellResult
    host_sent: list[dict[str, Any]]  # what the fake guest received from the host, in order
    injected: bool

    @property
    def resends(self) -> list[int]:
        return [m["seq"] for m in self.host_sent if m.get("type") == "resend"]


class FakeWorkspace(Workspace):
    """The real matrix; a kernel that needs no download."""

    def kernel(self, arch: Any, ref: Any) -> KernelImage:
        config = {option: "y" for option in CAPABILITIES}
        for spec in (*self.matrix.drivers.values(), *self.matrix.suites.values()):
            config.update({option: "y" for option in spec.requires_config})
        return KernelImage(arch=arch.name, source=str(ref.suite), release="6.12.0-99-amd64", package="linux-image-fake",
                           package_version="6.12.0-1", kernel=self.cache / "vmlinuz", config_path=None, config=config)


@pytest.fixture
def drill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    script = tmp_path / "fake_guest.py"
    script.write_text(FAKE_GUEST)
    (tmp_path / "vmlinuz").write_bytes(b"not a kernel")
    (tmp_path / "initrd.cpio.gz").write_bytes(b"not an initrd")
    (tmp_path / "kmx.ko").write_bytes(b"not a module")
    matrix_path = REPO / "matrix.yaml"
    ws = FakeWorkspace(load_matrix(matrix_path), repo=None, cache=tmp_path, matrix_path=matrix_path)  # type: ignore[arg-type]
    cell = ws.matrix.cells("default", archs="x86_64", drivers="kmod", suites="capture")[0]

    def run(scenario: str, reply: dict[str, Any]) -> Drill:
        log = tmp_path / f"{scenario}.host-sent.jsonl"
        argv = [sys.executable, str(script), scenario, json.dumps(reply), str(log)]
        monkeypatch.setattr(harness.vm, "qemu_command", lambda spec, initrd=None: argv)
        monkeypatch.setattr("harness.cells.build_driver", lambda *a, **k: DriverArtifact(
            tmp_path / "kmx.ko", "opt/kmatrix/drivers/kmx.ko", cached=True, compiler="none (fault drill)"))

        def prepare(ws: Workspace, arch: Any, ref: Any, **_kw: Any) -> tuple[BootSpec, Any, Any, str]:
            spec = BootSpec(get_arch("x86_64"), tmp_path / "vmlinuz", tmp_path / "initrd.cpio.gz", accel="tcg")
            return spec, ws.kernel(arch, ref), SimpleNamespace(size=1), "fake guest (fault drill)"

        monkeypatch.setattr("harness.cells.prepare", prepare)
        result = run_capture_cell(ws, cell, tmp_path / scenario, timeout_s=REQUEST_TIMEOUT_S)
        lines = log.read_text().splitlines() if log.exists() else []
        sent = [json.loads(line) for line in lines]
        return Drill(result, [m for m in sent if "injected" not in m], any("injected" in m for m in sent))

    return run


def _console(drill: Drill) -> str:
    return Path(drill.result.console_log or "").read_text(errors="replace")


# -- the outcomes (functions, so the guard-removal proof can show one failing) ---------------------------


def check_resent_and_true_result(drill: Drill, expected_status: str) -> None:
    assert drill.injected, "the fault was never injected"
    assert drill.resends == [2], f"expected one resend of the result frame (seq 2), host sent {drill.host_sent}"
    assert drill.result.status == expected_status, (drill.result.status, drill.result.reason)
    if expected_status == "fail":
        assert drill.result.reason is not None and "openat (tid 42): path" in drill.result.reason
        assert drill.result.metrics["verified_calls"] == 46


def check_never_a_pass(drill: Drill) -> None:
    assert drill.injected, "the fault was never injected"
    assert drill.result.status == "error", (drill.result.status, drill.result.reason)
    assert "verified_calls" not in drill.result.metrics and "passed" not in drill.result.metrics


# -- the drills ----------------------------------------------------------------------------------------


def test_clean_run_passes(drill: Any) -> None:
    """The control: the same path without a fault is a pass with no resend."""
    got = drill("clean", PASSING)
    assert got.result.status == "pass" and got.resends == [] and not got.injected


def test_bad_checksum_is_resent_never_believed(drill: Any) -> None:
    """A failing result tampered into `passed: true` (same length): refused, asked again, the failure stands."""
    got = drill("bad-checksum", FAILING)
    check_resent_and_true_result(got, "fail")
    assert '"passed":true ' in _console(got)  # the tampered frame really crossed the console


@pytest.mark.parametrize("scenario", ["garbled", "cut-short"])
def test_garbled_or_cut_short_frame_is_resent(drill: Any, scenario: str) -> None:
    check_resent_and_true_result(drill(scenario, PASSING), "pass")


def test_kernel_lines_inside_the_result_frame_are_removed(drill: Any) -> None:
    got = drill("kernel-lines", PASSING)
    assert got.injected and "crng init done" in _console(got)
    assert got.resends == [], "kernel lines inside a frame should be removed, not cause a resend"
    assert got.result.status == "pass"


def test_garbled_header_is_never_a_pass(drill: Any) -> None:
    """The sequence number is lost, so no resend can be asked: the cell times out as an error."""
    got = drill("garbled-header", PASSING)
    check_never_a_pass(got)
    assert got.resends == []
    assert "timed out" in (got.result.reason or "") and "request capture" in (got.result.reason or "")


def test_agent_exit_mid_message_is_never_a_pass(drill: Any) -> None:
    got = drill("exit-mid-message", PASSING)
    check_never_a_pass(got)
    assert "exited during request capture" in (got.result.reason or "")


@pytest.mark.xfail(not VM_NAMES_INCOMPLETE, strict=True,
                   reason="harness/vm.py does not yet name a lost result frame (patch given to the lead)")
@pytest.mark.parametrize("scenario", ["exit-mid-message", "garbled-header"])
def test_lost_result_frame_is_named(drill: Any, scenario: str) -> None:
    """The error says why no result came: the frame was lost on the console, not a silent guest."""
    got = drill(scenario, PASSING)
    check_never_a_pass(got)
    assert "result frame incomplete" in (got.result.reason or ""), got.result.reason


# -- guard-removal proof -------------------------------------------------------------------------------


def test_drill_fails_without_checksum_verification(drill: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "VERIFY_CHECKSUM", False)
    got = drill("bad-checksum", FAILING)
    assert got.result.status == "pass"  # the tampered frame was believed: a failing cell reported as a pass
    with pytest.raises(AssertionError, match="expected one resend"):
        check_resent_and_true_result(got, "fail")


def test_scanner_knows_a_frame_in_progress() -> None:
    """What the host's "result frame incomplete" rests on (FrameScanner.incomplete)."""
    line = protocol.encode(2, {"type": "result", "id": 1, "passed": True})
    scanner = protocol.FrameScanner()
    scanner.feed("[    1.000000] noise\r\n" + line[:20])
    assert scanner.incomplete
    assert [type(item) for item in scanner.feed(line[20:])] == [protocol.Frame] and not scanner.incomplete
