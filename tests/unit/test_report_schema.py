"""The results schema: records from CellResults, validation errors, old-format files, canonical order.

`make_cell_result`, `make_results` and `sample_results` are shared with the other report tests.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from harness import __version__
from harness.archs import ARCH_NAMES
from harness.cells import CellResult
from harness.errors import ConfigError
from harness.report import schema
from harness.report.schema import (
    CellRecord,
    RunResults,
    canonical_order,
    format_mismatch,
    load_results,
    matrix_revision,
    new_run_results,
    record_from_cell,
    save_results,
)

MISMATCH = {"call": "openat", "tid": 4242, "what": "arg path", "expected": "/tmp/kmx/a", "got": "/tmp/kmx/b"}
REVISION = "0123456789abcdef"
RELEASES = {"bullseye": "5.10.0-35-{deb}", "bookworm": "6.1.0-40-{deb}", "bookworm-backports": "6.12.48+deb12-{deb}",
            "trixie": "6.12.57+deb13-{deb}", "sid": "6.17.8+deb14-{deb}"}
DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "s390x": "s390x", "ppc64le": "powerpc64le", "riscv64": "riscv64",
            "loongarch64": "loong64"}
MINIMUMS = {"kmod": "3.10", "bpf": "4.14", "modern_bpf": "5.8"}


def make_cell_result(arch: str, kernel: str, driver: str, suite: str, status: str = "pass", *,
                     log_dir: Path | None = None, reason: str | None = None, **metrics: Any) -> CellResult:
    """A CellResult like the runner's, with a console log written under log_dir when given."""
    cell = f"{arch}-{kernel}-{driver}-{suite}"
    result = CellResult(cell, arch, kernel, driver, suite, status=status, reason=reason,
                        kernel_release=RELEASES[kernel].format(deb=DEB_ARCH[arch]), declared_min=MINIMUMS[driver],
                        accel="tcg", timings={"build_s": 1.5, "boot_s": 20.25, "run_s": 31.0})
    if status == "skip":
        result.timings, result.accel = {}, None
    if status == "pass":
        result.metrics = {"verified_calls": 46, "expected_calls": 46, "oracle": {"ok": True}, "first_mismatch": None}
    result.metrics.update(metrics)
    if log_dir is not None:
        log = log_dir / cell / "console.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("".join(f"[{i:4}] boot line {i}\n" for i in range(100)) + "kmatrix: agent ready\n")
        result.console_log = str(log)
    return result


def make_results(records: list[CellRecord], **fields: Any) -> RunResults:
    base: dict[str, Any] = {
        "kmatrix_version": __version__, "git_revision": "2b31fd7", "matrix_revision": REVISION, "profile": "ci",
        "created": "2026-12-01T10:00:00+00:00", "finished": "2026-12-01T11:00:00+00:00",
        "host": {"python": "3.11.2", "platform": "Linux-6.1.0-x86_64-with-glibc2.36", "debian": "12.12"},
        "toolchains": {"qemu": "QEMU emulator version 9.2.0", "gcc": "gcc (Debian 12.2.0-14) 12.2.0"},
    }
    return RunResults(**{**base, **fields, "cells": records})


def sample_records(log_dir: Path) -> list[CellRecord]:
    """A realistic run: several archs and kernels, all three drivers, every status."""
    results = [
        make_cell_result("x86_64", "bookworm", "kmod", "capture", log_dir=log_dir),
        make_cell_result("x86_64", "bookworm", "bpf", "capture", log_dir=log_dir),
        make_cell_result("x86_64", "bookworm", "modern_bpf", "capture", "fail", log_dir=log_dir,
                         reason="openat (tid 4242): arg path: expected '/tmp/kmx/a', got '/tmp/kmx/b'",
                         first_mismatch=MISMATCH, verified_calls=45, expected_calls=46),
        make_cell_result("x86_64", "bookworm", "kmod", "ia32", log_dir=log_dir),
        make_cell_result("x86_64", "bullseye", "modern_bpf", "capture", "skip",
                         reason="kernel 5.10 has no CONFIG_DEBUG_INFO_BTF"),
        make_cell_result("aarch64", "bookworm-backports", "kmod", "capture", log_dir=log_dir),
        make_cell_result("aarch64", "bookworm-backports", "bpf", "capture", "error", log_dir=log_dir,
                         reason="guest did not answer within 300 s",
                         boot_retries=["QEMU exited with code -6 (log: /runs/x/console.log)"]),
        make_cell_result("s390x", "bookworm", "kmod", "capture", log_dir=log_dir),
        make_cell_result("s390x", "bookworm", "bpf", "capture", log_dir=log_dir),
        make_cell_result("riscv64", "trixie", "bpf", "capture", "skip",
                         reason="the legacy probe does not support riscv64"),
        make_cell_result("riscv64", "trixie", "modern_bpf", "capture", log_dir=log_dir),
        make_cell_result("loongarch64", "sid", "kmod", "capture", log_dir=log_dir),
        make_cell_result("ppc64le", "bookworm", "kmod", "capture", log_dir=log_dir),
    ]
    return [record_from_cell(result, kernel_source=f"debian:{result.kernel}") for result in results]


