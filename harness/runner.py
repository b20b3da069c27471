"""Boot cells: resolve kernel and guest image, choose the accelerator, boot, talk to the agent."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.accel import choose_accel
from harness.archs import ArchProfile, get_arch
from harness.debian import DebianRepo, host_mirror
from harness.doctor import qemu_version
from harness.errors import BootError, KmatrixError
from harness.images import KernelImage, fetch_kernel, user_kernel
from harness.matrix import KernelRef, Matrix, load_matrix
from harness.paths import cache_dir, default_matrix_path
from harness.rootfs import GuestImage, ImageBuilder
from harness.vm import BootSpec, Guest, Ready

Say = Callable[[str], None]


@dataclass
class Workspace:
    """Everything a run shares: the matrix, the repository client, the cache."""

    matrix: Matrix
    repo: DebianRepo
    cache: Path
    say: Say = field(default=lambda _m: None)
    matrix_path: Path = field(default_factory=default_matrix_path)  # its hash identifies a run's matrix revision

    @classmethod
    def open(
        cls,
        matrix_path: Path | None = None,
        say: Say | None = None,
        progress: Callable[[str, int, int | None], None] | None = None,
    ) -> Workspace:
        path = matrix_path or default_matrix_path()
        matrix = load_matrix(path)
        cache = cache_dir()
        mirror = os.environ.get("KMATRIX_MIRROR") or matrix.mirror or host_mirror()
        return cls(matrix, DebianRepo(mirror, cache, progress=progress), cache, say or (lambda _m: None), path)

    def kernel(self, arch: ArchProfile, ref: KernelRef) -> KernelImage:
        if ref.path is not None:
            return user_kernel(arch, Path(ref.path))
        assert ref.suite is not None
        return fetch_kernel(self.repo, arch, ref.suite, self.cache)

    def image(self, arch: ArchProfile) -> GuestImage:
        return ImageBuilder(self.repo, self.cache, log=self.say).build(arch, self.matrix.userland_suite(arch.name))

    def firmware(self, arch: ArchProfile) -> Path | None:
        if arch.firmware is None:
            return None
        fw = arch.firmware
        pkg, notes = self.repo.find_fetchable([fw.suite, *fw.fallback_suites], fw.debian_arch, fw.package)
        for note in notes:
            self.say(f"{arch.name}: {note.splitlines()[0]}")
        root = self.repo.unpack(pkg)
        path = root / fw.path
        if not path.exists():
            raise BootError(f"{fw.package} from {fw.suite} has no {fw.path}")
        return path


@dataclass
class BootResult:
    arch: str
    kernel_source: str
    kernel_release: str | None = None
    kernel_package: str | None = None
    accel: str | None = None
    accel_reason: str | None = None
    boot_seconds: float | None = None
    ready: bool = False
    uname_m: str | None = None
    uname_r: str | None = None
    python: str | None = None
    image_bytes: int | None = None
    error: str | None = None
    console_log: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def default_runs_root() -> Path:
    """Where run directories go when no -o is given."""
    return Path.cwd() / "runs"


def new_run_dir(base: Path | None = None, prefix: str = "run") -> Path:
    root = base or default_runs_root()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / f"{prefix}-{stamp}-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepare(
    ws: Workspace, arch: ArchProfile, ref: KernelRef, *, mode: str = "agent", accel: str | None = None
) -> tuple[BootSpec, KernelImage, GuestImage, str]:
    kernel = ws.kernel(arch, ref)
    image = ws.image(arch)
    spec = BootSpec(arch, kernel.kernel, image.path, firmware=ws.firmware(arch), mode=mode)
    if accel:
        reason = "chosen on the command line"
    else:
        version = qemu_version(arch.qemu_binary)
        choice = choose_accel(spec, ws.cache, ".".join(map(str, version or ())))
        accel, reason = choice.accel, choice.reason
    spec = BootSpec(arch, kernel.kernel, image.path, accel=accel, firmware=spec.firmware, mode=mode)
    return spec, kernel, image, reason


def boot_cell(
    ws: Workspace,
    arch_name: str,
    ref: KernelRef,
    run_dir: Path,
    *,
    accel: str | None = None,
    timeout_s: float | None = None,
) -> BootResult:
    """Boot one (arch, kernel), ask the agent who it is, power off. Never raises KmatrixError."""
    arch = get_arch(arch_name)
    result = BootResult(arch=arch.name, kernel_source=ref.label)
    log = run_dir / f"{arch.name}-{ref.label}" / "console.log"
    result.console_log = str(log)
    try:
        spec, kernel, image, reason = prepare(ws, arch, ref, accel=accel)
        result.kernel_release, result.kernel_package = kernel.release, f"{kernel.package} {kernel.package_version}"
        result.accel, result.accel_reason, result.image_bytes = spec.accel, reason, image.size
        with Guest(spec, log) as guest:
            ready: Ready = guest.wait_ready(timeout_s or arch.tcg_boot_timeout_s)
            result.boot_seconds = ready.seconds
            result.uname_m, result.uname_r = ready.info.get("machine"), ready.info.get("release")
            result.python = ready.info.get("python")
            result.ready = True
            started = time.monotonic()
            guest.poweroff()
            ws.say(f"{arch.name}: powered off in {time.monotonic() - started:.1f} s")
    except KmatrixError as error:
        result.error = str(error).splitlines()[0]
    return result


# -- run markers: a run killed outright (SIGKILL, OOM killer, power loss) cannot mark its own
# results.json interrupted, so every run leaves this file in its directory while it runs and the
# next `kmatrix run` / `qualify` reports the directories whose writer died without removing it.
RUN_MARKER = "running.json"
GUARD_ENV = "KMATRIX_TEST_DISABLE_GUARD"


def guard_disabled(name: str) -> bool:
    """Test-only: the fault drills' guard-removal proofs switch a guard off with
    KMATRIX_TEST_DISABLE_GUARD=name[,name] ("interrupted-mark", "stale-run") to show the drill then fails."""
    return name in os.environ.get(GUARD_ENV, "").split(",")


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22); None if it is gone
    or a zombie. With the boot id it tells a reused pid from the run's own process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # after "(comm)", which may hold spaces
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    try:
        return int(fields[19])
    except ValueError:
        return None


def write_run_marker(run_dir: Path, command: Sequence[str] | None = None) -> Path:
    """Write run_dir/running.json (pid, start time, command), atomically."""
    pid = os.getpid()
    marker = {
        "pid": pid,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": list(command if command is not None else sys.argv),
        "cwd": str(Path.cwd()),
        "host": socket.gethostname(),
        "boot_id": _boot_id(),
        "start_ticks": _start_ticks(pid),
    }
    path = run_dir / RUN_MARKER
    _write_json_atomic(path, marker)
    return path


def remove_run_marker(run_dir: Path) -> None:
    """The run ended and its results.json says how: the marker has nothing left to report."""
    with contextlib.suppress(OSError):
        marker = json.loads((run_dir / RUN_MARKER).read_text(encoding="utf-8"))
        if marker.get("pid") == os.getpid():  # never another process's marker (a reused -o directory)
            (run_dir / RUN_MARKER).unlink()


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def marker_alive(marker: dict[str, Any]) -> bool | None:
    """Is the marker's process still running? None: cannot tell (written on another host)."""
    if marker.get("host") != socket.gethostname():
        return None
    pid = marker.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if marker.get("boot_id") and marker.get("boot_id") != _boot_id():
        return False  # the machine rebooted since: that process is gone
    ticks = _start_ticks(pid)
    if ticks is None:
        return False
    return marker.get("start_ticks") in (None, ticks)  # another start time: the pid was reused


