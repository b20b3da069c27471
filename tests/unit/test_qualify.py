"""kmatrix qualify: throughput cells take their status and headline figures from the benchmark."""

from __future__ import annotations

from pathlib import Path

from test_bench_report import results as bench_results

from harness.bench.results import SubjectResult
from harness.matrix_run import THROUGHPUT_REASON
from harness.paths import default_matrix_path
from harness.qualify import bench_targets, fold_bench
from harness.report.schema import CellRecord, new_run_results


def record(arch: str, driver: str, suite: str, status: str = "skip", reason: str | None = None) -> CellRecord:
    return CellRecord(cell=f"{arch}-bookworm-backports-{driver}-{suite}", arch=arch, kernel="bookworm-backports",
                      driver=driver, suite=suite, status=status, reason=reason)  # type: ignore[arg-type]


def run_results() -> object:
    cells = [record("x86_64", "kmod", "capture", "pass"),
             record("x86_64", "kmod", "throughput", reason=THROUGHPUT_REASON),
             record("x86_64", "bpf", "throughput", reason=THROUGHPUT_REASON),
             record("aarch64", "modern_bpf", "throughput", reason=THROUGHPUT_REASON),
             record("riscv64", "bpf", "throughput", reason="bpf does not support riscv64")]
    return new_run_results(cells, profile="full", shard=None, matrix_path=default_matrix_path())


def test_only_cells_left_to_the_benchmark_are_measured() -> None:
    assert bench_targets(run_results()) == [("x86_64", "bookworm-backports"),
                                                  ("aarch64", "bookworm-backports")]


def test_throughput_cells_take_the_driver_status_and_headline_ratios(tmp_path: Path) -> None:
    bench = bench_results()
    failing = bench.runs[1].subject("bpf")
    assert isinstance(failing, SubjectResult)
    failing.status, failing.reason = "fail", "check failed: sampling"
    folded = {c.cell: c for c in fold_bench(run_results(), bench).cells}  # type: ignore[arg-type]
    kmod = folded["x86_64-bookworm-backports-kmod-throughput"]
    assert kmod.status == "pass" and kmod.reason is None
    assert kmod.metrics["overhead_ratio_getppid"] == 0.40 and kmod.metrics["overhead_ratio_rw"] == 0.60
    assert kmod.kernel_release == "6.12.12+bpo-amd64" and kmod.metrics["bench_clock"] == "tcg"
    assert folded["x86_64-bookworm-backports-bpf-throughput"].status == "fail"
    assert folded["aarch64-bookworm-backports-modern_bpf-throughput"].status == "pass"
    # Untouched: a suite the benchmark does not own, and a statically skipped cell.
    assert folded["x86_64-bookworm-backports-kmod-capture"].status == "pass"
    assert folded["riscv64-bookworm-backports-bpf-throughput"].reason == "bpf does not support riscv64"
