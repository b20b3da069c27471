"""The throughput benchmark's results file: pydantic models, load/save, merge.

One `BenchResults` file holds one `BenchRun` per (arch, kernel) guest. A run measures the
syscall storm without capture (`baseline`) and with each subject attached; each subject holds
one `Measurement` per configuration (mix, ring-buffer size, sampling, pinning, drain batch).
The *default configuration* (what the report's tables show) is: 8 MiB buffer for drivers
(None for peers, which have no buffer of ours), sample_every 1, not pinned, unlimited batch.

Every problem in a file becomes one `ConfigError` naming the file and the field, e.g.::

    runs/bench/results.json: runs[0].subjects[1].measurements[0].mix: Input should be 'getppid' or 'rw' (got 'read')
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness import __version__
from harness.errors import ConfigError
from harness.paths import write_text_atomic
from harness.validation import validation_message

__all__ = [
    "BUFFER_SIZES_MIB",
    "DEFAULT_BUFFER_MIB",
    "DRIVERS",
    "FORMAT",
    "MIXES",
    "PEERS",
    "SUBJECTS",
    "BenchResults",
    "BenchRun",
    "Measurement",
    "Mix",
    "RunStatus",
    "Subject",
    "SubjectKind",
    "SubjectResult",
    "SubjectStatus",
    "delivered_ratio",
    "drop_ratio",
    "kind_of",
    "load_results",
    "merge_results",
    "new_results",
    "now_iso",
    "overhead_ratio",
    "save_results",
]

FORMAT: Literal[1] = 1

Mix = Literal["getppid", "rw"]
# A declared driver's name (matrix.yaml `drivers`) or a peer's.
Subject = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]*$")]
SubjectKind = Literal["driver", "peer"]
RunStatus = Literal["pass", "fail", "error", "skip"]
SubjectStatus = Literal["pass", "fail", "skip", "error"]

MIXES: tuple[Mix, ...] = ("getppid", "rw")
# Tables list these first, in this order; other declared drivers follow by name, then the peers.
DRIVERS: tuple[str, ...] = ("kmod", "bpf", "modern_bpf")
PEERS: tuple[str, ...] = ("ftrace", "auditd")
SUBJECTS: tuple[str, ...] = DRIVERS + PEERS
DEFAULT_BUFFER_MIB = 8
# The buffer sizes the buffer sweep measures (drivers only); the report plots whatever is present.
BUFFER_SIZES_MIB: tuple[int, ...] = (4, 8, 32)

_NonNegative = Annotated[float, Field(ge=0)]
_Fraction = Annotated[float, Field(ge=0, le=1)]


def kind_of(subject: str) -> SubjectKind:
    """'peer' for ftrace and auditd, 'driver' for every driver declared in matrix.yaml."""
    return "peer" if subject in PEERS else "driver"


def now_iso() -> str:
    """The current time as an ISO 8601 string in UTC, to the second (`BenchResults.created`)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def overhead_ratio(syscalls_per_s: float, baseline_per_s: float) -> float:
    """Throughput with capture over throughput without (1.0 = free); 0 when there is no baseline."""
    return syscalls_per_s / baseline_per_s if baseline_per_s > 0 else 0.0


def drop_ratio(events: int, drops: int) -> float:
    """drops / (events + drops); 0 when nothing was produced."""
    total = events + drops
    return drops / total if total > 0 else 0.0


def delivered_ratio(events: int, syscalls: int | float, sample_every: int = 1) -> float | None:
    """Delivered events over the expected ones (an enter and an exit per syscall, 1 in `sample_every`)."""
    expected = 2 * syscalls / sample_every
    return events / expected if expected > 0 else None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Measurement(_Model):
    """One configuration of one subject: medians over the run's repeats, plus the raw repeats."""

    mix: Mix
    buffer_mib: Annotated[int, Field(gt=0)] | None = None
    sample_every: Annotated[int, Field(ge=1)] = 1
    pinned: bool = False
    batch: Annotated[int, Field(gt=0)] | None = None  # events per consumer drain; None = unlimited
    syscalls_per_s: _NonNegative  # median with capture
    baseline_per_s: _NonNegative  # median of the baselines interleaved with these repeats
    overhead_ratio: _NonNegative  # per pair: captured / baseline; the mean without the extremes
    events: Annotated[int, Field(ge=0)]
    events_per_s: _NonNegative
    drops: Annotated[int, Field(ge=0)]
    drop_ratio: _Fraction  # drops / (events + drops), 0 when none
    delivered_ratio: _NonNegative | None = None  # events / (2 * syscalls / sample_every)
    buffer_fill_max: _Fraction | None = None
    repeats: list[dict[str, Any]] = []
    warmup_per_s: list[float] = []  # the uncounted baselines run until the guest was settled
    checks: dict[str, bool] = {}

    @property
    def config(self) -> tuple[str, int | None, int, bool, int | None]:
        """(mix, buffer_mib, sample_every, pinned, batch): unique within a subject."""
        return (self.mix, self.buffer_mib, self.sample_every, self.pinned, self.batch)

    @property
    def failed_checks(self) -> list[str]:
        return [name for name, ok in self.checks.items() if not ok]


