"""The results of a matrix run (`results.json`): pydantic models, load/save, canonical order.

One `RunResults` file holds one `CellRecord` per cell (arch, kernel, driver, suite) plus what is
needed to trust and reproduce it: kmatrix version, git and matrix revisions, profile, shard, host
and toolchain versions. Records carry the tail of the console for failed cells, so a report merged
on another machine (CI's merge job) still shows why a cell failed.

Every problem in a file becomes one `ConfigError` naming the file and the field, e.g.::

    runs/run-1/results.json: cells[3].status: Input should be 'pass', 'fail', 'skip' or 'error' (got "ok")
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness import __version__
from harness.archs import ARCH_NAMES
from harness.errors import ConfigError
from harness.paths import write_text_atomic
from harness.validation import validation_message

if TYPE_CHECKING:
    from harness.cells import CellResult

__all__ = [
    "CONSOLE_EXCERPT_LINES",
    "SCHEMA_VERSION",
    "STATUSES",
    "CellRecord",
    "Grid",
    "RunResults",
    "Status",
    "canonical_order",
    "clean_text",
    "format_mismatch",
    "grid",
    "host_info",
    "load_results",
    "matrix_revision",
    "new_run_results",
    "now_iso",
    "parse_time",
    "record_from_cell",
    "save_results",
    "toolchain_versions",
]

SCHEMA_VERSION: Literal[1] = 1
Status = Literal["pass", "fail", "skip", "error"]
STATUSES: tuple[Status, ...] = ("pass", "fail", "error", "skip")
CONSOLE_EXCERPT_LINES = 40
# Read at most this much of a console log's end: logs of crashed guests can be large.
_CONSOLE_TAIL_BYTES = 64 * 1024

# One revision (16 hex digits), or several joined by "+" when mixed results were merged on purpose.
_MATRIX_REVISION_RE = re.compile(r"^[0-9a-f]{16}(\+[0-9a-f]{16})*$")
_SHARD_RE = re.compile(r"^(\d+)/(\d+)$")
# Characters XML 1.0 cannot carry, and terminal escapes: neither belongs in a report.
_UNPRINTABLE_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[^\t\n\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def now_iso() -> str:
    """The current time as ISO 8601 in UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def parse_time(value: str) -> datetime:
    """An ISO 8601 time; one without a zone is taken as UTC (so times always compare)."""
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _check_time(value: str) -> str:
    try:
        parse_time(value)
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {value!r}") from None
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CellRecord(_Model):
    """One cell's outcome, self-contained (no file of the run is needed to explain a failure)."""

    cell: str  # the cell id: <arch>-<kernel>-<driver>-<suite>
    arch: str
    kernel: str  # the matrix label (a Debian suite, or a path kernel's name)
    kernel_release: str | None = None  # uname -r
    kernel_source: str | None = None  # "debian:bookworm", or a path
    driver: str
    suite: str
    status: Status
    reason: str | None = None
    accelerator: str | None = None  # "kvm" or "tcg"
    declared_min: str | None = None  # the driver's declared minimum kernel for this arch, "5.8"
    target: str = "qemu"  # or "ssh://user@host:port" for a real machine
    timings: dict[str, Annotated[float, Field(ge=0)]] = {}
    metrics: dict[str, Any] = {}
    logs: dict[str, str] = {}  # {"console": path}
    console_excerpt: str | None = None  # the console's last lines, for fail and error
    retries: list[str] = []  # each infrastructure retry (boot), with its log
    first_mismatch: str | None = None

    @property
    def seconds(self) -> float:
        return sum(self.timings.values())

    @property
    def column(self) -> tuple[str, str]:
        return (self.driver, self.suite)

    @property
    def row(self) -> tuple[str, str]:
        return (self.arch, self.kernel)


def _arch_rank(arch: str) -> tuple[int, str]:
    # Architectures this kmatrix does not know go last, alphabetically (a newer file still sorts).
    return (ARCH_NAMES.index(arch), "") if arch in ARCH_NAMES else (len(ARCH_NAMES), arch)


def record_key(record: CellRecord) -> tuple[tuple[int, str], str, str, str, str]:
    return (_arch_rank(record.arch), record.kernel, record.driver, record.suite, record.cell)


def canonical_order(records: Iterable[CellRecord]) -> list[CellRecord]:
    """Records by architecture (ARCH_NAMES order), kernel label, driver, suite."""
    return sorted(records, key=record_key)


