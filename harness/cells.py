"""Run matrix cells: applicability, build, boot, suite in the guest, one CellResult each.

A cell is `pass` only when the guest's complete, checksummed result arrived and every expectation
in it held; infrastructure problems are `error`, a driver or suite failing is `fail`, and every skip
carries its reason.
"""

from __future__ import annotations

import dataclasses
import json
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import cpio
from harness.archs import ArchProfile, get_arch
from harness.drivers import GUEST_DRIVER_DIR as GUEST_DRIVER_DIR  # re-exported: callers import them from here
from harness.drivers import DriverArtifact as DriverArtifact
from harness.drivers import adapter_for
from harness.errors import BootError, BuildError, GuestError, KmatrixError, UnsupportedTarget
from harness.images import KernelImage
from harness.matrix import Applicability, Cell, applicability
from harness.runner import Workspace, prepare
from harness.vm import BootSpec, Guest, GuestCrash


def build_driver(ws: Workspace, kind: str, cell: Cell, fault: str | None) -> DriverArtifact:
    """Build the cell's driver through the adapter its matrix.yaml declaration names (`build`).

    `kind` is the declared kind (callers read it from the matrix); a mismatch is a caller's bug.
    """
    adapter = adapter_for(ws.matrix, cell.driver)
    if adapter.spec.kind != kind:
        raise BuildError(f"driver {cell.driver} is declared kind {adapter.spec.kind}, not {kind}")
    return adapter.build(ws, cell, fault)


@dataclass
class CellResult:
    cell: str
    arch: str
    kernel: str
    driver: str
    suite: str
    status: str = "error"  # pass, fail, skip, error
    reason: str | None = None
    kernel_release: str | None = None
    declared_min: str | None = None
    accel: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    console_log: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def settle_kernel(ws: Workspace, cell: Cell, profile: str) -> tuple[Cell, KernelImage, Applicability, list[str]]:
    """The kernel a cell really runs on, with its applicability.

    Under the `minimum` profile the oldest kernel at or above the declared minimum may still lack
    what the driver needs (bookworm's s390x 6.1 has no BTF for modern_bpf); then the next
    candidate is taken and the passed-over kernels are returned as notes.
    """
    arch = get_arch(cell.arch)
    static = applicability(ws.matrix, cell, None)  # arch and suite support: no kernel changes those
    falls_forward = profile == "minimum" and (static.runnable or static.pending)
    candidates = ws.matrix.minimum_candidates(cell.arch, cell.driver) if falls_forward else []
    candidates = candidates or [cell.kernel]
    notes: list[str] = []
    for index, ref in enumerate(candidates):
        settled = dataclasses.replace(cell, kernel=ref)
        kernel = ws.kernel(arch, ref)
        verdict = applicability(ws.matrix, settled, kernel.facts)
        if verdict.runnable or index == len(candidates) - 1:
            return settled, kernel, verdict, notes
        notes.append(f"{ref.label} ({kernel.release}) passed over: {verdict.reason}")
    raise AssertionError("unreachable: candidates is never empty")


def minimum_text(cell: Cell, release: str | None) -> str:
    """'declared 5.8, tested 6.12' for reports."""
    if cell.declared_min is None:
        return ""
    tested = ".".join(release.split(".")[:2]) if release else cell.kernel.expect_text
    return f"declared {'.'.join(map(str, cell.declared_min[:2]))}, tested {tested}"


def file_overlay(source: Path, guest_path: str, dest: Path) -> Path:
    """A cpio overlay carrying one file (a built driver) to guest_path."""
    return files_overlay([(source, guest_path, 0o644)], dest)


