"""The throughput benchmark's results model (load/save/merge) and report (Markdown, PNGs, table)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.bench.report import STABILITY_THRESHOLD, render_markdown, render_table, stability, write_report
from harness.bench.results import (
    BenchResults,
    BenchRun,
    Measurement,
    SubjectResult,
    delivered_ratio,
    drop_ratio,
    load_results,
    merge_results,
    new_results,
    overhead_ratio,
    save_results,
)
from harness.errors import ConfigError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BASELINE = {"getppid": 1_000_000.0, "rw": 400_000.0}
# Overhead ratios at the default configuration, per arch, subject and mix.
RATIOS = {
    "x86_64": {
        "kmod": (0.40, 0.60),
        "bpf": (0.30, 0.50),
        "modern_bpf": (0.55, 0.70),
        "ftrace": (0.20, 0.35),
        "auditd": (0.10, 0.25),
    },
    "aarch64": {"kmod": (0.45, 0.65), "bpf": (0.35, 0.55), "modern_bpf": (0.25, 0.45), "ftrace": (0.22, 0.40)},
}
AUDITD_SKIP = "auditd is not in the aarch64 initramfs"


def measurement(
    mix: str, ratio: float, *, buffer_mib: int | None, drops: int = 0, duration: float = 5.0
) -> Measurement:
    base = BASELINE[mix]
    rate = base * ratio
    syscalls = int(rate * duration)
    events = 2 * syscalls - drops
    return Measurement(
        mix=mix,  # type: ignore[arg-type]
        buffer_mib=buffer_mib,
        syscalls_per_s=rate,
        baseline_per_s=base,
        overhead_ratio=overhead_ratio(rate, base),
        events=events,
        events_per_s=events / duration,
        drops=drops,
        drop_ratio=drop_ratio(events, drops),
        delivered_ratio=delivered_ratio(events, syscalls),
        buffer_fill_max=0.5 if buffer_mib else None,
        repeats=[{"syscalls_per_s": rate, "baseline_per_s": base}],
        checks={"sampling_ratio_ok": True},
    )


def subject(arch: str, name: str) -> SubjectResult:
    ratios = RATIOS[arch].get(name)
    if ratios is None:
        return SubjectResult(subject=name, kind="peer", status="skip", reason=AUDITD_SKIP)  # type: ignore[arg-type]
    driver = name in ("kmod", "bpf", "modern_bpf")
    measurements = [
        measurement(mix, ratio, buffer_mib=8 if driver else None)
        for mix, ratio in zip(("getppid", "rw"), ratios, strict=True)
    ]
    if driver:  # the buffer sweep: fewer drops with bigger buffers
        for size, drops in ((4, 50_000), (32, 0)):
            measurements.append(measurement("getppid", ratios[0], buffer_mib=size, drops=drops))
    return SubjectResult(
        subject=name,  # type: ignore[arg-type]
        kind="driver" if driver else "peer",
        status="pass",
        details={"version": "1.0"},
        measurements=measurements,
    )


def bench_run(arch: str, *, scale: dict[str, float] | None = None) -> BenchRun:
    run = BenchRun(
        arch=arch,
        kernel="bookworm-backports",
        kernel_release="6.12.12+bpo-" + ("amd64" if arch == "x86_64" else "arm64"),
        accel="tcg",
        vcpus=2,
        duration_s=5.0,
        repeats=5,
        baseline=BASELINE,  # type: ignore[arg-type]
        subjects=[subject(arch, name) for name in ("kmod", "bpf", "modern_bpf", "ftrace", "auditd")],
        status="pass",
    )
    for name, factor in (scale or {}).items():
        found = run.subject(name)
        assert found is not None
        for m in found.measurements:
            m.overhead_ratio *= factor
    return run


def results(**scale: float) -> BenchResults:
    return new_results(
        [bench_run("aarch64", scale=scale), bench_run("x86_64", scale=scale)],
        git_revision="abc1234",
        created="2025-01-02T03:04:05+00:00",
    )


def test_write_report_produces_markdown_and_pngs(tmp_path: Path) -> None:
    paths = write_report(results(), tmp_path)

    assert [p.name for p in paths] == ["report.md", "overhead.png", "buffers.png"]
    for png in paths[1:]:
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        assert png.stat().st_size > 10_000
    text = paths[0].read_text()
    # Architecture order is the harness's (x86_64 first), whatever the file order.
    assert text.index("## x86_64") < text.index("## aarch64")
    assert "## x86_64 — bookworm-backports (6.12.12+bpo-amd64), tcg, 2 vCPUs" in text
    assert "## aarch64 — bookworm-backports (6.12.12+bpo-arm64), tcg, 2 vCPUs" in text
    assert "| subject | kind | mix | syscalls/s | overhead ratio | events/s | drop % | note |" in text
    assert "| baseline | — | getppid | 1,000,000 | — | — | — | no capture |" in text
    # kmod on x86_64, getppid: 400,000 syscalls/s, 2 events each.
    assert "| kmod | driver | getppid | 400,000 | 0.400 | 800,000 | 0.00% |  |" in text
    assert "| modern_bpf | driver | rw | 280,000 | 0.700 | 560,000 | 0.00% |  |" in text
    assert "| ftrace | peer | getppid | 220,000 | 0.220 | 440,000 | 0.00% |  |" in text
    assert f"| auditd | peer | — | — | — | — | — | skipped: {AUDITD_SKIP} |" in text
    assert "**Cheapest driver per architecture** (getppid mix, highest overhead ratio): " in text
    assert "x86_64 (tcg): modern_bpf 0.550; aarch64 (tcg): kmod 0.450" in text
    assert "## Stability" not in text  # one run per cell
    assert "![Overhead ratio per subject](overhead.png)" in text


def test_report_is_deterministic(tmp_path: Path) -> None:
    first = write_report(results(), tmp_path / "a")
    second = write_report(results(), tmp_path / "b")
    for one, two in zip(first, second, strict=True):
        assert one.read_bytes() == two.read_bytes(), one.name


def test_report_without_runs_or_sweep(tmp_path: Path) -> None:
    empty = new_results(created="2025-01-02T03:04:05+00:00")
    paths = write_report(empty, tmp_path)
    assert all(p.exists() for p in paths)
    assert "no driver passed" in paths[0].read_text()
    assert render_table(empty) == "no benchmark runs\n"


def test_failed_checks_and_missing_measurements_are_noted() -> None:
    data = results()
    kmod = data.runs[1].subject("kmod")
    assert kmod is not None
    kmod.measurements[0].checks["sampling_ratio_ok"] = False
    kmod.status = "fail"
    kmod.reason = "sampling | ratio off"
    del kmod.measurements[1]  # no rw at 8 MiB
    text = render_markdown(data)
    assert "| kmod | driver | getppid | 400,000 | 0.400 | 800,000 | 0.00% | fail: sampling \\| ratio off; " in text
    assert "checks failed: sampling_ratio_ok |" in text
    assert "| kmod | driver | rw | — | — | — | — | no default-configuration measurement |" in text


def test_default_measurement() -> None:
    run = bench_run("x86_64")
    kmod = run.default_measurement("kmod", "getppid")
    assert kmod is not None and kmod.buffer_mib == 8 and kmod.sample_every == 1
    ftrace = run.default_measurement("ftrace", "rw")
    assert ftrace is not None and ftrace.buffer_mib is None
    assert bench_run("aarch64").default_measurement("auditd", "getppid") is None
    assert run.default_measurement("nosuch", "getppid") is None
    kmod_subject = run.subject("kmod")
    assert kmod_subject is not None
    small = kmod_subject.measurement("getppid", buffer_mib=4)
    assert small is not None and small.drops == 50_000


def test_round_trip(tmp_path: Path) -> None:
    original = results()
    path = tmp_path / "deep" / "results.json"
    save_results(original, path)
    raw = json.loads(path.read_text())
    assert raw["format"] == 1 and raw["runs"][0]["subjects"][0]["measurements"][0]["mix"] == "getppid"
    assert load_results(path) == original
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temporary left behind


def test_kind_defaults_from_subject() -> None:
    loaded = SubjectResult.model_validate({"subject": "ftrace", "status": "skip", "reason": "no tracefs"})
    assert loaded.kind == "peer"


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "results.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _dumped() -> dict[str, Any]:
    return results().model_dump(mode="json")


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["runs"][0]["subjects"][1]["measurements"][0].__setitem__("mix", "read"),
            "runs[0].subjects[1].measurements[0].mix: Input should be 'getppid' or 'rw' (got \"read\")",
        ),
        (lambda d: d["runs"][1].pop("accel"), "runs[1].accel: Field required"),
        (lambda d: d.__setitem__("format", 2), "format: Input should be 1 (got 2)"),
        (lambda d: d["runs"][0].__setitem__("colour", "red"), "runs[0].colour: Extra inputs are not permitted"),
        (
            lambda d: d["runs"][0]["subjects"][0]["measurements"][0].__setitem__("drop_ratio", 1.5),
            "runs[0].subjects[0].measurements[0].drop_ratio: Input should be less than or equal to 1 (got 1.5)",
        ),
        (
            lambda d: d["runs"][0]["subjects"][3].__setitem__("kind", "driver"),
            "runs[0].subjects[3]: subject 'ftrace' is a peer, not a driver",
        ),
        (lambda d: d.__setitem__("created", "yesterday"), "created: not an ISO 8601 time: 'yesterday'"),
        (
            lambda d: d["runs"][0]["subjects"].append(d["runs"][0]["subjects"][0]),
            "runs[0].subjects: subject listed more than once: kmod",
        ),
    ],
)
def test_invalid_results_name_file_and_field(tmp_path: Path, mutate: Any, expected: str) -> None:
    data = _dumped()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_results(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message, message


def test_unreadable_results(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"results\.json: line 1, column 2: invalid JSON"):
        load_results(_write(tmp_path, "{nope"))
    with pytest.raises(ConfigError, match="expected a JSON object at the top level, got list"):
        load_results(_write(tmp_path, "[]"))
    with pytest.raises(ConfigError, match=r"missing\.json: no such file"):
        load_results(tmp_path / "missing.json")


def test_stability_flags_large_differences() -> None:
    rows = stability(results(), results(kmod=0.8, bpf=0.95))
    by_key = {(r["arch"], r["subject"], r["mix"]): r for r in rows}
    assert len(rows) == 2 * (5 + 4)  # both mixes of every measured subject
    kmod = by_key[("x86_64", "kmod", "getppid")]
    assert kmod["ratio_a"] == pytest.approx(0.40) and kmod["ratio_b"] == pytest.approx(0.32)
    assert kmod["rel_diff"] == pytest.approx(0.2) and kmod["flagged"]
    bpf = by_key[("aarch64", "bpf", "rw")]
    assert bpf["rel_diff"] == pytest.approx(0.05) and not bpf["flagged"]
    assert not by_key[("x86_64", "modern_bpf", "getppid")]["flagged"]
    assert {r["subject"] for r in rows if r["flagged"]} == {"kmod"}
    assert STABILITY_THRESHOLD == 0.15


def test_merge_and_stability_section(tmp_path: Path) -> None:
    first, second = results(), results(kmod=0.8)
    second.created = "2025-02-01T00:00:00+00:00"
    second.git_revision = "def5678"
    merged = merge_results([first, second, first])  # the repeated file adds nothing
    assert len(merged.runs) == 4
    assert merged.created == "2025-02-01T00:00:00+00:00"
    assert merged.git_revision is None
    assert merge_results([first, first]).git_revision == "abc1234"
    with pytest.raises(ValueError):
        merge_results([])

    text = write_report(merged, tmp_path)[0].read_text()
    # Tables show the later run; the stability section compares the two.
    assert "| kmod | driver | getppid | 400,000 | 0.320 | 800,000 | 0.00% |  |" in text
    assert "latest of 2 runs of this cell (see Stability)" in text
    assert "## Stability" in text
    assert "4 of 18 flagged." in text
    flagged = "| x86_64 | bookworm-backports | kmod | getppid | tcg | 1 vs 2 | 0.400 | 0.320 | 20.00% | **> 15%** |"
    assert flagged in text
    assert "| x86_64 | bookworm-backports | bpf | getppid | tcg | 1 vs 2 | 0.300 | 0.300 | 0.00% |  |" in text

    table = render_table(merged)
    assert "stability: 4 of 18 ratios differ by more than 15% between runs" in table
    assert "x86_64/bookworm-backports kmod getppid: 0.400 vs 0.320 (20.00%)" in table


def test_render_table() -> None:
    table = render_table(results())
    assert "x86_64 — bookworm-backports (6.12.12+bpo-amd64), tcg, 2 vCPUs" in table
    assert table.index("x86_64 —") < table.index("aarch64 —")
    lines = table.splitlines()
    kmod = next(line for line in lines if line.split()[:3] == ["kmod", "driver", "getppid"])
    assert kmod.split()[3:7] == ["400,000", "0.400", "800,000", "0.00%"]
    assert any(AUDITD_SKIP in line for line in lines)
    assert "cheapest driver (getppid): x86_64 (tcg): modern_bpf 0.550; aarch64 (tcg): kmod 0.450" in table


def test_ratio_helpers() -> None:
    assert overhead_ratio(50.0, 200.0) == 0.25 and overhead_ratio(1.0, 0.0) == 0.0
    assert drop_ratio(0, 0) == 0.0 and drop_ratio(75, 25) == 0.25
    assert delivered_ratio(100, 100, sample_every=2) == 1.0 and delivered_ratio(0, 0) is None