class RunResults(_Model):
    """A run (or a shard of one, or several shards merged): metadata and one record per cell."""

    schema_version: Literal[1] = SCHEMA_VERSION
    kmatrix_version: str
    git_revision: str | None = None
    matrix_revision: str  # sha256 of matrix.yaml's bytes, first 16 hex digits
    profile: str | None = None
    shard: str | None = None  # "2/4": the second of four shards
    created: str  # ISO 8601 UTC: when the run started
    finished: str  # ISO 8601 UTC: when it ended (or was interrupted)
    interrupted: bool = False
    host: dict[str, str] = {}  # python, platform, debian
    toolchains: dict[str, str] = {}  # qemu, clang, gcc, zig: first line of each version
    cells: list[CellRecord] = []

    @field_validator("created", "finished")
    @classmethod
    def _times(cls, value: str) -> str:
        return _check_time(value)

    @field_validator("matrix_revision")
    @classmethod
    def _revision(cls, value: str) -> str:
        if not _MATRIX_REVISION_RE.match(value):
            raise ValueError(f"expected 16 lowercase hex digits (sha256 of matrix.yaml), got {value!r}")
        return value

    @field_validator("shard")
    @classmethod
    def _shard(cls, value: str | None) -> str | None:
        match = _SHARD_RE.match(value) if value is not None else None
        if value is not None and (match is None or not 1 <= int(match[1]) <= int(match[2])):
            raise ValueError(f"expected INDEX/TOTAL with 1 <= INDEX <= TOTAL, e.g. '2/4', got {value!r}")
        return value

    @field_validator("cells")
    @classmethod
    def _unique_and_ordered(cls, cells: list[CellRecord]) -> list[CellRecord]:
        ids = [record.cell for record in cells]
        duplicates = sorted({cell for cell in ids if ids.count(cell) > 1})
        if duplicates:
            raise ValueError(f"cell listed more than once: {', '.join(duplicates)}")
        return canonical_order(cells)

    def counts(self) -> dict[str, int]:
        """Cells per status, every status present (0 when none), in STATUSES order."""
        return {status: sum(1 for record in self.cells if record.status == status) for status in STATUSES}


@dataclass(frozen=True)
class Grid:
    """The matrix as reports draw it: rows (arch, kernel), columns (driver, suite), a record per slot."""

    rows: list[tuple[str, str]]
    columns: list[tuple[str, str]]
    slots: dict[tuple[tuple[str, str], tuple[str, str]], CellRecord]
    releases: dict[tuple[str, str], str]  # row -> the kernel release its records report

    def get(self, row: tuple[str, str], column: tuple[str, str]) -> CellRecord | None:
        return self.slots.get((row, column))


def grid(results: RunResults) -> Grid:
    """The run's cells arranged as a matrix, in canonical order (rows) and sorted (columns)."""
    rows = list(dict.fromkeys(record.row for record in results.cells))
    columns = sorted({record.column for record in results.cells})
    releases: dict[tuple[str, str], str] = {}
    for record in results.cells:
        if record.kernel_release:
            releases.setdefault(record.row, record.kernel_release)
    slots = {(record.row, record.column): record for record in results.cells}
    return Grid(rows, columns, slots, releases)


# -- building records from a run -------------------------------------------------------------------


