"""JUnit XML for CI systems: one testsuite "kmatrix", one testcase per cell.

classname is "<arch>.<kernel>" and name "<driver>-<suite>", so CI UIs group cells by target.
A failing cell's text carries its first mismatch and console excerpt: the XML alone explains it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from harness.report.schema import CellRecord, RunResults, clean_text

__all__ = ["render_junit"]

# JUnit's element for each non-passing status; "pass" has none.
_ELEMENT = {"fail": "failure", "error": "error", "skip": "skipped"}


def _first_line(text: str | None) -> str:
    return clean_text(text or "").strip().split("\n", 1)[0]


def _failure_text(record: CellRecord) -> str:
    parts = [f"reason: {record.reason}" if record.reason else ""]
    if record.first_mismatch:
        parts.append(f"first mismatch: {record.first_mismatch}")
    parts += [f"retry: {retry}" for retry in record.retries]
    if record.console_excerpt:
        parts.append(f"console (last lines):\n{record.console_excerpt}")
    return clean_text("\n".join(part for part in parts if part))


def _testcase(record: CellRecord) -> ET.Element:
    case = ET.Element("testcase", classname=f"{record.arch}.{record.kernel}", name=f"{record.driver}-{record.suite}",
                      time=f"{record.seconds:.3f}")
    element = _ELEMENT.get(record.status)
    if element is None:
        return case
    child = ET.SubElement(case, element, message=_first_line(record.reason) or record.status)
    if record.status != "skip":
        child.set("type", record.status)
        child.text = _failure_text(record)
    return case


def _properties(results: RunResults) -> ET.Element:
    properties = ET.Element("properties")
    values = {
        "kmatrix_version": results.kmatrix_version,
        "git_revision": results.git_revision,
        "matrix_revision": results.matrix_revision,
        "profile": results.profile,
        "shard": results.shard,
        "interrupted": "true" if results.interrupted else "false",
    }
    for name, value in values.items():
        ET.SubElement(properties, "property", name=name, value=value or "")
    return properties


def _set_counts(element: ET.Element, results: RunResults) -> None:
    counts = results.counts()
    element.set("tests", str(len(results.cells)))
    element.set("failures", str(counts["fail"]))
    element.set("errors", str(counts["error"]))
    element.set("skipped", str(counts["skip"]))
    element.set("time", f"{sum(record.seconds for record in results.cells):.3f}")


def render_junit(results: RunResults) -> str:
    """The JUnit XML document (a <testsuites> holding the one <testsuite>) as text."""
    root = ET.Element("testsuites", name="kmatrix")
    _set_counts(root, results)
    suite = ET.SubElement(root, "testsuite", name="kmatrix", timestamp=results.created)
    _set_counts(suite, results)
    suite.append(_properties(results))
    suite.extend(_testcase(record) for record in results.cells)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
