"""The throughput bench with a driver that a command reads (Falco's kmod read by `sysdig -w FILE`).

Host side: which drivers the bench measures, what a command subject ships to the guest and asks of
it, where the consumer's details land. Guest side: CommandSubject's start/consume/stop/close
contract and bench_subject's dispatch, run on this host with test doubles of the external programs:
`fake_sysdig.py` stands in for sysdig (it writes a capture file, prints sysdig -v's figures when
SIGINT stops it, or dies by SIGBUS as sysdig does on Falco's kmod under aarch64 6.12), and
`fake_storm.py` for drivers/tools/storm. Neither kernel module nor /dev/scapN exists here, so the
module load and the device check are replaced; everything else is the bench's own code.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from harness.kernel import KernelFacts
from harness.matrix import Matrix, load_matrix

REPO = Path(__file__).resolve().parents[2]

# A test double of sysdig: `-w FILE` captures until SIGINT; --version prints a version. FAKE_SYSDIG_MODE:
# "ok" (stats at exit as sysdig -v prints them), "nostats" (none), "backlog" (goes on writing for
# 0.6 s after it started, as sysdig does while it catches up), "sigbus-start" (dies before its capture
# file exists), "sigbus-later" (dies by SIGBUS once capturing).
FAKE_SYSDIG = textwrap.dedent('''
    import os, signal, sys, time
    args = sys.argv[1:]
    if "--version" in args:
        print("sysdig version 0.0-fake")
        sys.exit(0)
    mode = os.environ.get("FAKE_SYSDIG_MODE", "ok")
    path = args[args.index("-w") + 1]
    with open(os.environ["FAKE_SYSDIG_ARGV"], "a") as log:
        log.write(repr(args) + "\\n")
    if mode == "sigbus-start":
        os.kill(os.getpid(), signal.SIGBUS)
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    with open(path, "wb") as capture:
        capture.write(b"x" * 1000)
        capture.flush()
        if mode == "backlog":
            for _ in range(12):
                time.sleep(0.05)
                capture.write(b"b" * 100)
                capture.flush()
        if mode == "sigbus-later":
            time.sleep(0.3)
            os.kill(os.getpid(), signal.SIGBUS)
        while not stop:
            time.sleep(0.01)
        capture.write(b"y" * 234)
    if mode == "ok" and "-v" in args:
        sys.stderr.write("Driver Events:2010\\nDriver Drops:10\\nSuppressed by Comm:0\\n"
                         "Elapsed time: 0.500, Captured Events: 2000, 4000.00 eps\\n")
    sys.exit(0)
''')

# A test double of drivers/tools/storm: `storm MIX 0 MS --ready-fd N`, "ready" on N, waits for a
# byte on stdin, runs MS and prints its JSON line.
FAKE_STORM = textwrap.dedent('''
    import json, os, sys, time
    mix, _threads, ms = sys.argv[1], sys.argv[2], int(sys.argv[3])
    fd = int(sys.argv[sys.argv.index("--ready-fd") + 1])
    os.write(fd, b"ready")
    os.close(fd)
    sys.stdin.read(1)
    time.sleep(ms / 1000)
    print(json.dumps({"mix": mix, "syscalls": 1000, "duration_s": ms / 1000, "syscalls_per_s": 1000 / (ms / 1000)}))
''')


@pytest.fixture(scope="module")
def real() -> Matrix:
    return load_matrix(REPO / "matrix.yaml")


# ----------------------------------------------------------------------------- host


def test_the_bench_measures_every_declared_driver_falco_kmod_read_by_sysdig(real: Matrix) -> None:
    from harness.bench.run import bench_drivers

    assert bench_drivers(real) == ["kmod", "bpf", "modern_bpf", "falco-kmod"]
    assert real.consumers[real.drivers["falco-kmod"].consumer].kind == "command"


class _FakeKernel:
    def __init__(self, release: str, version: str) -> None:
        self.release = release
        self.facts = KernelFacts(release=release, package_version=version, suite="bookworm",
                                 config={"CONFIG_MODULES": "y", "CONFIG_TRACEPOINTS": "y"})


class _FakeWorkspace:
    def __init__(self, matrix: Matrix, kernel: _FakeKernel, cache: Path) -> None:
        self.matrix, self._kernel, self.cache, self.repo = matrix, kernel, cache, None
        self.said: list[str] = []

    def say(self, message: str) -> None:
        self.said.append(message)

    def kernel(self, _arch: Any, _ref: Any) -> _FakeKernel:
        return self._kernel


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, real: Matrix) -> dict[str, Any]:
    """bench_cell with the builds, sysdig's bundle and the guest replaced: what it ships and asks."""
    import harness.bench.run as run
    import harness.build.tools as tools
    import harness.consumers as consumers
    from harness.drivers.adapters import DriverArtifact

    seen: dict[str, Any] = {"consumer_calls": [], "reply_details": {"consumer_version": "sysdig version 0.41.4"}}
    for name in ("scap.ko", "kmx.ko", "storm", "sysdig", "libc.so.6"):
        (tmp_path / name).write_bytes(b"\0")

    def build_driver(_ws: Any, kind: str, cell: Any, fault: Any) -> DriverArtifact:
        module = real.drivers[cell.driver].module
        details = {"dkms_package": "falcosecurity-scap-dkms 0.20.0"} if cell.driver == "falco-kmod" else {}
        return DriverArtifact(tmp_path / module, f"opt/kmatrix/drivers/{module}", True, "gcc", details)

    class Consumer:
        def __init__(self) -> None:
            self.files = [(tmp_path / "sysdig", "opt/kmatrix/consumers/sysdig/sbin/sysdig", 0o755),
                          (tmp_path / "libc.so.6", "opt/kmatrix/consumers/sysdig/lib/libc.so.6", 0o644)]

        def request(self) -> dict[str, Any]:
            return {"name": "sysdig", "capture": ["sysdig", "-q", "-w", "{file}"], "read": ["sysdig", "-r", "{file}"],
                    "version": ["sysdig", "--version"], "placeholder": "{file}"}

        def details(self) -> dict[str, Any]:
            return {"consumer": "sysdig", "package": "sysdig", "package_version": "0.41.4+repack-4+b1"}

    def guest_consumer(_ws: Any, arch: Any, driver: str) -> Consumer | None:
        seen["consumer_calls"].append((arch.name, driver))
        if seen.get("consumer_error"):
            from harness.errors import FetchError

            raise FetchError("sysdig is not in sid for arm64")
        if seen.get("consumer_missing"):
            from harness.errors import UnsupportedTarget

            raise UnsupportedTarget("consumer sysdig: Debian sid has no sysdig for arm64, so nothing here reads "
                                    "falco-kmod on aarch64")
        return Consumer() if real.consumers[real.drivers[driver].consumer].kind == "command" else None

    def run_guest(_ws: Any, _arch: str, _ref: Any, _dir: Path, files: list[Any], wanted: list[dict[str, Any]],
                  _options: Any, bench_run: Any) -> dict[str, Any]:
        seen["files"], seen["wanted"] = list(files), [dict(w) for w in wanted]
        bench_run.accel = "tcg"
        subjects = [{"subject": w["subject"], "status": "pass", "reason": None,
                     "details": dict(seen["reply_details"]) if "consumer" in w else {}} for w in wanted]
        return {"vcpus": 2, "baseline": {}, "subjects": subjects}

    class Storm:
        path = tmp_path / "storm"

    monkeypatch.setattr(run, "build_driver", build_driver)
    monkeypatch.setattr(run, "_run_guest", run_guest)
    monkeypatch.setattr(consumers, "guest_consumer", guest_consumer)
    monkeypatch.setattr(tools, "build_storm", lambda *_a, **_k: Storm())
    seen["tmp"] = tmp_path
    return seen


