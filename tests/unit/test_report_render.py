"""JUnit XML, Markdown and HTML renderers, write_reports and `kmatrix report render`."""

from __future__ import annotations

import argparse
import base64
import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from test_report_schema import make_cell_result, make_results, sample_results

from harness.errors import ConfigError
from harness.report import REPORT_FILES, write_reports
from harness.report.cli import UsageError, register
from harness.report.html import render_html
from harness.report.junit import render_junit
from harness.report.markdown import escape_markdown, render_markdown
from harness.report.schema import RunResults, load_results, record_from_cell

EVIL = 'bad <script>alert("x")</script> | `tick` & *star* [link](javascript:x)'
# The smallest valid PNG (1x1, grey): what `kmatrix bench` writes, as far as embedding cares.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg==")


@pytest.fixture
def results(tmp_path: Path) -> RunResults:
    return sample_results(tmp_path / "logs")


def evil_results(tmp_path: Path) -> RunResults:
    """A failing cell whose reason, mismatch and console hold markup and control characters."""
    result = make_cell_result("x86_64", "bookworm", "kmod", "capture", "fail", log_dir=tmp_path, reason=EVIL,
                              first_mismatch=EVIL)
    Path(str(result.console_log)).write_text("<script>console</script>\x00\x1b[31mred\x1b[0m\n")
    return make_results([record_from_cell(result)])


# -- JUnit -----------------------------------------------------------------------------------------


def test_junit_parses_and_counts(results: RunResults) -> None:
    root = ET.fromstring(render_junit(results))
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    suite = suites[0]
    assert suite.get("name") == "kmatrix"
    for element in (root, suite):
        assert (element.get("tests"), element.get("failures"), element.get("errors"), element.get("skipped")) == (
            "13", "1", "1", "2")
    cases = suite.findall("testcase")
    assert len(cases) == 13
    assert len(suite.findall("testcase/failure")) == 1
    assert len(suite.findall("testcase/error")) == 1
    assert len(suite.findall("testcase/skipped")) == 2
    properties = {p.get("name"): p.get("value") for p in suite.findall("properties/property")}
    assert properties == {"kmatrix_version": results.kmatrix_version, "git_revision": "2b31fd7",
                          "matrix_revision": results.matrix_revision, "profile": "ci", "shard": "",
                          "interrupted": "false"}


def test_junit_testcases_name_the_cell_and_explain_failures(results: RunResults) -> None:
    suite = ET.fromstring(render_junit(results)).find("testsuite")
    assert suite is not None
    cases = {(c.get("classname"), c.get("name")): c for c in suite.findall("testcase")}
    failing = cases[("x86_64.bookworm", "modern_bpf-capture")]
    assert failing.get("time") == "52.750"
    failure = failing.find("failure")
    assert failure is not None
    assert failure.get("message") == "openat (tid 4242): arg path: expected '/tmp/kmx/a', got '/tmp/kmx/b'"
    assert "first mismatch: openat (tid 4242)" in (failure.text or "")
    assert "kmatrix: agent ready" in (failure.text or "")  # the console excerpt
    error = cases[("aarch64.bookworm-backports", "bpf-capture")].find("error")
    assert error is not None and "retry: QEMU exited with code -6" in (error.text or "")
    skipped = cases[("riscv64.trixie", "bpf-capture")].find("skipped")
    assert skipped is not None and skipped.get("message") == "the legacy probe does not support riscv64"
    assert len(cases[("s390x.bookworm", "kmod-capture")]) == 0  # a pass has no child


def test_junit_survives_markup_and_control_characters(tmp_path: Path) -> None:
    text = render_junit(evil_results(tmp_path))
    failure = ET.fromstring(text).find("testsuite/testcase/failure")
    assert failure is not None and failure.get("message") == EVIL
    assert "<script>" not in text and "\x00" not in text and "\x1b" not in text
    assert "red" in (failure.text or "")


def test_junit_of_an_empty_run() -> None:
    root = ET.fromstring(render_junit(make_results([])))
    assert root.get("tests") == "0" and root.find("testsuite/testcase") is None


# -- Markdown --------------------------------------------------------------------------------------