def files_overlay(files: list[tuple[Path, str, int]], dest: Path) -> Path:
    """A cpio overlay carrying files (source, guest path, mode) with their parent directories."""
    entries = []
    directories: set[str] = set()
    for _source, guest_path, _mode in files:
        parts = guest_path.split("/")
        for depth in range(1, len(parts)):
            directory = "/".join(parts[:depth])
            if directory not in directories:
                directories.add(directory)
                entries.append(cpio.Entry(directory, stat.S_IFDIR | 0o755))
    for source, guest_path, mode in files:
        entries.append(cpio.Entry(guest_path, stat.S_IFREG | mode, source.read_bytes()))
    cpio.write_gzip_cpio(entries, dest)
    return dest


# The capture suite runs with each of these per-CPU buffer sizes (the module's default is 8 MiB).
CAPTURE_BUFFER_SIZES = (8 << 20, 4 << 20, 32 << 20)


GUEST_TOOLS_DIR = "opt/kmatrix/tools"


def run_capture_cell(ws: Workspace, cell: Cell, run_dir: Path, *, fault: str | None = None,
                     buffer_sizes: tuple[int, ...] = CAPTURE_BUFFER_SIZES, timeout_s: float = 300,
                     target: str | None = None) -> CellResult:
    """The capture suite on one (arch, kernel) with the cell's driver; on `target` (ssh://...) instead
    of a QEMU guest when given (harness.remote.ssh: the machine must run the cell's kernel)."""
    return _run_guest_suite(ws, cell, run_dir, fault=fault, op="capture", timeout_s=timeout_s,
                            params={"buffer_sizes": list(buffer_sizes)}, target=target)


def run_ia32_cell(ws: Workspace, cell: Cell, run_dir: Path, *, fault: str | None = None,
                  timeout_s: float = 300, target: str | None = None) -> CellResult:
    """The ia32 suite on one x86_64 kernel with the cell's driver: 32-bit programs under capture."""
    return _run_guest_suite(ws, cell, run_dir, fault=fault, op="ia32", timeout_s=timeout_s,
                            params={"tools": "/" + GUEST_TOOLS_DIR}, with_ia32_tools=True, target=target)


def run_containers_cell(ws: Workspace, cell: Cell, run_dir: Path, *, fault: str | None = None,
                        timeout_s: float = 300, target: str | None = None) -> CellResult:
    """The container suite: processes in each runtime's cgroup layout and a new pid namespace must be
    attributed to their container from the events alone (harness/guest/container_suite.py)."""
    return _run_guest_suite(ws, cell, run_dir, fault=fault, op="containers", timeout_s=timeout_s, params={},
                            target=target)


def run_permissions_cell(ws: Workspace, cell: Cell, run_dir: Path, *, fault: str | None = None,
                         timeout_s: float = 300, target: str | None = None) -> CellResult:
    """The permission suite: an unprivileged user is refused the driver, and reads it with the device's
    group (kmod) or exactly CAP_BPF and CAP_PERFMON (modern BPF) (harness/guest/permission_suite.py)."""
    return _run_guest_suite(ws, cell, run_dir, fault=fault, op="permissions", timeout_s=timeout_s, params={},
                            target=target)


def run_tamper_cell(ws: Workspace, cell: Cell, run_dir: Path, *, fault: str | None = None,
                    timeout_s: float = 300, target: str | None = None) -> CellResult:
    """The tamper suite: the agent's watch mode alerts within 5 s when another process takes the driver
    away, and says which attempts the kernel refused (harness/guest/tamper_suite.py)."""
    return _run_guest_suite(ws, cell, run_dir, fault=fault, op="tamper", timeout_s=timeout_s, params={},
                            target=target)


def run_redaction_cell(ws: Workspace, cell: Cell, run_dir: Path, *, fault: str | None = None,
                       timeout_s: float = 300, target: str | None = None) -> CellResult:
    """The redaction suite: secrets in written and sent buffers are captured as '*', exactly as the
    reference says (harness/guest/redaction_suite.py)."""
    return _run_guest_suite(ws, cell, run_dir, fault=fault, op="redaction", timeout_s=timeout_s, params={},
                            target=target)


