"""`kmatrix report`: render a run's results, or merge shards' results, into the four report files.

    kmatrix report render runs/run-1/results.json -o out/ [--bench runs/bench-1]
    kmatrix report merge shard-*/results.json -o out/ [--allow-mixed] [--bench DIR]

harness.cli calls `register` to add the subcommand. Errors are KmatrixErrors: the CLI prints one
line and a hint and exits 2 (bad input), like every other command.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.report.schema import STATUSES, RunResults

__all__ = ["UsageError", "cmd_report_merge", "cmd_report_render", "register"]


class UsageError(ConfigError):
    """Bad command-line use (exit 2); the same pattern as harness.cli.UsageError."""


def _check_bench(bench: Path | None) -> None:
    if bench is not None and not bench.is_dir():
        raise UsageError(f"--bench {bench}: not a directory", hint="pass the output directory of `kmatrix bench`")


def _summary(results: RunResults) -> str:
    counts = results.counts()
    tally = ", ".join(f"{counts[status]} {status}" for status in STATUSES)
    return f"{len(results.cells)} cells: {tally}" + (" (interrupted)" if results.interrupted else "")


def _write(results: RunResults, args: argparse.Namespace, what: str) -> int:
    from harness.report import write_reports

    written = write_reports(results, args.output, args.bench)
    if args.json:
        print(json.dumps({"written": [str(path) for path in written], "counts": results.counts(),
                          "interrupted": results.interrupted}, indent=2))
    else:
        print(f"{what}: {_summary(results)}")
        for path in written:
            print(f"  {path}")
    return 0


def cmd_report_render(args: argparse.Namespace) -> int:
    from harness.report.schema import load_results

    _check_bench(args.bench)
    return _write(load_results(args.file), args, f"rendered {args.file}")


def cmd_report_merge(args: argparse.Namespace) -> int:
    from harness.report.merge import merge_results
    from harness.report.schema import load_results

    _check_bench(args.bench)
    parts = [load_results(path) for path in args.files]
    merged = merge_results(parts, allow_mixed=args.allow_mixed, sources=[str(path) for path in args.files])
    return _write(merged, args, f"merged {len(parts)} file{'s' if len(parts) > 1 else ''}")


def _outputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="directory for results.json, junit.xml, report.html, summary.md")
    parser.add_argument("--bench", type=Path, default=None,
                        help="a `kmatrix bench` output directory: embed its plots and tables in report.html")


def register(subparsers: argparse._SubParsersAction[Any],
             common: argparse.ArgumentParser) -> None:
    """Add `kmatrix report {render,merge}` to the CLI's subcommands."""
    report = subparsers.add_parser("report", help="write JUnit XML, HTML and Markdown reports; merge shards")
    # Nested parsers of the same class as the CLI's own, so their usage errors stay one line, exit 2.
    actions = report.add_subparsers(dest="report_action", metavar="{render,merge}", required=True,
                                    parser_class=type(report))

    render = actions.add_parser("render", parents=[common], help="the four report files of one results.json")
    render.add_argument("file", type=Path, help="a results.json")
    _outputs(render)
    render.set_defaults(func=cmd_report_render)

    merge = actions.add_parser("merge", parents=[common], help="merge shards' results.json into one report")
    merge.add_argument("files", type=Path, nargs="+", help="results.json files, one per shard")
    merge.add_argument("--allow-mixed", action="store_true",
                       help="merge results of different git or matrix revisions (all are recorded)")
    _outputs(merge)
    merge.set_defaults(func=cmd_report_merge)
