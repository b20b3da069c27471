"""The throughput benchmark's report: report.md, overhead.png and buffers.png next to the results JSON.

Tables show each subject at the default configuration (8 MiB buffer for drivers, every call,
unpinned, unbatched). When the results hold two runs of the same (arch, kernel) (see
`merge_results`), tables show the last one and a stability section compares their overhead
ratios, flagging differences above `STABILITY_THRESHOLD`.

Figures are drawn on matplotlib's Agg canvas directly (`Figure` + `FigureCanvasAgg`): no pyplot,
so no GUI backend, no global figure registry to leak, and nothing to close. matplotlib is
imported lazily, so `render_table` (the CLI's path) does not pay for it. Output is deterministic:
the PNG carries no Software/date metadata and the SVG hash salt is fixed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.archs import ARCH_NAMES
from harness.bench.results import (
    MIXES,
    PEERS,
    SUBJECTS,
    BenchResults,
    BenchRun,
    Measurement,
    Mix,
    SubjectResult,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "STABILITY_THRESHOLD",
    "cheapest_drivers",
    "latest_runs",
    "render_markdown",
    "render_table",
    "stability",
    "write_report",
]

STABILITY_THRESHOLD = 0.15
HEADLINE_MIX = "getppid"
DASH = "—"

_COLORS = {
    "kmod": "#1f77b4",
    "bpf": "#ff7f0e",
    "modern_bpf": "#2ca02c",
    "falco-kmod": "#d62728",  # Falco's kmod read by sysdig (matrix.yaml drivers:)
    "ftrace": "#9467bd",
    "auditd": "#8c564b",
}
_HATCHES = {"getppid": "", "rw": "///"}
_LINESTYLES = {"getppid": ("-", "o"), "rw": ("--", "s")}
_PNG_METADATA: dict[str, str | None] = {"Software": None}


# ----------------------------------------------------------------------------- ordering


def _arch_key(arch: str) -> tuple[int, str]:
    return (ARCH_NAMES.index(arch), "") if arch in ARCH_NAMES else (len(ARCH_NAMES), arch)


def _subject_key(name: str) -> tuple[int, str]:
    """The listed drivers in their order, other drivers by name, then the peers."""
    if name in PEERS:
        return (len(SUBJECTS) + 1 + PEERS.index(name), "")
    return (SUBJECTS.index(name), "") if name in SUBJECTS else (len(SUBJECTS), name)


def _cells(results: BenchResults) -> dict[tuple[str, str], list[BenchRun]]:
    """(arch, kernel) -> its runs in file order, cells in arch order then first appearance."""
    cells: dict[tuple[str, str], list[BenchRun]] = {}
    for run in results.runs:
        cells.setdefault((run.arch, run.kernel), []).append(run)
    order = {key: index for index, key in enumerate(cells)}
    return dict(sorted(cells.items(), key=lambda item: (_arch_key(item[0][0]), order[item[0]])))


def latest_runs(results: BenchResults) -> list[BenchRun]:
    """The last run of each (arch, kernel), in architecture order."""
    return [runs[-1] for runs in _cells(results).values()]


def _generations(results: BenchResults) -> list[BenchResults]:
    """Split repeated cells: the k-th document holds the k-th run of every cell that has one."""
    cells = _cells(results)
    depth = max((len(runs) for runs in cells.values()), default=0)
    return [
        results.model_copy(update={"runs": [runs[k] for runs in cells.values() if len(runs) > k]}) for k in range(depth)
    ]


def _mixes(run: BenchRun) -> list[str]:
    present = set(run.baseline) | {m.mix for s in run.subjects for m in s.measurements}
    return [mix for mix in MIXES if mix in present]


def _subjects(run: BenchRun) -> list[SubjectResult]:
    return sorted(run.subjects, key=lambda s: _subject_key(s.subject))


def _run_title(run: BenchRun) -> str:
    release = f" ({run.kernel_release})" if run.kernel_release else ""
    vcpus = f"{run.vcpus} vCPU{'s' if run.vcpus != 1 else ''}"
    return f"{run.arch} {DASH} {run.kernel}{release}, {run.timing}, {vcpus}"


def _run_line(run: BenchRun, runs_of_cell: int) -> str:
    line = f"{run.repeats} repeat{'s' if run.repeats != 1 else ''} of {run.duration_s:g} s per measurement"
    line += f"; run status: {run.status}"
    if run.reason:
        line += f" ({_oneline(run.reason)})"
    if runs_of_cell > 1:
        line += f"; latest of {runs_of_cell} runs of this cell (see Stability)"
    return line


# ----------------------------------------------------------------------------- formatting


def _oneline(text: str) -> str:
    return " ".join(text.split())


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _ratio(value: float) -> str:
    return f"{value:.3f}"


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


@dataclass(frozen=True)
class _Row:
    subject: str
    kind: str
    mix: str
    syscalls: str
    overhead: str
    events: str
    drops: str
    note: str

    def cells(self) -> tuple[str, ...]:
        return (self.subject, self.kind, self.mix, self.syscalls, self.overhead, self.events, self.drops, self.note)


_HEADER = ("subject", "kind", "mix", "syscalls/s", "overhead ratio", "events/s", "drop %", "note")
_NUMERIC = frozenset({"syscalls/s", "overhead ratio", "events/s", "drop %"})


def _notes(subject: SubjectResult, measurement: Measurement | None, first: bool) -> str:
    notes: list[str] = []
    if first and subject.status != "pass":
        notes.append(f"{subject.status}: {_oneline(subject.reason)}" if subject.reason else subject.status)
    if measurement is None:
        notes.append("no default-configuration measurement")
    else:
        failed = measurement.failed_checks
        if failed:
            notes.append(f"checks failed: {', '.join(failed)}")
        if measurement.delivered_ratio is not None and measurement.delivered_ratio < 0.99 and measurement.drops == 0:
            notes.append(f"delivered {_percent(measurement.delivered_ratio)} of expected")
    return "; ".join(notes)


def _rows(run: BenchRun) -> list[_Row]:
    rows: list[_Row] = []
    mixes = _mixes(run)
    for mix in mixes:
        if mix in run.baseline:
            rows.append(_Row("baseline", DASH, mix, _rate(run.baseline[mix]), DASH, DASH, DASH, "no capture"))
    for subject in _subjects(run):
        if not subject.measurements:
            reason = _oneline(subject.reason) if subject.reason else "no reason given"
            note = f"skipped: {reason}" if subject.status == "skip" else f"{subject.status}: {reason}"
            rows.append(_Row(subject.subject, subject.kind, DASH, DASH, DASH, DASH, DASH, note))
            continue
        for index, mix in enumerate(mixes):
            m = subject.default_measurement(mix)
            note = _notes(subject, m, index == 0)
            if m is None:
                rows.append(_Row(subject.subject, subject.kind, mix, DASH, DASH, DASH, DASH, note))
            else:
                rows.append(
                    _Row(
                        subject.subject,
                        subject.kind,
                        mix,
                        _rate(m.syscalls_per_s),
                        _ratio(m.overhead_ratio),
                        _rate(m.events_per_s),
                        _percent(m.drop_ratio),
                        note,
                    )
                )
    return rows


def cheapest_drivers(results: BenchResults, mix: str = HEADLINE_MIX) -> list[tuple[BenchRun, str, float]]:
    """Per (latest) run: the driver with the highest overhead ratio at the default configuration."""
    found: list[tuple[BenchRun, str, float]] = []
    for run in latest_runs(results):
        best: tuple[str, float] | None = None
        for subject in _subjects(run):
            if subject.kind != "driver" or subject.status != "pass":
                continue
            m = subject.default_measurement(mix)
            if m is not None and (best is None or m.overhead_ratio > best[1]):
                best = (subject.subject, m.overhead_ratio)
        if best is not None:
            found.append((run, *best))
    return found


def _cheapest_line(results: BenchResults) -> str:
    runs = latest_runs(results)
    archs = [run.arch for run in runs]
    parts = []
    for run, driver, ratio in cheapest_drivers(results):
        where = run.arch if archs.count(run.arch) == 1 else run.label
        parts.append(f"{where} ({run.timing}): {driver} {_ratio(ratio)}")
    return "; ".join(parts) if parts else "no driver passed"


# ----------------------------------------------------------------------------- stability


def stability(a: BenchResults, b: BenchResults) -> list[dict[str, Any]]:
    """Overhead ratios of the default measurements present in both: |ra - rb| / max(ra, rb).

    One dict per (arch, kernel, subject, mix): arch, kernel, subject, mix, accel, ratio_a,
    ratio_b, rel_diff and flagged (rel_diff > STABILITY_THRESHOLD). When a document holds
    several runs of a cell, its last one is used.
    """
    rows: list[dict[str, Any]] = []
    others = {(run.arch, run.kernel): run for run in latest_runs(b)}
    for run_a in latest_runs(a):
        run_b = others.get((run_a.arch, run_a.kernel))
        if run_b is None:
            continue
        accel = run_a.timing if run_a.timing == run_b.timing else f"{run_a.timing}/{run_b.timing}"
        for subject in _subjects(run_a):
            for mix in MIXES:
                ma = subject.default_measurement(mix)
                mb = run_b.default_measurement(subject.subject, mix)
                if ma is None or mb is None:
                    continue
                ra, rb = ma.overhead_ratio, mb.overhead_ratio
                top = max(ra, rb)
                diff = abs(ra - rb) / top if top > 0 else 0.0
                rows.append(
                    {
                        "arch": run_a.arch,
                        "kernel": run_a.kernel,
                        "subject": subject.subject,
                        "mix": mix,
                        "accel": accel,
                        "ratio_a": ra,
                        "ratio_b": rb,
                        "rel_diff": diff,
                        "flagged": diff > STABILITY_THRESHOLD,
                    }
                )
    return rows


def _stability_rows(results: BenchResults) -> list[tuple[int, dict[str, Any]]]:
    """Consecutive runs of repeated cells: (index of the later run, 2.., stability row)."""
    generations = _generations(results)
    rows: list[tuple[int, dict[str, Any]]] = []
    for k in range(1, len(generations)):
        rows.extend((k + 1, row) for row in stability(generations[k - 1], generations[k]))
    return rows


# ----------------------------------------------------------------------------- markdown


def _md_cell(text: str) -> str:
    return _oneline(text).replace("|", "\\|")


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Iterable[str] = ()) -> list[str]:
    right = set(numeric)
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---:" if column in right else "---" for column in header) + "|")
    lines.extend("| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in rows)
    return lines


def render_markdown(results: BenchResults) -> str:
    """report.md's text."""
    cells = _cells(results)
    runs = [cell_runs[-1] for cell_runs in cells.values()]
    accels = sorted({run.timing for run in runs})
    revision = f", git {results.git_revision}" if results.git_revision else ""
    lines = [
        "# kmatrix syscall throughput benchmark",
        "",
        f"kmatrix {results.kmatrix_version}{revision}, created {results.created}; "
        f"accelerator: {', '.join(accels) or DASH}.",
        "",
        "Overhead ratio = syscalls/s with capture / syscalls/s without, the baseline interleaved with the "
        "repeats of the same run (1.000 = free). Ratios are the headline: absolute rates depend on the "
        "accelerator, and rates under QEMU TCG are not comparable to hardware. Under `tcg icount` the guest's "
        "clock counts emulated instructions (2**shift ns each) instead of host time: rates are per instruction "
        "budget and repeat on a busy host; `tcg` alone is the host's real time.",
        "",
        "Default configuration: 8 MiB buffer (drivers), every syscall, unpinned, unlimited drain batch.",
        "",
        f"**Cheapest driver per architecture** ({HEADLINE_MIX} mix, highest overhead ratio): {_cheapest_line(results)}",
    ]
    for cell_runs in cells.values():
        run = cell_runs[-1]
        lines += ["", f"## {_run_title(run)}", "", _run_line(run, len(cell_runs)), ""]
        rows = _rows(run)
        if rows:
            lines += _md_table(_HEADER, (row.cells() for row in rows), _NUMERIC)
        else:
            lines.append("No measurements.")
    pairs = _stability_rows(results)
    if pairs:
        flagged = sum(1 for _, row in pairs if row["flagged"])
        lines += [
            "",
            "## Stability",
            "",
            "Overhead ratios of the same cell measured in two runs: |a - b| / max(a, b); "
            f"differences above {STABILITY_THRESHOLD:.0%} are flagged. "
            f"{flagged} of {len(pairs)} flagged.",
            "",
        ]
        header = (
            "arch",
            "kernel",
            "subject",
            "mix",
            "accel",
            "run",
            "ratio (earlier)",
            "ratio (later)",
            "difference",
            "flag",
        )
        table = [
            (
                row["arch"],
                row["kernel"],
                row["subject"],
                row["mix"],
                row["accel"],
                f"{k - 1} vs {k}",
                _ratio(row["ratio_a"]),
                _ratio(row["ratio_b"]),
                _percent(row["rel_diff"]),
                f"**> {STABILITY_THRESHOLD:.0%}**" if row["flagged"] else "",
            )
            for k, row in pairs
        ]
        lines += _md_table(header, table, ("ratio (earlier)", "ratio (later)", "difference"))
    lines += [
        "",
        "## Figures",
        "",
        "![Overhead ratio per subject](overhead.png)",
        "",
        "![Delivered events and drops against buffer size](buffers.png)",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plain text


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Iterable[str] = ()) -> list[str]:
    right = set(numeric)
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if column in right else cell.ljust(width)
            for cell, width, column in zip(cells, widths, header, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return [line(header), "  ".join("-" * width for width in widths), *(line(row) for row in rows)]


def render_table(results: BenchResults) -> str:
    """The report's tables as plain text (no colour, no markup, no wrapping) for the CLI."""
    cells = _cells(results)
    if not cells:
        return "no benchmark runs\n"
    lines: list[str] = []
    for cell_runs in cells.values():
        run = cell_runs[-1]
        lines += [_run_title(run), _run_line(run, len(cell_runs)), ""]
        rows = [[_oneline(cell) for cell in row.cells()] for row in _rows(run)]
        lines += _text_table(_HEADER, rows, _NUMERIC) if rows else ["no measurements"]
        lines.append("")
    lines.append(f"cheapest driver ({HEADLINE_MIX}): {_cheapest_line(results)}")
    pairs = _stability_rows(results)
    if pairs:
        flagged = [row for _, row in pairs if row["flagged"]]
        lines.append(
            f"stability: {len(flagged)} of {len(pairs)} ratios differ by more than "
            f"{STABILITY_THRESHOLD:.0%} between runs"
        )
        lines += [
            f"  {row['arch']}/{row['kernel']} {row['subject']} {row['mix']}: "
            f"{_ratio(row['ratio_a'])} vs {_ratio(row['ratio_b'])} ({_percent(row['rel_diff'])})"
            for row in flagged
        ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- figures


def _style() -> AbstractContextManager[None]:
    """Fixed rc settings for every figure: bundled font, fixed SVG hash salt."""
    import matplotlib

    return matplotlib.rc_context({"svg.hashsalt": "kmatrix", "font.family": "DejaVu Sans", "axes.titlesize": "medium"})


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> None:
    with _style():
        figure.savefig(path, format="png", metadata=_PNG_METADATA)
    figure.clear()


def _accel_text(runs: Sequence[BenchRun]) -> str:
    return "/".join(sorted({run.timing for run in runs})) or DASH


def plot_overhead(results: BenchResults, path: Path) -> Path:
    """overhead.png: grouped bars, one group per (arch, kernel), one bar per subject and mix."""
    from matplotlib.patches import Patch

    runs = latest_runs(results)
    subjects = sorted({s.subject for run in runs for s in run.subjects}, key=_subject_key)
    mixes = [mix for mix in MIXES if any(mix in _mixes(run) for run in runs)]
    bars = [(subject, mix) for subject in subjects for mix in mixes]
    with _style():
        figure = _new_figure(max(8.0, 1.9 * len(runs) + 3.5), 5.0)
        axes = figure.add_subplot()
        width = 0.84 / max(len(bars), 1)
        for group, run in enumerate(runs):
            if not any(run.default_measurement(name, mix) for name, mix in bars):
                axes.text(group, 0.02, f"run {run.status}: no measurements", ha="center", va="bottom", fontsize=8)
            for index, (name, mix) in enumerate(bars):
                x = group - 0.42 + width * (index + 0.5)
                found = run.subject(name)
                m = run.default_measurement(name, mix)
                if m is not None:
                    axes.bar(
                        x,
                        m.overhead_ratio,
                        width,
                        color=_COLORS.get(name, "#7f7f7f"),
                        hatch=_HATCHES.get(mix, ""),
                        edgecolor="white" if not _HATCHES.get(mix) else "black",
                        linewidth=0.4,
                    )
                elif found is not None and mix == mixes[0]:
                    axes.text(x, 0.01, found.status, rotation=90, ha="center", va="bottom", fontsize=7, color="#555555")
        axes.axhline(1.0, color="#888888", linestyle="--", linewidth=0.8)
        axes.set_xticks(range(len(runs)), [f"{run.arch}\n{run.kernel}\n{run.timing}" for run in runs])
        axes.set_xlim(-0.6, max(len(runs), 1) - 0.4)
        axes.set_ylim(bottom=0)
        axes.set_ylabel(f"overhead ratio (with / without capture, {_accel_text(runs)})")
        axes.set_title(
            f"Syscall throughput with capture relative to without, default configuration (accel: {_accel_text(runs)})"
        )
        axes.grid(axis="y", linewidth=0.4, alpha=0.5)
        handles = [Patch(facecolor=_COLORS.get(name, "#7f7f7f"), label=name) for name in subjects]
        handles += [
            Patch(facecolor="white", edgecolor="black", hatch=_HATCHES.get(mix, ""), label=f"mix: {mix}")
            for mix in mixes
        ]
        if handles:
            axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        if not runs:
            axes.text(0.5, 0.5, "no benchmark runs", transform=axes.transAxes, ha="center")
    _save(figure, path)
    return path


def _sweep(subject: SubjectResult, mix: str) -> list[Measurement]:
    points = [
        m
        for m in subject.measurements
        if m.mix == mix and m.buffer_mib is not None and m.sample_every == 1 and not m.pinned and m.batch is None
    ]
    return sorted(points, key=lambda m: m.buffer_mib or 0)


def _sweep_mixes(run: BenchRun) -> list[Mix]:
    """The mixes worth a line: those some driver measured at two buffer sizes or more (else any measured)."""
    drivers = [s for s in run.subjects if s.kind == "driver"]
    swept = [mix for mix in MIXES if any(len(_sweep(s, mix)) > 1 for s in drivers)]
    return swept or [mix for mix in MIXES if any(_sweep(s, mix) for s in drivers)]


def _thousands(value: float, _position: int | None = None) -> str:
    return f"{value:,.0f}"


def _mib(value: float, _position: int | None = None) -> str:
    return f"{value:g}"


def plot_buffers(results: BenchResults, path: Path) -> Path:
    """buffers.png: per (arch, kernel), delivered events/s and drop % against buffer size, one line per driver."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    runs = [run for run in latest_runs(results) if _sweep_mixes(run)]
    accel = _accel_text(runs or latest_runs(results))
    with _style():
        figure = _new_figure(11.0, max(3.4 * len(runs), 3.0) + 0.6)
        figure.suptitle(f"Ring-buffer size sweep (drivers; every syscall, unpinned, unlimited batch; accel: {accel})")
        if not runs:
            axes = figure.add_subplot()
            axes.set_axis_off()
            axes.text(0.5, 0.5, "no buffer-size measurements", transform=axes.transAxes, ha="center")
        else:
            grid = figure.subplots(len(runs), 2, squeeze=False)
            for row, run in enumerate(runs):
                left: Axes = grid[row][0]
                right: Axes = grid[row][1]
                sizes: set[int] = set()
                for subject in _subjects(run):
                    if subject.kind != "driver":
                        continue
                    for mix in _sweep_mixes(run):
                        points = _sweep(subject, mix)
                        if not points:
                            continue
                        xs = [m.buffer_mib or 0 for m in points]
                        sizes.update(xs)
                        style, marker = _LINESTYLES.get(mix, ("-", "o"))
                        common: dict[str, Any] = {
                            "color": _COLORS.get(subject.subject, "#7f7f7f"),
                            "linestyle": style,
                            "marker": marker,
                            "label": f"{subject.subject} ({mix})",
                        }
                        left.plot(xs, [m.events_per_s for m in points], **common)
                        right.plot(xs, [100 * m.drop_ratio for m in points], **common)
                where = f"{run.arch} {DASH} {run.kernel}, {run.timing}"
                left.set_title(f"{where}: delivered events/s")
                right.set_title(f"{where}: drop %")
                left.set_ylabel(f"events/s ({run.timing})")
                left.yaxis.set_major_formatter(FuncFormatter(_thousands))
                right.set_ylabel("drop %")
                ticks = sorted(sizes)
                for axes in (left, right):
                    axes.set_ylim(bottom=0)
                    axes.set_xscale("log", base=2)
                    axes.xaxis.set_major_locator(FixedLocator(ticks))
                    axes.xaxis.set_minor_locator(NullLocator())
                    axes.xaxis.set_major_formatter(FuncFormatter(_mib))
                    axes.set_xlabel("buffer size (MiB)")
                    axes.grid(linewidth=0.4, alpha=0.5)
                right.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    _save(figure, path)
    return path


# ----------------------------------------------------------------------------- entry point


def write_report(results: BenchResults, out_dir: Path) -> list[Path]:
    """Write report.md, overhead.png and buffers.png into `out_dir` (next to the results JSON)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / "report.md"
    markdown.write_text(render_markdown(results), encoding="utf-8")
    return [markdown, plot_overhead(results, out_dir / "overhead.png"), plot_buffers(results, out_dir / "buffers.png")]