def _bench(host: dict[str, Any], real: Matrix, release: str = "6.1.0-31-arm64", version: str = "6.1.128-1") -> Any:
    from harness.bench.run import bench_cell

    ws = _FakeWorkspace(real, _FakeKernel(release, version), host["tmp"])
    ref = next(r for r in real.kernels("aarch64") if r.suite == "bookworm")
    return bench_cell(ws, "aarch64", ref, host["tmp"] / "run", drivers=["kmod", "falco-kmod"],  # type: ignore[arg-type]
                      peers=[])


def test_a_command_subject_ships_its_module_and_consumer_and_asks_the_guest_for_it(
        host: dict[str, Any], real: Matrix) -> None:
    run = _bench(host, real)
    shipped = {guest for _path, guest, _mode in host["files"]}
    assert {"opt/kmatrix/drivers/scap.ko", "opt/kmatrix/drivers/kmx.ko", "opt/kmatrix/consumers/sysdig/sbin/sysdig",
            "opt/kmatrix/consumers/sysdig/lib/libc.so.6", "opt/kmatrix/tools/storm"} <= shipped
    kmod, falco = host["wanted"]
    assert kmod == {"subject": "kmod", "kind": "kmod", "artifact": "/opt/kmatrix/drivers/kmx.ko"}  # as before
    assert falco["subject"] == "falco-kmod" and falco["kind"] == "kmod"
    assert falco["artifact"] == "/opt/kmatrix/drivers/scap.ko"
    assert falco["consumer"]["name"] == "sysdig" and "{file}" in falco["consumer"]["capture"]
    assert "details" not in falco  # the host keeps those; the guest gets only what it runs
    subject = run.subject("falco-kmod")
    assert subject is not None and subject.kind == "driver" and subject.status == "pass"
    # The host's consumer and build details beside what the guest found (sysdig's own --version).
    assert subject.details["package_version"] == "0.41.4+repack-4+b1"
    assert subject.details["dkms_package"] == "falcosecurity-scap-dkms 0.20.0"
    assert subject.details["consumer_version"] == "sysdig version 0.41.4"
    assert run.subject("kmod") is not None and run.subject("kmod").details == {}  # type: ignore[union-attr]
    assert [s.subject for s in run.subjects] == ["kmod", "falco-kmod"]


