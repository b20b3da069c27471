"""The HTML report in a real browser: a link to a failing cell opens that cell's details.

Headless Chromium loads report.html#cell-<id> from disk and dumps the DOM after its scripts ran.
Needs the Debian package `chromium` (or a `chromium-browser` on PATH); skipped without it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness import __version__
from harness.report.html import render_html
from harness.report.schema import CellRecord, RunResults, Status

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REASON = "openat lost: driver saw 45 of 46 calls of the workload thread"


def _record(cell: tuple[str, str, str, str], status: Status, reason: str | None = None) -> CellRecord:
    arch, kernel, driver, suite = cell
    return CellRecord(cell="-".join(cell), arch=arch, kernel=kernel, driver=driver, suite=suite, status=status,
                      reason=reason, kernel_release="6.1.0-40-amd64", declared_min="5.8", accelerator="tcg",
                      timings={"boot_s": 12.0, "run_s": 30.5},
                      console_excerpt="kmatrix: agent ready\nkmx: 1 event lost" if status == "fail" else None)


def _results() -> RunResults:
    return RunResults(
        kmatrix_version=__version__, git_revision="2b31fd7", matrix_revision="0123456789abcdef", profile="ci",
        created="2026-12-01T10:00:00+00:00", finished="2026-12-01T10:30:00+00:00",
        cells=[
            _record(("x86_64", "bookworm", "kmod", "capture"), "pass"),
            _record(("x86_64", "bookworm", "modern_bpf", "capture"), "fail", REASON),
            _record(("x86_64", "bullseye", "modern_bpf", "capture"), "skip", "kernel 5.10 has no BTF"),
        ],
    )


class _Details(HTMLParser):
    """Each <details>: its attributes and the text inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[str, tuple[dict[str, str | None], str]] = {}
        self._current: str | None = None
        self._text: list[str] = []
        self._attrs: dict[str, str | None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "details":
            self._attrs = dict(attrs)
            self._current, self._text = self._attrs.get("id"), []

    def handle_endtag(self, tag: str) -> None:
        if tag == "details" and self._current is not None:
            self.found[self._current] = (self._attrs, "".join(self._text))
            self._current = None

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self._text.append(data)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: neither `chromium` nor `chromium-browser` "
                                             "is on PATH (Debian: apt-get install chromium)")
def test_link_to_a_failing_cell_opens_its_details(tmp_path: Path) -> None:
    assert CHROMIUM is not None
    report = tmp_path / "report.html"
    report.write_text(render_html(_results()), encoding="utf-8")
    failing = "cell-x86_64-bookworm-modern_bpf-capture"
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", f"{report.as_uri()}#{failing}"],
        capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert re.search(r'<table id="matrix"', dom), dom[:2000]
    assert f'href="#{failing}"' in dom
    parser = _Details()
    parser.feed(dom)
    attrs, text = parser.found[failing]
    assert "open" in attrs, f"details of {failing} not opened by the hash: {attrs}"
    assert REASON in text and "1 event lost" in text
    skipped_attrs, _text = parser.found["cell-x86_64-bullseye-modern_bpf-capture"]
    assert "open" not in skipped_attrs  # only the cell the link names
