"""`kmatrix`: the command line. Exit 0 all passed, 1 some cell failed, 2 usage/config error,
3 infrastructure error. Errors print one line plus a hint; a traceback only with --debug."""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from harness import __version__
from harness.archs import ARCH_NAMES, get_arch
from harness.errors import ConfigError, KmatrixError
from harness.vm import kill_all_guests

# Not a terminal (CI logs, pipes): wide enough that matrix tables do not wrap every cell.
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)


class UsageError(ConfigError):
    pass


class Parser(argparse.ArgumentParser):
    """Usage errors become UsageError: one line, exit 2, no argparse banner."""

    def error(self, message: str) -> Any:  # one line, exit 2, like every other usage error
        raise UsageError(f"{self.prog}: {message}", hint=f"see `{self.prog} --help`")


def _progress(quiet: bool) -> tuple[Progress | None, Callable[[str, int, int | None], None] | None]:
    if quiet or not err.is_terminal:
        return None, None
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def hook(name: str, done: int, total: int | None) -> None:
        if name not in tasks:
            tasks[name] = progress.add_task(name.rsplit("/", 1)[-1][:60], total=total)
        progress.update(tasks[name], completed=done, total=total)
        if total is not None and done >= total:
            progress.remove_task(tasks.pop(name))

    return progress, hook


def _workspace(args: argparse.Namespace) -> Any:
    from harness.runner import Workspace

    progress, hook = _progress(args.quiet or args.json)
    if progress:
        progress.start()
        atexit.register(progress.stop)
    say: Callable[[str], None] = (
        (lambda _m: None) if (args.quiet or args.json) else (lambda m: err.print(m, soft_wrap=True))
    )
    return Workspace.open(args.matrix, say=say, progress=hook)


def _arch_list(value: str) -> list[str]:
    if value == "all":
        return list(ARCH_NAMES)
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:  # "" or ",": a typo, not "every architecture"
        raise UsageError(f"--arch {value!r} names no architecture", hint="an architecture, a comma list, or all")
    for name in names:
        get_arch(name)
    return names


# -- commands ---------------------------------------------------------------------------------
def cmd_doctor(args: argparse.Namespace) -> int:
    from harness.doctor import check_arch, check_host, debian_release

    release = debian_release()
    host = check_host()
    archs = {name: check_arch(get_arch(name), release) for name in _arch_list(args.arch)}
    if args.json:
        print(
            json.dumps(
                {
                    "release": release,
                    "host": [vars(c) for c in host],
                    "archs": {n: [vars(c) for c in r.checks] for n, r in archs.items()},
                },
                indent=2,
            )
        )
    else:
        table = Table(title=f"kmatrix doctor (host: Debian {release})")
        for column in ("scope", "check", "status", "detail", "fix"):
            table.add_column(column)
        for check in host:
            table.add_row("host", check.name, _mark(check.ok), check.detail, check.fix or "")
        for name, report in archs.items():
            for check in report.checks:
                table.add_row(name, check.name, _mark(check.ok), check.detail, check.fix or "")
        out.print(table)
    ok = all(c.ok for c in host) and all(r.ok for r in archs.values())
    return 0 if ok else 1


def _mark(ok: bool) -> str:
    return "[green]ok[/]" if ok else "[red]missing[/]"