def test_a_command_subject_below_its_minimum_kernel_is_skipped_with_the_reason(
        host: dict[str, Any], real: Matrix) -> None:
    run = _bench(host, real, release="3.2.0-4-arm64", version="3.2.96-3")
    falco = run.subject("falco-kmod")
    assert falco is not None and falco.status == "skip" and falco.reason and "3.16" in falco.reason
    assert host["consumer_calls"] == []  # nothing prepared for a subject that does not apply
    assert not any(w.get("consumer") for w in host.get("wanted", []))


def test_a_consumer_that_cannot_be_prepared_is_the_subjects_error_not_the_runs(
        host: dict[str, Any], real: Matrix) -> None:
    host["consumer_error"] = True
    run = _bench(host, real)
    falco = run.subject("falco-kmod")
    assert falco is not None and falco.status == "error"
    assert falco.reason is not None and "sysdig is not in sid for arm64" in falco.reason
    assert [w["subject"] for w in host["wanted"]] == ["kmod"]
    assert not any("scap.ko" in guest or "consumers" in guest for _p, guest, _m in host["files"])


def test_an_architecture_without_the_consumers_package_skips_the_subject_before_building(
        host: dict[str, Any], real: Matrix) -> None:
    host["consumer_missing"] = True
    run = _bench(host, real)
    falco = run.subject("falco-kmod")
    assert falco is not None and falco.status == "skip"
    assert falco.reason == ("consumer sysdig: Debian sid has no sysdig for arm64, so nothing here reads falco-kmod "
                            "on aarch64")
    assert [w["subject"] for w in host["wanted"]] == ["kmod"]
    assert run.status == "pass"


def test_a_command_subject_gets_more_guest_time_than_an_agent_read_driver() -> None:
    from harness.bench.run import BenchOptions, _guest_timeout

    quick = BenchOptions(quick=True)
    assert _guest_timeout(quick, False, "aarch64", command=True) > _guest_timeout(quick, False, "aarch64")
    # Not the sweeps: a command subject measures the default configuration only, even without --quick.
    assert _guest_timeout(BenchOptions(), False, "aarch64", command=True) < _guest_timeout(BenchOptions(), False,
                                                                                            "aarch64") * 2


