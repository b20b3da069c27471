"""kmatrix qualify for real: a capture cell and a throughput cell on x86_64's newest kernel.

The throughput cell is measured by the benchmark in its own guest and folded back into the matrix
with its headline ratios; every report lands in the output directory, the HTML with the plots.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.report.schema import load_results

pytestmark = [pytest.mark.vm, pytest.mark.arch_x86_64]


def test_qualify_runs_cells_and_the_benchmark_and_writes_every_report(workspace: object, tmp_path: Path) -> None:
    newest = workspace.matrix.newest_kernel("x86_64").label  # type: ignore[attr-defined]
    done = subprocess.run(
        [sys.executable, "-m", "harness", "qualify", "--quiet", "--arch", "x86_64", "--driver", "kmod",
         "--suite", "capture,throughput", "--kernel", newest, "-o", str(tmp_path / "q")],
        capture_output=True, text=True, timeout=1800, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "q"
    assert {p.name for p in out.iterdir()} >= {"results.json", "junit.xml", "report.html", "summary.md", "bench"}
    cells = {c.suite: c for c in load_results(out / "results.json").cells}
    assert cells["capture"].status == "pass"
    throughput = cells["throughput"]
    assert throughput.status == "pass", throughput.reason
    for mix in ("getppid", "rw"):
        assert 0 < throughput.metrics[f"overhead_ratio_{mix}"] < 1
    assert throughput.metrics["bench_clock"].startswith("tcg")
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 2
