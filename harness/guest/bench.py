"""The throughput suite, guest side: a syscall storm without and with each subject capturing it.

For every subject (the reference drivers, then the peers ftrace and auditd) and configuration
(mix, per-CPU buffer size, sampling 1 in N, consumer pinned or free, consumer batch), the storm
(drivers/tools/storm.c: one thread per vCPU in tight syscall loops for a fixed window) runs
`repeats` times with nothing attached and `repeats` times captured, interleaved, so each ratio
compares runs made moments apart on the same guest. While a captured storm runs, this agent is
the consumer: it takes events out of the driver's buffers as fast as it can, counting them
without decoding (what a user-space consumer must at least do). Drivers and peers capture the
storm process only (its pid, known before its threads are released). A driver that a third-party
command reads (Falco's kmod, by sysdig) is measured with that command as its consumer instead
(CommandSubject), capturing as that command's users do.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import select
import statistics
import subprocess
import time

from harness.guest.capture import load_module, module_name, refuse_outside_guest, unload_module
from harness.guest.schema import load_schema

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

STORM = "/opt/kmatrix/tools/storm"
MIB = 1 << 20
READY_TIMEOUT_S = 30.0
PEER_EVENTS_PER_SYSCALL = {"ftrace": 2, "auditd": 1}
DEFAULT_BUFFER_MIB = 8
# Headline measurements take pairs until the mean ratio's standard error is within TARGET_REL_SE,
# at most ADAPTIVE_MAX times the requested repeats (two runs' ratios then differ by well under 15%).
TARGET_REL_SE = 0.04
ADAPTIVE_MAX = 8
SETTLED = 0.02  # SETTLED_RUN baselines in a row this close (relative): the guest is settled
SETTLED_RUN = 3
# Warm-up storms at most, per clock: under icount a settled guest repeats its baseline to well
# within SETTLED; under the wall clock host noise alone exceeds it, so one warm-up storm only.
SETTLE_TRIES = {"icount": 8, "wall": 1}


def storm_run(
    storm: str, mix: str, duration_ms: int, subject: Any = None, *, batch: int | None = None
) -> dict[str, Any]:
    """One storm; with a subject: attached to the storm's pid before its threads start, consumed
    throughout, stopped after. The storm's JSON plus the subject's figures."""
    ready_r, ready_w = os.pipe()
    proc = subprocess.Popen(
        [storm, mix, "0", str(duration_ms), "--ready-fd", str(ready_w)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        pass_fds=(ready_w,),
    )
    os.close(ready_w)
    try:
        ready, _w, _x = select.select([ready_r], [], [], READY_TIMEOUT_S)
        if not ready or not os.read(ready_r, 16).startswith(b"ready"):
            proc.kill()
            raise RuntimeError(f"{storm} did not get ready within {READY_TIMEOUT_S:.0f} s")
    finally:
        os.close(ready_r)
    figures: dict[str, Any] = {}
    assert proc.stdin is not None and proc.stdout is not None
    try:
        if subject is not None:
            subject.start(proc.pid)
        proc.stdin.write(b"g")
        proc.stdin.close()
    except BaseException:
        proc.kill()  # a storm waiting for its start byte must not outlive a subject that failed to attach
        proc.wait()
        raise
    consumed = 0
    fill = 0.0
    if subject is not None:
        while proc.poll() is None:
            got, level = subject.consume(batch)
            consumed += got
            if level is not None:
                fill = max(fill, level)
            if not got:
                time.sleep(0.001)
    out = proc.stdout.read()
    proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"{storm} {mix} exited {proc.returncode}")
    result: dict[str, Any] = json.loads(out)
    if subject is not None:
        figures = subject.stop()
        figures["events"] = consumed + int(figures.pop("late_events", 0))
        figures["fill"] = figures.get("fill", fill if fill else None)
        result["capture"] = figures
    return result


# -- subjects: start(pid), consume(batch) -> (events, fill or None), stop() -> {events?, drops, ...} --


class DriverSubject:
    """A reference driver: the module through /dev/kmx, or a BPF probe through libbpf."""

    def __init__(self, schema: Any, kind: str, artifact: str, buffer_bytes: int, sample_every: int) -> None:
        from harness.guest.capture import open_consumer

        self.kind = kind
        self.module = module_name(artifact)
        self.events_per_syscall = 2
        if kind == "kmod":
            load_module(artifact, {"buffer_bytes": buffer_bytes})
        try:
            self.device = open_consumer(schema, kind, artifact, tgid=0, snaplen=64, buffer_bytes=buffer_bytes)
            self.device.set_sampling(sample_every)
        except BaseException:
            self.close()
            raise
        self.prog_before = self._prog_stats()

    def _prog_stats(self) -> list[dict[str, Any]]:
        return list(self.device.prog_stats()) if hasattr(self.device, "prog_stats") else []

    def start(self, pid: int) -> None:
        self.device.set_filter_tgid(pid)
        self.device.start()
        if hasattr(self.device, "consume_counts"):
            self.device.consume_counts()  # anything left from before

    def consume(self, batch: int | None) -> tuple[int, float | None]:
        events, _bytes, fill = self.device.consume_counts(batch)
        return events, fill

    def stop(self) -> dict[str, Any]:
        self.device.stop()
        late, _bytes, _fill = self.device.consume_counts()
        stats = self.device.stats()
        return {
            "late_events": late,
            "drops": sum(s.drops for s in stats),
            "produced": sum(s.events for s in stats),
            "per_cpu": [{"cpu": s.cpu, "events": s.events, "drops": s.drops} for s in stats if s.online],
        }

    def prog_delta(self) -> list[dict[str, Any]]:
        """Per BPF program: runs and average ns since this subject was set up (kernel.bpf_stats_enabled)."""
        before = {p.get("name"): p for p in self.prog_before}
        out = []
        for prog in self._prog_stats():
            old = before.get(prog.get("name"), {})
            runs = int(prog.get("run_cnt", 0)) - int(old.get("run_cnt", 0))
            ns = int(prog.get("run_time_ns", 0)) - int(old.get("run_time_ns", 0))
            out.append({"name": prog.get("name"), "runs": runs, "avg_ns": round(ns / runs, 1) if runs else None})
        return out

    def close(self) -> None:
        device = getattr(self, "device", None)
        if device is not None:
            device.close()
        if self.kind == "kmod":
            unload_module(self.module)


class PeerSubject:
    """ftrace or auditd (harness/guest/peers.py), with the drivers' interface."""

    def __init__(self, name: str, buffer_bytes: int | None) -> None:
        from harness.guest.peers import AuditPeer, FtracePeer

        self.peer: Any = FtracePeer() if name == "ftrace" else AuditPeer()
        self.events_per_syscall = PEER_EVENTS_PER_SYSCALL[name]
        self.buffer_kb = buffer_bytes // 1024 if buffer_bytes else None

    def unavailable(self) -> str | None:
        reason: str | None = self.peer.unavailable()
        return reason

    def prepare(self) -> None:
        """Before the storms it will capture are started (audit follows processes started after it is on)."""
        self.peer.prepare()

    def start(self, pid: int) -> None:
        self.peer.start(pid, self.buffer_kb)

    def consume(self, batch: int | None) -> tuple[int, float | None]:
        return int(self.peer.consume(batch)), None

    def stop(self) -> dict[str, Any]:
        figures = dict(self.peer.stop())
        consumed_total = int(figures.pop("events", 0))
        figures["late_events"] = 0
        figures["total_events"] = consumed_total
        return figures

    def prog_delta(self) -> list[dict[str, Any]]:
        return []

    def close(self) -> None:
        pass


