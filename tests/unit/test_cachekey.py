"""harness.cachekey: one CI cache key per part, each changing only with its own inputs."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.cachekey import PARTS, cache_key_line, cache_keys
from harness.matrix import Matrix, load_matrix

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the inputs the keys read, which a test may change."""
    for entry in ("matrix.yaml", "pyproject.toml", "harness/rootfs.py"):
        (tmp_path / entry).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / entry, tmp_path / entry)
    for entry in ("images", "drivers"):
        shutil.copytree(REPO / entry, tmp_path / entry, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _keys(tree: Path, release: str = "bookworm") -> dict[str, str]:
    return cache_keys(tree, load_matrix(tree / "matrix.yaml"), release=release)


def _append(path: str, text: str) -> Callable[[Path], None]:
    def change(tree: Path) -> None:
        with (tree / path).open("a") as handle:
            handle.write(text)

    return change


def _replace(path: str, old: str, new: str) -> Callable[[Path], None]:
    def change(tree: Path) -> None:
        text = (tree / path).read_text()
        assert old in text
        (tree / path).write_text(text.replace(old, new, 1))

    return change


def test_keys_are_16_hex_chars_and_stable(tree: Path) -> None:
    keys = _keys(tree)
    assert set(keys) == set(PARTS)
    assert all(re.fullmatch(r"[0-9a-f]{16}", key) for key in keys.values())
    assert _keys(tree) == keys
    assert len(set(keys.values())) == len(keys)


@pytest.mark.parametrize(
    ("change", "changed"),
    [
        (_replace("matrix.yaml", '{suite: trixie, expect: "6.12"}', '{suite: sid, expect: "6.16"}'), {"kernels"}),
        (_replace("matrix.yaml", "loongarch64: sid", "loongarch64: forky"), {"images"}),
        (_append("images/guest.yaml", "\n# changed\n"), {"images"}),
        (_append("harness/rootfs.py", "\n# changed\n"), {"images"}),
        (_append("pyproject.toml", "\n# changed\n"), {"toolchains"}),
        (_append("drivers/kmod/kmx_main.c", "\n/* changed */\n"), {"drivers"}),
        (_append("drivers/tools/storm.c", "\n/* changed */\n"), {"drivers", "toolchains"}),
        (_append("drivers/common/new_header.h", "/* a new file */\n"), {"drivers"}),
        # Not inputs: a profile, a description, build outputs left in the tree.
        (_replace("matrix.yaml", "kernels: newest\n    drivers", "kernels: all\n    drivers"), set()),
        (_append("drivers/kmod/kmx_main.o", "\0"), set()),
        (_append("drivers/kmod/__pycache__/x.cpython-311.pyc", "\0"), set()),
    ],
)
def test_a_change_moves_only_its_parts_key(tree: Path, change: Callable[[Path], None], changed: set[str]) -> None:
    before = _keys(tree)
    (tree / "drivers/kmod/__pycache__").mkdir(exist_ok=True)
    change(tree)
    after = _keys(tree)
    assert {part for part in PARTS if before[part] != after[part]} == changed


def test_the_debian_release_moves_kernels_and_toolchains(tree: Path) -> None:
    before, after = _keys(tree, "bookworm"), _keys(tree, "trixie")
    assert {part for part in PARTS if before[part] != after[part]} == {"kernels", "toolchains"}


def test_renaming_a_file_moves_its_key(tree: Path) -> None:
    before = _keys(tree)
    (tree / "drivers/bpf/compat.h").rename(tree / "drivers/bpf/compat2.h")
    assert _keys(tree)["drivers"] != before["drivers"]


def test_key_lines() -> None:
    keys = {"kernels": "a" * 16, "images": "b" * 16, "toolchains": "c" * 16, "drivers": "d" * 16}
    assert cache_key_line("images", keys, release="trixie") == "kmatrix-images-trixie-" + "b" * 16
    everything = cache_key_line("all", keys, release="trixie")
    assert re.fullmatch(r"kmatrix-all-trixie-[0-9a-f]{16}", everything)
    assert cache_key_line("all", {**keys, "drivers": "e" * 16}, release="trixie") != everything
    with pytest.raises(ValueError, match="unknown cache part 'nope'"):
        cache_key_line("nope", keys, release="trixie")


def test_the_host_release_is_the_default(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.cachekey

    monkeypatch.setattr(harness.cachekey, "debian_release", lambda: "forky")
    matrix: Matrix = load_matrix(tree / "matrix.yaml")
    assert cache_keys(tree, matrix) == cache_keys(tree, matrix, release="forky")
    assert cache_key_line("kernels", cache_keys(tree, matrix)).startswith("kmatrix-kernels-forky-")
