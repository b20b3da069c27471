#!/usr/bin/env python3
"""Generate drivers/common/syscalls/<arch>.json: each architecture's syscall numbers from its own UAPI headers.

    python drivers/common/gen_syscalls.py [--arch A] [--out DIR]

For every table: fetch Debian's ``linux-libc-dev`` for the architecture (through the project's
repository client, so signatures and checksums are verified and the package is cached), run the
host ``gcc -E -dM -nostdinc`` on ``#include <asm/unistd.h>`` with the target's predefined macros
in place of the host's, and evaluate every ``__NR_<name>`` macro of the resulting dump. The numbers
are therefore what a compiler for that target sees, including the header's own #if choices
(unistd_32.h vs unistd_64.h, asm-generic's __BITS_PER_LONG sections).

Macro values may be expressions or refer to other macros (``__NR3264_fstat``,
``(__NR_SYSCALL_BASE + 5)``, ``(__NR_arch_specific_syscall + 15)``): references are resolved
recursively and only integer arithmetic is evaluated, through Python's ``ast`` (nothing is
``eval``-ed).

Which ``__NR_`` macros are syscalls: the name after ``__NR_`` must be lower case, with at most
one leading underscore (``_?[a-z][a-z0-9_]*``: i386's ``_llseek``, ``_newselect`` and
``_sysctl`` are syscalls like any other), which drops ABI bases and counts such as ``__NR_SYSCALL_BASE``,
``__NR_Linux`` or ``__NR_Linux_syscalls`` (mips, arm); and it must not be one of the generic
table's markers, ``__NR_syscalls`` (the table size) and ``__NR_arch_specific_syscall`` (the
first number reserved for arch syscalls). Everything else is a syscall, including the entries a
kernel wires to sys_ni_syscall (i386's ``break``, ``ftime``, ...): they are numbers the tracepoint
can still see. ``__NR3264_*`` (the generic table's off_t-width helpers) are not ``__NR_`` names;
they only appear through the ``__NR_`` names that refer to them. Two names with one number is an
error (a table must map numbers back to names).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = Path(__file__).resolve().parent / "syscalls"
PACKAGE = "linux-libc-dev"
HEADER = "asm/unistd.h"
SCRIPT = "drivers/common/gen_syscalls.py"

# Architecture-identifying macros the host gcc may predefine, or that a target defines: all are
# undefined first, then the target's own are defined, so no host choice leaks into the headers.
_HOST_X86 = ("__x86_64__", "__x86_64", "__amd64__", "__amd64", "__i386__", "__i386", "i386", "__i586__", "__i686__")
_TARGETS = ("__aarch64__", "__arm__", "__s390x__", "__s390__", "__powerpc64__", "__powerpc__", "__PPC64__", "__PPC__")
_TARGETS_2 = ("_ARCH_PPC", "_ARCH_PPC64", "__riscv", "__riscv_xlen", "__loongarch__", "__loongarch64", "__mips__")
_ABI = ("__loongarch_grlen", "__ILP32__", "_ILP32", "__LP64__", "_LP64", "__SIZEOF_LONG__", "__SIZEOF_POINTER__")
_ENDIAN = ("__LITTLE_ENDIAN__", "__BIG_ENDIAN__", "__BYTE_ORDER__")
ARCH_MACROS = (*_HOST_X86, *_TARGETS, *_TARGETS_2, *_ABI, *_ENDIAN)
_LP64 = ("__LP64__", "_LP64", "__SIZEOF_LONG__=8", "__SIZEOF_POINTER__=8")
_LE = ("__BYTE_ORDER__=__ORDER_LITTLE_ENDIAN__",)
_BE = ("__BYTE_ORDER__=__ORDER_BIG_ENDIAN__",)


@dataclass(frozen=True)
class Target:
    arch: str  # kmatrix's name (x86 is the ia32 ABI of x86_64 kernels)
    suite: str
    debian_arch: str  # whose index the package is taken from
    multiarch: str  # usr/include/<multiarch> holds the arch's asm/ headers
    defines: tuple[str, ...]  # -D values: what the target's compiler predefines

    def cpp_flags(self) -> list[str]:
        return [f"-U{m}" for m in ARCH_MACROS] + [f"-D{d}" for d in self.defines]


def _targets() -> dict[str, Target]:
    from harness.archs import ARCHS

    def target(arch: str, suite: str, defines: tuple[str, ...]) -> Target:
        profile = ARCHS[arch]
        return Target(arch, suite, profile.debian_arch, profile.cross_triple, defines)

    return {
        "x86_64": target("x86_64", "trixie", ("__x86_64__", "__x86_64", "__amd64__", "__amd64", *_LP64, *_LE)),
        "aarch64": target("aarch64", "trixie", ("__aarch64__", *_LP64, *_LE)),
        "s390x": target("s390x", "trixie", ("__s390x__", "__s390__", *_LP64, *_BE)),
        "ppc64le": target(
            "ppc64le",
            "trixie",
            (
                "__powerpc64__",
                "__powerpc__",
                "__PPC64__",
                "__PPC__",
                "_ARCH_PPC",
                "_ARCH_PPC64",
                "__LITTLE_ENDIAN__",
                *_LP64,
                *_LE,
            ),
        ),
        "riscv64": target("riscv64", "trixie", ("__riscv", "__riscv_xlen=64", *_LP64, *_LE)),
        "loongarch64": target(
            "loongarch64", "sid", ("__loongarch__", "__loongarch64", "__loongarch_grlen=64", *_LP64, *_LE)
        ),
        # ia32: the i386 ABI (int $0x80 / IA32 compat on x86_64 kernels); i386's multiarch headers.
        "x86": Target(
            "x86",
            "trixie",
            "i386",
            "i386-linux-gnu",
            ("__i386__", "__i386", "i386", "__ILP32__", "_ILP32", "__SIZEOF_LONG__=4", "__SIZEOF_POINTER__=4", *_LE),
        ),
    }


class GenError(Exception):
    """A header that cannot be turned into a table: a bad macro, a cycle, a duplicate number."""


# ---------------------------------------------------------------------------------------------------
# The -dM dump and its macros

_DEFINE = re.compile(r"#define\s+([A-Za-z_]\w*)(\()?\s*(.*)$")
_SYSCALL_NAME = re.compile(r"_?[a-z][a-z0-9_]*")
MARKERS = frozenset({"syscalls", "arch_specific_syscall"})


def parse_defines(dump: str) -> dict[str, str]:
    """Object-like macros of a ``gcc -dM`` dump: name -> replacement text (function-like ones are left out)."""
    macros: dict[str, str] = {}
    for line in dump.splitlines():
        match = _DEFINE.match(line.strip())
        if match and not match[2]:
            macros[match[1]] = match[3].strip()
    return macros


_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?:0[xX][0-9a-fA-F]+|\d+)[uUlL]*)|(?P<ident>[A-Za-z_]\w*)|(?P<op><<|>>|[-+*/%|&^~()]))"
)
_BINOPS: dict[type[ast.operator], Any] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.LShift: lambda a, b: a << b,
    ast.RShift: lambda a, b: a >> b,
    ast.BitOr: lambda a, b: a | b,
    ast.BitAnd: lambda a, b: a & b,
    ast.BitXor: lambda a, b: a ^ b,
}
_UNARY: dict[type[ast.unaryop], Any] = {ast.UAdd: lambda a: a, ast.USub: lambda a: -a, ast.Invert: lambda a: ~a}


def _c_int(literal: str) -> int:
    digits = literal.rstrip("uUlL")
    if digits[:2] in ("0x", "0X"):
        return int(digits, 16)
    if len(digits) > 1 and digits[0] == "0":
        return int(digits, 8)
    return int(digits)


def _to_python(name: str, text: str, resolve: Any) -> str:
    """The replacement text as a Python expression of integers: C literals converted, macros resolved."""
    out: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise GenError(f"{name}: cannot evaluate {text!r} (unexpected text at {text[pos:]!r})")
        pos = match.end()
        if match["num"]:
            out.append(str(_c_int(match["num"])))
        elif match["ident"]:
            out.append(f"({resolve(match['ident'])})")
        else:
            op = match["op"]
            out.append("//" if op == "/" else op)
    if not out:
        raise GenError(f"{name}: empty definition")
    return " ".join(out)


def _eval_node(name: str, node: ast.AST) -> int:
    if isinstance(node, ast.Expression):
        return _eval_node(name, node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval_node(name, node.left), _eval_node(name, node.right)
        return int(_BINOPS[type(node.op)](left, right))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.FloorDiv | ast.Mod):
        left, right = _eval_node(name, node.left), _eval_node(name, node.right)
        if right == 0:
            raise GenError(f"{name}: division by zero")
        quotient = abs(left) // abs(right) * (1 if (left >= 0) == (right >= 0) else -1)  # C truncates
        return quotient if isinstance(node.op, ast.FloorDiv) else left - quotient * right
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return int(_UNARY[type(node.op)](_eval_node(name, node.operand)))
    raise GenError(f"{name}: not integer arithmetic: {ast.dump(node)}")


def evaluate(
    name: str, macros: Mapping[str, str], _cache: dict[str, int] | None = None, _stack: tuple[str, ...] = ()
) -> int:
    """The integer value of macro ``name``, references to other macros resolved recursively."""
    cache = {} if _cache is None else _cache
    if name in cache:
        return cache[name]
    if name in _stack:
        raise GenError(f"macro cycle: {' -> '.join((*_stack, name))}")
    if name not in macros:
        where = f" (used by {_stack[-1]})" if _stack else ""
        raise GenError(f"{name} is not defined{where}")
    stack = (*_stack, name)
    expression = _to_python(name, macros[name], lambda ref: evaluate(ref, macros, cache, stack))
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as e:
        raise GenError(f"{name}: cannot evaluate {macros[name]!r}") from e
    cache[name] = value = _eval_node(name, tree)
    return value


def syscall_table(macros: Mapping[str, str]) -> dict[str, int]:
    """The ``__NR_`` syscalls of a macro set (see the module doc for the rule), sorted by number."""
    cache: dict[str, int] = {}
    table: dict[str, int] = {}
    for macro in macros:
        if not macro.startswith("__NR_"):
            continue
        name = macro[len("__NR_") :]
        if not _SYSCALL_NAME.fullmatch(name) or name in MARKERS:
            continue
        number = evaluate(macro, macros, cache)
        if number < 0:
            raise GenError(f"{macro} is {number}: not a syscall number")
        table[name] = number
    by_number: dict[int, list[str]] = {}
    for name, number in table.items():
        by_number.setdefault(number, []).append(name)
    duplicates = {n: sorted(names) for n, names in by_number.items() if len(names) > 1}
    if duplicates:
        shown = "; ".join(f"{n}: {', '.join(names)}" for n, names in sorted(duplicates.items()))
        raise GenError(f"several names for one number: {shown}")
    if not table:
        raise GenError("no __NR_ syscall macros in the dump")
    return dict(sorted(table.items(), key=lambda item: (item[1], item[0])))


def render(arch: str, source: Mapping[str, Any], syscalls: Mapping[str, int]) -> str:
    """The JSON file's exact text."""
    doc = {
        "generated_by": f"python {SCRIPT} --arch {arch}",
        "arch": arch,
        "source": dict(source),
        "syscalls": dict(sorted(syscalls.items(), key=lambda item: (item[1], item[0]))),
    }
    return json.dumps(doc, indent=2) + "\n"


