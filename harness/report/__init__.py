"""Reports of a matrix run: the results schema (`schema`), JUnit XML, Markdown, HTML, shard merging.

`write_reports` writes all four files of a run directory. Renderers are imported when used, so
importing this package (the CLI does, to register `kmatrix report`) stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.report.schema import RunResults

__all__ = ["REPORT_FILES", "write_reports"]

# What write_reports writes, in this order.
REPORT_FILES = ("results.json", "junit.xml", "report.html", "summary.md")


def _write_text(path: Path, text: str) -> Path:
    # Same atomic pattern as results.json: a CI step reading the directory never sees half a file.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def write_reports(results: RunResults, out_dir: Path, bench_dir: Path | None = None) -> list[Path]:
    """Write results.json, junit.xml, report.html and summary.md into `out_dir`; their paths."""
    from harness.report.html import render_html
    from harness.report.junit import render_junit
    from harness.report.markdown import render_markdown
    from harness.report.schema import save_results

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    html = render_html(results, bench_dir)  # first: a bad --bench fails before anything is written
    save_results(results, out_dir / "results.json")
    return [
        out_dir / "results.json",
        _write_text(out_dir / "junit.xml", render_junit(results)),
        _write_text(out_dir / "report.html", html),
        _write_text(out_dir / "summary.md", render_markdown(results)),
    ]
