"""Run the throughput suite: one guest per (arch, kernel) measures every driver and both peers.

All subjects of an (arch, kernel) are measured in one guest boot, each against baselines taken
moments before in that same guest, so their ratios compare. Drivers that do not apply to the
kernel (the matrix's applicability) are reported as skipped with the reason; a peer that cannot run
there says why too.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from harness import __version__
from harness.archs import ArchProfile, get_arch
from harness.bench.results import BenchResults, BenchRun, SubjectResult, now_iso
from harness.cells import CellResult, boot_with_retry, build_driver, files_overlay
from harness.errors import BuildError, GuestError, KmatrixError, UnsupportedTarget
from harness.guest.bench import ADAPTIVE_MAX, SETTLE_TRIES
from harness.matrix import Cell, KernelRef, Matrix, applicability
from harness.paths import project_root
from harness.runner import Workspace, prepare
from harness.vm import GuestCrash

PEERS = ("ftrace", "auditd")
GUEST_STORM = "opt/kmatrix/tools/storm"
# How much slower than x86_64 an architecture's emulation runs the bench (measured here: loongarch64
# needed more than 1400 s for the module and both peers, where x86_64 takes about 400 s for all five).
EMULATION_SLOWNESS = {"loongarch64": 4.0, "ppc64le": 1.5, "riscv64": 1.5, "s390x": 2.0}
CLOCKS = ("auto", "icount", "wall")
SUITE = "throughput"


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    repeats: int = 5
    duration_ms: int = 1000
    quick: bool = False  # only the default configuration (both mixes) per driver
    # "icount": time storms by TCG's instruction-counting clock (repeatable on a loaded host);
    # "wall": by real time; "auto": icount where the architecture's TCG supports it, else wall.
    clock: str = "auto"


# Under the wall clock every storm pair is split into this many shorter pairs: host load comes in
# bursts of seconds, which hit both storms of a short pair alike, and the trimmed mean of many pair
# ratios drops the pairs a burst split (measured on loongarch64 with 5 pairs of 1 s on a busy
# host: per-pair ratios of the module's rw storm from 0.18 to 0.67).
WALL_SPLIT = 4


def wall_clock_sampling(options: BenchOptions) -> BenchOptions:
    """The same measuring time as `options`, in WALL_SPLIT times as many pairs of shorter storms."""
    return dataclasses.replace(options, repeats=options.repeats * WALL_SPLIT,
                               duration_ms=max(100, options.duration_ms // WALL_SPLIT))


def choose_clock(requested: str, arch: ArchProfile, accel: str) -> tuple[int | None, str]:
    """(icount shift or None, the label results carry); KmatrixError when `requested` cannot be had."""
    if requested not in CLOCKS:
        raise KmatrixError(f"unknown clock {requested!r}", hint=f"use one of: {', '.join(CLOCKS)}")
    possible = accel == "tcg" and arch.tcg_icount
    if requested == "wall" or (requested == "auto" and not possible):
        return None, "wall"
    if not possible:
        why = f"the guest runs under {accel}" if accel != "tcg" else f"QEMU's {arch.name} TCG does not support -icount"
        raise KmatrixError(f"--clock icount is not possible on {arch.name}: {why}", hint="use --clock auto or wall")
    return arch.icount_shift, f"icount shift={arch.icount_shift}"


def git_revision() -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(project_root()), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    return done.stdout.strip() or None


# Seconds a command consumer adds to each captured storm (started and stopped around it; sysdig
# starts in a few seconds under TCG, reading /proc and opening one device per CPU). Generous.
COMMAND_START_STOP_S = 15


def _guest_timeout(options: BenchOptions, peer: bool, arch_name: str, command: bool = False) -> float:
    """One subject's request: every measurement is 2 x repeats storms plus loads, scaled by how
    slow this architecture's emulation is. It only bounds a hang: generous."""
    configs = 2 if peer or command or options.quick else 7
    storms = 2 * options.repeats + max(SETTLE_TRIES.values())
    headline = 2 * 2 * options.repeats * ADAPTIVE_MAX  # both mixes' default configuration, at their most pairs
    per_storm = options.duration_ms / 1000 + 3 + (COMMAND_START_STOP_S / 2 if command else 0)
    return (120 + (configs * storms + headline) * per_storm) * EMULATION_SLOWNESS.get(arch_name, 1.0) * 2


# Consumer kinds the guest side can measure: the agent reads the driver itself, or a command
# (sysdig for Falco's kmod) is run as the driver's consumer (harness.guest.bench.CommandSubject).
BENCH_CONSUMER_KINDS = ("agent", "command")


def bench_drivers(matrix: Matrix) -> list[str]:
    """The drivers the bench measures by default: every declared driver whose consumer the guest
    side can run (the agent, or a command), in matrix.yaml's order."""
    return [name for name, spec in matrix.drivers.items()
            if matrix.consumers[spec.consumer].kind in BENCH_CONSUMER_KINDS]