def sample_results(log_dir: Path, **fields: Any) -> RunResults:
    return make_results(sample_records(log_dir), **fields)


# -- records ---------------------------------------------------------------------------------------


def test_record_from_a_passing_cell(tmp_path: Path) -> None:
    result = make_cell_result("s390x", "bookworm", "kmod", "capture", log_dir=tmp_path)
    record = record_from_cell(result, kernel_source="debian:bookworm")
    assert record.cell == "s390x-bookworm-kmod-capture"
    assert (record.arch, record.kernel, record.driver, record.suite) == ("s390x", "bookworm", "kmod", "capture")
    assert record.kernel_release == "6.1.0-40-s390x"
    assert record.kernel_source == "debian:bookworm"
    assert record.accelerator == "tcg" and record.declared_min == "3.10" and record.target == "qemu"
    assert record.timings == {"build_s": 1.5, "boot_s": 20.25, "run_s": 31.0}
    assert record.metrics["verified_calls"] == 46
    assert record.logs == {"console": result.console_log}
    assert record.console_excerpt is None  # only failures carry their console
    assert record.first_mismatch is None and record.retries == []


def test_record_from_a_failing_cell_carries_console_mismatch_and_retries(tmp_path: Path) -> None:
    result = make_cell_result("x86_64", "bookworm", "kmod", "capture", "fail", log_dir=tmp_path, reason="bad",
                              first_mismatch=MISMATCH, boot_retries=["QEMU died (log: a.log)"])
    log = Path(str(result.console_log))
    log.write_bytes(log.read_bytes() + b"\x1b[0;32mcolour\x1b[0m\r\nbell\x07 end \xff\n")
    record = record_from_cell(result, target="ssh://ci@board:22")
    assert record.first_mismatch == "openat (tid 4242): arg path: expected '/tmp/kmx/a', got '/tmp/kmx/b'"
    assert record.retries == ["QEMU died (log: a.log)"]
    assert record.target == "ssh://ci@board:22"
    excerpt = (record.console_excerpt or "").splitlines()
    assert len(excerpt) == schema.CONSOLE_EXCERPT_LINES
    assert excerpt[-3:] == ["kmatrix: agent ready", "colour", "bell end \ufffd"]  # escapes and CRs gone
    assert excerpt[0] == "[  63] boot line 63"


def test_record_of_an_error_without_console_log(tmp_path: Path) -> None:
    result = make_cell_result("x86_64", "bookworm", "kmod", "capture", "error", reason="build: no compiler")
    result.console_log = str(tmp_path / "never-written.log")
    record = record_from_cell(result)
    assert record.console_excerpt is None
    assert record.logs == {"console": str(tmp_path / "never-written.log")}


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ({}, None), ("", None), ("plain text", "plain text"),
    ({"call": "read", "what": "ret"}, "read (tid None): ret: expected None, got None"),
    ({"odd": [1, 2]}, '{"odd": [1, 2]}'),
])
def test_format_mismatch(value: object, expected: str | None) -> None:
    assert format_mismatch(value) == expected


# -- order -----------------------------------------------------------------------------------------


def test_canonical_order_is_arch_order_then_kernel_driver_suite(tmp_path: Path) -> None:
    records = sample_records(tmp_path)
    ordered = canonical_order(reversed(records))
    archs = [r.arch for r in ordered]
    assert archs == sorted(archs, key=ARCH_NAMES.index)
    x86 = [(r.kernel, r.driver, r.suite) for r in ordered if r.arch == "x86_64"]
    assert x86 == sorted(x86)
    assert make_results(list(reversed(records))).cells == ordered  # the model keeps cells in that order


def test_unknown_architectures_sort_last(tmp_path: Path) -> None:
    known = record_from_cell(make_cell_result("loongarch64", "sid", "kmod", "capture"))
    unknown = known.model_copy(update={"arch": "mips64", "cell": "mips64-sid-kmod-capture"})
    assert canonical_order([unknown, known]) == [known, unknown]


