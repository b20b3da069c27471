"""`kmatrix ci-matrix` and `kmatrix cache key`, and the example workflow that calls them."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import cli
from harness.matrix import load_matrix
from harness.scale_cli import register
from harness.shard import ci_matrix

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "matrix.yml"
# Being added to kmatrix by others at the same time; checked by name until they land.
PENDING_COMMANDS = {"report", "qualify"}
PENDING_OPTIONS = {"run": {"--shard"}}
_BUILD_PARSER = cli.build_parser


def _subparsers(parser: argparse.ArgumentParser) -> Any:
    return next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))


def _parser() -> cli.Parser:
    """kmatrix's parser, with register() applied if harness/cli.py does not call it yet."""
    parser = _BUILD_PARSER()
    sub = _subparsers(parser)
    if "ci-matrix" not in sub.choices:
        common = cli.Parser(add_help=False)
        common.add_argument("--debug", action="store_true")
        common.add_argument("--quiet", "-q", action="store_true")
        common.add_argument("--json", action="store_true")
        common.add_argument("--matrix", type=Path, default=None)
        register(sub, common)
    return parser


@pytest.fixture
def kmatrix(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    monkeypatch.setattr(cli, "build_parser", _parser)

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


# ---- ci-matrix


def test_ci_matrix_github_is_the_strategy_matrix_on_one_line(kmatrix: Any) -> None:
    code, out, _ = kmatrix("ci-matrix", "--profile", "full", "--shards", "4", "--format", "github")
    assert code == 0
    assert out.count("\n") == 1 and " " not in out.strip()
    assert json.loads(out) == ci_matrix(load_matrix(REPO / "matrix.yaml"), "full", 4)


def test_ci_matrix_defaults_to_the_ci_profile_one_shard_per_arch(kmatrix: Any) -> None:
    code, out, _ = kmatrix("ci-matrix")
    assert code == 0
    assert [entry["shard"] for entry in json.loads(out)["include"]] == ["1/3", "2/3", "3/3"]


def test_ci_matrix_json_format(kmatrix: Any) -> None:
    code, out, _ = kmatrix("ci-matrix", "--profile", "full", "--arch", "s390x,ppc64le", "--shards", "2",
                           "--format", "json")
    assert code == 0
    plan = json.loads(out)
    assert plan["profile"] == "full" and plan["shards"] == 2
    assert {arch for entry in plan["include"] for arch in entry["archs"].split(",")} == {"s390x", "ppc64le"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shards", "-2"], "is negative"),
        (["--shards", "two"], "is not a number of shards"),
        (["--format", "yaml"], "invalid choice"),
        (["--profile", "nightly"], "unknown profile 'nightly'"),
        (["--arch", "sparc"], "architecture 'sparc' is not in the matrix"),
        (["--arch", ","], "names no architecture"),
    ],
)
def test_ci_matrix_usage_errors(kmatrix: Any, argv: list[str], message: str) -> None:
    code, out, err = kmatrix("ci-matrix", *argv)
    assert code == 2 and out == ""
    assert message in err


# ---- cache key


def test_cache_key_every_part(kmatrix: Any) -> None:
    code, out, _ = kmatrix("cache", "key")
    assert code == 0
    lines = out.splitlines()
    assert [line.split("-")[1] for line in lines] == ["kernels", "images", "toolchains", "drivers", "all"]
    assert all(re.fullmatch(r"kmatrix-[a-z]+-[a-z0-9]+-[0-9a-f]{16}", line) for line in lines)


def test_cache_key_one_part(kmatrix: Any) -> None:
    _, every, _ = kmatrix("cache", "key")
    code, out, _ = kmatrix("cache", "key", "--part", "all")
    assert code == 0 and out.splitlines() == [every.splitlines()[-1]]
    code, out, _ = kmatrix("cache", "key", "--part", "drivers", "--json")
    assert code == 0 and list(json.loads(out)) == ["drivers"]


def test_cache_needs_a_subcommand(kmatrix: Any) -> None:
    code, _, err = kmatrix("cache")
    assert code == 2 and "required" in err


# ---- the example workflow


def _workflow() -> dict[Any, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(data, dict)
    return data


def _steps(data: dict[Any, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, job in data["jobs"].items():
        for step in job["steps"]:
            yield name, step


def _expand(script: str, env: dict[str, str]) -> str:
    """The workflow's expressions and shell variables, as a shard job would see them."""
    script = re.sub(r"\$\{\{\s*matrix\.shard\s*\}\}", "1/4", script)
    script = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m[1], m[2]), script)
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m[1], m[0]), script)


def _kmatrix_commands(script: str, env: dict[str, str]) -> Iterator[list[str]]:
    """argv after each `.venv/bin/kmatrix` in a shell script, up to the end of the command."""
    script = _expand(script, env)
    for line in script.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        for start, word in enumerate(words):
            if word.endswith(".venv/bin/kmatrix"):
                argv: list[str] = []
                for item in words[start + 1 :]:
                    if item in ("|", "||", "&&", ";", ">", ">>"):
                        break
                    argv.append(item.rstrip(")"))
                    if item.endswith(")"):
                        break
                yield argv


def test_workflow_parses_and_has_the_three_jobs() -> None:
    data = _workflow()
    assert set(data["jobs"]) == {"plan", "shard", "report"}
    assert data["jobs"]["shard"]["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    assert data["jobs"]["shard"]["needs"] == "plan"
    assert True in data or "on" in data  # YAML 1.1 reads the `on:` key as true
    cache = next(step for _, step in _steps(data) if str(step.get("uses", "")).startswith("actions/cache@"))
    assert cache["with"]["path"] == "~/.cache/kmatrix"


def test_workflow_runs_bootstrap_and_names_commands_kmatrix_has() -> None:
    data = _workflow()
    parser = _parser()
    choices = _subparsers(parser).choices
    seen: set[str] = set()
    for job, step in _steps(data):
        script = step.get("run", "")
        if "./bootstrap" in script:
            seen.add(f"bootstrap:{job}")
        for argv in _kmatrix_commands(script, data.get("env", {})):
            seen.add(argv[0])
            if argv[0] not in choices:
                assert argv[0] in PENDING_COMMANDS, f"{job}: kmatrix {argv[0]} is not a command"
                continue
            known = set(choices[argv[0]]._option_string_actions)
            pending = PENDING_OPTIONS.get(argv[0], set()) - known
            # Parse without a pending option (and its value) until it lands.
            for option in pending & set(argv):
                at = argv.index(option)
                del argv[at : at + 2]
            parser.parse_args(argv)  # a UsageError names what the workflow gets wrong
    assert {"bootstrap:plan", "bootstrap:shard", "ci-matrix", "cache", "run", "report"} <= seen


def test_non_root_bootstraps_find_every_package_bootstrap_needs() -> None:
    # As a non-root user ./bootstrap cannot apt-get install, so a missing package fails the job.
    needed = set(re.findall(r"missing\+=\((\S+)\)", (REPO / "bootstrap").read_text()))
    assert needed
    for job, step in _steps(_workflow()):
        if "runuser" in step.get("run", ""):
            steps = _workflow()["jobs"][job]["steps"]
            installs = " ".join(s.get("run", "") for s in steps if "apt-get install" in s.get("run", ""))
            assert needed <= set(installs.split()), f"{job}: install {needed - set(installs.split())} first"