# Suites with a runner, by name.
SUITE_RUNNERS = {"capture": run_capture_cell, "ia32": run_ia32_cell, "containers": run_containers_cell,
                 "permissions": run_permissions_cell, "tamper": run_tamper_cell, "redaction": run_redaction_cell}


def _ia32_tool_files(ws: Workspace, result: CellResult) -> list[tuple[Path, str, int]]:
    from harness.build.tools import build_ia32_tools

    tools = build_ia32_tools(ws.repo, ws.cache, log=ws.say)
    result.metrics["ia32_tools"] = {"cached": tools.cached, "compilers": tools.compilers}
    return [(tools.int80, f"{GUEST_TOOLS_DIR}/ia32_int80", 0o755), (tools.musl, f"{GUEST_TOOLS_DIR}/ia32_musl", 0o755)]


def _run_guest_suite(ws: Workspace, cell: Cell, run_dir: Path, *, fault: str | None, op: str, timeout_s: float,
                     params: dict[str, Any], with_ia32_tools: bool = False, target: str | None = None) -> CellResult:
    """Build the driver (and tools), boot the cell's kernel (or use `target`), run guest op `op`, judge its reply."""
    arch = get_arch(cell.arch)
    cell_dir = run_dir / cell.id
    cell_dir.mkdir(parents=True, exist_ok=True)
    result = CellResult(cell.id, cell.arch, cell.kernel.label, cell.driver, cell.suite,
                        declared_min=None if cell.declared_min is None else ".".join(map(str, cell.declared_min[:2])),
                        console_log=str(cell_dir / "console.log"))
    try:
        kernel = ws.kernel(arch, cell.kernel)
        result.kernel_release = kernel.release
        verdict = applicability(ws.matrix, cell, kernel.facts)
        if not verdict.runnable:
            result.status, result.reason = "skip", verdict.reason
            return result
        unread = consumer_gap(ws, cell)
        if unread is not None:
            result.status, result.reason = "skip", unread
            return result
        kind = ws.matrix.drivers[cell.driver].kind
        # Before the build: a consumer the architecture lacks makes the cell a skip.
        consumer_params, consumer_files = _command_consumer(ws, arch, cell, result)
        started = time.monotonic()
        build = build_driver(ws, kind, cell, fault)
        result.timings["build_s"] = round(time.monotonic() - started, 2)
        result.metrics.update({"build_cached": build.cached, "compiler": build.compiler, **build.details})
        files = [(build.path, build.guest_path, 0o644)]
        if with_ia32_tools:
            files += _ia32_tool_files(ws, result)
        files += consumer_files
        params = {**params, **consumer_params}
        if target is not None:
            from harness.remote.ssh import parse_target

            result.metrics["target"] = str(parse_target(target))  # without its options (key paths)
            reply, log_tail = _run_on_target(target, kernel.release, arch.uname_m, files, op, params, build.guest_path,
                                             cell, cell_dir, kind, timeout_s, result)
        else:
            reply, log_tail = _run_in_guest(ws, arch, files, op, params, build.guest_path, cell, cell_dir, kind,
                                            timeout_s, result)
        if not reply.get("ok"):
            result.status = "fail"
            result.reason = f"guest: {reply.get('error')}"
            result.metrics["traceback"] = reply.get("traceback")
            result.metrics["console_tail"] = log_tail
            if reply.get("dmesg") is not None:  # a refused driver: what the kernel said while refusing it
                result.metrics["dmesg"] = reply["dmesg"]
            return result
        result.metrics.update({k: v for k, v in reply.items() if k not in ("ok", "type", "id")})
        (cell_dir / f"{op}.json").write_text(json.dumps(reply, indent=2))
        if reply["passed"]:
            result.status = "pass"
        else:
            result.status = "fail"
            result.reason = _failure_reason(reply)
    except KmatrixError as error:
        record_error(result, error, target=target)
    return result