def test_markdown_summary_table_and_failures(results: RunResults) -> None:
    text = render_markdown(results)
    lines = text.splitlines()
    assert lines[0].startswith("**kmatrix: 13 cells**: ✅ 9 pass, ❌ 1 fail, ⚠️ 1 error, ⏭ 2 skip")
    assert "git 2b31fd7" in lines[0] and f"matrix {results.matrix_revision}" in lines[0]
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == r"| arch | kernel | bpf capture | kmod capture | kmod ia32 | modern\_bpf capture |"
    assert len(table) == 2 + 7  # header, rule, one row per (arch, kernel)
    assert table[2] == r"| x86\_64 | bookworm (6.1.0-40-amd64) | ✅ | ✅ | ✅ | ❌ |"
    assert all(line.count("|") == table[0].count("|") for line in table)
    assert "- ❌ `x86_64-bookworm-modern_bpf-capture` (fail): openat (tid 4242)" in text
    assert "- ⚠️ `aarch64-bookworm-backports-bpf-capture` (error): guest did not answer within 300 s" in text
    assert "<details><summary>2 skipped</summary>" in text


def test_markdown_is_deterministic_and_escaped(tmp_path: Path, results: RunResults) -> None:
    assert render_markdown(results) == render_markdown(results.model_copy(deep=True))
    text = render_markdown(evil_results(tmp_path))
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert r"\| \`tick\` &amp; \*star\* \[link\]" in text  # nothing can break the table or add markup


def test_markdown_mentions_shard_and_interruption(tmp_path: Path) -> None:
    text = render_markdown(sample_results(tmp_path, shard="2/4", interrupted=True))
    assert "shard 2/4" in text.splitlines()[0]
    assert "**Interrupted**" in text


def test_escape_markdown_collapses_lines() -> None:
    assert escape_markdown("a\n b\r\n\tc_d") == r"a b c\_d"


# -- HTML ------------------------------------------------------------------------------------------