@dataclass(frozen=True)
class StaleRun:
    """A run directory whose run died without ending (its marker's process is gone)."""

    run_dir: Path
    pid: int | None
    started: str | None
    command: str
    last_write: str | None  # the newest file time in the directory: about when it died
    cells: int | None  # cells recorded in its results.json (None: no readable results.json)
    marked: bool  # results.json was marked interrupted just now
    problem: str | None = None  # why results.json could not be read or marked

    def line(self) -> str:
        when = f" at about {self.last_write}" if self.last_write else ""
        recorded = f"{self.cells} cell(s) recorded" if self.cells is not None else "no readable results.json"
        what = f"; {self.problem}" if self.problem else ("; results.json marked interrupted" if self.marked else "")
        return (f"stale run directory {self.run_dir}: interrupted by SIGKILL or a crash{when}; {recorded}{what} "
                f"(pid {self.pid}, started {self.started}: {self.command})")


def _newest_write(run_dir: Path) -> str | None:
    newest = 0.0
    try:
        paths = [run_dir, *run_dir.iterdir()]
        paths += [p for d in paths[1:] if d.is_dir() for p in d.iterdir()]  # cells' console logs
    except OSError:
        paths = [run_dir]
    for path in paths:
        with contextlib.suppress(OSError):
            newest = max(newest, path.stat().st_mtime)
    return datetime.fromtimestamp(newest, UTC).isoformat(timespec="seconds") if newest else None


def find_stale_runs(roots: Iterable[Path], *, exclude: Path | None = None) -> list[StaleRun]:
    """Run directories under `roots` whose marker's process is dead: each one's results.json is marked
    interrupted (if it is not yet) and the marker records that it was reported, so the next run does not
    repeat it. Nothing is deleted."""
    if guard_disabled("stale-run"):
        return []
    seen: set[Path] = set()
    found: list[StaleRun] = []
    for root in roots:
        try:
            root = root.resolve()
            markers = sorted(root.glob(f"*/{RUN_MARKER}")) if root.is_dir() else []
        except OSError:
            continue
        for marker_path in markers:
            run_dir = marker_path.parent
            if run_dir in seen or (exclude is not None and run_dir == exclude):
                continue
            seen.add(run_dir)
            stale = _check_marker(marker_path)
            if stale is not None:
                found.append(stale)
    return found


def _check_marker(marker_path: Path) -> StaleRun | None:
    from harness.report.schema import load_results, save_results  # only when a marker is found

    run_dir = marker_path.parent
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # being written right now (atomic replace), or not ours to judge
    if not isinstance(marker, dict) or marker.get("stale_reported") or marker_alive(marker) is not False:
        return None
    command = marker.get("command")
    shown = " ".join(str(word) for word in command) if isinstance(command, list) else "?"
    pid = marker.get("pid") if isinstance(marker.get("pid"), int) else None
    last_write = _newest_write(run_dir)  # before this check writes anything there
    cells: int | None = None
    marked = False
    problem: str | None = None
    results_path = run_dir / "results.json"
    try:
        results = load_results(results_path)
        cells = len(results.cells)
        if not results.interrupted:
            save_results(results.model_copy(update={"interrupted": True}), results_path)
            marked = True
    except KmatrixError as error:
        problem = f"results.json not marked: {str(error).splitlines()[0]}"
    except (OSError, ValueError, RecursionError) as error:  # a report on another run never stops this one
        problem = f"results.json not marked: {type(error).__name__}: {error}"
    stale = StaleRun(run_dir, pid, str(marker.get("started")), shown, last_write, cells, marked, problem)
    with contextlib.suppress(OSError):
        _write_json_atomic(marker_path, {**marker, "stale_reported": datetime.now(UTC).isoformat(timespec="seconds")})
    return stale