def bench_cell(ws: Workspace, arch_name: str, ref: KernelRef, run_dir: Path, *, drivers: list[str] | None = None,
               peers: list[str] | None = None, options: BenchOptions = BenchOptions()) -> BenchRun:
    """Build, boot and measure one (arch, kernel); never raises KmatrixError (it becomes the run's status)."""
    arch = get_arch(arch_name)
    cell_dir = run_dir / f"{arch_name}-{ref.label}-throughput"
    cell_dir.mkdir(parents=True, exist_ok=True)
    run = BenchRun(arch=arch_name, kernel=ref.label, accel="none", vcpus=1, duration_s=options.duration_ms / 1000,
                   repeats=options.repeats, status="error")
    subjects: list[SubjectResult] = []
    try:
        kernel = ws.kernel(arch, ref)
        run.kernel_release = kernel.release
        files: list[tuple[Path, str, int]] = []
        wanted: list[dict[str, Any]] = []
        host_details: dict[str, dict[str, Any]] = {}
        for name in drivers if drivers is not None else bench_drivers(ws.matrix):
            cell = Cell(arch_name, ref, name, SUITE)
            verdict = applicability(ws.matrix, cell, kernel.facts)
            if not verdict.runnable:
                subjects.append(_subject(name, "skip", verdict.reason))
                continue
            consumer_name = ws.matrix.drivers[name].consumer
            consumer_kind = ws.matrix.consumers[consumer_name].kind
            if consumer_kind not in BENCH_CONSUMER_KINDS:
                subjects.append(_subject(name, "skip", f"consumer {consumer_name} is of kind {consumer_kind}, "
                                                       "which the bench cannot run"))
                continue
            kind = ws.matrix.drivers[name].kind
            entry: dict[str, Any] = {"subject": name, "kind": kind}
            consumer_files: list[tuple[Path, str, int]] = []
            if consumer_kind == "command":  # before the build: a consumer this arch lacks is a skip
                refused = _add_command_consumer(ws, arch_name, name, consumer_files, entry)
                if refused:
                    subjects.append(_subject(name, *refused))
                    continue
            try:
                build = build_driver(ws, kind, cell, None)
            except UnsupportedTarget as error:  # the driver's own source rules this (arch, kernel) out
                subjects.append(_subject(name, "skip", str(error)))
                continue
            except BuildError as error:
                subjects.append(_subject(name, "error", f"build: {error}"))
                continue
            entry["artifact"] = "/" + build.guest_path
            if consumer_kind == "command":
                files += consumer_files
                host_details[name] = {**build.details, **entry.pop("details")}
            files.append((build.path, build.guest_path, 0o644))
            wanted.append(entry)
        for peer in peers if peers is not None else list(PEERS):
            if peer == "auditd":
                problem = _add_auditd(ws, arch_name, files)
                if problem:
                    subjects.append(_subject("auditd", "skip", problem))
                    continue
            wanted.append({"subject": peer, "kind": peer})
        from harness.build.tools import build_storm

        storm = build_storm(ws.cache, arch_name, log=ws.say)
        files.append((storm.path, GUEST_STORM, 0o755))
        reply = _run_guest(ws, arch_name, ref, cell_dir, files, wanted, options, run)
        (cell_dir / "bench.json").write_text(json.dumps(reply, indent=2))
        run.vcpus = int(reply.get("vcpus", 1))
        run.baseline = {k: float(v) for k, v in reply.get("baseline", {}).items()}
        for item in reply.get("subjects", []):
            extra = host_details.get(str(item.get("subject")))
            if extra:  # what the host knows of a command consumer (its package), beside the guest's figures
                item = {**item, "details": {**extra, **item.get("details", {})}}
            subjects.append(SubjectResult.model_validate(item))
        run.status = "fail" if any(s.status in ("fail", "error") for s in subjects) else "pass"
        failed = [s for s in subjects if s.status in ("fail", "error")]
        run.reason = f"{failed[0].subject}: {failed[0].reason}" if failed else None
    except GuestCrash as error:
        run.status, run.reason = "fail", str(error)
    except (KmatrixError, GuestError) as error:
        run.status, run.reason = "error", str(error)
    order = {name: i for i, name in enumerate((*ws.matrix.drivers, *PEERS))}
    run.subjects = sorted(subjects, key=lambda s: order.get(s.subject, 99))
    return run


def _subject(name: str, status: str, reason: str | None) -> SubjectResult:
    return SubjectResult.model_validate({"subject": name, "status": status, "reason": reason})


