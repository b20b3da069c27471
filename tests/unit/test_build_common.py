"""Shared build plumbing: a cached directory is filled once, atomically; sources are staged fresh."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.build import cached_dir, content_key, stage_sources


def test_cached_dir_fills_once(tmp_path: Path) -> None:
    calls: list[Path] = []

    def fill(tmp: Path) -> str:
        calls.append(tmp)
        (tmp / "file").write_text("x")
        return "marker"

    dest = tmp_path / "cache" / "thing"
    assert cached_dir(dest, fill) == dest
    assert cached_dir(dest, fill) == dest
    assert len(calls) == 1
    assert (dest / "file").read_text() == "x" and (dest / ".complete").read_text() == "marker"
    assert not calls[0].exists()  # the temporary was renamed into place


def test_cached_dir_failure_leaves_nothing_and_an_interrupted_one_is_rebuilt(tmp_path: Path) -> None:
    dest = tmp_path / "thing"

    def broken(tmp: Path) -> str:
        (tmp / "half").write_text("")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        cached_dir(dest, broken)
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []

    dest.mkdir()
    (dest / "stale").write_text("from an interrupted run, no .complete marker")
    cached_dir(dest, lambda tmp: "ok")
    assert not (dest / "stale").exists() and (dest / ".complete").read_text() == "ok"


def test_stage_sources_clears_an_earlier_attempt(tmp_path: Path) -> None:
    source = tmp_path / "a.c"
    source.write_text("int x;")
    out = tmp_path / "out"
    (out / "src").mkdir(parents=True)
    (out / "src" / "leftover.o").write_text("")
    build_dir = stage_sources({"sub/a.c": source}, out)
    assert build_dir == out / "src"
    assert (build_dir / "sub" / "a.c").read_text() == "int x;"
    assert not (build_dir / "leftover.o").exists()


def test_content_key_depends_on_every_input() -> None:
    base = content_key(1, "src", ["a"], "gcc 12", None)
    assert base == content_key(1, "src", ["a"], "gcc 12", None)
    assert len({base, content_key(2, "src", ["a"], "gcc 12", None), content_key(1, "src", ["b"], "gcc 12", None),
                content_key(1, "src", ["a"], "gcc 12", "swap_args")}) == 4
