"""Merge the results of several shards (CI matrix jobs) into one run.

Shards of one run share the matrix and the code: results of different revisions would make a
matrix that no single revision produced, so they are refused unless asked for (`allow_mixed`),
and then every revision is kept, joined with "+". Merged cells are in canonical order, so the
merge of all shards equals the unsharded run's cells whatever order the shards come in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from harness.errors import ConfigError
from harness.report.schema import CellRecord, RunResults, canonical_order, parse_time

__all__ = ["merge_results"]


def _labels(parts: Sequence[RunResults], sources: Sequence[str] | None) -> list[str]:
    if sources is None:
        return [f"part {index + 1}" for index in range(len(parts))]
    if len(sources) != len(parts):
        raise ValueError(f"{len(sources)} source labels for {len(parts)} parts")
    return list(sources)


def _joined(values: Sequence[str | None]) -> str | None:
    """The one value all parts share, else the distinct values sorted and joined by "+"."""
    distinct = sorted({value for value in values if value is not None})
    return "+".join(distinct) if distinct else None


def _check_same(what: str, parts: Sequence[RunResults], labels: list[str],
                value: Callable[[RunResults], str | None]) -> None:
    first = value(parts[0])
    for part, label in zip(parts[1:], labels[1:], strict=True):
        if value(part) != first:
            raise ConfigError(
                f"{labels[0]} and {label} have different {what}s ({first or 'unknown'} vs {value(part) or 'unknown'}): "
                "their cells were not run from the same tree",
                hint="merge results of one run only, or pass --allow-mixed to merge them anyway",
            )


def _merged_dict(dicts: Sequence[dict[str, str]]) -> dict[str, str]:
    """Keys every part agrees on keep their value; differing values are joined (shards ran on several hosts)."""
    keys = sorted({key for entry in dicts for key in entry})
    return {key: " | ".join(sorted({entry[key] for entry in dicts if key in entry})) for key in keys}


def _cells(parts: Sequence[RunResults], labels: list[str]) -> list[CellRecord]:
    seen: dict[str, tuple[CellRecord, str]] = {}
    for part, label in zip(parts, labels, strict=True):
        for record in part.cells:
            earlier = seen.get(record.cell)
            if earlier is None:
                seen[record.cell] = (record, label)
            elif earlier[0] != record:
                raise ConfigError(
                    f"cell {record.cell} is in both {earlier[1]} ({earlier[0].status}) and {label} "
                    f"({record.status}) with different results",
                    hint="each cell belongs to one shard: merge each shard's results.json once",
                )
    return canonical_order(record for record, _label in seen.values())


def merge_results(parts: Sequence[RunResults], *, allow_mixed: bool = False,
                  sources: Sequence[str] | None = None) -> RunResults:
    """One RunResults with the cells of every part; `sources` (e.g. file names) label parts in errors."""
    if not parts:
        raise ConfigError("nothing to merge: no results given")
    labels = _labels(parts, sources)
    if not allow_mixed:
        _check_same("matrix revision", parts, labels, lambda part: part.matrix_revision)
        _check_same("git revision", parts, labels, lambda part: part.git_revision)
    return RunResults(
        kmatrix_version=_joined([part.kmatrix_version for part in parts]) or "",
        git_revision=_joined([part.git_revision for part in parts]),
        matrix_revision=_joined([part.matrix_revision for part in parts]) or "",
        profile=_joined([part.profile for part in parts]),
        shard=None,
        created=min((part.created for part in parts), key=parse_time),
        finished=max((part.finished for part in parts), key=parse_time),
        interrupted=any(part.interrupted for part in parts),
        host=_merged_dict([part.host for part in parts]),
        toolchains=_merged_dict([part.toolchains for part in parts]),
        cells=_cells(parts, labels),
    )
