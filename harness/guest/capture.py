"""The capture suite, guest side: load the driver, run the workload, verify against it and tracefs."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

from harness.guest import tracefs
from harness.guest.kmxdev import KmxDevice
from harness.guest.schema import load_schema
from harness.guest.verify import marked_sequence, timestamps_monotonic, verify_calls
from harness.guest.workload import MARK_BEGIN, MARK_END, syscall_table

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any


def _run(argv: list[str]) -> tuple[int, str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return done.returncode, (done.stdout + done.stderr).strip()


def dmesg_lines() -> list[str]:
    _rc, text = _run(["dmesg"])
    return text.splitlines()


def dmesg_tail(lines: int = 20) -> str:
    return "\n".join(dmesg_lines()[-lines:])


class ModuleLoadError(RuntimeError):
    """insmod refused the module; `details["dmesg"]` holds what the kernel said while refusing it
    (vermagic, Unknown symbol, ...), which the agent puts in its reply for the cell's metrics."""

    def __init__(self, message: str, dmesg: list[str]) -> None:
        super().__init__(message)
        self.details = {"dmesg": dmesg}


class NotInGuest(RuntimeError):
    """Drivers are loaded only inside kmatrix guests, never on the machine running the harness."""


# Set only by harness.remote.ssh in the command that starts the agent on a remote target: the user
# named that machine with --target, which is the opt-in to load drivers there.
REMOTE_TARGET_ENV = "KMATRIX_REMOTE_TARGET"


def refuse_outside_guest(cmdline_path: str = "/proc/cmdline", environ: dict[str, str] | None = None) -> None:
    env = os.environ if environ is None else environ
    if env.get(REMOTE_TARGET_ENV, "").startswith("ssh://"):
        return
    try:
        with open(cmdline_path, encoding="utf-8") as handle:
            cmdline = handle.read().split()
    except OSError:
        cmdline = []
    if not any(word.startswith("kmatrix.mode=") for word in cmdline):
        raise NotInGuest("refusing to load a driver: this is not a kmatrix guest (no kmatrix.mode= on the kernel "
                         "command line) nor a remote target the harness started (--target ssh://...); the harness "
                         "loads drivers only inside the VMs it boots or on machines named with --target")


def load_module(path: str, params: dict[str, Any]) -> None:
    refuse_outside_guest()
    before = len(dmesg_lines())
    rc, text = _run(["insmod", path, *(f"{k}={v}" for k, v in params.items())])
    if rc != 0:
        # The kernel's own reason is in the lines it logged during the attempt ("version magic
        # ... should be ...", "Unknown symbol ..."); a tail when the ring buffer wrapped meanwhile.
        after = dmesg_lines()
        said = after[before:] if len(after) > before else after[-20:]
        raise ModuleLoadError(f"insmod {path} failed ({text}); dmesg:\n" + "\n".join(said), said)


def module_name(artifact: str) -> str:
    """The kernel's name for the module a .ko file holds: the file's name without .ko, '-' read as '_'
    (kmx for /opt/kmatrix/drivers/kmx.ko; a renamed copy declared in matrix.yaml unloads by its own)."""
    name = artifact.rsplit("/", 1)[-1]
    return (name[:-3] if name.endswith(".ko") else name).replace("-", "_")


def unload_module(name: str = "kmx") -> str | None:
    rc, text = _run(["rmmod", name])
    return None if rc == 0 else text


def op_capture(request: dict[str, Any]) -> dict[str, Any]:
    """Request: driver (kmod, bpf, modern_bpf), artifact (its path in the guest), buffer_bytes, snaplen,
    token. Result: counts, verdict, first mismatch.

    With `buffer_sizes` (a list of bytes), the suite runs once per size, reloading the module each
    time; the result is the first size's, plus a per-size summary, and passes only if all pass.
    """
    refuse_outside_guest()
    if request.get("consumer"):  # a third-party command reads the driver (sysdig for Falco's kmod)
        from harness.guest.command_capture import op_capture_command

        return op_capture_command(request)
    sizes = [int(size) for size in request.get("buffer_sizes", [])]
    if not sizes:
        return _capture_once(request)
    runs = [
        (size, _capture_once({**request, "buffer_bytes": size, "token": f"{request.get('token', '')}b{i}"}))
        for i, size in enumerate(sizes)
    ]
    result = dict(runs[0][1])
    result["per_buffer_size"] = [
        {
            "buffer_bytes": size,
            "passed": r["passed"],
            "verified_calls": r["verified_calls"],
            "events": r["events"],
            "drops": r["drops"],
            "first_mismatch": r["first_mismatch"],
        }
        for size, r in runs
    ]
    failing = next(((size, r) for size, r in runs if not r["passed"]), None)
    if failing:
        result = {**failing[1], "per_buffer_size": result["per_buffer_size"]}
    result["passed"] = failing is None
    return result


def _capture_once(request: dict[str, Any]) -> dict[str, Any]:
    schema = load_schema()
    driver = str(request.get("driver", "kmod"))
    artifact = str(request.get("artifact") or request["module"])
    timings: dict[str, float] = {}
    started = time.monotonic()
    with module_loaded(driver, artifact, int(request.get("buffer_bytes", 8 << 20))):
        if driver == "kmod":
            timings["load_s"] = round(time.monotonic() - started, 3)
        return _capture(schema, driver, artifact, request, timings)


