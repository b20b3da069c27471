"""Throughput benchmarks (pytest-benchmark), one case per (arch, newest kernel, subject).

    pytest benchmarks/ [--kmatrix-arch x86_64] --benchmark-json=out.json [--benchmark-compare]

All subjects of an architecture are measured in one guest run (harness/bench/run.py), each
against baselines taken moments before in that guest: the first case of an architecture runs it,
and that guest run's host wall time is what pytest-benchmark times (one round). The figures that
matter were measured in the guest and are in each case's `extra_info`: overhead ratio (syscalls/s
with capture over without), syscalls/s, events/s delivered, drops, per mix and configuration, with
the accelerator they ran under (TCG figures are not hardware figures; the ratios are the headline).
The full results JSON and the report (tables, PNG plots) are written under runs/bench-pytest/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.bench.results import BenchResults, BenchRun, new_results
from harness.bench.run import PEERS, BenchOptions, bench_cell, bench_drivers, git_revision
from harness.matrix import load_matrix
from harness.paths import default_matrix_path, project_root
from harness.runner import Workspace

pytestmark = pytest.mark.vm
OUT = project_root() / "runs" / "bench-pytest"
_RUNS: dict[str, BenchRun] = {}
_RESULTS: list[BenchResults] = []


def _archs(config: pytest.Config) -> list[str]:
    matrix = load_matrix(default_matrix_path())
    wanted = config.getoption("--kmatrix-arch")
    names = [a.strip() for a in wanted.split(",")] if wanted else list(matrix.architectures)
    return [a for a in matrix.architectures if a in names]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bench_subject" in metafunc.fixturenames:
        drivers = bench_drivers(load_matrix(default_matrix_path()))
        cases = [(arch, subject) for arch in _archs(metafunc.config) for subject in (*drivers, *PEERS)]
        metafunc.parametrize(
            "bench_subject",
            [pytest.param(case, id=f"{case[0]}-{case[1]}", marks=[getattr(pytest.mark, f"arch_{case[0]}")])
             for case in cases],
        )


def _run_for(workspace: Workspace, arch: str) -> BenchRun:
    if arch not in _RUNS:
        from harness.bench.report import write_report
        from harness.bench.results import save_results

        ref = workspace.matrix.newest_kernel(arch)
        _RUNS[arch] = bench_cell(workspace, arch, ref, OUT, options=BenchOptions())
        if not _RESULTS:
            _RESULTS.append(new_results(git_revision=git_revision()))
        _RESULTS[0].runs.append(_RUNS[arch])
        save_results(_RESULTS[0], OUT / "bench.json")
        write_report(_RESULTS[0], OUT)
    return _RUNS[arch]


def test_throughput(benchmark: Any, workspace: Workspace, bench_subject: tuple[str, str]) -> None:
    arch, subject = bench_subject
    run = benchmark.pedantic(_run_for, args=(workspace, arch), rounds=1, iterations=1)
    result = next((s for s in run.subjects if s.subject == subject), None)
    benchmark.extra_info.update({"arch": arch, "kernel": run.kernel, "kernel_release": run.kernel_release,
                                 "accel": run.accel, "vcpus": run.vcpus, "baseline": run.baseline})
    if result is None:
        pytest.fail(f"{arch}: {subject} has no result ({run.status}: {run.reason})")
    benchmark.extra_info["status"] = result.status
    benchmark.extra_info["measurements"] = [m.model_dump(exclude={"repeats"}) for m in result.measurements]
    default = next((m for m in result.measurements if m.mix == "getppid" and m.sample_every == 1
                    and not m.pinned and m.batch is None and m.buffer_mib in (8, None)), None)
    if default is not None:
        benchmark.extra_info.update({"overhead_ratio": default.overhead_ratio, "events_per_s": default.events_per_s,
                                     "drop_ratio": default.drop_ratio})
    if result.status == "skip":
        pytest.skip(result.reason or "not applicable")
    assert result.status == "pass", result.reason
    assert Path(OUT / "bench.json").exists()
