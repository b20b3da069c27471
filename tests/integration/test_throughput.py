"""The throughput suite end to end on x86_64's newest kernel (marker vm): every driver (falco-kmod with
sysdig too) and the ftrace peer measured in one guest, quick configuration. Figures are not asserted (they depend on the
machine); what is: every subject ran, was consumed, and its measurement is complete and sane.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.bench.run import BenchOptions, bench_cell
from harness.runner import Workspace

pytestmark = [pytest.mark.vm, pytest.mark.arch_x86_64]


def test_quick_throughput_run(workspace: Workspace, tmp_path: Path) -> None:
    ref = workspace.matrix.newest_kernel("x86_64")
    run = bench_cell(workspace, "x86_64", ref, tmp_path, peers=["ftrace"],
                     options=BenchOptions(repeats=1, duration_ms=500, quick=True))
    assert run.status == "pass", run.reason
    # every declared driver (Falco's module, read by sysdig, too) and the peer
    assert {s.subject for s in run.subjects} == {"kmod", "bpf", "modern_bpf", "falco-kmod", "ftrace"}
    assert set(run.baseline) == {"getppid", "rw"} and all(v > 0 for v in run.baseline.values())
    for subject in run.subjects:
        assert subject.status == "pass", f"{subject.subject}: {subject.reason}"
        assert {m.mix for m in subject.measurements} == {"getppid", "rw"}
        for m in subject.measurements:
            assert m.events > 0 and m.overhead_ratio > 0
            assert m.events + m.drops > 0
            assert m.delivered_ratio is not None and m.delivered_ratio <= 1.05
