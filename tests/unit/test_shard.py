"""harness.shard: parsing --shard, expected cell costs, balanced deterministic shards, the CI plan."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.matrix import Cell, Matrix, load_matrix
from harness.shard import (
    BOOT_S,
    SKIP_COST_S,
    ci_matrix,
    expected_cost_s,
    parse_shard,
    shard_cells,
)

REPO = Path(__file__).resolve().parents[2]
MATRIX = load_matrix(REPO / "matrix.yaml")
FULL = MATRIX.cells("full")


def _cell(matrix: Matrix, cell_id: str) -> Cell:
    return next(cell for cell in matrix.cells("full") if cell.id == cell_id)


# ---- parse_shard


@pytest.mark.parametrize(("text", "expected"), [("1/1", (1, 1)), ("2/4", (2, 4)), (" 4 / 4 ", (4, 4))])
def test_parse_shard(text: str, expected: tuple[int, int]) -> None:
    assert parse_shard(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3/2", "--shard 3/2: the index must be between 1 and 2, as I/N"),
        ("0/2", "--shard 0/2: the index must be between 1 and 2, as I/N"),
        ("1/0", "--shard 1/0: the count must be at least 1, as I/N"),
        ("2", "--shard 2: expected I/N"),
        ("a/b", "--shard a/b: expected I/N"),
        ("-1/2", "--shard -1/2: expected I/N"),
        ("", "--shard : expected I/N"),
    ],
)
def test_parse_shard_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_shard(text)
    assert str(info.value).startswith(message)


# ---- expected_cost_s


def test_cost_of_a_runnable_cell_is_boot_plus_suite() -> None:
    assert expected_cost_s(_cell(MATRIX, "x86_64-bookworm-kmod-capture"), MATRIX) == 8 + 60
    assert expected_cost_s(_cell(MATRIX, "x86_64-bookworm-kmod-ia32"), MATRIX) == 8 + 40


def test_cost_scales_the_suite_by_the_emulation_factor() -> None:
    assert expected_cost_s(_cell(MATRIX, "loongarch64-sid-kmod-capture"), MATRIX) == 12 + 60 * 2.0
    assert expected_cost_s(_cell(MATRIX, "ppc64le-bookworm-kmod-ia32"), MATRIX) == 1.0  # ia32: x86_64 only
    assert expected_cost_s(_cell(MATRIX, "riscv64-trixie-modern_bpf-capture"), MATRIX) == 6 + 60 * 1.5


def test_throughput_cells_cost_next_to_nothing_as_run_leaves_them_to_bench() -> None:
    assert expected_cost_s(_cell(MATRIX, "ppc64le-bookworm-kmod-throughput"), MATRIX) == 1.0


def test_cells_that_statically_skip_cost_next_to_nothing() -> None:
    # No legacy probe on riscv64; ia32 only on x86_64; modern_bpf needs 5.8 (bullseye is 5.10: runs).
    assert expected_cost_s(_cell(MATRIX, "riscv64-trixie-bpf-capture"), MATRIX) == SKIP_COST_S
    assert expected_cost_s(_cell(MATRIX, "aarch64-bookworm-kmod-ia32"), MATRIX) == SKIP_COST_S


def test_every_architecture_of_the_matrix_has_a_measured_boot_time() -> None:
    assert set(MATRIX.architectures) <= set(BOOT_S)


# ---- shard_cells


def _check_shards(cells: list[Cell], count: int) -> list[list[Cell]]:
    shards = [shard_cells(cells, index, count, MATRIX) for index in range(1, count + 1)]
    ids = [cell.id for shard in shards for cell in shard]
    assert len(ids) == len(set(ids)), "shards overlap"
    assert sorted(ids) == sorted(cell.id for cell in cells), "shards lose or invent cells"
    position = {cell.id: pos for pos, cell in enumerate(cells)}
    for shard in shards:
        assert [position[c.id] for c in shard] == sorted(position[c.id] for c in shard), "order not kept"
    loads = [sum(expected_cost_s(cell, MATRIX) for cell in shard) for shard in shards]
    largest = max((expected_cost_s(cell, MATRIX) for cell in cells), default=0.0)
    assert max(loads) - min(loads) <= largest
    return shards


@pytest.mark.parametrize("count", [1, 2, 3, 4, 6, 7, 200])
def test_full_profile_shards(count: int) -> None:
    _check_shards(FULL, count)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(FULL), unique_by=lambda cell: cell.id), st.integers(1, 9))
def test_shards_of_any_subset(picked: list[Cell], count: int) -> None:
    cells = sorted(picked, key=FULL.index)  # what a filtered profile gives: matrix order
    _check_shards(cells, count)


def test_shards_are_deterministic() -> None:
    first = [shard_cells(FULL, index, 4, MATRIX) for index in range(1, 5)]
    again = [shard_cells(list(FULL), index, 4, load_matrix(REPO / "matrix.yaml")) for index in range(1, 5)]
    assert first == again


def test_lpt_places_the_largest_cells_first_ties_to_the_lowest_shard() -> None:
    throughput = [c for c in FULL if c.suite == "throughput" and c.arch == "x86_64" and c.driver == "kmod"]
    assert len(throughput) == 3  # equal costs: ordered by cell id over shards 1, 2, 3
    by_id = sorted(throughput, key=lambda cell: cell.id)
    assert [shard_cells(throughput, i, 3, MATRIX) for i in (1, 2, 3)] == [[cell] for cell in by_id]


def test_shard_cells_rejects_a_bad_index() -> None:
    with pytest.raises(ValueError, match="between 1 and 2"):
        shard_cells(FULL, 3, 2, MATRIX)


# ---- ci_matrix


def test_ci_matrix_entries() -> None:
    plan = ci_matrix(MATRIX, "full", 4)
    assert [entry["shard"] for entry in plan["include"]] == ["1/4", "2/4", "3/4", "4/4"]
    assert sum(entry["cells"] for entry in plan["include"]) == len(FULL)
    for index, entry in enumerate(plan["include"], start=1):
        cells = shard_cells(FULL, index, 4, MATRIX)
        assert entry["index"] == index and entry["count"] == 4 and entry["cells"] == len(cells)
        assert entry["archs"] == ",".join(dict.fromkeys(cell.arch for cell in cells))
        assert entry["expected_minutes"] * 60 >= sum(expected_cost_s(cell, MATRIX) for cell in cells)
        assert isinstance(entry["expected_minutes"], int)


def test_ci_matrix_zero_shards_means_one_per_architecture() -> None:
    assert len(ci_matrix(MATRIX, "full", 0)["include"]) == len(MATRIX.architectures)
    assert len(ci_matrix(MATRIX, "ci", 0)["include"]) == 3  # x86_64, aarch64, s390x
    assert [e["shard"] for e in ci_matrix(MATRIX, "full", 0, archs=["s390x"])["include"]] == ["1/1"]


def test_ci_matrix_leaves_out_empty_shards() -> None:
    plan = ci_matrix(MATRIX, "ci", 50, archs=["x86_64"])
    cells = MATRIX.cells("ci", archs=["x86_64"])
    assert len(plan["include"]) == len(cells)
    assert all(entry["count"] == 50 and entry["cells"] == 1 for entry in plan["include"])
    assert [entry["index"] for entry in plan["include"]] == list(range(1, len(cells) + 1))


def test_ci_matrix_rejects_negative_shards() -> None:
    with pytest.raises(ValueError, match="--shards -1"):
        ci_matrix(MATRIX, "full", -1)