# ---------------------------------------------------------------------------------------------------
# The headers, as the target's compiler sees them


def cpp_dump(include_root: Path, target: Target, gcc: str = "gcc") -> str:
    """``gcc -E -dM`` of ``#include <asm/unistd.h>`` against an unpacked linux-libc-dev."""
    multiarch = include_root / target.multiarch
    if not (multiarch / "asm" / "unistd.h").is_file():
        raise GenError(f"{multiarch}/asm/unistd.h not found in the {PACKAGE} package")
    with tempfile.TemporaryDirectory(prefix="kmatrix-syscalls-") as tmp:
        source = Path(tmp) / "nr.c"
        source.write_text(f"#include <{HEADER}>\n")
        cmd = [
            gcc,
            "-E",
            "-dM",
            "-nostdinc",
            *target.cpp_flags(),
            "-I",
            str(multiarch),
            "-I",
            str(include_root),
            str(source),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        except FileNotFoundError as e:
            raise GenError(f"{gcc} not found: the host C compiler preprocesses the headers") from e
    if proc.returncode != 0:
        raise GenError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def generate(target: Target, repo: Any, out_dir: Path = OUT_DIR) -> tuple[Path, dict[str, int]]:
    pkg = repo.find(target.suite, target.debian_arch, PACKAGE)
    include_root = Path(repo.unpack(pkg)) / "usr" / "include"
    table = syscall_table(parse_defines(cpp_dump(include_root, target)))
    source = {
        "suite": target.suite,
        "package": PACKAGE,
        "version": pkg.version,
        "header": HEADER,
        "debian_arch": target.debian_arch,
        "multiarch": target.multiarch,
        "defines": list(target.defines),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{target.arch}.json"
    path.write_text(render(target.arch, source, table))
    return path, table


def main(argv: Sequence[str] | None = None) -> int:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    targets = _targets()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--arch", choices=[*targets, "all"], default="all")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory (default: %(default)s)")
    args = parser.parse_args(argv)

    from harness.debian import DebianRepo, host_mirror
    from harness.errors import KmatrixError
    from harness.paths import cache_dir

    try:
        repo = DebianRepo(host_mirror(), cache_dir())
        for arch in targets if args.arch == "all" else [args.arch]:
            path, table = generate(targets[arch], repo, args.out)
            print(f"{arch}: {len(table)} syscalls (max {max(table.values())}) -> {path}")
    except (GenError, KmatrixError) as e:
        print(f"gen_syscalls: {e}", file=sys.stderr)
        hint = getattr(e, "hint", None)
        if hint:
            print(f"hint: {hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
