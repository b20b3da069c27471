"""Fault drill 10: bad input never ends in a traceback, always in one error line (plus a hint) and exit 2.

Property-based (hypothesis): malformed matrix files (mutations of the real matrix.yaml: wrong types,
unknown keys, bad suites, bad versions, empty maps, missing keys, YAML syntax errors, binary garbage)
and random command lines (the real subcommands and options with junk values) go through
`harness.cli.main(argv)` in-process, stderr captured as the real one encodes it. Only commands that
neither touch the network nor boot: `list --no-fetch`, `ci-matrix`, `cache key`, `syscalls`,
`ia32-map`, `report render|merge`, and `run`/`bench` with an invalid option; `run_plan` and `bench`
are replaced by a tripwire so an accidentally valid `run`/`bench` command line can never start work.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import harness
from harness import cli
from harness.archs import ARCH_NAMES
from harness.matrix import DEBIAN_SUITES

pytestmark = [pytest.mark.faults]

REPO = Path(harness.__file__).resolve().parent.parent
MATRIX_TEXT = (REPO / "matrix.yaml").read_text()
BASE = yaml.safe_load(MATRIX_TEXT)
SETTINGS = settings(max_examples=int(os.environ.get("KMATRIX_FUZZ_EXAMPLES", "150")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class WouldRun(BaseException):
    """The tripwire: a valid `run`/`bench` command line reached the point where work starts."""


@contextlib.contextmanager
def _sandbox(tmp: Path) -> Iterator[None]:
    """cwd in a scratch directory (./runs there), the work-starting functions replaced by the tripwire,
    SIGTERM's and SIGHUP's handlers restored (main() installs its own)."""
    import harness.bench.run
    import harness.matrix_run

    def tripwire(*_a: Any, **_k: Any) -> Any:
        raise WouldRun

    saved_cwd = Path.cwd()
    saved_signals = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(harness.matrix_run, "run_plan", tripwire)
        mp.setattr(harness.bench.run, "bench", tripwire)
        mp.delenv("KMATRIX_MATRIX", raising=False)
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(saved_cwd)
            for signum, handler in saved_signals.items():
                signal.signal(signum, handler)


def run_cli(argv: list[str], tmp: Path) -> tuple[int | None, str]:
    """(exit code, stderr) of kmatrix in-process; exit code None when the tripwire fired."""
    raw = io.BytesIO()
    # The real stderr's encoding: UTF-8, undecodable argv bytes (surrogates) shown backslash-escaped.
    stderr = io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace", write_through=True)
    code: int | None
    with _sandbox(tmp), contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except WouldRun:
            code = None
    return code, raw.getvalue().decode("utf-8")


def assert_one_line_error(code: int | None, stderr: str, argv: list[str]) -> None:
    assert code == 2, f"exit {code} for {argv!r}; stderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert lines and lines[0].startswith("error: "), f"{argv!r}: {stderr!r}"
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), f"{argv!r}: {stderr!r}"


# -- malformed matrix files -------------------------------------------------------------------------------

MODEL_KEYS: dict[tuple[str, ...], set[str]] = {  # mapping path pattern ("*" any key/index) -> allowed keys
    (): {"schema", "mirror", "userland", "architectures", "consumers", "drivers", "suites", "profiles"},
    ("architectures", "*"): {"kernels"},
    ("architectures", "*", "kernels", "*"): {"suite", "path", "name", "expect"},
    ("consumers", "*"): {"kind", "debian", "capture", "read", "version"},
    ("consumers", "*", "debian"): {"package", "suite"},
    ("drivers", "*"): {"kind", "min_kernel", "requires_config", "source", "build", "module", "consumer",
                       "version_from"},
    ("drivers", "*", "source"): {"project", "debian", "path"},
    ("drivers", "*", "source", "debian"): {"package", "suite"},
    ("suites", "*"): {"description", "archs", "requires_config"},
    ("profiles", "*"): {"kernels", "archs", "drivers", "suites"},
}
REQUIRED = [("schema",), ("userland",), ("architectures",), ("consumers",), ("drivers",), ("suites",), ("profiles",),
            ("userland", "default")]
NONEMPTY = [("architectures",), ("consumers",), ("drivers",), ("suites",), ("profiles",), ("userland",)]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


ALL_PATHS = [path for path in _paths(BASE) if path]


def _matches(path: tuple[Any, ...], pattern: tuple[str, ...]) -> bool:
    return len(path) == len(pattern) and all(p == "*" or p == q for p, q in zip(pattern, path, strict=True))


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    doc = copy.deepcopy(doc)
    if not path:
        return value
    _get(doc, path[:-1])[path[-1]] = value
    return doc


def _delete(doc: Any, path: tuple[Any, ...]) -> Any:
    doc = copy.deepcopy(doc)
    del _get(doc, path[:-1])[path[-1]]
    return doc


junk_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True),
    st.text(max_size=20), st.sampled_from(["", " ", "5.10", "6", "v6.1", "6.1.2", "x86_64", "CONFIG_X", "all",
                                           "bookworm", "\udcff", "\n", "{}", "- a", "*"]),
)
junk_value = st.recursive(junk_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=3)),
    max_leaves=6)
# Versions that are not a quoted "MAJOR.MINOR": numbers (YAML's 5.10 is 5.1), patch levels, words, nothing.
bad_version = st.one_of(
    st.floats(), st.integers(), st.none(), st.booleans(), st.lists(st.integers(), max_size=3),
    st.text(max_size=12).filter(lambda t: not (t.count(".") == 1 and all(p.isdigit() and p.isascii()
                                                                        for p in t.split(".")))),
)
bad_suite = st.one_of(junk_value, st.text(max_size=20)).filter(lambda v: v not in DEBIAN_SUITES)


@st.composite
def bad_matrix_doc(draw: st.DrawFn) -> tuple[str, bytes, bool]:
    """(what, file bytes, surely invalid). A few kinds may by chance stay valid (a new description)."""
    kind = draw(st.sampled_from(["replace", "unknown-key", "bad-suite", "bad-version", "empty-map", "delete",
                                 "yaml-syntax", "binary", "wrong-type"]))
    doc: Any = BASE
    surely = True
    if kind == "replace":
        path = draw(st.sampled_from(ALL_PATHS))
        doc, surely = _set(BASE, path, draw(junk_value)), False
    elif kind == "wrong-type":  # a mapping or list where the model expects the other, or a scalar
        path = draw(st.sampled_from([p for p in ALL_PATHS if isinstance(_get(BASE, p), (dict, list))]))
        old = _get(BASE, path)
        value = draw(st.one_of(junk_scalar.filter(lambda v: v is not None or not isinstance(old, list)),
                               st.just([1, 2]) if isinstance(old, dict) else st.just({"a": 1})))
        if path[-1] in ("archs", "drivers", "suites", "requires_config", "version") and value is None:
            value = 7  # null is allowed there ("every"): take a number instead
        doc = _set(BASE, path, value)
    elif kind == "unknown-key":
        places = [p for p in [(), *ALL_PATHS] if any(_matches(p, pattern) for pattern in MODEL_KEYS)]
        path = draw(st.sampled_from(places))
        allowed = next(keys for pattern, keys in MODEL_KEYS.items() if _matches(path, pattern))
        key = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in allowed))
        doc = _set(BASE, (*path, key), draw(junk_value)) if path else {**BASE, key: draw(junk_value)}
    elif kind == "bad-suite":
        kernels = [p for p in ALL_PATHS if len(p) == 4 and p[0] == "architectures" and "suite" in _get(BASE, p)]
        path = draw(st.sampled_from([*((*p, "suite") for p in kernels), *(("userland", k) for k in BASE["userland"])]))
        doc = _set(BASE, path, draw(bad_suite))
    elif kind == "bad-version":
        places = [p for p in ALL_PATHS if p[-1] == "expect" or (len(p) == 4 and p[2] == "min_kernel")]
        doc = _set(BASE, draw(st.sampled_from(places)), draw(bad_version))
    elif kind == "empty-map":
        path = draw(st.sampled_from([*NONEMPTY, *(p for p in ALL_PATHS if p[-1] == "kernels" and len(p) == 3)]))
        doc = _set(BASE, path, {} if path in NONEMPTY else [])
    elif kind == "delete":
        required = [*REQUIRED, *((*p, k) for p in ALL_PATHS for pattern, k in [
            (("architectures", "*", "kernels", "*"), "expect"), (("drivers", "*"), "kind"),
            (("drivers", "*"), "min_kernel"), (("drivers", "*"), "source"), (("drivers", "*"), "build"),
            (("drivers", "*"), "module"), (("drivers", "*"), "consumer"), (("consumers", "*"), "kind"),
            (("suites", "*"), "description"), (("profiles", "*"), "kernels"),
        ] if _matches(p, pattern) and k in _get(BASE, p))]
        doc = _delete(BASE, draw(st.sampled_from(required)))
    if kind == "binary":
        return kind, draw(st.binary(max_size=300)), True
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True) if doc is not BASE else MATRIX_TEXT
    if kind == "yaml-syntax":
        lines = text.splitlines(keepends=True)
        at = draw(st.integers(0, len(lines)))
        snippet = draw(st.sampled_from([
            "key: [unclosed\n", "{a: b\n", "  - x: 'unterminated\n", ": :\n", "x: *no_such_anchor\n",
            "x: !!python/object/apply:os.system ['true']\n", "\t- tab: indent\n", "schema: 1\n",
            "%YAML 9.9\n", "--- \n... \n---\n- a\n", "? [a, b]\n: c\n", "x: \x07\n",
        ]))
        text = "".join([*lines[:at], snippet, *lines[at:]])
        surely = snippet in ("key: [unclosed\n", "{a: b\n", "x: *no_such_anchor\n",
                             "x: !!python/object/apply:os.system ['true']\n", "x: \x07\n")
    return kind, text.encode("utf-8", errors="surrogateescape"), surely


MATRIX_COMMANDS = [["list", "--no-fetch"], ["ci-matrix"], ["cache", "key"], ["run", "--driver", "no_such_driver"],
                   ["list", "--no-fetch", "--profile", "default", "--json"]]


@SETTINGS
@given(bad=bad_matrix_doc(), command=st.sampled_from(MATRIX_COMMANDS))
@example(bad=("deep-nesting", b"a: " + b"[" * 5000 + b"]" * 5000, True), command=["list", "--no-fetch"])
@example(bad=("deep-mapping", b"a: " + b"{b: " * 3000 + b"1" + b"}" * 3000, True), command=["ci-matrix"])
@example(bad=("not-utf8", b"schema: 1\nuserland: {default: \xff\xfe}\n", True), command=["cache", "key"])
@example(bad=("alias-bomb", b"a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\nd: [*c, *c]\n", True),
         command=["list", "--no-fetch"])
def test_malformed_matrix_is_one_error_line_exit_2(tmp_path_factory: pytest.TempPathFactory,
                                                   bad: tuple[str, bytes, bool], command: list[str]) -> None:
    tmp = tmp_path_factory.mktemp("matrix")
    path = tmp / "matrix.yaml"
    path.write_bytes(bad[1])
    argv = [*command, "--matrix", str(path)]
    code, stderr = run_cli(argv, tmp)
    event(f"{bad[0]}: exit {code}")
    assert "Traceback" not in stderr, stderr
    if code == 2 or bad[2]:
        assert_one_line_error(code, stderr, [bad[0], *argv])
    else:
        assert code in (0, None), f"{bad[0]}: exit {code}; {stderr}"  # still a valid matrix: it just ran
    assert not list(tmp.glob("runs/run-*")), "a run directory was made for a command that had to fail"


def test_matrix_error_names_file_key_and_value(tmp_path: Path) -> None:
    """One concrete case, read by a person: where, what, and the bad value, on one line."""
    path = tmp_path / "matrix.yaml"
    path.write_text(MATRIX_TEXT.replace("{suite: bookworm,", "{suite: bokworm,", 1))
    code, stderr = run_cli(["list", "--no-fetch", "--matrix", str(path)], tmp_path)
    assert_one_line_error(code, stderr, [])
    assert f"{path}: architectures." in stderr and "'bokworm' is not a known Debian suite" in stderr


# -- random command lines -------------------------------------------------------------------------------------

# Values no option accepts: odd characters, numbers out of range, malformed shards and URLs, empty
# strings (not "absent"), and any text after "zz" (no architecture, driver, profile or path starts so).
CURATED_JUNK = ["", " ", "\n", "\udcff", "💥", "../../../etc/passwd", "-1", "9" * 40, "1/0", "0/0", "3/2", "x/y",
                "ssh://", "ssh://@:99999", "http://root@host", "SHA256:", "%s{}", "[red]x[/]", ",", "all,nosuch",
                "1e9", "0x10", "nan", "\x1b[2J", "a\r\nb"]
JUNK = st.one_of(st.sampled_from(CURATED_JUNK),
                 st.text(max_size=10).filter(lambda t: "\x00" not in t).map("zz".__add__))


ARCHES = [*ARCH_NAMES, "all"]


@st.composite
def bad_argv(draw: st.DrawFn, tmp: Path) -> list[str]:
    """A command line with at least one thing wrong in it."""
    garbage = tmp / "garbage.json"
    options: dict[str, list[str]]  # option -> valid values ([] for a flag)
    command: list[str]
    positional: list[str] = []
    sub = draw(st.sampled_from(["list", "ci-matrix", "cache key", "syscalls", "ia32-map", "report render",
                                "report merge", "run", "bench"]))
    if sub == "list":
        command, options = ["list", "--no-fetch"], {"--profile": ["full", "ci", "default", "minimum"],
                                                     "--arch": ARCHES}
    elif sub == "ci-matrix":
        command, options = ["ci-matrix"], {"--profile": ["ci", "full"], "--shards": ["0", "1", "4"],
                                           "--arch": ARCHES, "--format": ["github", "json"]}
    elif sub == "cache key":
        command, options = ["cache", "key"], {"--part": ["kernels", "images", "toolchains", "drivers", "all"]}
    elif sub == "syscalls":
        command, options = ["syscalls"], {"--arch": [*ARCH_NAMES, "x86"]}
    elif sub == "ia32-map":
        command, options = ["ia32-map"], {}
    elif sub.startswith("report"):
        command, options = sub.split(), {"-o": [str(tmp / "out")], "--bench": []}
        positional = [str(garbage)] if sub == "report render" else [str(garbage), str(garbage)]
    elif sub == "run":
        command, options = ["run"], {"--driver": ["kmod", "bpf", "modern_bpf", "all"],
                                     "--suite": ["capture", "ia32", "all"], "--arch": ARCHES,
                                     "--profile": ["full", "default", "ci"], "--shard": ["1/2", "2/2"],
                                     "--kernel": ["bookworm"], "--target": ["ssh://root@host:22"],
                                     "--host-key": ["SHA256:" + "A" * 43]}
    else:
        command, options = ["bench"], {"--driver": ["kmod", "ftrace", "all"], "--arch": ARCHES,
                                       "--repeats": ["1", "5"], "--duration-ms": ["100", "1000"],
                                       "--clock": ["auto", "icount", "wall"], "--kernel": ["bookworm", "all"]}
    common = {"--quiet": [], "--json": [], "--matrix": [str(REPO / "matrix.yaml")]}
    reads_matrix = sub not in ("syscalls", "ia32-map")  # these accept --matrix and never open it
    chosen = draw(st.lists(st.sampled_from(sorted({**options, **common})), unique=True, max_size=4))
    argv = list(command)
    for option in chosen:
        valid = {**options, **common}[option]
        if option == "--bench":
            valid = [str(tmp)]
        argv += [option, draw(st.sampled_from(valid))] if valid else [option]
    # What makes it wrong: a junk value for a valid option, an unknown option, a stray word, a value
    # missing at the end, or a garbage file (matrix or results).
    wrongs = ["value", "unknown-option", "stray", "missing-value", *(["garbage-matrix"] if reads_matrix else [])]
    wrong = draw(st.sampled_from(wrongs))
    if wrong == "value" and (options or reads_matrix):
        option = draw(st.sampled_from(sorted(o for o, v in {**options, **common}.items()
                                             if v and (reads_matrix or o != "--matrix"))))
        valid = {**options, **common}[option]
        junk = draw(JUNK)
        if option == "--matrix":
            junk = draw(st.sampled_from([str(tmp / "nonexistent.yaml"), str(tmp), str(garbage), "/dev/null", junk]))
        if option in ("--repeats", "--duration-ms", "--shards") and draw(st.booleans()):
            junk = draw(st.sampled_from(["-1", "0", "-5"])) if option != "--shards" else "-3"
            if option == "--duration-ms":
                junk = draw(st.sampled_from(["0", "99", "-100"]))
        argv += [option, junk]
    elif wrong == "unknown-option":
        argv += ["--zz" + draw(st.text(alphabet="abcdefghij-", max_size=6))]
    elif wrong == "stray" or wrong == "value":
        argv += ["zz" + draw(st.text(max_size=8).filter(lambda t: "\x00" not in t))]
    elif wrong == "missing-value":
        argv += [draw(st.sampled_from(sorted(o for o, v in {**options, **common}.items() if v) or ["--matrix"]))]
    elif wrong == "garbage-matrix":
        argv += ["--matrix", str(garbage)]
    return argv + positional  # report's files are garbage: that alone makes it wrong


@SETTINGS
@given(data=st.data(), garbage=st.one_of(st.binary(max_size=200), st.sampled_from([
    b"", b"{}", b"[]", b"null", b'{"schema_version": 1}', b'{"schema_version": 99}', b'{"schema_version": true}',
    b'{"schema_version": 1, "cells": "x"}', b"\xff\xfe\x00",
])))
def test_random_bad_command_line_is_one_error_line_exit_2(tmp_path_factory: pytest.TempPathFactory,
                                                          data: st.DataObject, garbage: bytes) -> None:
    tmp = tmp_path_factory.mktemp("argv")
    (tmp / "garbage.json").write_bytes(garbage)
    argv = data.draw(bad_argv(tmp), label="argv")
    code, stderr = run_cli(argv, tmp)
    event(f"{argv[0]}: exit {code}")
    assert code is not None, f"{argv!r} was valid enough to start work (the tripwire fired)"
    assert_one_line_error(code, stderr, argv)
    assert not list(tmp.glob("runs/run-*")) and not list(tmp.glob("runs/bench-*")), f"{argv!r} made a run directory"


# Whether harness/report/schema.py turns JSON nested too deeply into a ConfigError (patch given to the lead).
SCHEMA_GUARDS_DEPTH = "RecursionError" in (REPO / "harness" / "report" / "schema.py").read_text()


@pytest.mark.xfail(not SCHEMA_GUARDS_DEPTH, strict=True,
                   reason="harness/report/schema.py: json.loads raises RecursionError on deep nesting (patch given)")
@pytest.mark.parametrize("text", [b"[" * 5000, b'{"a":' * 3000, b"[" * 5000 + b"]" * 5000])
def test_results_nested_too_deeply_is_one_error_line(tmp_path: Path, text: bytes) -> None:
    (tmp_path / "results.json").write_bytes(text)
    argv = ["report", "render", str(tmp_path / "results.json"), "-o", str(tmp_path / "out")]
    code, stderr = run_cli(argv, tmp_path)
    assert_one_line_error(code, stderr, argv)