# The consumer kinds each suite can read a driver through: a command consumer (sysdig) through the
# capture suite only (harness/guest/command_capture.py); the ia32 suite's checks need the kmx events.
SUITE_CONSUMERS = {"capture": ("agent", "command"), "ia32": ("agent",), "throughput": ("agent", "command")}


def consumer_gap(ws: Workspace, cell: Cell) -> str | None:
    """Why the cell's suite cannot read its driver's declared consumer here (None: it can)."""
    name = ws.matrix.drivers[cell.driver].consumer
    consumer = ws.matrix.consumers[name]
    readable = SUITE_CONSUMERS.get(cell.suite, ("agent",))
    if consumer.kind in readable:
        return None
    return (f"suite {cell.suite} cannot read driver {cell.driver} through consumer {name}: it reads drivers "
            f"through {' or '.join(readable)} consumers only")


def _command_consumer(ws: Workspace, arch: ArchProfile, cell: Cell, result: CellResult
                      ) -> tuple[dict[str, Any], list[tuple[Path, str, int]]]:
    """For a driver read by a command consumer (sysdig): the guest request's fields (its argument
    lists, the driver's documented differences) and its bundle's files. Nothing otherwise."""
    from harness.consumers import guest_consumer

    consumer = guest_consumer(ws, arch, cell.driver)
    if consumer is None:
        return {}, []
    result.metrics["consumer"] = consumer.details()
    differences = [d.model_dump(exclude={"archs"}) for d in ws.matrix.drivers[cell.driver].differences
                   if d.archs is None or cell.arch in d.archs]
    return {"consumer": consumer.request(), "differences": differences}, consumer.files


def record_error(result: CellResult, error: KmatrixError, *, target: str | None = None) -> None:
    """Judge what a cell raised: a crashed guest kernel is the driver's or suite's `fail` (with the
    crash's headline and call trace in metrics); a driver whose own source rules the (arch, kernel)
    out is a `skip` with that reason; anything else raised is infrastructure, `error`."""
    if isinstance(error, UnsupportedTarget):
        result.status, result.reason = "skip", str(error)
    elif isinstance(error, GuestCrash):
        result.status, result.reason = "fail", str(error)
        result.metrics["crash"] = {"headline": error.headline, "call_trace": list(error.call_trace),
                                   "excerpt": error.excerpt, "log": error.hint}
    elif isinstance(error, BuildError):
        hint = f" (reproduce: {error.hint})" if error.hint else ""
        result.status, result.reason = "error", f"build: {error}{hint}"
    else:
        # On a target the hint is the way out (how to trust its host key, which key to log in with).
        hint = f" ({error.hint})" if target is not None and error.hint else ""
        result.status, result.reason = "error", f"{error}{hint}"


def _run_in_guest(ws: Workspace, arch: ArchProfile, files: list[tuple[Path, str, int]], op: str,
                  params: dict[str, Any], artifact: str, cell: Cell, cell_dir: Path, kind: str, timeout_s: float,
                  result: CellResult) -> tuple[dict[str, Any], str]:
    """Boot the cell's kernel with the files in an overlay and run op; (reply, last console lines)."""
    spec, _kernel, image, accel_reason = prepare(ws, arch, cell.kernel)
    result.metrics["image_bytes"] = image.size
    overlay = files_overlay(files, cell_dir / "driver.cpio.gz")
    spec = dataclasses.replace(spec, overlays=(overlay,))
    result.accel = spec.accel
    result.metrics["accel_reason"] = accel_reason
    guest = boot_with_retry(spec, cell_dir, arch.tcg_boot_timeout_s, result)
    try:
        started = time.monotonic()
        try:
            reply = guest.request(op, timeout_s=timeout_s, driver=kind, artifact="/" + artifact,
                                  token=f"{cell.arch[:3]}{int(time.time()) % 100000}", **params)
        finally:  # also when it timed out or crashed: how long the suite ran before that
            result.timings["run_s"] = round(time.monotonic() - started, 2)
        with_log_tail = guest.log.tail(5)
        guest.poweroff()
    finally:
        guest.close()
    return reply, with_log_tail


