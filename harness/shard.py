"""Split a profile's cells into balanced, deterministic shards for CI matrix jobs.

`kmatrix ci-matrix` plans the shards and `kmatrix run --shard I/N` runs one; both call
`shard_cells` on the same cell list, so every shard job picks the same cells without talking to
the others. Balance comes from an expected cost per cell (boot + suite, per architecture).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from harness.matrix import Cell, Matrix, applicability

__all__ = [
    "BOOT_S",
    "EMULATION_FACTOR",
    "SUITE_RUN_S",
    "ci_matrix",
    "expected_cost_s",
    "parse_shard",
    "shard_cells",
]

# Measured TCG boot-to-agent seconds per architecture (`kmatrix boot --arch all`, no KVM).
BOOT_S: dict[str, float] = {
    "x86_64": 8,
    "aarch64": 8,
    "s390x": 9,
    "ppc64le": 18,
    "riscv64": 6,
    "loongarch64": 12,
}
DEFAULT_BOOT_S = 10.0  # an architecture not measured yet

# Seconds a suite runs once the guest is up, on a fast-emulated architecture.
SUITE_RUN_S: dict[str, float] = {"capture": 60, "ia32": 40}
# `kmatrix run` leaves these to `kmatrix bench` (one guest measures every driver): a run skips them.
LEFT_TO_BENCH = frozenset({"throughput"})
DEFAULT_SUITE_S = 60.0

# How much slower TCG runs guest code than on x86_64/aarch64/s390x. Only the suite's run time is
# scaled: the boot seconds above were measured under TCG already.
EMULATION_FACTOR: dict[str, float] = {"loongarch64": 2.0, "ppc64le": 1.5, "riscv64": 1.5}

# A cell that skips without booting (driver unsupported, suite for another arch, kernel too old).
SKIP_COST_S = 1.0

_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N), 1 <= I <= N. A ValueError says what is wrong and the expected form."""
    match = _SHARD_RE.match(text)
    if match is None:
        raise ValueError(f"--shard {text}: expected I/N, e.g. 2/4 (the second of four shards)")
    index, count = int(match[1]), int(match[2])
    if count < 1:
        raise ValueError(f"--shard {text}: the count must be at least 1, as I/N")
    if not 1 <= index <= count:
        raise ValueError(f"--shard {text}: the index must be between 1 and {count}, as I/N")
    return index, count


def expected_cost_s(cell: Cell, matrix: Matrix) -> float:
    """Expected seconds for one cell: boot plus the suite's run, or ~nothing if it statically skips."""
    verdict = applicability(matrix, cell, None)
    if not (verdict.runnable or verdict.pending) or cell.suite in LEFT_TO_BENCH:
        return SKIP_COST_S
    boot = BOOT_S.get(cell.arch, DEFAULT_BOOT_S)
    run = SUITE_RUN_S.get(cell.suite, DEFAULT_SUITE_S)
    return boot + run * EMULATION_FACTOR.get(cell.arch, 1.0)


def _assign(costs: Sequence[float], ids: Sequence[str], count: int) -> list[int]:
    """Longest-processing-time greedy: shard (0-based) per cell position."""
    order = sorted(range(len(costs)), key=lambda pos: (-costs[pos], ids[pos], pos))
    loads = [0.0] * count
    owner = [0] * len(costs)
    for pos in order:
        # Ties go to the lowest shard number, so the split never depends on dict or set order.
        shard = min(range(count), key=lambda s: (loads[s], s))
        owner[pos] = shard
        loads[shard] += costs[pos]
    return owner


def _partition(cells: Sequence[Cell], count: int, matrix: Matrix) -> list[list[Cell]]:
    costs = [expected_cost_s(cell, matrix) for cell in cells]
    owner = _assign(costs, [cell.id for cell in cells], count)
    shards: list[list[Cell]] = [[] for _ in range(count)]
    for pos, cell in enumerate(cells):  # the matrix's order: cells sharing a kernel stay adjacent
        shards[owner[pos]].append(cell)
    return shards


def shard_cells(cells: Sequence[Cell], index: int, count: int, matrix: Matrix) -> list[Cell]:
    """The cells of shard `index` (1-based) of `count`, in the order they came in."""
    if count < 1 or not 1 <= index <= count:
        raise ValueError(f"shard {index}/{count}: the index must be between 1 and {count}")
    return _partition(cells, count, matrix)[index - 1]


def _archs(cells: Sequence[Cell]) -> list[str]:
    return list(dict.fromkeys(cell.arch for cell in cells))


def _entry(index: int, count: int, cells: Sequence[Cell], matrix: Matrix) -> dict[str, Any]:
    seconds = sum(expected_cost_s(cell, matrix) for cell in cells)
    return {
        "shard": f"{index}/{count}",
        "index": index,
        "count": count,
        "cells": len(cells),
        "expected_minutes": math.ceil(seconds / 60),
        "archs": ",".join(_archs(cells)),
    }


def ci_matrix(
    matrix: Matrix, profile: str, shards: int, *, archs: Sequence[str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """A GitHub Actions `strategy.matrix` value: one `include` entry per non-empty shard.

    `shards=0` picks one shard per architecture of the profile (after the `archs` filter).
    """
    if shards < 0:
        raise ValueError(f"--shards {shards}: give a number of shards >= 1, or 0 for one per architecture")
    cells = matrix.cells(profile, archs=archs)
    count = shards or max(1, len(_archs(cells)))
    parts = _partition(cells, count, matrix)
    return {
        "include": [_entry(number, count, part, matrix) for number, part in enumerate(parts, start=1) if part]
    }