def format_mismatch(value: object) -> str | None:
    """One line for a guest's first mismatch ({call, tid, what, expected, got}), whatever its shape."""
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, Mapping) and {"call", "what"} <= value.keys():
        return (f"{value['call']} (tid {value.get('tid')}): {value['what']}: expected {value.get('expected')!r}, "
                f"got {value.get('got')!r}")
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def clean_text(text: str) -> str:
    """Text safe for every report: no terminal escapes, no characters XML cannot hold, no CRs."""
    return _UNPRINTABLE_RE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def console_excerpt(path: Path, lines: int = CONSOLE_EXCERPT_LINES) -> str | None:
    """The last `lines` lines of a console log, cleaned; None when it cannot be read."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - _CONSOLE_TAIL_BYTES))
            data = handle.read()
    except OSError:
        return None
    tail = clean_text(data.decode("utf-8", errors="replace")).rstrip("\n").splitlines()[-lines:]
    return "\n".join(tail) or None


def record_from_cell(result: CellResult, *, target: str = "qemu", kernel_source: str | None = None) -> CellRecord:
    """A CellRecord from the runner's CellResult; for fail/error the console's tail travels with it."""
    failed = result.status in ("fail", "error")
    excerpt = console_excerpt(Path(result.console_log)) if failed and result.console_log else None
    retries = result.metrics.get("boot_retries") or []
    return CellRecord(
        cell=result.cell,
        arch=result.arch,
        kernel=result.kernel,
        kernel_release=result.kernel_release,
        kernel_source=kernel_source,
        driver=result.driver,
        suite=result.suite,
        status=result.status,  # type: ignore[arg-type]  # validated by pydantic
        reason=result.reason,
        accelerator=result.accel,
        declared_min=result.declared_min,
        target=target,
        timings=dict(result.timings),
        metrics=dict(result.metrics),
        logs={"console": result.console_log} if result.console_log else {},
        console_excerpt=excerpt,
        retries=[str(retry) for retry in retries],
        first_mismatch=format_mismatch(result.metrics.get("first_mismatch")),
    )


def matrix_revision(matrix_path: Path) -> str:
    """sha256 of the matrix file's bytes, first 16 hex digits: which matrix a result belongs to."""
    try:
        data = Path(matrix_path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{matrix_path}: cannot read the matrix file: {exc.strerror or exc}") from None
    return hashlib.sha256(data).hexdigest()[:16]


def _first_line(argv: Sequence[str]) -> str | None:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


# The QEMU binary asked for its version: any one will do, they ship together.
_QEMU_PROBES = ("qemu-system-x86_64", "qemu-system-aarch64", "qemu-system-s390x", "qemu-system-ppc64",
                "qemu-system-riscv64", "qemu-system-loongarch64")
_TOOL_PROBES = {"clang": ("clang", "--version"), "gcc": ("gcc", "--version")}


@functools.cache
def toolchain_versions() -> dict[str, str]:
    """First version line of qemu, clang, gcc and zig (the ziglang wheel); a missing tool is absent.

    Cached per process: a run asks once, however many shards or reports it writes.
    """
    found: dict[str, str] = {}
    qemu = next((binary for binary in map(shutil.which, _QEMU_PROBES) if binary), None)
    if qemu and (line := _first_line([qemu, "--version"])):
        found["qemu"] = line
    for name, (binary, flag) in _TOOL_PROBES.items():
        path = shutil.which(binary)
        if path and (line := _first_line([path, flag])):
            found[name] = line
    try:
        from importlib.metadata import PackageNotFoundError, version

        found["zig"] = f"ziglang {version('ziglang')}"
    except PackageNotFoundError:
        pass
    return found


@functools.cache
def host_info() -> dict[str, str]:
    """Python version, platform string and Debian release (absent when /etc/debian_version is)."""
    info = {"python": platform.python_version(), "platform": platform.platform()}
    with contextlib.suppress(OSError):
        info["debian"] = Path("/etc/debian_version").read_text(encoding="utf-8").strip()
    return info


def new_run_results(
    records: Iterable[CellRecord],
    *,
    profile: str | None,
    shard: str | None,
    matrix_path: Path,
    interrupted: bool = False,
    created: str | None = None,
) -> RunResults:
    """A results document for this host: versions, revisions, host and toolchains, cells in order."""
    from harness.bench.run import git_revision  # heavy module (runner, vm): only when a run is saved

    return RunResults(
        kmatrix_version=__version__,
        git_revision=git_revision(),
        matrix_revision=matrix_revision(matrix_path),
        profile=profile,
        shard=shard,
        created=created or now_iso(),
        finished=now_iso(),
        interrupted=interrupted,
        host=host_info(),
        toolchains=toolchain_versions(),
        cells=list(records),
    )


# -- files ---------------------------------------------------------------------------------------


def save_results(results: RunResults, path: Path) -> None:
    """Write `results` as indented JSON, atomically (a reader never sees half a file)."""
    write_text_atomic(path, results.model_dump_json(indent=2) + "\n")


def _read_json(source: str, path: Path) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file", hint="pass the results.json of a run (runs/run-*/)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}") from None
    except RecursionError:  # json recurses per nesting level: [[[[... thousands deep is no results file
        raise ConfigError(f"{source}: invalid JSON: nested too deeply to be a results file") from None


def load_results(path: Path) -> RunResults:
    """Read and validate a results file; any problem is one ConfigError naming the file and the field."""
    source = str(path)
    data = _read_json(source, path)
    if isinstance(data, list):
        raise ConfigError(
            f"{source}: a plain list of cell results, written by an older kmatrix (before results "
            f"schema_version {SCHEMA_VERSION}); it lacks the revisions and host details reports need",
            hint="rerun those cells with this kmatrix (`kmatrix run ...`) to get a file `kmatrix report` reads",
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object at the top level, got {type(data).__name__}")
    if "schema_version" not in data:
        raise ConfigError(f"{source}: schema_version: Field required (not a kmatrix results file?)")
    version = data.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version != SCHEMA_VERSION:
        newer = "a newer" if version > SCHEMA_VERSION else "an older"
        raise ConfigError(f"{source}: schema_version {version} is from {newer} kmatrix; this one "
                          f"({__version__}) reads schema_version {SCHEMA_VERSION}",
                          hint="render it with the kmatrix version that wrote it")
    try:
        return RunResults.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_message(source, exc)) from None