class SubjectResult(_Model):
    """A driver or peer attached during the run; `measurements` is empty when it was skipped."""

    subject: Subject
    kind: SubjectKind
    status: SubjectStatus
    reason: str | None = None
    details: dict[str, Any] = {}
    measurements: list[Measurement] = []

    @model_validator(mode="before")
    @classmethod
    def _default_kind(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "kind" not in data and isinstance(data.get("subject"), str):
            return {**data, "kind": kind_of(data["subject"])}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> SubjectResult:
        if self.kind != kind_of(self.subject):
            raise ValueError(f"subject {self.subject!r} is a {kind_of(self.subject)}, not a {self.kind}")
        seen: set[tuple[str, int | None, int, bool, int | None]] = set()
        for measurement in self.measurements:
            if measurement.config in seen:
                mix, buffer_mib, sample_every, pinned, batch = measurement.config
                raise ValueError(
                    f"{self.subject}: two measurements for mix={mix} buffer_mib={buffer_mib} "
                    f"sample_every={sample_every} pinned={pinned} batch={batch}"
                )
            seen.add(measurement.config)
        return self

    @property
    def default_buffer_mib(self) -> int | None:
        return DEFAULT_BUFFER_MIB if self.kind == "driver" else None

    def measurement(
        self,
        mix: str,
        *,
        buffer_mib: int | None = None,
        sample_every: int = 1,
        pinned: bool = False,
        batch: int | None = None,
    ) -> Measurement | None:
        key = (mix, buffer_mib, sample_every, pinned, batch)
        return next((m for m in self.measurements if m.config == key), None)

    def default_measurement(self, mix: str) -> Measurement | None:
        """The default configuration: 8 MiB (drivers) or no buffer (peers), every call, unpinned, unbatched."""
        return self.measurement(mix, buffer_mib=self.default_buffer_mib)


class BenchRun(_Model):
    """One guest: one (arch, kernel) with the baseline and every subject."""

    arch: str
    kernel: str  # the matrix label, e.g. "bookworm-backports"
    kernel_release: str | None = None  # uname -r in the guest
    accel: str  # "tcg" or "kvm"
    # How the guest timed its storms: "icount shift=N" (TCG's instruction-counting clock: rates are
    # per emulated instruction budget, repeatable on a busy host) or "wall" (the host's real time).
    clock: str = "wall"
    vcpus: Annotated[int, Field(ge=1)]
    duration_s: _NonNegative  # storm window per measurement
    repeats: Annotated[int, Field(ge=0)]
    baseline: dict[Mix, _NonNegative] = {}  # mix -> median syscalls/s without capture over the whole run
    subjects: list[SubjectResult] = []
    status: RunStatus
    reason: str | None = None

    @field_validator("subjects")
    @classmethod
    def _unique_subjects(cls, subjects: list[SubjectResult]) -> list[SubjectResult]:
        names = [s.subject for s in subjects]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"subject listed more than once: {', '.join(duplicates)}")
        return subjects

    @property
    def label(self) -> str:
        return f"{self.arch}/{self.kernel}"

    @property
    def timing(self) -> str:
        """What every figure of this run is labelled with: the accelerator, and the clock if not wall."""
        return self.accel if self.clock == "wall" else f"{self.accel} {self.clock}"

    def subject(self, name: str) -> SubjectResult | None:
        return next((s for s in self.subjects if s.subject == name), None)

    def default_measurement(self, subject: str, mix: str) -> Measurement | None:
        """`subject`'s measurement of `mix` at the default configuration, None when absent."""
        found = self.subject(subject)
        return found.default_measurement(mix) if found is not None else None


class BenchResults(_Model):
    format: Literal[1] = FORMAT
    kmatrix_version: str
    git_revision: str | None = None
    created: str  # ISO 8601
    runs: list[BenchRun] = []

    @field_validator("created")
    @classmethod
    def _iso_time(cls, value: str) -> str:
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"not an ISO 8601 time: {value!r}") from None
        return value


def new_results(
    runs: Sequence[BenchRun] = (), *, git_revision: str | None = None, created: str | None = None
) -> BenchResults:
    """A results document stamped with this kmatrix's version and the current time."""
    return BenchResults(
        kmatrix_version=__version__, git_revision=git_revision, created=created or now_iso(), runs=list(runs)
    )


def load_results(path: Path) -> BenchResults:
    """Read and validate a results file; any problem is one ConfigError naming the file and the field."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file", hint="run the benchmark first, or pass the results path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object at the top level, got {type(data).__name__}")
    try:
        return BenchResults.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_message(source, exc)) from None


def save_results(results: BenchResults, path: Path) -> None:
    """Write `results` as indented JSON, atomically (a reader never sees half a file)."""
    write_text_atomic(path, results.model_dump_json(indent=2) + "\n")


def _latest(created: Sequence[str]) -> str:
    def key(value: str) -> datetime:
        moment = datetime.fromisoformat(value)
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)

    return max(created, key=key)


def merge_results(results: Sequence[BenchResults]) -> BenchResults:
    """Concatenate the runs of several files, in order, dropping exact duplicates.

    Two different runs of the same (arch, kernel) are both kept: the report shows the last one
    and compares them in its stability section. The merged document takes the newest `created`,
    the last file's kmatrix version, and the git revision when all files agree (None otherwise).
    """
    if not results:
        raise ValueError("merge_results needs at least one BenchResults")
    runs: list[BenchRun] = []
    for document in results:
        for run in document.runs:
            if run not in runs:
                runs.append(run.model_copy(deep=True))
    revisions = {document.git_revision for document in results}
    return BenchResults(
        kmatrix_version=results[-1].kmatrix_version,
        git_revision=revisions.pop() if len(revisions) == 1 else None,
        created=_latest([document.created for document in results]),
        runs=runs,
    )