# Flags that make a command consumer print its capture figures at exit, appended to its capture argv.
COMMAND_STATS_FLAGS = {"sysdig": ["-v"]}
# Where a command consumer writes its capture files: the guest's /tmp, a tmpfs of about 480 MB with
# 1 GB of RAM, so each storm's file is deleted as soon as that storm is over.
CAPTURE_DIR = "/tmp"
# Exit statuses of a command consumer stopped by SIGINT: a clean exit, or the signal itself.
COMMAND_STOPPED = (0, -2, 130)


class CommandSubject:
    """A kernel module read by a third-party command (matrix.yaml `consumers:` of kind `command`):
    Falco's scap.ko read by `sysdig -w FILE`, the way a sysdig user records a capture.

    The module is loaded once; every captured storm starts the command on a fresh capture file
    (returning once it holds every /dev/<module>N open), and stops it (SIGINT: it flushes and
    closes the file) when the storm is over. The command captures the whole system, not only the
    storm's pid: that is what `sysdig -w` does unless given a filter, and what its users pay. The
    agent is not the consumer here, so consume() only waits; the command, running beside the
    storm in the same guest, is what costs the storm its throughput.

    Before it is stopped, the command is given time to write what it has not yet taken out of the
    driver's buffers (its capture file stops growing), as the agent drains the reference drivers
    after a storm: sysdig stops reading at SIGINT, and what it left in the buffers would otherwise
    count as neither captured nor dropped (measured on aarch64 6.1 under TCG: stopped at once, it
    had written 30-50% of what the driver produced).

    Events and drops are the command's own figures when it prints them at exit (sysdig -v:
    "Captured Events" it wrote, and the driver's per-CPU counters summed by libscap: "Driver
    Events" seen, "Driver Drops"); without them they stay 0 and `details` says so.
    """

    POLL_S = 0.05  # how often consume() looks at the command while a storm runs
    DRAIN_QUIET_S = 0.5  # the capture file unchanged this long after a storm: the command caught up
    DRAIN_MAX_S = 30.0

    def __init__(self, spec: dict[str, Any], workdir: str | None = None) -> None:
        from harness.guest.command import CommandConsumer

        self.consumer = CommandConsumer.from_request(spec)
        self.consumer.capture_argv = [*self.consumer.capture_argv, *COMMAND_STATS_FLAGS.get(self.consumer.name, [])]
        self.artifact = str(spec["artifact"])
        self.module = module_name(self.artifact)
        self.workdir = workdir or CAPTURE_DIR
        # Falco's driver as Debian packages it (falcosecurity-scap-dkms 0.23.2, read by sysdig 0.41.4) sends
        # one event per syscall, the exit event carrying the arguments (measured on aarch64 6.1: 1.01
        # driver events per storm syscall, the rest of the system making the 1%), where the reference
        # drivers send an enter and an exit event.
        self.events_per_syscall = 1
        self.runs = 0
        self.capture_bytes: list[int] = []
        self.start_s: list[float] = []
        self.drain_s: list[float] = []
        self.stats_missing = 0
        load_module(self.artifact, {})  # scap.ko needs no parameters; it registers nothing until opened
        self.loaded = True

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "consumer": self.consumer.name,
            "consumer_argv": self.consumer.capture_argv,
            "capture_scope": "whole system (no filter), as `sysdig -w` records",
            "capture_files": len(self.capture_bytes),
            "capture_bytes_total": sum(self.capture_bytes),
            "capture_bytes_max": max(self.capture_bytes, default=0),
            "consumer_start_s_max": max(self.start_s, default=None),
            "consumer_drain_s_max": max(self.drain_s, default=None),
            "events_per_syscall_expected": self.events_per_syscall,
        }
        buffer = _read_int(f"/sys/module/{self.module}/parameters/g_buffer_bytes_dim")
        if buffer is not None:
            out["driver_buffer_bytes_per_cpu"] = buffer
        if self.stats_missing:
            out["events_note"] = (f"{self.consumer.name} printed no capture figures for {self.stats_missing} "
                                  "storm(s): their events and drops are counted as 0")
        return out

    def start(self, pid: int) -> None:
        del pid  # the command captures the whole system (see the class's docstring)
        self.runs += 1
        path = os.path.join(self.workdir, f"kmx-bench-{self.module}-{os.getpid()}-{self.runs}.scap")
        self._remove(path)
        self.start_s.append(self.consumer.start(path, self.module))

    def consume(self, batch: int | None) -> tuple[int, float | None]:
        del batch
        time.sleep(self.POLL_S)  # nothing for the agent to read; do not take CPU from the storm
        return 0, None

    def stop(self) -> dict[str, Any]:
        from harness.guest.command import ConsumerFailed, describe_status

        process = self.consumer.process
        assert process is not None
        try:
            if process.poll() is not None:
                raise ConsumerFailed(f"{self.consumer.name} exited during the storm "
                                     f"({describe_status(process.returncode)}): {self.consumer.log_tail()}")
            self.drain_s.append(self._drain(process))
            status = self.consumer.stop()
            if status not in COMMAND_STOPPED:
                raise ConsumerFailed(f"{self.consumer.name} exited with {describe_status(status)} when stopped: "
                                     f"{self.consumer.log_tail()}")
            size = os.path.getsize(self.consumer.file) if os.path.exists(self.consumer.file) else 0
            self.capture_bytes.append(size)
            stats = capture_stats(self._log_text())
        finally:
            self._remove(self.consumer.file)  # the guest's /tmp is a small tmpfs
            self._remove(self.consumer.log)
        if stats is None:
            self.stats_missing += 1
            stats = {}
        return {
            "late_events": stats.get("captured", 0),
            "drops": stats.get("drops", 0),
            "produced": stats.get("driver_events"),
            "capture_bytes": size,
        }

    def _drain(self, process: Any) -> float:
        """Wait (at most DRAIN_MAX_S) until the capture file has not grown for DRAIN_QUIET_S; seconds."""
        started = time.monotonic()
        size, since = -1, started
        while time.monotonic() - started < self.DRAIN_MAX_S and process.poll() is None:
            now = time.monotonic()
            try:
                current = os.path.getsize(self.consumer.file)
            except OSError:
                current = -1
            if current != size:
                size, since = current, now
            elif now - since >= self.DRAIN_QUIET_S:
                break
            time.sleep(0.1)
        return round(time.monotonic() - started, 3)

    def prog_delta(self) -> list[dict[str, Any]]:
        return []

    def close(self) -> None:
        self.consumer.kill()
        if self.consumer.file:
            self._remove(self.consumer.file)
            self._remove(self.consumer.log)
        if self.loaded:
            unload_module(self.module)
            self.loaded = False

    def _log_text(self) -> str:
        try:
            with open(self.consumer.log, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    @staticmethod
    def _remove(path: str) -> None:
        if path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


_STATS_PATTERNS = {
    "driver_events": re.compile(r"^Driver Events:\s*(\d+)", re.MULTILINE),
    "drops": re.compile(r"^Driver Drops:\s*(\d+)", re.MULTILINE),
    "captured": re.compile(r"Captured Events:\s*(\d+)"),
}


def capture_stats(text: str) -> dict[str, int] | None:
    """sysdig -v's figures at exit ("Driver Events:N", "Driver Drops:N", "... Captured Events: N, ...");
    None unless all three are there."""
    found = {key: pattern.search(text) for key, pattern in _STATS_PATTERNS.items()}
    if not all(found.values()):
        return None
    return {key: int(match.group(1)) for key, match in found.items() if match is not None}


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


# -- configurations and measurements ------------------------------------------------------------


def driver_configs(kind: str, quick: bool) -> list[dict[str, Any]]:
    """(mix, buffer MiB, sample_every, pinned, batch) per measurement, grouped by what needs a reload."""
    base = {"buffer_mib": DEFAULT_BUFFER_MIB, "sample_every": 1, "pinned": False, "batch": None}
    configs = [{**base, "mix": "getppid"}, {**base, "mix": "rw"}]
    if quick:
        return configs
    configs += [{**base, "mix": "getppid", "buffer_mib": size} for size in (4, 32)]
    configs += [{**base, "mix": "getppid", "sample_every": 10}, {**base, "mix": "getppid", "pinned": True}]
    if kind != "bpf":  # perf buffers are consumed whole: no batch to vary
        configs.append({**base, "mix": "getppid", "batch": 64})
    return configs


def peer_configs() -> list[dict[str, Any]]:
    base = {"buffer_mib": None, "sample_every": 1, "pinned": False, "batch": None}
    return [{**base, "mix": "getppid"}, {**base, "mix": "rw"}]


def settle(storm: str, mix: str, duration_ms: int, tries: int) -> list[float]:
    """Uncounted baseline storms until SETTLED_RUN in a row agree within SETTLED (at most `tries`):
    a guest still busy after boot or a driver's load would otherwise bias the first pairs (measured:
    s390x's first baselines after loading the module ran 37% slow, rising over four storms; x86_64's
    first three after boot ran 193-214k/s, two of them within 2%, then 315k/s for good)."""
    rates: list[float] = []
    for _ in range(tries):
        rates.append(float(storm_run(storm, mix, duration_ms)["syscalls_per_s"]))
        last = rates[-SETTLED_RUN:]
        if len(last) == SETTLED_RUN and max(last) - min(last) <= SETTLED * max(last):
            break
    return rates


def baselines(storm: str, mix: str, repeats: int, duration_ms: int, settle_tries: int) -> list[float]:
    settle(storm, mix, duration_ms, settle_tries)
    return [float(storm_run(storm, mix, duration_ms)["syscalls_per_s"]) for _ in range(repeats)]


def measure(storm: str, subject: Any, config: dict[str, Any], repeats: int, duration_ms: int,
            before: list[float] | None = None, settle_tries: int = 1) -> dict[str, Any]:
    """Interleaved baseline and captured storms (or baselines measured `before`, for a subject that
    changes the system for good once prepared); medians, ratio, events, drops, checks."""
    warmup = [] if before else settle(storm, config["mix"], duration_ms, settle_tries)
    reps: list[dict[str, Any]] = []
    pinned = config["pinned"]
    saved = os.sched_getaffinity(0)
    most = repeats * ADAPTIVE_MAX if is_headline(config) else repeats
    for index in range(most):
        if index >= repeats and precise_enough([r["syscalls_per_s"] / r["baseline_per_s"] for r in reps]):
            break
        base = ({"syscalls_per_s": before[index % len(before)]} if before
                else storm_run(storm, config["mix"], duration_ms))
        if pinned:
            os.sched_setaffinity(0, {min(saved)})
        try:
            run = storm_run(storm, config["mix"], duration_ms, subject, batch=config["batch"])
        finally:
            if pinned:
                os.sched_setaffinity(0, saved)
        capture = run["capture"]
        reps.append(
            {
                "baseline_per_s": base["syscalls_per_s"],
                "syscalls_per_s": run["syscalls_per_s"],
                "syscalls": run["syscalls"],
                "duration_s": run["duration_s"],
                "events": capture["events"],
                "drops": int(capture.get("drops", 0)),
                "fill": capture.get("fill"),
                "produced": capture.get("produced", capture.get("total_events")),
            }
        )
    return {**summarize(config, reps, subject.events_per_syscall), "warmup_per_s": warmup}


def is_headline(config: dict[str, Any]) -> bool:
    """The default configuration (8 MiB or no buffer, every call, unpinned, unbatched): the figure
    the report leads with and the one compared between runs."""
    return (config["buffer_mib"] in (None, DEFAULT_BUFFER_MIB) and config["sample_every"] == 1
            and not config["pinned"] and config["batch"] is None)


def precise_enough(ratios: list[float]) -> bool:
    """Whether the standard error of the pairs' mean ratio is within TARGET_REL_SE of it. A driver
    whose consumer sometimes falls behind is bimodal (measured: the module on aarch64 ran 0.18-0.21
    of baseline in storms that dropped nothing, 0.29-0.31 in storms that did), so its headline
    takes more pairs than one whose pairs agree."""
    if len(ratios) < 2:
        return False
    mean = statistics.fmean(ratios)
    return mean > 0 and statistics.stdev(ratios) / math.sqrt(len(ratios)) <= TARGET_REL_SE * mean


def trimmed_mean(values: list[float]) -> float:
    """The mean without the lowest and highest fifth (at least one each with four or more values;
    fewer than four: the plain mean)."""
    if not values:
        return 0.0
    cut = max(1, len(values) // 5) if len(values) >= 4 else 0
    return statistics.fmean(sorted(values)[cut:len(values) - cut])


def summarize(config: dict[str, Any], reps: list[dict[str, Any]], events_per_syscall: int) -> dict[str, Any]:
    with_capture = statistics.median(r["syscalls_per_s"] for r in reps)
    baseline = statistics.median(r["baseline_per_s"] for r in reps)
    # The ratio: each captured storm over the baseline run just before it (drift cancels), averaged
    # without the highest and lowest. Not the median: a driver whose consumer sometimes falls behind
    # is bimodal (measured: the module on s390x ran 0.29 and 0.23 of baseline in storms that dropped
    # events, 0.11-0.14 in storms that did not), and a median of five jumps between the modes.
    ratio = trimmed_mean([r["syscalls_per_s"] / r["baseline_per_s"] for r in reps if r["baseline_per_s"]])
    events = sum(int(r["events"]) for r in reps)
    drops = sum(int(r["drops"]) for r in reps)
    syscalls = sum(int(r["syscalls"]) for r in reps)
    seconds = sum(float(r["duration_s"]) for r in reps)
    every = max(1, int(config["sample_every"]))
    expected = events_per_syscall * syscalls / every
    delivered = events / expected if expected else None
    fills = [r["fill"] for r in reps if r.get("fill") is not None]
    checks: dict[str, bool] = {}
    if every > 1 and expected:
        # Kept events (delivered or dropped) against 1 in N of what the storm made.
        checks["sampling_ratio_ok"] = abs((events + drops) / expected - 1.0) <= 0.2
    return {
        **config,
        "syscalls_per_s": round(with_capture, 1),
        "baseline_per_s": round(baseline, 1),
        "overhead_ratio": round(ratio, 4),
        "events": events,
        "events_per_s": round(events / seconds, 1) if seconds else 0.0,
        "drops": drops,
        "drop_ratio": round(drops / (events + drops), 4) if events + drops else 0.0,
        "delivered_ratio": round(delivered, 4) if delivered is not None else None,
        "buffer_fill_max": round(max(fills), 4) if fills else None,
        "repeats": reps,
        "checks": checks,
    }


def bench_subject(schema: Any, storm: str, spec: dict[str, Any], repeats: int, duration_ms: int,
                  quick: bool, settle_tries: int = 1) -> dict[str, Any]:
    name, kind = str(spec["subject"]), str(spec["kind"])
    result: dict[str, Any] = {"subject": name, "kind": "peer" if kind in PEER_EVENTS_PER_SYSCALL else "driver",
                              "status": "pass", "reason": None, "details": {}, "measurements": []}
    try:
        if kind in PEER_EVENTS_PER_SYSCALL:
            subject = PeerSubject(kind, None)
            reason = subject.unavailable()
            if reason:
                result.update(status="skip", reason=reason)
                return result
            # auditd: once audit is on, every process started afterwards pays for it until reboot, so
            # its baselines are taken first, then it is prepared (it runs last in the guest).
            first = kind == "auditd"
            before = {c["mix"]: baselines(storm, c["mix"], repeats, duration_ms, settle_tries)
                      for c in peer_configs() if first}
            subject.prepare()
            for config in peer_configs():
                result["measurements"].append(
                    measure(storm, subject, config, repeats, duration_ms, before.get(config["mix"]), settle_tries)
                )
            if first:
                result["details"]["baselines"] = "measured before audit was enabled (it stays on until reboot)"
            return result
        if spec.get("consumer"):
            result["details"].update(bench_command(storm, spec, result, repeats, duration_ms, settle_tries))
            return _checked(result)
        configs = driver_configs(kind, quick)
        groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for config in configs:
            groups.setdefault((config["buffer_mib"], config["sample_every"]), []).append(config)
        programs: list[dict[str, Any]] = []
        for (buffer_mib, every), group in groups.items():
            driver = DriverSubject(schema, kind, str(spec["artifact"]), buffer_mib * MIB, every)
            try:
                for config in group:
                    result["measurements"].append(
                        measure(storm, driver, config, repeats, duration_ms, settle_tries=settle_tries)
                    )
                programs.append({"buffer_mib": buffer_mib, "sample_every": every, "programs": driver.prog_delta()})
            finally:
                driver.close()
        result["details"]["bpf_stats"] = [p for p in programs if p["programs"]]
        result["measurements"].sort(key=lambda m: configs.index({k: m[k] for k in configs[0]}))
    except Exception as error:  # one subject failing leaves the others' figures
        result.update(status="error", reason=f"{type(error).__name__}: {error}")
    return _checked(result)


def _checked(result: dict[str, Any]) -> dict[str, Any]:
    failed = [m for m in result["measurements"] if not all(m["checks"].values())]
    if result["status"] == "pass" and failed:
        result.update(status="fail", reason=f"check failed: {failed[0]['checks']} for {failed[0]['mix']} "
                                           f"1/{failed[0]['sample_every']}")
    return result


def command_configs() -> list[dict[str, Any]]:
    """A command consumer's measurements: both mixes at the default configuration only (the
    command sets its driver's buffer itself: 8 MiB per CPU is scap's default, which sysdig keeps;
    it has no sampling or batch of ours to vary)."""
    return driver_configs("kmod", quick=True)


def bench_command(storm: str, spec: dict[str, Any], result: dict[str, Any], repeats: int, duration_ms: int,
                  settle_tries: int) -> dict[str, Any]:
    """The measurements of a driver a command reads, into result; the subject's details. A command
    that cannot capture (it exits or dies, e.g. sysdig killed by SIGBUS as it maps scap's buffers)
    fails the subject with its reason; any other problem is an error."""
    from harness.guest.command import ConsumerFailed

    subject = CommandSubject(spec)
    details: dict[str, Any] = {}
    try:
        details["consumer_version"] = subject.consumer.version()
        for config in command_configs():
            result["measurements"].append(measure(storm, subject, config, repeats, duration_ms,
                                                  settle_tries=settle_tries))
    except ConsumerFailed as error:
        result.update(status="fail", reason=str(error))
    except Exception as error:
        result.update(status="error", reason=f"{type(error).__name__}: {error}")
    finally:
        details.update(subject.details())
        subject.close()
    return details


def op_bench(request: dict[str, Any]) -> dict[str, Any]:
    """Request: subjects [{subject, kind, artifact, consumer?}] (consumer: a command reads that driver,
    harness.guest.command.CommandConsumer.from_request), storm, repeats, duration_ms, quick, clock
    ("icount" or "wall": how this guest's clock runs, which sets the warm-up). Result: per subject."""
    refuse_outside_guest()
    schema = load_schema()
    storm = str(request.get("storm", STORM))
    repeats = int(request.get("repeats", 3))
    duration_ms = int(request.get("duration_ms", 1000))
    quick = bool(request.get("quick", False))
    settle_tries = SETTLE_TRIES.get(str(request.get("clock", "wall")), 1)
    started = time.monotonic()
    subjects = [bench_subject(schema, storm, spec, repeats, duration_ms, quick, settle_tries)
                for spec in request["subjects"]]
    baselines: dict[str, list[float]] = {}
    for subject in subjects:
        for m in subject["measurements"]:
            baselines.setdefault(m["mix"], []).extend(r["baseline_per_s"] for r in m["repeats"])
    return {
        "vcpus": os.cpu_count() or 1,
        "duration_s": duration_ms / 1000,
        "repeats": repeats,
        "baseline": {mix: round(statistics.median(v), 1) for mix, v in baselines.items() if v},
        "subjects": subjects,
        "seconds": round(time.monotonic() - started, 1),
    }