def cmd_setup(args: argparse.Namespace) -> int:
    from harness.debian import host_mirror
    from harness.doctor import plan_setup, run_setup

    plan = plan_setup(_arch_list(args.arch))
    err.print(f"host: Debian {plan.release}")
    err.print(f"install: {' '.join(plan.packages) or '-'}")
    err.print(f"install from bookworm-backports: {' '.join(plan.backports_packages) or '-'}")
    if args.dry_run:
        return 0
    run_setup(plan, host_mirror() if plan.add_backports_source else "", err.print)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from harness.cells import SUITE_RUNNERS, consumer_gap, minimum_text, settle_kernel
    from harness.matrix import applicability

    ws = _workspace(args)
    cells = ws.matrix.cells(args.profile, archs=_arch_list(args.arch) if args.arch is not None else None)
    rows = []
    for cell in cells:
        release: str | None = None
        reason: str | None
        try:
            if args.no_fetch:
                verdict = applicability(ws.matrix, cell, None)
                notes: list[str] = []
            else:
                cell, kernel, verdict, notes = settle_kernel(ws, cell, args.profile)
                release = kernel.release
            status = "pending" if verdict.pending else ("run" if verdict.runnable else "skip")
            gap = consumer_gap(ws, cell) if status != "skip" and cell.suite in SUITE_RUNNERS else None
            if gap is not None:  # what the run will say: no suite here reads that driver's consumer
                status, verdict = "skip", dataclasses.replace(verdict, reason=gap)
            reason = "; ".join([*notes, *([verdict.reason] if verdict.reason else [])]) or None
        except KmatrixError as error:
            status, reason = "error", str(error).splitlines()[0]
        rows.append({"cell": cell.id, "arch": cell.arch, "kernel": cell.kernel.label, "release": release,
                     "driver": cell.driver, "suite": cell.suite, "status": status, "reason": reason,
                     "minimum": minimum_text(cell, release)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=f"profile {args.profile}: {len(rows)} cells")
    for column in ("arch", "kernel", "release", "driver", "suite", "status", "minimum", "reason"):
        table.add_column(column)
    colors = {"run": "green", "skip": "yellow", "error": "red", "pending": "cyan"}
    for row in rows:
        table.add_row(row["arch"], row["kernel"], row["release"] or "?", row["driver"], row["suite"],
                      f"[{colors[row['status']]}]{row['status']}[/]", row["minimum"], escape(row["reason"] or ""))
    out.print(table)
    return 0


def _kernel_refs(ws: Any, arch: str, kernel: str | None) -> list[Any]:
    from harness.matrix import KernelRef

    refs: list[KernelRef] = ws.matrix.kernels(arch)
    if kernel is None:
        return [ws.matrix.newest_kernel(arch)]
    if kernel == "all":
        return refs
    for ref in refs:
        if kernel in (ref.label, ref.suite):
            return [ref]
    if Path(kernel).is_dir():
        directory = Path(kernel).resolve()
        return [KernelRef(arch=arch, expect=(0, 0, 0), label=directory.name, path=directory)]
    known = ", ".join(r.label for r in refs)
    raise ConfigError(
        f"--kernel {kernel!r}: {arch} has no such kernel in the matrix and it is not a directory",
        hint=f"use one of: {known}, all, or a directory with vmlinuz and config",
    )


def cmd_boot(args: argparse.Namespace) -> int:
    from harness.runner import boot_cell, new_run_dir, prepare
    from harness.vm import Guest

    ws = _workspace(args)
    archs = _arch_list(args.arch)
    if args.shell:
        if len(archs) != 1:
            raise UsageError("--shell needs exactly one --arch")
        ref = _kernel_refs(ws, archs[0], args.kernel)[0]
        spec, kernel, _image, reason = prepare(ws, get_arch(archs[0]), ref, mode="shell", accel=args.accel)
        err.print(f"booting {archs[0]} {kernel.release} ({spec.accel}: {reason}); exit the shell to power off")
        run_dir = new_run_dir(args.output, "shell")
        with Guest(spec, run_dir / "console.log") as guest:
            guest.interact()
        return 0
    run_dir = args.output or new_run_dir(None, "boot")
    run_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for arch in archs:
        for ref in _kernel_refs(ws, arch, args.kernel):
            ws.say(f"[bold]{arch}[/] {ref.label}: booting")
            result = boot_cell(ws, arch, ref, run_dir, accel=args.accel)
            results.append(result)
            ws.say(
                f"{arch} {ref.label}: "
                + (f"ready in {result.boot_seconds:.1f} s" if result.ready else f"[red]{escape(result.error or '')}[/]")
            )
    (run_dir / "boot.json").write_text(json.dumps([r.to_json() for r in results], indent=2))
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2))
    else:
        table = Table(title=f"kmatrix boot ({run_dir})")
        for column in ("arch", "kernel", "uname -r", "uname -m", "python", "accel", "boot s", "ready", "image MB"):
            table.add_column(column)
        for r in results:
            table.add_row(
                r.arch,
                r.kernel_source,
                r.uname_r or r.kernel_release or "?",
                r.uname_m or "",
                r.python or "",
                r.accel or "",
                f"{r.boot_seconds:.1f}" if r.boot_seconds else "",
                "[green]yes[/]" if r.ready else f"[red]no[/] {escape(r.error or '')}",
                f"{r.image_bytes / 1e6:.1f}" if r.image_bytes else "",
            )
        out.print(table)
    return 0 if all(r.ready for r in results) else 1


