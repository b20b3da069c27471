"""The run as GitHub-flavoured Markdown: for CI step summaries and pull-request comments.

A summary line, the matrix (rows arch x kernel, columns driver x suite) and the failures with their
reasons. Text from the run is escaped: a reason can neither break the table nor inject HTML.
"""

from __future__ import annotations

import re

from harness.report.schema import STATUSES, CellRecord, RunResults, clean_text, grid

__all__ = ["SYMBOLS", "escape_markdown", "render_markdown"]

SYMBOLS = {"pass": "✅", "fail": "❌", "error": "⚠️", "skip": "⏭"}
# Characters that would start markup inline: escaped with a backslash. <, > and & become entities
# (GitHub shows them as text), so a reason holding "<script>" never reaches the page raw.
_MARKUP_RE = re.compile(r"([\\`*_\[\]|#~])")
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_PLAIN_ID_RE = re.compile(r"^[A-Za-z0-9._+-]+$")


def escape_markdown(text: str) -> str:
    """One line of inert Markdown: whitespace collapsed, markup escaped, HTML turned into entities."""
    line = " ".join(clean_text(text).split())
    line = "".join(_ENTITIES.get(char, char) for char in line)
    return _MARKUP_RE.sub(r"\\\1", line)


def _code(text: str) -> str:
    """A cell id as code when it is plain (as the matrix makes them), escaped text otherwise."""
    return f"`{text}`" if _PLAIN_ID_RE.match(text) else escape_markdown(text)


def _summary(results: RunResults) -> str:
    counts = results.counts()
    tally = ", ".join(f"{SYMBOLS[status]} {counts[status]} {status}" for status in STATUSES)
    facts = [f"kmatrix {results.kmatrix_version}", f"git {results.git_revision or 'unknown'}",
             f"matrix {results.matrix_revision}"]
    if results.profile:
        facts.append(f"profile {results.profile}")
    if results.shard:
        facts.append(f"shard {results.shard}")
    line = f"**kmatrix: {len(results.cells)} cells**: {tally} ({escape_markdown(' · '.join(facts))})"
    if results.interrupted:
        line += "\n\n**Interrupted**: the run stopped before every cell ran."
    return line


def _table(results: RunResults) -> list[str]:
    matrix = grid(results)
    header = ["arch", "kernel"] + [escape_markdown(f"{driver} {suite}") for driver, suite in matrix.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in matrix.rows:
        arch, kernel = row
        release = matrix.releases.get(row)
        label = escape_markdown(f"{kernel} ({release})" if release else kernel)
        marks = []
        for column in matrix.columns:
            record = matrix.get(row, column)
            marks.append(SYMBOLS[record.status] if record else "")
        lines.append("| " + " | ".join([escape_markdown(arch), label, *marks]) + " |")
    return lines


def _problem(record: CellRecord) -> list[str]:
    reason = escape_markdown(record.reason or "no reason recorded")
    lines = [f"- {SYMBOLS[record.status]} {_code(record.cell)} ({record.status}): {reason}"]
    if record.first_mismatch and record.first_mismatch != record.reason:
        lines.append(f"  - first mismatch: {escape_markdown(record.first_mismatch)}")
    lines += [f"  - retry: {escape_markdown(retry)}" for retry in record.retries]
    return lines


def _skips(skipped: list[CellRecord]) -> list[str]:
    lines = ["", f"<details><summary>{len(skipped)} skipped</summary>", ""]
    lines += [f"- {_code(record.cell)}: {escape_markdown(record.reason or 'no reason recorded')}" for record in skipped]
    return [*lines, "", "</details>"]


def render_markdown(results: RunResults) -> str:
    """The report as Markdown; the same results always give the same text."""
    lines = [_summary(results), ""]
    if results.cells:
        lines += _table(results)
    problems = [record for record in results.cells if record.status in ("fail", "error")]
    if problems:
        lines += ["", "### Failures and errors", ""]
        for record in problems:
            lines += _problem(record)
    skipped = [record for record in results.cells if record.status == "skip"]
    if skipped:
        lines += _skips(skipped)
    return "\n".join(lines) + "\n"
