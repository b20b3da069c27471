"""Release qualification: the throughput cells of a run, measured by the benchmark and folded back.

`kmatrix run` leaves throughput cells to `kmatrix bench` (one guest per arch and kernel measures
every driver at once). `kmatrix qualify` runs the benchmark for every (arch, kernel) that has a
runnable throughput cell and turns each driver's figures into that cell's status, so the matrix
and its reports show the throughput suite like any other.
"""

from __future__ import annotations

from pathlib import Path

from harness.bench.results import BenchResults, BenchRun
from harness.matrix_run import THROUGHPUT_REASON
from harness.report.schema import CellRecord, RunResults
from harness.runner import Workspace


def bench_targets(results: RunResults) -> list[tuple[str, str]]:
    """(arch, kernel label) of throughput cells the run left to the benchmark, in run order."""
    wanted: list[tuple[str, str]] = []
    for record in results.cells:
        if record.suite == "throughput" and record.reason == THROUGHPUT_REASON:
            key = (record.arch, record.kernel)
            if key not in wanted:
                wanted.append(key)
    return wanted


def run_bench_for(ws: Workspace, results: RunResults, out_dir: Path, *,
                  quick: bool = True) -> tuple[Path, BenchResults]:
    """The benchmark (both mixes per driver, both peers; `quick=False`: every sweep) for those cells."""
    from harness.bench.report import write_report
    from harness.bench.run import BenchOptions, bench

    refs = {(arch, ref.label): ref for arch in ws.matrix.architectures for ref in ws.matrix.kernels(arch)}
    cells = [(arch, refs[(arch, label)]) for arch, label in bench_targets(results)]
    drivers = sorted({r.driver for r in results.cells if r.suite == "throughput"})
    bench_results = bench(ws, cells, out_dir, drivers=drivers, options=BenchOptions(quick=quick))
    write_report(bench_results, out_dir)
    return out_dir, bench_results


def _headline(run: BenchRun, driver: str) -> dict[str, float]:
    ratios: dict[str, float] = {}
    for mix in ("getppid", "rw"):
        measurement = run.default_measurement(driver, mix)
        if measurement is not None:
            ratios[f"overhead_ratio_{mix}"] = measurement.overhead_ratio
            ratios[f"drop_ratio_{mix}"] = measurement.drop_ratio
    return ratios


def fold_bench(results: RunResults, bench_results: BenchResults) -> RunResults:
    """Throughput cells take their driver's status and headline figures from the benchmark run."""
    runs = {(run.arch, run.kernel): run for run in bench_results.runs}
    cells: list[CellRecord] = []
    for record in results.cells:
        run = runs.get((record.arch, record.kernel))
        if record.suite != "throughput" or record.reason != THROUGHPUT_REASON or run is None:
            cells.append(record)
            continue
        subject = run.subject(record.driver)
        status: str = subject.status if subject else ("error" if run.status == "error" else "skip")
        reason: str | None = subject.reason if subject else (run.reason or "not measured")
        metrics = {**record.metrics, **(_headline(run, record.driver) if subject else {}), "bench_clock": run.timing}
        cells.append(record.model_copy(update={"status": status, "reason": reason, "metrics": metrics,
                                               "accelerator": run.accel, "kernel_release": run.kernel_release}))
    return results.model_copy(update={"cells": cells})
