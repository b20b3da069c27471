"""Syscall tables: the committed JSON files, harness.syscalls, and the generator's macro evaluator."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from harness.errors import ConfigError
from harness.guest.schema import load_schema
from harness.syscalls import TABLE_ARCHS, cli_syscalls, load_table, tables_dir

REPO = Path(__file__).resolve().parents[2]
GEN_PATH = REPO / "drivers" / "common" / "gen_syscalls.py"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_syscalls", GEN_PATH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_syscalls", module)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------------
# The committed tables


def test_every_arch_has_a_table() -> None:
    files = sorted(p.stem for p in tables_dir().glob("*.json"))
    assert files == sorted(TABLE_ARCHS)
    for arch in TABLE_ARCHS:
        assert len(load_table(arch)) > 250, arch


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("x86_64", {"read": 0, "write": 1, "open": 2, "openat": 257, "getppid": 110, "clone3": 435}),
        ("aarch64", {"openat": 56, "read": 63, "write": 64, "getppid": 173}),
        ("s390x", {"getppid": 64, "read": 3, "socketcall": 102}),
        ("ppc64le", {"getppid": 64, "read": 3}),
        ("riscv64", {"openat": 56, "riscv_flush_icache": 259}),
        ("loongarch64", {"openat": 56, "getppid": 173}),
        ("x86", {"getppid": 64, "mmap2": 192, "socketcall": 102, "read": 3, "openat": 295}),
    ],
)
def test_known_numbers(arch: str, expected: dict[str, int]) -> None:
    table = load_table(arch)
    for name, number in expected.items():
        assert table.number(name) == number, (arch, name)
        assert table.name(number) == name


@pytest.mark.parametrize("arch", ["aarch64", "riscv64", "loongarch64"])
def test_generic_table_archs_have_no_legacy_calls(arch: str) -> None:
    table = load_table(arch)
    for legacy in ("open", "fork", "vfork", "pipe", "dup2", "mkdir", "unlink", "rename", "stat"):
        assert legacy not in table, (arch, legacy)
    assert "openat" in table


def test_riscv64_shares_the_generic_numbers() -> None:
    arm, riscv = load_table("aarch64"), load_table("riscv64")
    for name in ("openat", "read", "write", "close", "clone", "execve", "getppid"):
        assert riscv.number(name) == arm.number(name)


GENERIC = (
    "openat",
    "read",
    "write",
    "close",
    "clone",
    "execve",
    "getpid",
    "getppid",
    "gettid",
    "wait4",
    "socket",
    "bind",
    "connect",
    "accept4",
    "sendto",
    "recvfrom",
    "munmap",
    "kill",
    "dup",
    "dup3",
    "pipe2",
    "mkdirat",
    "unlinkat",
    "renameat2",
    "lseek",
    "pread64",
    "pwrite64",
    "clock_nanosleep",
)


@pytest.mark.parametrize("arch", TABLE_ARCHS)
def test_decoded_syscalls(arch: str) -> None:
    """Every KMX_DECODED name is a real syscall name of some arch, and the generic ones exist everywhere."""
    decoded = {spec.name for spec in load_schema().syscalls.values()}
    table = load_table(arch)
    assert set(GENERIC) <= decoded
    missing = [name for name in GENERIC if name not in table]
    assert not missing, (arch, missing)
    everywhere = set().union(*(load_table(a).names for a in TABLE_ARCHS))
    assert decoded <= everywhere


def test_numbers_unique_and_sorted() -> None:
    for arch in TABLE_ARCHS:
        raw = json.loads((tables_dir() / f"{arch}.json").read_text())["syscalls"]
        numbers = list(raw.values())
        assert len(set(numbers)) == len(numbers), arch
        assert numbers == sorted(numbers), arch
        assert load_table(arch).names == tuple(raw)


def test_number_error_names_arch_and_close_matches() -> None:
    with pytest.raises(ConfigError) as info:
        load_table("aarch64").number("opnat")
    assert "aarch64" in str(info.value)
    assert info.value.hint and "openat" in info.value.hint
    with pytest.raises(ConfigError, match="aarch64"):
        load_table("aarch64").number("open")


def test_unknown_arch_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no syscall table") as info:
        load_table("arm64")
    assert info.value.hint and "x86_64" in info.value.hint
    with pytest.raises(ConfigError, match="missing") as info:
        load_table("x86_64", tmp_path)
    assert info.value.hint and "gen_syscalls.py" in info.value.hint
    (tmp_path / "x86.json").write_text(json.dumps({"arch": "x86", "syscalls": {"a": 1, "b": 1}}))
    with pytest.raises(ConfigError, match="both have number 1"):
        load_table("x86", tmp_path)


def test_items_and_name() -> None:
    table = load_table("x86_64")
    assert table.items()[:3] == [("read", 0), ("write", 1), ("open", 2)]
    assert table.name(10**6) is None
    assert table.source["package"] == "linux-libc-dev"


def test_cli_syscalls() -> None:
    text, code = cli_syscalls("x86_64", False)
    assert code == 0
    lines = text.splitlines()
    assert lines[0].split() == ["read", "0"]
    assert len(lines) == len(load_table("x86_64"))
    assert "openat" in {line.split()[0] for line in lines}
    text, code = cli_syscalls("x86", True)
    doc = json.loads(text)
    assert code == 0 and doc["arch"] == "x86" and doc["syscalls"]["mmap2"] == 192
    assert doc["source"]["suite"] == "trixie"


# ---------------------------------------------------------------------------------------------------
# The generator


def test_evaluator(gen: ModuleType) -> None:
    macros = gen.parse_defines(
        "#define __NR_SYSCALL_BASE 0x900000\n"
        "#define __NR_restart_syscall (__NR_SYSCALL_BASE + 0)\n"
        "#define __NR_exit (__NR_SYSCALL_BASE+ 1)\n"
        "#define __NR3264_fstat 80\n"
        "#define __NR_fstat __NR3264_fstat\n"
        "#define __NR_arch_specific_syscall 244\n"
        "#define __NR_riscv_flush_icache (__NR_arch_specific_syscall + 15)\n"
        "#define __X32_SYSCALL_BIT 0x40000000UL\n"
        "#define __NR_x32_read (__X32_SYSCALL_BIT | 0)\n"
        "#define __NR_shifted ((1 << 4) + (3 * 2) - 010 / 3)\n"
        "#define __NR_neg (-7 / 2)\n"
        "#define __NR_fn(x) (x + 1)\n"
    )
    assert "__NR_fn" not in macros
    assert gen.evaluate("__NR_exit", macros) == 0x900001
    assert gen.evaluate("__NR_fstat", macros) == 80
    assert gen.evaluate("__NR_riscv_flush_icache", macros) == 259
    assert gen.evaluate("__NR_x32_read", macros) == 0x40000000
    assert gen.evaluate("__NR_shifted", macros) == 16 + 6 - 2
    assert gen.evaluate("__NR_neg", macros) == -3  # C truncates toward zero


@pytest.mark.parametrize(
    ("dump", "message"),
    [
        ("#define __NR_a __NR_b\n#define __NR_b (__NR_a + 1)\n", "cycle"),
        ("#define __NR_a (__NR_missing + 1)\n", "not defined"),
        ("#define __NR_a __import__('os')\n", "not defined"),
        ("#define __NR_a 1 ; 2\n", "cannot evaluate"),
        ('#define __NR_a "x"\n', "cannot evaluate"),
        ("#define __NR_a (unsigned long)5\n", "not defined"),
        ("#define __NR_a 1.5\n", "cannot evaluate"),
        ("#define __NR_a (1 + )\n", "cannot evaluate"),
        ("#define __NR_a 1 / 0\n", "division by zero"),
    ],
)
def test_evaluator_rejects(gen: ModuleType, dump: str, message: str) -> None:
    with pytest.raises(gen.GenError, match=message):
        gen.evaluate("__NR_a", gen.parse_defines(dump))


def test_selection_rule(gen: ModuleType) -> None:
    macros = gen.parse_defines(
        "#define __x86_64__ 1\n#define __NR_syscalls 463\n#define __NR_arch_specific_syscall 244\n"
        "#define __NR_SYSCALL_BASE 0\n#define __NR_Linux 4000\n#define __NR3264_lseek 62\n"
        "#define __NR_lseek __NR3264_lseek\n#define __NR_read 63\n#define __NR_io_setup 0\n"
    )
    table = gen.syscall_table(macros)
    assert table == {"io_setup": 0, "lseek": 62, "read": 63}
    assert list(table) == ["io_setup", "lseek", "read"]
    with pytest.raises(gen.GenError, match="several names for one number: 5: a, b"):
        gen.syscall_table({"__NR_a": "5", "__NR_b": "(4 + 1)"})
    with pytest.raises(gen.GenError, match="no __NR_"):
        gen.syscall_table({"__x86_64__": "1"})


@pytest.mark.parametrize("arch", TABLE_ARCHS)
def test_files_match_generator_output(gen: ModuleType, arch: str) -> None:
    """Regenerating from a canned -dM dump of the committed numbers reproduces each file byte for byte."""
    path = tables_dir() / f"{arch}.json"
    committed = path.read_text()
    doc = json.loads(committed)
    assert doc["generated_by"] == f"python drivers/common/gen_syscalls.py --arch {arch}"
    assert set(doc["source"]) >= {"suite", "package", "version", "header"}
    assert doc["source"]["header"] == "asm/unistd.h"
    assert doc["source"]["suite"] == ("sid" if arch == "loongarch64" else "trixie")
    # Shuffled, with host macros and the generic markers mixed in, the way -dM prints them.
    lines = ["#define __GNUC__ 12", "#define __NR_syscalls 999", "#define _ASM_UNISTD_64_H "]
    lines += [f"#define __NR_{name} {number}" for name, number in reversed(doc["syscalls"].items())]
    table = gen.syscall_table(gen.parse_defines("\n".join(lines) + "\n"))
    assert gen.render(arch, doc["source"], table) == committed


def test_targets_match_arch_profiles(gen: ModuleType) -> None:
    from harness.archs import ARCHS

    targets = gen._targets()
    assert sorted(targets) == sorted(TABLE_ARCHS)
    for arch, target in targets.items():
        if arch in ARCHS:
            assert target.debian_arch == ARCHS[arch].debian_arch
        flags = target.cpp_flags()
        # Host macros are undefined before the target's are defined (gcc applies -U/-D in order).
        assert flags.index("-U__x86_64__") < min(i for i, f in enumerate(flags) if f.startswith("-D"))
    assert "__i386__" in targets["x86"].defines and "__x86_64__" not in targets["x86"].defines