@contextlib.contextmanager
def module_loaded(driver: str, artifact: str, buffer_bytes: int) -> Iterator[None]:
    """The kernel module loaded for the block (other drivers need nothing here); a failed rmmod is
    reported on stderr, not raised over the block's own result or error."""
    if driver != "kmod":
        yield
        return
    load_module(artifact, {"buffer_bytes": buffer_bytes})
    try:
        yield
    finally:
        name = module_name(artifact)
        problem = unload_module(name)
        if problem:
            print(f"rmmod {name}: {problem}", file=sys.stderr)


def open_consumer(schema: Any, driver: str, artifact: str, *, tgid: int, snaplen: int, buffer_bytes: int,
                  redact_keys: tuple[bytes, ...] = ()) -> Any:
    """The driver's user side, configured to capture one process (and its children). redact_keys
    switches a BPF probe's redaction on (the kernel module's is a load parameter: redact=1)."""
    if driver == "kmod":
        device: Any = KmxDevice(schema)
        device.set_snaplen(snaplen)
        device.set_filter_tgid(tgid)
        return device
    if driver == "modern_bpf":
        from harness.guest.bpfdev import ModernBpfDevice

        return ModernBpfDevice(schema, artifact, snaplen=snaplen, filter_tgid=tgid, buffer_bytes=buffer_bytes,
                               redact_keys=redact_keys)
    if driver == "bpf":
        from harness.guest.perfdev import LegacyBpfDevice

        device = LegacyBpfDevice(schema, artifact, buffer_bytes=buffer_bytes, snaplen=snaplen, redact_keys=redact_keys)
        device.set_filter_tgid(tgid)
        return device
    raise ValueError(f"unknown driver kind {driver!r}")


def _capture(
    schema: Any, driver: str, artifact: str, request: dict[str, Any], timings: dict[str, float]
) -> dict[str, Any]:
    token = str(request.get("token", os.getpid()))
    workload = subprocess.Popen(
        [sys.executable, "-S", "-m", "harness.guest.workload", token],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert workload.stdin and workload.stdout
    hello = json.loads(workload.stdout.readline())
    tid = int(hello["tid"])
    started = time.monotonic()
    device = open_consumer(
        schema,
        driver,
        artifact,
        tgid=int(hello["pid"]),
        snaplen=int(request.get("snaplen", schema.const("KMX_SNAPLEN_DEFAULT"))),
        buffer_bytes=int(request.get("buffer_bytes", 8 << 20)),
    )
    timings["open_s"] = round(time.monotonic() - started, 3)
    try:
        return _run_and_verify(schema, device, workload, tid, timings)
    finally:
        device.close()


def _run_and_verify(
    schema: Any, device: Any, workload: subprocess.Popen[str], tid: int, timings: dict[str, float]
) -> dict[str, Any]:
    assert workload.stdin and workload.stdout
    trace = tracefs.SyscallTrace()
    trace.start(tid)
    device.start()
    began = time.monotonic()
    workload.stdin.write("go\n")
    workload.stdin.flush()
    record = json.loads(workload.stdout.readline())
    workload.wait(timeout=60)
    device.stop()
    timings["workload_s"] = round(time.monotonic() - began, 3)
    trace_text = trace.stop()
    events = device.drain()
    stats = device.stats()
    nr_of = syscall_table(os.uname().machine)
    verdict = verify_calls(schema, events, record["calls"], nr_of)

    # Oracle: the workload thread's syscall numbers between the markers, driver vs tracefs.
    enter = schema.const("KMX_EVT_SYS_ENTER")
    driver_seq = marked_sequence(
        [(e.nr, e.args[0]) for e in events if e.tid == tid and e.kind == enter], nr_of["close"], MARK_BEGIN, MARK_END
    )
    trace_seq = marked_sequence(tracefs.parse_enters(trace_text, tid), nr_of["close"], MARK_BEGIN, MARK_END)
    oracle_ok = driver_seq == trace_seq and len(trace_seq) > 0
    first_diff = None
    if not oracle_ok:
        index = next(
            (i for i, (a, b) in enumerate(zip(driver_seq, trace_seq, strict=False)) if a != b),
            min(len(driver_seq), len(trace_seq)),
        )
        first_diff = {"index": index, "driver": driver_seq[index : index + 5], "tracefs": trace_seq[index : index + 5]}
    drops = sum(s.drops for s in stats)
    monotonic = timestamps_monotonic(events)
    passed = verdict.ok and oracle_ok and drops == 0 and not monotonic
    return {
        "passed": passed,
        "buffer_bytes": getattr(getattr(device, "info", None), "buffer_bytes", None),
        "driver_details": device.details() if hasattr(device, "details") else {},
        "events": len(events),
        "expected_calls": verdict.expected,
        "verified_calls": verdict.verified,
        "mismatches": verdict.mismatches[:5],
        "first_mismatch": verdict.mismatches[0] if verdict.mismatches else None,
        "oracle": {
            "ok": oracle_ok,
            "driver_count": len(driver_seq),
            "tracefs_count": len(trace_seq),
            "first_difference": first_diff,
        },
        "drops": drops,
        "per_cpu": [{"cpu": s.cpu, "events": s.events, "drops": s.drops, "bytes": s.bytes} for s in stats],
        "timestamps_monotonic": not monotonic,
        "timestamp_problems": monotonic[:3],
        "timings": timings,
        "tid": tid,
    }