def _add_command_consumer(ws: Workspace, arch_name: str, driver: str, files: list[tuple[Path, str, int]],
                          entry: dict[str, Any]) -> tuple[str, str] | None:
    """The driver's command consumer (sysdig's bundle) into the overlay and its request into the
    subject's entry (with `details` for the host to keep); (status, reason) when it cannot be
    prepared: skip when the architecture has no such package, error otherwise."""
    from harness.consumers import guest_consumer

    try:
        consumer = guest_consumer(ws, get_arch(arch_name), driver)
    except UnsupportedTarget as error:
        return "skip", str(error)
    except (KmatrixError, OSError) as error:
        return "error", f"consumer {ws.matrix.drivers[driver].consumer} for {arch_name} could not be prepared: {error}"
    if consumer is None:  # the agent reads it after all: nothing to add
        entry["details"] = {}
        return None
    files += consumer.files
    entry["consumer"] = consumer.request()
    entry["details"] = consumer.details()
    return None


def _add_auditd(ws: Workspace, arch_name: str, files: list[tuple[Path, str, int]]) -> str | None:
    """Debian's auditd for this architecture into the overlay; the reason when it cannot be."""
    from harness.bench.auditd import auditd_files

    try:
        files += auditd_files(ws.repo, ws.matrix.userland_suite(arch_name), get_arch(arch_name), ws.cache)
    except (KmatrixError, OSError) as error:
        return f"auditd for {arch_name} could not be prepared: {error}"
    return None


def _run_guest(ws: Workspace, arch_name: str, ref: KernelRef, cell_dir: Path, files: list[tuple[Path, str, int]],
               wanted: list[dict[str, Any]], options: BenchOptions, run: BenchRun) -> dict[str, Any]:
    """One boot; one request per subject, so a subject that runs out of time costs only its own
    figures (the guest is then abandoned and the subjects after it are reported as not run)."""
    arch = get_arch(arch_name)
    spec, _kernel, _image, _reason = prepare(ws, arch, ref)
    overlay = files_overlay(files, cell_dir / "bench.cpio.gz")
    spec = dataclasses.replace(spec, overlays=(overlay,))
    run.accel = spec.accel
    shift, run.clock = choose_clock(options.clock, arch, spec.accel)
    spec = dataclasses.replace(spec, icount_shift=shift)
    if shift is None:
        options = wall_clock_sampling(options)
        run.repeats, run.duration_s = options.repeats, options.duration_ms / 1000
    holder = CellResult(cell_dir.name, arch_name, ref.label, "all", SUITE)
    guest = boot_with_retry(spec, cell_dir, arch.tcg_boot_timeout_s, holder)
    merged: dict[str, Any] = {"subjects": [], "baseline": {}}
    try:
        for index, subject in enumerate(wanted):
            timeout = _guest_timeout(options, subject["kind"] in PEERS, arch_name, command="consumer" in subject)
            started = time.monotonic()
            try:
                reply = guest.request("bench", timeout_s=timeout, subjects=[subject], storm="/" + GUEST_STORM,
                                      repeats=options.repeats, duration_ms=options.duration_ms, quick=options.quick,
                                      clock="icount" if shift is not None else "wall")
            except GuestError as error:
                merged["subjects"].append({"subject": subject["subject"], "status": "error", "reason": str(error)})
                merged["subjects"] += [{"subject": later["subject"], "status": "error",
                                        "reason": f"not run: the guest was abandoned after {subject['subject']}"}
                                       for later in wanted[index + 1:]]
                return merged
            if not reply.get("ok"):
                merged["subjects"].append({"subject": subject["subject"], "status": "error",
                                           "reason": f"guest: {reply.get('error')}"})
                continue
            merged["vcpus"] = reply.get("vcpus", 1)
            for mix, value in reply.get("baseline", {}).items():
                merged["baseline"].setdefault(mix, []).append(value)
            merged["subjects"] += reply.get("subjects", [])
            merged.setdefault("seconds", {})[subject["subject"]] = round(time.monotonic() - started, 1)
        guest.poweroff()
    finally:
        guest.close()
        merged["baseline"] = {mix: sorted(v)[len(v) // 2] for mix, v in merged["baseline"].items()}
    return merged


def bench(ws: Workspace, cells: list[tuple[str, KernelRef]], out_dir: Path, *, drivers: list[str] | None = None,
          peers: list[str] | None = None, options: BenchOptions = BenchOptions()) -> BenchResults:
    """Every (arch, kernel): results saved (after each, so an interruption keeps what was measured)."""
    from harness.bench.results import save_results

    results = BenchResults(kmatrix_version=__version__, git_revision=git_revision(), created=now_iso())
    out_dir.mkdir(parents=True, exist_ok=True)
    for arch_name, ref in cells:
        ws.say(f"[bold]{arch_name}-{ref.label}[/]: throughput")
        run = bench_cell(ws, arch_name, ref, out_dir, drivers=drivers, peers=peers, options=options)
        ws.say(f"{arch_name}-{ref.label}: {run.status}" + (f" ({run.reason})" if run.reason else ""))
        results.runs.append(run)
        save_results(results, out_dir / "bench.json")
    return results