def _run_on_target(target: str, release: str, machine: str, files: list[tuple[Path, str, int]], op: str,
                   params: dict[str, Any], artifact: str, cell: Cell, cell_dir: Path, kind: str, timeout_s: float,
                   result: CellResult) -> tuple[dict[str, Any], str]:
    """Upload the agent and files to an SSH target, run op there; (reply, last agent output lines).

    The driver was built for the cell's kernel, so the target must run exactly that kernel.
    """
    from harness.remote.ssh import SshTarget

    started = time.monotonic()
    with SshTarget.connect(target) as remote:
        result.metrics["target_host_key"] = f"{remote.host_key_fingerprint} ({remote.trusted_by})"
        where = remote.upload(files)
        agent = remote.start_agent(cell_dir / "remote.log")
        result.console_log = str(agent.log.path)
        ready = agent.wait_ready(60)
        result.timings["connect_s"] = round(time.monotonic() - started, 2)
        seen = (ready.info.get("release"), ready.info.get("machine"))
        if seen != (release, machine):
            raise GuestError(f"{remote.url} runs {seen[1]} {seen[0]}, but cell {cell.id} is {machine} {release} "
                             "(its driver is built for that kernel)",
                             hint="pick the cell of the kernel the target runs, or boot the target into this one")
        # Guest paths are relative to the guest's root; on the target they are under the upload directory.
        remote_params = {k: (f"{where}{v}" if k == "tools" and isinstance(v, str) else v) for k, v in params.items()}
        started = time.monotonic()
        reply = agent.request(op, timeout_s=timeout_s, driver=kind, artifact=f"{where}/{artifact}",
                              token=f"{cell.arch[:3]}{int(time.time()) % 100000}", **remote_params)
        result.timings["run_s"] = round(time.monotonic() - started, 2)
        log_tail = agent.log.tail(5)
        agent.poweroff()
    return reply, log_tail


# Boot failures are infrastructure errors (seen here: QEMU 10's ppc64 TCG once died on an internal
# assertion mid-boot); they are retried this many times, each retry recorded. Test failures never are.
BOOT_RETRIES = 1


def boot_with_retry(spec: BootSpec, cell_dir: Path, timeout_s: float, result: CellResult) -> Guest:
    """A started guest whose agent is ready; the console log of a failed attempt is kept beside."""
    for attempt in range(BOOT_RETRIES + 1):
        log = cell_dir / ("console.log" if attempt == 0 else f"console.retry{attempt}.log")
        guest = Guest(spec, log)
        try:
            guest.start()
            ready = guest.wait_ready(timeout_s)
        except BootError as error:
            guest.close()
            if attempt == BOOT_RETRIES:
                raise
            result.metrics.setdefault("boot_retries", []).append(f"{str(error).splitlines()[0]} (log: {log})")
            continue
        except BaseException:
            guest.close()  # a crash or Ctrl-C during boot: no QEMU is left behind
            raise
        result.timings["boot_s"] = ready.seconds
        result.console_log = str(log)
        return guest
    raise AssertionError("unreachable")


def _failure_reason(reply: dict[str, Any]) -> str:
    first = reply.get("first_mismatch")
    if first:
        return (f"{first['call']} (tid {first['tid']}): {first['what']}: expected {first['expected']!r}, "
                f"got {first['got']!r}")
    oracle = reply.get("oracle", {})
    if not oracle.get("ok"):
        return (f"driver saw {oracle.get('driver_count')} syscalls of the workload thread, tracefs "
                f"{oracle.get('tracefs_count')}; first difference {oracle.get('first_difference')}")
    if reply.get("drops"):
        return f"{reply['drops']} events dropped"
    if not reply.get("timestamps_monotonic", True):
        return f"per-CPU timestamps went back: {reply.get('timestamp_problems')}"
    return f"{reply.get('verified_calls')} of {reply.get('expected_calls')} calls verified"
