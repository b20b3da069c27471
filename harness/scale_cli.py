"""`kmatrix ci-matrix` and `kmatrix cache key`: plan CI shard jobs and key their caches.

`register` adds both subcommands to kmatrix's parser (harness/cli.py calls it). Output is plain
`print` on one line, not rich: a workflow reads it into `$GITHUB_OUTPUT` and `fromJSON()`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from harness.errors import ConfigError

__all__ = ["cmd_cache_key", "cmd_ci_matrix", "register"]

CACHE_PARTS = ("kernels", "images", "toolchains", "drivers", "all")


def _usage(message: str, hint: str | None = None) -> ConfigError:
    # harness.cli imports this module to call register(): import it here, at run time, not at load.
    from harness.cli import UsageError

    return UsageError(message, hint=hint)


def _matrix(args: argparse.Namespace) -> Any:
    from harness.matrix import load_matrix
    from harness.paths import default_matrix_path

    return load_matrix(args.matrix or default_matrix_path())


def _arch_filter(value: str | None) -> list[str] | None:
    if value in (None, "all"):
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise _usage(f"--arch {value!r} names no architecture", hint="a comma list, e.g. x86_64,s390x, or all")
    return names


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=False)


def cmd_ci_matrix(args: argparse.Namespace) -> int:
    from harness.shard import ci_matrix

    matrix = _matrix(args)
    try:
        plan = ci_matrix(matrix, args.profile, args.shards, archs=_arch_filter(args.arch))
    except ValueError as error:
        raise _usage(str(error)) from None
    if args.format == "github" and not args.json:
        print(_dumps(plan))  # exactly the `strategy.matrix` value
    else:
        print(_dumps({"profile": args.profile, "shards": len(plan["include"]), **plan}))
    return 0


def cmd_cache_key(args: argparse.Namespace) -> int:
    from harness.cachekey import cache_key_line, cache_keys
    from harness.doctor import debian_release
    from harness.paths import project_root

    release = debian_release()
    keys = cache_keys(project_root(), _matrix(args), release=release)
    parts = [args.part] if args.part else list(CACHE_PARTS)
    lines = {part: cache_key_line(part, keys, release=release) for part in parts}
    if args.json:
        print(_dumps(lines))
    else:
        print("\n".join(lines.values()))
    return 0


def _nonnegative(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of shards") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative: give N >= 1, or 0 for one per architecture")
    return number


def register(subparsers: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    """Add `ci-matrix` and `cache key` to kmatrix's subcommands (`subparsers` from add_subparsers)."""
    p = subparsers.add_parser("ci-matrix", parents=[common], help="plan CI shard jobs: a strategy.matrix as JSON")
    p.add_argument("--profile", default="ci", help="matrix profile to shard (default: ci)")
    p.add_argument("--shards", type=_nonnegative, default=0, help="number of shards (default 0: one per arch)")
    p.add_argument("--arch", default=None, help="only these architectures (comma list, or all)")
    p.add_argument("--format", choices=("github", "json"), default="github",
                   help="github: the value for fromJSON() in strategy.matrix; json: with profile and count")
    p.set_defaults(func=cmd_ci_matrix)

    # Common options go on `key` only: a subparser's defaults would overwrite values given before it.
    cache = subparsers.add_parser("cache", help="CI cache helpers")
    # The same parser class as kmatrix's own, so usage errors stay one line with exit 2.
    actions = cache.add_subparsers(dest="cache_command", required=True, parser_class=type(cache))
    key = actions.add_parser("key", parents=[common], help="cache key line(s) for ~/.cache/kmatrix")
    key.add_argument("--part", choices=CACHE_PARTS, default=None, help="one part (default: every part and all)")
    key.set_defaults(func=cmd_cache_key)