def test_the_report_draws_falco_kmod_in_its_own_colour_after_the_reference_drivers() -> None:
    from harness.bench import report

    assert report._COLORS["falco-kmod"] not in {v for k, v in report._COLORS.items() if k != "falco-kmod"}
    names = ["auditd", "falco-kmod", "ftrace", "kmod", "modern_bpf", "bpf"]
    assert sorted(names, key=report._subject_key) == ["kmod", "bpf", "modern_bpf", "falco-kmod", "ftrace", "auditd"]


# ----------------------------------------------------------------------------- guest


@pytest.fixture
def guest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """CommandSubject's surroundings on this host: fake sysdig and storm, no module, no /dev/scapN."""
    import harness.guest.bench as bench
    import harness.guest.command as command

    sysdig = tmp_path / "fake_sysdig.py"
    sysdig.write_text(FAKE_SYSDIG)
    storm = tmp_path / "fake_storm.py"
    storm.write_text(FAKE_STORM)
    storm.chmod(0o755)
    storm_exe = tmp_path / "storm"
    storm_exe.write_text(f"#!/bin/sh\nexec {sys.executable} {storm} \"$@\"\n")
    storm_exe.chmod(0o755)
    calls: list[tuple[str, Any]] = []
    monkeypatch.setattr(bench, "load_module", lambda path, params: calls.append(("load", (path, params))))
    monkeypatch.setattr(bench, "unload_module", lambda name: calls.append(("unload", name)))
    monkeypatch.setattr(command, "device_count", lambda prefix: 2)
    monkeypatch.setattr(command, "open_devices", lambda pid, prefix: 2)  # "every /dev/scapN open"
    monkeypatch.setenv("FAKE_SYSDIG_ARGV", str(tmp_path / "argv.log"))
    work = tmp_path / "tmpfs"
    work.mkdir()
    argv = [sys.executable, str(sysdig)]
    spec = {"subject": "falco-kmod", "kind": "kmod", "artifact": "/opt/kmatrix/drivers/scap.ko",
            "consumer": {"name": "sysdig", "capture": [*argv, "-q", "-w", "{file}"], "read": [*argv, "-r", "{file}"],
                         "version": [*argv, "--version"], "placeholder": "{file}"}}
    monkeypatch.setattr(bench, "CAPTURE_DIR", str(work))
    monkeypatch.setattr(bench.CommandSubject, "DRAIN_QUIET_S", 0.1)
    return {"spec": spec, "calls": calls, "work": work, "storm": str(storm_exe), "argv": tmp_path / "argv.log"}


def test_command_subject_starts_the_command_per_storm_reads_its_figures_and_leaves_nothing(
        guest: dict[str, Any]) -> None:
    from harness.guest.bench import CommandSubject

    subject = CommandSubject(guest["spec"], str(guest["work"]))
    assert guest["calls"] == [("load", ("/opt/kmatrix/drivers/scap.ko", {}))]
    for _round in range(2):
        subject.start(12345)
        capture = subject.consumer.file
        assert os.path.dirname(capture) == str(guest["work"]) and os.path.exists(capture)
        assert subject.consume(None) == (0, None)  # the command is the consumer, not the agent
        figures = subject.stop()
        assert figures == {"late_events": 2000, "drops": 10, "produced": 2010, "capture_bytes": 1234}
        assert os.listdir(guest["work"]) == []  # capture file and its log deleted after each storm
    argv = guest["argv"].read_text().splitlines()
    assert len(argv) == 2 and "'-v'" in argv[0] and "'12345'" not in argv[0]  # whole system: no pid filter
    details = subject.details()
    assert details["capture_files"] == 2 and details["capture_bytes_total"] == 2468
    assert "events_note" not in details
    subject.close()
    assert guest["calls"][-1] == ("unload", "scap")


