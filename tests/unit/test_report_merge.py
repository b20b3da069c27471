"""Merging shards: the merge of all shards is the unsharded run; mixed revisions and conflicts refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_report_render import parse
from test_report_schema import make_cell_result, make_results, sample_records

from harness.errors import ConfigError
from harness.report.merge import merge_results
from harness.report.schema import CellRecord, RunResults, load_results, record_from_cell, save_results

OTHER_REVISION = "fedcba9876543210"


def full_records(log_dir: Path) -> list[CellRecord]:
    """Realistic records of a larger run: every arch, several kernels, drivers and suites."""
    records = sample_records(log_dir)
    more = [("x86_64", "bookworm-backports", d, "capture") for d in ("kmod", "bpf", "modern_bpf")]
    more += [("aarch64", "bullseye", "kmod", "capture"), ("s390x", "bookworm-backports", "modern_bpf", "capture"),
             ("ppc64le", "bookworm-backports", "bpf", "capture"), ("x86_64", "bookworm", "bpf", "ia32")]
    records += [record_from_cell(make_cell_result(*cell)) for cell in more]
    return records


def shard(records: list[CellRecord], assignment: list[int], total: int) -> list[RunResults]:
    """Records spread over `total` shards as `assignment` says, each a results file of its own."""
    parts = []
    for index in range(total):
        cells = [record for record, where in zip(records, assignment, strict=False) if where % total == index]
        parts.append(make_results(cells, shard=f"{index + 1}/{total}", created=f"2026-12-01T10:0{index}:00+00:00",
                                  finished=f"2026-12-01T11:0{index}:00+00:00"))
    return parts


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(total=st.integers(1, 5), data=st.data())
def test_merging_shards_gives_the_unsharded_cells(tmp_path: Path, total: int, data: st.DataObject) -> None:
    records = full_records(tmp_path)
    unsharded = make_results(records)
    assignment = data.draw(st.lists(st.integers(0, total - 1), min_size=len(records), max_size=len(records)))
    parts = data.draw(st.permutations(shard(records, assignment, total)))
    merged = merge_results(parts)
    assert merged.cells == unsharded.cells  # same records, same order
    assert [r.model_dump() for r in merged.cells] == [r.model_dump() for r in unsharded.cells]
    assert merged.shard is None
    assert merged.created == "2026-12-01T10:00:00+00:00"
    assert merged.finished == f"2026-12-01T11:0{total - 1}:00+00:00"
    assert merged.model_copy(update={"created": unsharded.created, "finished": unsharded.finished}) == unsharded


def test_merge_metadata(tmp_path: Path) -> None:
    parts = shard(full_records(tmp_path), list(range(20)), 2)
    parts[1] = parts[1].model_copy(update={"interrupted": True, "host": {**parts[1].host, "debian": "13.2"}})
    merged = merge_results(parts)
    assert merged.interrupted is True
    assert merged.profile == "ci" and merged.git_revision == "2b31fd7"
    assert merged.host["debian"] == "12.12 | 13.2" and merged.host["python"] == "3.11.2"


def test_mixed_matrix_revisions_are_refused_naming_both(tmp_path: Path) -> None:
    one, two = shard(full_records(tmp_path), list(range(20)), 2)
    two = two.model_copy(update={"matrix_revision": OTHER_REVISION})
    with pytest.raises(ConfigError) as caught:
        merge_results([one, two], sources=["shard-1/results.json", "shard-2/results.json"])
    message = str(caught.value)
    assert "shard-1/results.json and shard-2/results.json have different matrix revisions" in message
    assert f"({one.matrix_revision} vs {OTHER_REVISION})" in message
    assert caught.value.hint is not None and "--allow-mixed" in caught.value.hint


def test_mixed_git_revisions_are_refused_unless_allowed(tmp_path: Path) -> None:
    one, two = shard(full_records(tmp_path), list(range(20)), 2)
    two = two.model_copy(update={"git_revision": "c0ffee1", "matrix_revision": OTHER_REVISION})
    one = one.model_copy(update={"git_revision": None})
    with pytest.raises(ConfigError, match=r"part 1 and part 2 have different matrix revisions"):
        merge_results([one, two])
    with pytest.raises(ConfigError, match=r"part 1 and part 2 have different git revisions \(unknown vs c0ffee1\)"):
        merge_results([one, two.model_copy(update={"matrix_revision": one.matrix_revision})])
    merged = merge_results([two, one], allow_mixed=True)
    assert merged.git_revision == "c0ffee1"
    assert merged.matrix_revision == f"{one.matrix_revision}+{OTHER_REVISION}"  # both kept, sorted
    assert len(merged.cells) == len(one.cells) + len(two.cells)
    path = tmp_path / "merged.json"
    save_results(merged, path)
    assert load_results(path) == merged  # a mixed revision still validates


def test_a_cell_in_two_shards_is_refused_unless_identical(tmp_path: Path) -> None:
    records = full_records(tmp_path)
    one = make_results(records[:5])
    rerun = records[4].model_copy(update={"status": "fail", "reason": "flaky"})
    two = make_results([rerun, *records[5:]])
    with pytest.raises(ConfigError) as caught:
        merge_results([one, two], sources=["a.json", "b.json"])
    assert str(caught.value) == (f"cell {records[4].cell} is in both a.json ({records[4].status}) and b.json (fail) "
                                 "with different results")
    same = make_results([records[4], *records[5:]])
    assert merge_results([one, same]).cells == make_results(records).cells


def test_nothing_to_merge() -> None:
    with pytest.raises(ConfigError, match="nothing to merge"):
        merge_results([])


def test_cli_merge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parts = shard(full_records(tmp_path), list(range(20)), 3)
    files = []
    for index, part in enumerate(parts):
        files.append(tmp_path / f"shard-{index + 1}" / "results.json")
        save_results(part, files[-1])
    out = tmp_path / "merged"
    args = parse(["report", "merge", *map(str, files), "-o", str(out)])
    assert args.func(args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "merged 3 files: 20 cells: 16 pass, 1 fail, 1 error, 2 skip"
    assert load_results(out / "results.json").cells == make_results(full_records(tmp_path)).cells
    mixed = parts[0].model_copy(update={"matrix_revision": OTHER_REVISION})
    save_results(mixed, files[0])
    args = parse(["report", "merge", *map(str, files), "-o", str(out)])
    with pytest.raises(ConfigError, match=f"{files[0]} and {files[1]} have different matrix revisions"):
        args.func(args)
    args = parse(["report", "merge", *map(str, files), "-o", str(out), "--allow-mixed"])
    assert args.func(args) == 0