def _run_plan_from_args(args: argparse.Namespace, ws: Any, default_profile: str) -> Any:
    from harness.matrix_run import RunPlan
    from harness.runner import new_run_dir
    from harness.shard import parse_shard, shard_cells

    # `is not None`, not truthiness: an empty value (--profile "") is an error, not the default.
    profile = args.profile if args.profile is not None else default_profile
    archs = _arch_list(args.arch) if args.arch is not None else None
    drivers = None if args.driver in (None, "all") else [d.strip() for d in args.driver.split(",")]
    suites = None if args.suite in (None, "all") else [s.strip() for s in args.suite.split(",")]
    cells = ws.matrix.cells(profile, archs=archs, drivers=drivers, suites=suites)
    if args.kernel is not None:
        cells = [c for c in cells if args.kernel in (c.kernel.label, c.kernel.suite)]
        if not cells:
            raise UsageError(f"--kernel {args.kernel!r} matches no cell of profile {profile}")
    shard = None
    if getattr(args, "shard", None) is not None:
        try:
            index, count = parse_shard(args.shard)
        except ValueError as error:
            raise UsageError(str(error), hint="for example --shard 1/4") from None
        cells = shard_cells(cells, index, count, ws.matrix)
        shard = f"{index}/{count}"
    target = getattr(args, "target", None)
    if target is not None:
        from harness.remote.ssh import parse_target

        if args.host_key is not None:  # the URL's own option, so one string carries the whole target
            target += ("&" if "?" in target else "?") + f"fingerprint={args.host_key}"
        parse_target(target)  # a bad URL is a ConfigError naming what is wrong, before anything runs
    elif getattr(args, "host_key", None) is not None:
        raise UsageError("--host-key needs --target", hint="--target ssh://user@host[:port] --host-key SHA256:...")
    run_dir = args.output or new_run_dir(None, "run")
    return RunPlan(cells, run_dir, profile, shard=shard, fault=getattr(args, "fault", None), target=target)


def _report_stale_runs(args: argparse.Namespace) -> None:
    """Before a run: warn about run directories (under ./runs and beside -o) whose run was killed
    outright, marking their results.json interrupted. Never deletes anything."""
    from harness.runner import default_runs_root, find_stale_runs

    roots = [default_runs_root()]
    if args.output is not None:
        roots.append(Path(args.output).parent)
    for stale in find_stale_runs(roots):
        err.print(f"[yellow]warning:[/] {escape(_one_line(stale.line()))}", soft_wrap=True)


def cmd_run(args: argparse.Namespace) -> int:
    from harness.matrix_run import run_plan

    _report_stale_runs(args)
    ws = _workspace(args)
    plan = _run_plan_from_args(args, ws, "full" if args.arch is not None else "default")
    results = run_plan(ws, plan, console=err, live=err.is_terminal, quiet=args.quiet or args.json)
    from harness.report import write_reports

    written = write_reports(results, plan.run_dir)
    if args.json:
        print((plan.run_dir / "results.json").read_text())
    elif not args.quiet:
        _print_results(results.cells, plan.run_dir)
        out.print(f"reports: {', '.join(str(p) for p in written)}")
    return 0 if all(r.status in ("pass", "skip") for r in results.cells) else 1