# -- files -----------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    results = sample_results(tmp_path)
    path = tmp_path / "out" / "results.json"
    save_results(results, path)
    assert load_results(path) == results
    assert path.read_text().endswith("}\n")
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temp file left behind


def _write_json(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    return path


def _valid(tmp_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(sample_results(tmp_path).model_dump_json())
    return data


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["cells"][1].update(status="ok"),
     "cells[1].status: Input should be 'pass', 'fail', 'skip' or 'error' (got \"ok\")"),
    (lambda d: d["cells"][0].pop("driver"), "cells[0].driver: Field required"),
    (lambda d: d["cells"][2].update(colour="red"), "cells[2].colour: Extra inputs are not permitted"),
    (lambda d: d["cells"][0]["timings"].update(boot_s=-1), "cells[0].timings.boot_s: Input should be greater"),
    (lambda d: d.update(matrix_revision="abc"), "matrix_revision: expected 16 lowercase hex digits"),
    (lambda d: d.update(shard="5/4"), "shard: expected INDEX/TOTAL"),
    (lambda d: d.update(created="yesterday"), "created: not an ISO 8601 time: 'yesterday'"),
    (lambda d: d["cells"].append(dict(d["cells"][0])),
     "cells: cell listed more than once: x86_64-bookworm-bpf-capture"),
    (lambda d: d.pop("kmatrix_version"), "kmatrix_version: Field required"),
    (lambda d: d.pop("schema_version"), "schema_version: Field required"),
])
def test_load_errors_name_the_file_and_the_field(tmp_path: Path, change: Any, message: str) -> None:
    data = _valid(tmp_path)
    change(data)
    path = _write_json(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_results(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)
    assert caught.value.exit_code == 2


def test_load_counts_further_problems(tmp_path: Path) -> None:
    data = _valid(tmp_path)
    data["cells"][0]["status"] = "ok"
    data["cells"][1]["status"] = "ok"
    with pytest.raises(ConfigError, match=r"cells\[0\]\.status: .* \(and 1 more problem\)$"):
        load_results(_write_json(tmp_path, data))


def test_old_plain_list_format_says_what_to_do(tmp_path: Path) -> None:
    old = [make_cell_result("x86_64", "bookworm", "kmod", "capture").to_json()]
    path = _write_json(tmp_path, old)
    with pytest.raises(ConfigError) as caught:
        load_results(path)
    assert str(caught.value).startswith(f"{path}: a plain list of cell results, written by an older kmatrix")
    assert "schema_version 1" in str(caught.value)
    assert caught.value.hint is not None and "kmatrix run" in caught.value.hint


def test_newer_schema_version_is_named(tmp_path: Path) -> None:
    data = _valid(tmp_path)
    data["schema_version"] = 2
    with pytest.raises(ConfigError, match=r"results.json: schema_version 2 is from a newer kmatrix"):
        load_results(_write_json(tmp_path, data))


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing.json: no such file"):
        load_results(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"cells": [\n  1,,\n]}')
    with pytest.raises(ConfigError, match=r"bad.json: line 2, column 5: invalid JSON"):
        load_results(bad)
    with pytest.raises(ConfigError, match=r"expected a JSON object at the top level, got str"):
        load_results(_write_json(tmp_path, "text"))


# -- new results -----------------------------------------------------------------------------------


def test_new_run_results_stamps_versions_and_revisions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.bench.run

    monkeypatch.setattr(harness.bench.run, "git_revision", lambda: "feedbee")
    matrix = tmp_path / "matrix.yaml"
    matrix.write_bytes(b"schema: 1\n")
    records = list(reversed(sample_records(tmp_path)))
    results = new_run_results(records, profile="ci", shard="2/4", matrix_path=matrix,
                              created="2026-12-01T10:00:00+00:00")
    assert results.matrix_revision == hashlib.sha256(b"schema: 1\n").hexdigest()[:16] == matrix_revision(matrix)
    assert results.kmatrix_version == __version__ and results.git_revision == "feedbee"
    assert (results.profile, results.shard, results.interrupted) == ("ci", "2/4", False)
    assert results.created == "2026-12-01T10:00:00+00:00" and results.finished > results.created
    assert results.cells == canonical_order(records)
    assert results.host["python"].startswith("3.")
    assert schema.toolchain_versions() is schema.toolchain_versions()  # probed once per process
    assert set(results.toolchains) <= {"qemu", "clang", "gcc", "zig"}


def test_matrix_revision_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.yaml: cannot read the matrix file"):
        matrix_revision(tmp_path / "nope.yaml")