class _Collect(HTMLParser):
    """Tags with their attributes, and element ids."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(text: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Collect()
    parser.feed(text)
    return parser.tags


def test_html_matrix_links_each_non_passing_cell_to_its_details(results: RunResults) -> None:
    text = render_html(results)
    tags = _tags(text)
    details = [str(attrs["id"]) for tag, attrs in tags if tag == "details"]
    expected = [f"cell-{r.cell}" for r in results.cells if r.status != "pass"]
    assert sorted(details) == sorted(expected)
    links = [str(attrs["href"]) for tag, attrs in tags if tag == "a"]
    assert sorted(links) == sorted(f"#{anchor}" for anchor in expected)
    ids = [attrs["id"] for _tag, attrs in tags if attrs.get("id")]
    assert len(ids) == len(set(ids))
    assert 'id="matrix"' in text
    assert text.count('class="status pass"') == 9
    assert "6.12.48+deb12-arm64" in text  # the row's kernel release
    assert "QEMU exited with code -6" in text and "kmatrix: agent ready" in text


def test_html_is_self_contained(tmp_path: Path, results: RunResults) -> None:
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "overhead.png").write_bytes(PNG)
    (bench / "buffers.png").write_bytes(PNG)
    (bench / "report.md").write_text("# Throughput\n\n| subject | ratio |\n|---|---|\n| kmod | 0.91 |\n\n"
                                     "![Overhead ratio per subject](overhead.png)\n")
    text = render_html(results, bench)
    assert "http://" not in text and "https://" not in text
    for tag, attrs in _tags(text):
        assert (attrs.get("href") or "#").startswith("#"), (tag, attrs)
        assert (attrs.get("src") or "data:").startswith("data:"), (tag, attrs)
        assert tag not in ("link", "iframe", "object", "embed"), tag
    images = [attrs["src"] for tag, attrs in _tags(text) if tag == "img"]
    assert images == ["data:image/png;base64," + base64.b64encode(PNG).decode()] * 2
    assert "| kmod | 0.91 |" in text and "![Overhead" not in text
    assert "<style>" in text and text.count("<script>") == 1


def test_html_without_bench_files_has_no_bench_section(tmp_path: Path, results: RunResults) -> None:
    assert 'id="bench"' not in render_html(results, tmp_path)
    with pytest.raises(ConfigError, match="not a directory"):
        render_html(results, tmp_path / "missing")


def test_html_is_deterministic_and_escaped(tmp_path: Path, results: RunResults) -> None:
    assert render_html(results) == render_html(results.model_copy(deep=True))
    text = render_html(evil_results(tmp_path))
    assert text.count("<script") == 1  # ours; the reason's and the console's are text
    assert "&lt;script&gt;alert(" in text and "&lt;script&gt;console" in text
    assert "\x00" not in text and "\x1b" not in text


def test_html_script_opens_the_details_named_by_the_hash(results: RunResults) -> None:
    script = render_html(results).split("<script>")[1].split("</script>")[0]
    assert "location.hash" in script and "hashchange" in script and ".open = true" in script


def test_html_header_and_interrupted_flag(tmp_path: Path) -> None:
    text = render_html(sample_results(tmp_path, shard="2/4", interrupted=True))
    assert 'id="interrupted"' in text
    assert "<td>2/4</td>" in text and "<td>0123456789abcdef</td>" in text and "QEMU emulator version 9.2.0" in text
    assert 'id="interrupted"' not in render_html(sample_results(tmp_path))


def test_html_declared_minimum_table(tmp_path: Path) -> None:
    records = [record_from_cell(make_cell_result("x86_64", kernel, "modern_bpf", "capture", status))
               for kernel, status in (("bullseye", "pass"), ("bookworm", "pass"), ("bookworm-backports", "fail"))]
    records.append(record_from_cell(make_cell_result("aarch64", "bookworm", "kmod", "capture", "fail")))
    records.append(record_from_cell(make_cell_result("aarch64", "bookworm", "modern_bpf", "capture", "skip")))
    text = render_html(make_results(records))
    section = text.split('id="minimums"')[1].split("</table>")[0]
    rows = re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td>", section)
    assert rows == [("x86_64", "modern_bpf", "5.8"), ("aarch64", "kmod", "3.10"), ("aarch64", "modern_bpf", "5.8")]
    tested = re.findall(r"([^>\s]+) \((bullseye|bookworm|bookworm-backports)\)", section)
    assert tested == [("5.10.0-35-amd64", "bullseye"), ("6.1.0-40-amd64", "bookworm"),
                      ("6.12.48+deb12-amd64", "bookworm-backports"), ("6.1.0-40-arm64", "bookworm"),
                      ("6.1.0-40-arm64", "bookworm")]  # oldest first
    assert "oldest passing kernel is 5.10: 5.8 itself is untested" in section
    assert '<td class="bad">no tested kernel passed</td>' in section
    assert '<td class="gap">not tested: every cell was skipped</td>' in section


# -- write_reports and `kmatrix report render` -----------------------------------------------------


def test_write_reports_writes_the_four_files(tmp_path: Path, results: RunResults) -> None:
    written = write_reports(results, tmp_path / "out")
    assert [p.name for p in written] == list(REPORT_FILES)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(REPORT_FILES)  # no temp files left
    assert load_results(tmp_path / "out" / "results.json") == results
    ET.parse(tmp_path / "out" / "junit.xml")
    assert (tmp_path / "out" / "summary.md").read_text() == render_markdown(results)
    assert (tmp_path / "out" / "report.html").read_text() == render_html(results)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise UsageError(message)


def parse(argv: list[str]) -> argparse.Namespace:
    """argv parsed by a parser like harness.cli's, with `report` registered."""
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true")
    common.add_argument("--quiet", "-q", action="store_true")
    parser = _Parser(prog="kmatrix")
    register(parser.add_subparsers(dest="command", required=True, parser_class=_Parser), common)
    return parser.parse_args(argv)


def test_cli_render(tmp_path: Path, results: RunResults, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "run" / "results.json"
    write_reports(results, source.parent)
    args = parse(["report", "render", str(source), "-o", str(tmp_path / "out")])
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"rendered {source}: 13 cells: 9 pass, 1 fail, 1 error, 2 skip"
    assert out[1:] == [f"  {tmp_path / 'out' / name}" for name in REPORT_FILES]
    args = parse(["report", "render", str(source), "-o", str(tmp_path / "out2"), "--json"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == {"pass": 9, "fail": 1, "error": 1, "skip": 2}


def test_cli_render_errors(tmp_path: Path, results: RunResults) -> None:
    with pytest.raises(UsageError, match="required"):
        parse(["report", "render", "x.json"])
    args = parse(["report", "render", str(tmp_path / "none.json"), "-o", str(tmp_path), "--bench", str(tmp_path / "b")])
    with pytest.raises(UsageError, match=r"--bench .*: not a directory") as caught:
        args.func(args)
    assert caught.value.exit_code == 2
    args = parse(["report", "render", str(tmp_path / "none.json"), "-o", str(tmp_path / "out")])
    with pytest.raises(ConfigError, match=r"none\.json: no such file"):
        args.func(args)
    assert not (tmp_path / "out").exists()