def cmd_qualify(args: argparse.Namespace) -> int:
    """The whole profile, then every report into the output directory; non-zero on any fail or error."""
    from harness.matrix_run import run_plan
    from harness.qualify import fold_bench, run_bench_for
    from harness.report import write_reports

    _report_stale_runs(args)
    ws = _workspace(args)
    plan = _run_plan_from_args(args, ws, "full")
    results = run_plan(ws, plan, console=err, live=err.is_terminal, quiet=args.quiet or args.json)
    bench_dir = None
    if not args.no_bench:
        bench_dir, bench_results = run_bench_for(ws, results, plan.run_dir / "bench")
        results = fold_bench(results, bench_results)
    written = write_reports(results, plan.run_dir, bench_dir=bench_dir)
    bad = [r for r in results.cells if r.status in ("fail", "error")]
    if args.json:
        print((plan.run_dir / "results.json").read_text())
    elif not args.quiet:
        _print_results(results.cells, plan.run_dir)
        out.print(f"reports: {', '.join(str(p) for p in written)}")
        out.print(f"qualify: {len(bad)} cell(s) failed or errored" if bad else "qualify: every cell passed or skipped")
    return 1 if bad else 0


def _print_results(records: list[Any], run_dir: Path) -> None:
    table = Table(title=f"kmatrix run ({run_dir})")
    for column in ("arch", "kernel", "release", "driver", "suite", "status", "verified", "driver/tracefs",
                   "accel", "build s", "boot s", "run s", "reason"):
        table.add_column(column)
    colors = {"pass": "green", "fail": "red", "error": "magenta", "skip": "yellow"}
    for r in records:
        oracle = r.metrics.get("oracle") or {}
        table.add_row(
            r.arch, r.kernel, r.kernel_release or "?", r.driver, r.suite, f"[{colors[r.status]}]{r.status}[/]",
            f"{r.metrics.get('verified_calls', '')}/{r.metrics.get('expected_calls', '')}"
            if "verified_calls" in r.metrics else "",
            f"{oracle.get('driver_count', '')}/{oracle.get('tracefs_count', '')}" if oracle else "",
            r.accelerator or "",
            str(r.timings.get("build_s", "")), str(r.timings.get("boot_s", "")), str(r.timings.get("run_s", "")),
            escape((r.reason or "")[:200]),
        )
    out.print(table)


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.bench.report import render_table, write_report
    from harness.bench.run import PEERS, BenchOptions, bench, bench_drivers
    from harness.runner import new_run_dir

    ws = _workspace(args)
    archs = _arch_list(args.arch) if args.arch is not None else list(ARCH_NAMES)
    cells = []
    for arch in archs:
        refs = ws.matrix.kernels(arch) if args.kernel == "all" else [ws.matrix.newest_kernel(arch)]
        if args.kernel not in (None, "all"):
            refs = [r for r in ws.matrix.kernels(arch) if args.kernel in (r.label, r.suite)]
            if not refs:
                raise UsageError(f"--kernel {args.kernel!r} matches no {arch} kernel of matrix.yaml")
        cells += [(arch, ref) for ref in refs]
    subjects = None if args.driver in (None, "all") else [d.strip() for d in args.driver.split(",") if d.strip()]
    if subjects == []:  # "" or ",": nothing to measure is a typo, not a benchmark
        raise UsageError(f"--driver {args.driver!r} names no driver or peer")
    known = (*ws.matrix.drivers, *PEERS)
    for name in subjects or []:
        if name not in known:
            raise UsageError(f"--driver {name!r} is not one of {', '.join(known)}")
    drivers = [d for d in ws.matrix.drivers if d in subjects] if subjects is not None else bench_drivers(ws.matrix)
    peers = [p for p in PEERS if subjects is None or p in subjects or args.peers]
    if args.repeats < 1 or args.duration_ms < 100:
        raise UsageError("--repeats must be >= 1 and --duration-ms >= 100")
    out_dir = args.output or new_run_dir(None, "bench")
    results = bench(ws, cells, out_dir, drivers=drivers, peers=peers,
                    options=BenchOptions(repeats=args.repeats, duration_ms=args.duration_ms, quick=args.quick,
                                         clock=args.clock))
    written = write_report(results, out_dir)
    if args.json:
        print((out_dir / "bench.json").read_text())
    else:
        print(render_table(results))
        out.print(f"results: {out_dir / 'bench.json'}; report: {', '.join(str(p) for p in written)}")
    return 0 if all(run.status in ("pass", "skip") for run in results.runs) else 1


