"""The run as one self-contained HTML file: matrix, failure details, declared minimums, bench plots.

Everything is inline (CSS, the few lines of script, plots as data: URIs): the file opens from a CI
artifact, a mail attachment or a laptop without network. Text from the run is escaped by jinja2's
autoescape. The output depends only on its inputs, so two renders of the same results are equal.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from harness.errors import ConfigError
from harness.report.schema import STATUSES, CellRecord, RunResults, grid

__all__ = ["BENCH_PLOTS", "render_html"]

# Plots `kmatrix bench` writes next to its report.md, embedded when present, with their captions.
BENCH_PLOTS = {"overhead.png": "Overhead ratio per subject", "buffers.png": "Delivered events and drops by buffer size"}
_MAJOR_MINOR_RE = re.compile(r"^(\d+)\.(\d+)")


@dataclass(frozen=True)
class Slot:
    """One matrix cell as drawn: its status, and the anchor of its details unless it passed."""

    status: str
    cell: str
    title: str
    anchor: str | None


@dataclass(frozen=True)
class Row:
    arch: str
    kernel: str
    release: str | None
    slots: list[Slot | None]


@dataclass(frozen=True)
class Tested:
    kernel: str
    release: str | None
    statuses: list[tuple[str, str]]  # (suite, status)


@dataclass(frozen=True)
class Minimum:
    """A (arch, driver) with a declared minimum: what was tested, and whether the minimum was."""

    arch: str
    driver: str
    declared: str
    tested: list[Tested]
    verdict: str
    verdict_class: str  # ok, gap, bad


@dataclass(frozen=True)
class BenchSection:
    plots: list[tuple[str, str]] = field(default_factory=list)  # (caption, data: URI)
    tables: str | None = None


def anchor(record: CellRecord) -> str:
    return f"cell-{record.cell}"


def _slot(record: CellRecord) -> Slot:
    title = record.status if not record.reason else f"{record.status}: {record.reason}"
    return Slot(record.status, record.cell, title, None if record.status == "pass" else anchor(record))


def _matrix(results: RunResults) -> tuple[list[tuple[str, list[str]]], list[Row]]:
    """Column groups (driver -> suites) and rows (arch x kernel) of the matrix table."""
    matrix = grid(results)
    groups: dict[str, list[str]] = {}
    for driver, suite in matrix.columns:
        groups.setdefault(driver, []).append(suite)
    rows = []
    for row in matrix.rows:
        slots = [(_slot(record) if (record := matrix.get(row, column)) else None) for column in matrix.columns]
        rows.append(Row(row[0], row[1], matrix.releases.get(row), slots))
    return list(groups.items()), rows


def _major_minor(release: str | None) -> tuple[int, int] | None:
    match = _MAJOR_MINOR_RE.match(release or "")
    return (int(match[1]), int(match[2])) if match else None


def _oldest_first(tested: Tested) -> tuple[bool, tuple[int, int], str]:
    version = _major_minor(tested.release)
    return (version is None, version or (0, 0), tested.kernel)


def _verdict(declared: str, records: list[CellRecord]) -> tuple[str, str]:
    passed = [version for r in records if r.status == "pass" and (version := _major_minor(r.kernel_release))]
    wanted = _major_minor(declared)
    if not passed and all(r.status == "skip" for r in records):
        return "not tested: every cell was skipped", "gap"
    if not passed:
        return "no tested kernel passed", "bad"
    oldest = min(passed)
    text = f"{oldest[0]}.{oldest[1]}"
    if wanted is None or oldest == wanted:
        return f"passes at {text}, the declared minimum", "ok"
    if oldest > wanted:
        return f"oldest passing kernel is {text}: {declared} itself is untested", "gap"
    return f"passes at {text}, below the declared {declared}", "ok"


def _minimums(results: RunResults) -> list[Minimum]:
    by_pair: dict[tuple[str, str], list[CellRecord]] = {}
    for record in results.cells:
        if record.declared_min:
            by_pair.setdefault((record.arch, record.driver), []).append(record)
    minimums = []
    for (arch, driver), records in by_pair.items():
        declared = records[0].declared_min or ""
        kernels: dict[str, list[CellRecord]] = {}
        for record in records:
            kernels.setdefault(record.kernel, []).append(record)
        tested = [Tested(kernel, next((r.kernel_release for r in group if r.kernel_release), None),
                         [(r.suite, r.status) for r in group]) for kernel, group in kernels.items()]
        tested.sort(key=_oldest_first)
        minimums.append(Minimum(arch, driver, declared, tested, *_verdict(declared, records)))
    return minimums


def _bench(bench_dir: Path | None) -> BenchSection | None:
    if bench_dir is None:
        return None
    if not bench_dir.is_dir():
        raise ConfigError(f"{bench_dir}: not a directory", hint="pass the output directory of `kmatrix bench`")
    plots = [(caption, "data:image/png;base64," + base64.b64encode((bench_dir / name).read_bytes()).decode("ascii"))
             for name, caption in BENCH_PLOTS.items() if (bench_dir / name).is_file()]
    tables = None
    markdown = bench_dir / "report.md"
    if markdown.is_file():
        # The plots are embedded above: their image links would point at files the reader may not have.
        lines = [line for line in markdown.read_text(encoding="utf-8").splitlines() if not line.startswith("![")]
        tables = "\n".join(lines).strip() or None
    return BenchSection(plots, tables) if plots or tables else None


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("harness.report", "templates"),
        autoescape=True,  # every value from the run is text, never markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_html(results: RunResults, bench_dir: Path | None = None) -> str:
    """The report as one HTML document with no external reference."""
    groups, rows = _matrix(results)
    details = [record for record in results.cells if record.status != "pass"]
    template = _environment().get_template("report.html.j2")
    return template.render(
        results=results,
        counts=results.counts(),
        statuses=STATUSES,
        groups=groups,
        rows=rows,
        details=details,
        anchor=anchor,
        minimums=_minimums(results),
        bench=_bench(bench_dir),
    )
