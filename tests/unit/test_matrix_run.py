"""The run loop: results.json after every cell, interruptions kept, shards that merge into the whole."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from harness import matrix_run
from harness.cells import CellResult
from harness.matrix import Cell, load_matrix
from harness.matrix_run import THROUGHPUT_REASON, RunPlan, run_plan
from harness.paths import default_matrix_path
from harness.report.merge import merge_results
from harness.report.schema import load_results
from harness.shard import shard_cells


@pytest.fixture
def ws() -> Any:
    path = default_matrix_path()
    return SimpleNamespace(matrix=load_matrix(path), say=lambda _m: None, matrix_path=path)


def fake_runner(calls: list[str], interrupt_at: str | None = None) -> Any:
    def run(_ws: Any, cell: Cell, _run_dir: Path, *, fault: str | None = None, target: str | None = None) -> CellResult:
        calls.append(cell.id)
        if cell.id == interrupt_at:
            raise KeyboardInterrupt
        status = "fail" if cell.driver == "bpf" and cell.arch == "s390x" else "pass"
        return CellResult(cell.id, cell.arch, cell.kernel.label, cell.driver, cell.suite, status=status,
                          reason="first mismatch: openat" if status == "fail" else None, accel="tcg",
                          timings={"boot_s": 1.0})
    return run


def _run(ws: Any, cells: list[Cell], run_dir: Path, shard: str | None = None) -> Any:
    return run_plan(ws, RunPlan(cells, run_dir, "full", shard=shard), console=Console(file=open("/dev/null", "w")),
                    live=False, quiet=True)


def test_every_cell_is_written_in_run_order_with_throughput_left_to_bench(
    ws: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setitem(matrix_run.SUITE_RUNNERS, "capture", fake_runner(calls))
    cells = ws.matrix.cells("full", archs=["x86_64", "s390x"], suites=["capture", "throughput"])
    results = _run(ws, cells, tmp_path)
    saved = load_results(tmp_path / "results.json")
    assert sorted(c.cell for c in saved.cells) == sorted(c.id for c in cells)  # stored in canonical order
    assert saved.interrupted is False
    throughput = [c for c in saved.cells if c.suite == "throughput"]
    assert throughput and all(c.status == "skip" for c in throughput)
    assert any(c.reason == THROUGHPUT_REASON for c in throughput)
    assert {c.status for c in results.cells if c.suite == "capture"} == {"pass", "fail"}
    assert json.loads((tmp_path / "results.json").read_text())["schema_version"] == 1


def test_an_interrupted_run_keeps_the_finished_cells_and_says_so(
    ws: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cells = ws.matrix.cells("full", archs=["x86_64"], suites=["capture"])
    calls: list[str] = []
    monkeypatch.setitem(matrix_run.SUITE_RUNNERS, "capture", fake_runner(calls, interrupt_at=cells[2].id))
    with pytest.raises(KeyboardInterrupt):
        _run(ws, cells, tmp_path)
    saved = load_results(tmp_path / "results.json")
    assert saved.interrupted is True
    assert sorted(c.cell for c in saved.cells) == sorted(c.id for c in cells[:2])


def test_two_shards_merged_equal_the_unsharded_run(ws: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(matrix_run.SUITE_RUNNERS, "capture", fake_runner([]))
    cells = ws.matrix.cells("full", suites=["capture", "throughput"])
    whole = _run(ws, cells, tmp_path / "whole")
    parts = [_run(ws, shard_cells(cells, i, 2, ws.matrix), tmp_path / f"shard{i}", shard=f"{i}/2") for i in (1, 2)]
    assert all(part.cells for part in parts)
    merged = merge_results(parts)

    def comparable(results: Any) -> list[dict[str, Any]]:
        return [c.model_dump(exclude={"logs", "timings"}) for c in results.cells]

    assert comparable(merged) == comparable(whole)
    assert merged.matrix_revision == whole.matrix_revision