def cmd_stat(args: argparse.Namespace) -> int:
    """Per-syscall latency statistics of a whole guest from one driver; exit 1 when --verify fails."""
    from harness.runner import new_run_dir
    from harness.stat import StatOptions, check_options, render, run_stat_cell

    options = StatOptions(by=args.by, duration_s=args.duration, verify=args.verify, repeats=args.repeats,
                          slack_ms=args.slack_ms, command=tuple(args.command) if args.command else None)
    ws = _workspace(args)
    check_options(ws.matrix, args.driver, options)
    out_dir = args.output or new_run_dir(None, "stat")
    results = [run_stat_cell(ws, arch, ref, args.driver, out_dir, options)
               for arch in _arch_list(args.arch) for ref in _kernel_refs(ws, arch, args.kernel)]
    (out_dir / "stat.json").write_text(json.dumps([r.to_json() for r in results], indent=2))
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2))
    elif not args.quiet:
        for result in results:
            out.print(render(result, limit=args.top))
        out.print(f"results: {out_dir / 'stat.json'}")
    return 0 if all(r.status in ("pass", "skip") for r in results) else 1


def cmd_syscalls(args: argparse.Namespace) -> int:
    from harness.syscalls import cli_syscalls

    text, code = cli_syscalls(args.arch, args.json)
    print(text)
    return code


def cmd_ia32_map(args: argparse.Namespace) -> int:
    from harness.ia32map import cli_ia32_map

    text, code = cli_ia32_map(args.json)
    print(text)
    return code


