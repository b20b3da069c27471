"""Sharding for real: two shards run separately and merged give the report of one unsharded run.

The cells: the legacy probe's capture suite on the newest x86_64 and riscv64 kernels. The riscv64
cell always skips with its reason (no legacy probe there), so the report has a pass and a skip and
each shard gets one (by expected cost). Every run goes through the `kmatrix` command, as a CI
job's would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.report.schema import load_results

pytestmark = [pytest.mark.vm, pytest.mark.arch_x86_64]

SELECT = ["--profile", "default", "--arch", "x86_64,riscv64", "--driver", "bpf", "--suite", "capture"]


def kmatrix(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True,
                          timeout=1800, check=False)


def comparable(path: Path) -> list[tuple[str, str, str | None]]:
    return [(c.cell, c.status, c.reason) for c in load_results(path).cells]


def test_two_shards_merged_give_the_unsharded_report(tmp_path: Path) -> None:
    whole = kmatrix("run", *SELECT, "--quiet", "-o", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    for index in (1, 2):
        shard = kmatrix("run", *SELECT, "--quiet", "--shard", f"{index}/2", "-o", tmp_path / f"shard{index}")
        assert shard.returncode == 0, shard.stderr[-3000:]
        assert load_results(tmp_path / f"shard{index}" / "results.json").shard == f"{index}/2"
    merged = kmatrix("report", "merge", tmp_path / "shard1" / "results.json", tmp_path / "shard2" / "results.json",
                     "-o", tmp_path / "merged")
    assert merged.returncode == 0, merged.stderr[-3000:]
    rendered = kmatrix("report", "render", tmp_path / "whole" / "results.json", "-o", tmp_path / "whole-report")
    assert rendered.returncode == 0, rendered.stderr[-3000:]

    assert comparable(tmp_path / "merged" / "results.json") == comparable(tmp_path / "whole-report" / "results.json")
    statuses = {status for _cell, status, _reason in comparable(tmp_path / "merged" / "results.json")}
    assert statuses == {"pass", "skip"}
    # The Markdown summary (what a CI step shows) is the same text, line for line.
    merged_md = (tmp_path / "merged" / "summary.md").read_text()
    whole_md = (tmp_path / "whole-report" / "summary.md").read_text()
    assert _matrix_lines(merged_md) == _matrix_lines(whole_md)


def _matrix_lines(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("|")]