def test_command_subject_lets_the_command_write_its_backlog_before_stopping_it(
        guest: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.guest.bench import CommandSubject

    monkeypatch.setenv("FAKE_SYSDIG_MODE", "backlog")
    subject = CommandSubject(guest["spec"], str(guest["work"]))
    try:
        subject.start(1)
        figures = subject.stop()  # at once: the command is still writing
        assert figures["capture_bytes"] == 1000 + 12 * 100 + 234
        assert subject.details()["consumer_drain_s_max"] >= 0.5
    finally:
        subject.close()


def test_command_subject_without_figures_counts_zero_and_says_so(
        guest: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.guest.bench import CommandSubject

    monkeypatch.setenv("FAKE_SYSDIG_MODE", "nostats")
    subject = CommandSubject(guest["spec"], str(guest["work"]))
    try:
        subject.start(1)
        assert subject.stop() == {"late_events": 0, "drops": 0, "produced": None, "capture_bytes": 1234}
        assert "printed no capture figures for 1 storm" in subject.details()["events_note"]
    finally:
        subject.close()


def test_command_subject_close_kills_a_running_command_and_removes_its_file(guest: dict[str, Any]) -> None:
    from harness.guest.bench import CommandSubject

    subject = CommandSubject(guest["spec"], str(guest["work"]))
    subject.start(1)
    process = subject.consumer.process
    subject.close()
    assert process is not None and process.poll() is not None
    assert os.listdir(guest["work"]) == []
    assert guest["calls"][-1] == ("unload", "scap")


def test_capture_stats_reads_sysdig_v_figures() -> None:
    from harness.guest.bench import capture_stats

    text = ("Driver Events:8712\nDriver Drops:12\nSuppressed by Comm:0\n"
            "Elapsed time: 1.210, Captured Events: 8690, 7181.82 eps\n")
    assert capture_stats(text) == {"driver_events": 8712, "drops": 12, "captured": 8690}
    assert capture_stats("Driver Events:1\n") is None
    assert capture_stats("") is None


def test_bench_subject_measures_a_command_subject_on_both_mixes(guest: dict[str, Any]) -> None:
    from harness.guest.bench import DEFAULT_BUFFER_MIB, bench_subject

    result = bench_subject(None, guest["storm"], guest["spec"], repeats=2, duration_ms=100, quick=False)
    assert result["status"] == "pass", result["reason"]
    assert result["kind"] == "driver"
    assert [(m["mix"], m["buffer_mib"], m["sample_every"]) for m in result["measurements"]] == [
        ("getppid", DEFAULT_BUFFER_MIB, 1), ("rw", DEFAULT_BUFFER_MIB, 1)]
    first = result["measurements"][0]
    assert first["drops"] == 10 * len(first["repeats"]) and first["events"] == 2000 * len(first["repeats"])
    assert first["delivered_ratio"] == 2.0  # 2000 events for the fake storm's 1000 syscalls, at 1 per syscall
    assert result["details"]["consumer_version"] == "sysdig version 0.0-fake"
    assert result["details"]["capture_files"] == sum(len(m["repeats"]) for m in result["measurements"])
    assert ("unload", "scap") in guest["calls"]
    assert os.listdir(guest["work"]) == []
    json.dumps(result)  # the agent sends it as JSON


@pytest.mark.parametrize("mode", ["sigbus-start", "sigbus-later"])
def test_a_command_killed_by_sigbus_fails_the_subject_with_that_reason(
        guest: dict[str, Any], monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    from harness.guest.bench import bench_subject

    monkeypatch.setenv("FAKE_SYSDIG_MODE", mode)
    result = bench_subject(None, guest["storm"], guest["spec"], repeats=2, duration_ms=500, quick=True)
    assert result["status"] == "fail"
    assert "killed by SIGBUS" in result["reason"]
    assert result["measurements"] == []
    assert guest["calls"][-1] == ("unload", "scap")
    assert os.listdir(guest["work"]) == []


def test_reference_drivers_are_not_dispatched_to_the_command_subject(
        guest: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.guest.bench as bench

    made: list[str] = []

    class Driver:
        def __init__(self, *_a: Any) -> None:
            made.append("driver")
            raise RuntimeError("no device here")

    monkeypatch.setattr(bench, "DriverSubject", Driver)
    spec = {k: v for k, v in guest["spec"].items() if k != "consumer"}
    result = bench.bench_subject(None, guest["storm"], spec, repeats=1, duration_ms=100, quick=True)
    assert made == ["driver"] and result["status"] == "error" and "no device here" in result["reason"]
    assert not any(call[0] == "load" for call in guest["calls"])