def cmd_image(args: argparse.Namespace) -> int:
    ws = _workspace(args)
    rows = []
    for arch in _arch_list(args.arch):
        started = time.monotonic()
        image = ws.image(get_arch(arch))
        rows.append({**image.describe(), "seconds": round(time.monotonic() - started, 2)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            out.print(
                f"{row['arch']}: {row['path']} {int(row['size_bytes']) / 1e6:.2f} MB "
                f"(Python {row['python']}, {'built' if row['built'] else 'cached'} in {row['seconds']} s)"
            )
    return 0


# -- parser and entry point -------------------------------------------------------------------
def build_parser() -> Parser:
    parser = Parser(prog="kmatrix", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kmatrix {__version__}")
    common = Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    common.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    common.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    common.add_argument("--matrix", type=Path, default=None, help="matrix file (default: ./matrix.yaml)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("doctor", parents=[common], help="what this host has and lacks, per architecture")
    p.add_argument("--arch", default="all")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("setup", parents=[common], help="install what doctor reports missing (apt)")
    p.add_argument("--arch", default="all")
    p.add_argument("--dry-run", action="store_true", help="print the plan only")
    p.add_argument("--yes", "-y", action="store_true", help="accepted for scripts (setup never prompts)")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("list", parents=[common], help="cells of a profile, with applicability and skip reasons")
    p.add_argument("--profile", default="full")
    p.add_argument("--arch", default=None)
    p.add_argument("--no-fetch", action="store_true", help="do not fetch kernels to read their config")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("boot", parents=[common], help="boot guests and report the time to the agent's ready")
    p.add_argument("--arch", required=True, help="an architecture, a comma list, or all")
    p.add_argument("--kernel", default=None, help="a suite from matrix.yaml, all, or a directory (default: newest)")
    p.add_argument("--shell", action="store_true", help="an interactive shell on the guest console")
    p.add_argument("--accel", choices=["kvm", "tcg"], default=None, help="skip the KVM probe")
    p.add_argument("-o", "--output", type=Path, default=None, help="run directory (default: runs/boot-*)")
    p.set_defaults(func=cmd_boot)

    p = sub.add_parser("run", parents=[common], help="run cells: build the driver, boot, run the suite, verify")
    p.add_argument("--driver", default=None, help="a driver from matrix.yaml, a comma list, or all")
    p.add_argument("--suite", default=None, help="a suite from matrix.yaml, a comma list, or all")
    p.add_argument("--arch", default=None, help="an architecture, a comma list, or all (alone: every kernel)")
    p.add_argument("--kernel", default=None, help="only this kernel (suite name or label)")
    p.add_argument("--profile", default=None, help="matrix profile (default: default; full with --arch)")
    p.add_argument("-o", "--output", type=Path, default=None, help="run directory (default: runs/run-*)")
    p.add_argument("--fault", default=None, help=argparse.SUPPRESS)  # test-only driver fault injection
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="only shard I of N: cells split deterministically, balanced by expected cost")
    p.add_argument("--target", default=None, metavar="ssh://user@host[:port]",
                   help="run the cells on that machine over SSH instead of booting QEMU guests")
    p.add_argument("--host-key", default=None, metavar="SHA256:...",
                   help="with --target: the host key fingerprint to trust when it is not in known_hosts")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("qualify", parents=[common],
                       help="release qualification: the whole profile and the benchmark, every report into -o DIR")
    p.add_argument("--profile", default="full", help="matrix profile (default: full)")
    p.add_argument("--arch", default=None, help="an architecture, a comma list, or all (default: all)")
    p.add_argument("--driver", default=None, help="a driver from matrix.yaml, a comma list, or all")
    p.add_argument("--suite", default=None, help="a suite from matrix.yaml, a comma list, or all")
    p.add_argument("--kernel", default=None, help="only this kernel (suite name or label)")
    p.add_argument("--no-bench", action="store_true", help="leave the throughput cells to `kmatrix bench`")
    p.add_argument("-o", "--output", type=Path, default=None, help="report directory (default: runs/run-*)")
    p.set_defaults(func=cmd_qualify)

    p = sub.add_parser("bench", parents=[common],
                       help="throughput: syscall-storm overhead, events/s, drops per driver, beside ftrace and auditd")
    p.add_argument("--arch", default=None, help="an architecture, a comma list, or all (default: all)")
    p.add_argument("--kernel", default=None, help="a kernel (suite name or label), or all (default: the newest)")
    p.add_argument("--driver", default=None,
                   help="subjects: drivers of matrix.yaml and/or peers (ftrace, auditd), a comma list, or all")
    p.add_argument("--peers", action="store_true", help="with --driver: measure both peers too")
    p.add_argument("--repeats", type=int, default=5, help="storms per measurement, with and without capture")
    p.add_argument("--duration-ms", type=int, default=1000, help="each storm's window")
    p.add_argument("--quick", action="store_true", help="only the default configuration (both mixes) per driver")
    p.add_argument("--clock", choices=("auto", "icount", "wall"), default="auto",
                   help="how the guest times storms: TCG's instruction-counting clock (repeatable on a busy host), "
                        "real time, or auto: icount where the architecture's TCG supports it (default)")
    p.add_argument("-o", "--output", type=Path, default=None, help="output directory (default: runs/bench-*)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("stat", parents=[common],
                       help="per-syscall latency (count, total, min/avg/max/p99) of a whole guest, like strace -c")
    p.add_argument("--arch", required=True, help="an architecture, a comma list, or all")
    p.add_argument("--kernel", default=None, help="a kernel (suite name or label), all, or a directory "
                                                  "(default: the newest)")
    p.add_argument("--driver", required=True, help="a driver of matrix.yaml read by the agent (kmod, bpf, modern_bpf)")
    p.add_argument("--by", choices=("system", "process", "container"), default="system",
                   help="group calls for the whole system, per process, or per container (runtime:id, host, or "
                        "pidns:<inode> for a pid namespace outside any container cgroup)")
    p.add_argument("--duration", type=float, default=2.0,
                   help="seconds to capture (at least; longer while --verify's workload or --command runs)")
    p.add_argument("--verify", action="store_true",
                   help="also run a known-duration workload (nanosleep 10 ms and 20 ms, a pipe read released after "
                        "50 ms) and check each measured latency is >= requested and <= requested + --slack-ms")
    p.add_argument("--repeats", type=int, default=5, help="with --verify: sleeps of each duration")
    p.add_argument("--slack-ms", type=float, default=100.0,
                   help="with --verify: how far a known call may overrun its requested time (default: 100, "
                        "for QEMU TCG on a busy host)")
    p.add_argument("command", nargs="*", metavar="-- COMMAND",
                   help="after --: a program and its arguments to run in the guest as the load during the capture")
    p.add_argument("--top", type=int, default=None, help="show at most this many syscalls per group")
    p.add_argument("-o", "--output", type=Path, default=None, help="output directory (default: runs/stat-*)")
    p.set_defaults(func=cmd_stat)

    p = sub.add_parser("syscalls", parents=[common], help="an architecture's syscall table (name -> number)")
    p.add_argument("--arch", required=True, help="x86_64, aarch64, s390x, ppc64le, riscv64, loongarch64, or x86 (ia32)")
    p.set_defaults(func=cmd_syscalls)

    p = sub.add_parser("ia32-map", parents=[common], help="the IA32 -> x86_64 syscall map")
    p.set_defaults(func=cmd_ia32_map)

    p = sub.add_parser("image", parents=[common], help="build (or find cached) guest images")
    p.add_argument("--arch", default="all")
    p.set_defaults(func=cmd_image)

    from harness.report.cli import register as register_report
    from harness.scale_cli import register as register_scale

    register_report(sub, common)  # report merge / render
    register_scale(sub, common)  # ci-matrix, cache key
    return parser


def _on_sigterm(signum: int, _frame: FrameType | None) -> None:
    kill_all_guests()
    raise SystemExit(128 + signum)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # all that str.splitlines() splits on


def _one_line(text: str) -> str:
    """A bad input's error stays one line: control characters from the input (a newline in an
    argument or a matrix key) are shown escaped instead of breaking the line."""
    return _CONTROL.sub(lambda m: ascii(m.group())[1:-1], text)


_atexit_registered = False


def main(argv: Sequence[str] | None = None) -> int:
    global _atexit_registered
    signal.signal(signal.SIGTERM, _on_sigterm)
    # A closed terminal (SIGHUP) ends the run like SIGTERM: guests stopped, results marked interrupted.
    # Left alone when ignored (nohup): the run is meant to outlive the terminal.
    if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:
        signal.signal(signal.SIGHUP, _on_sigterm)
    if not _atexit_registered:  # once per process, however often main() is called (tests call it in-process)
        atexit.register(kill_all_guests)
        _atexit_registered = True
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except KmatrixError as error:
        if debug:
            raise
        # Usage and config errors (exit 2) are one line; others (a guest's console excerpt) keep theirs.
        message = _one_line(str(error)) if error.exit_code == 2 else str(error)
        err.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
        if error.hint:
            err.print(f"hint: {escape(_one_line(error.hint))}", soft_wrap=True)
        return error.exit_code
    except KeyboardInterrupt:
        killed = kill_all_guests()
        err.print(f"interrupted; stopped {killed} guest(s)")
        return 130
