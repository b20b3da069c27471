"""The kernel module build, without building: decode table, zig flags, errors, cache keys, glibc wrapping."""

from __future__ import annotations

import importlib.util
import re
import shlex
import struct
from pathlib import Path
from types import ModuleType

import pytest

from harness.archs import get_arch
from harness.build import kmod, toolchain
from harness.build.toolchain import Compiler
from harness.guest.schema import load_schema
from harness.paths import project_root

ROOT = project_root()
HEADER = ROOT / "drivers" / "common" / "kmx_events.h"
PROBE_C = ROOT / "drivers" / "kmod" / "kmx_probe.c"


def _gen_decode() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_decode", ROOT / "drivers" / "kmod" / "gen_decode.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the decode table the module is built with agrees with the schema header -----------------------

_BLOCK = re.compile(r"\t\[(\d+)\] = \{ /\* (\w+) \*/\n(.*?)\n\t\},", re.S)
_ENTRY = re.compile(r"\{ KMX_PT_(\w+), KMX_SRC_(\w+), (\d+), (\d+) \}")
_CASE = re.compile(r"#ifdef __NR_(\w+)\n\tcase __NR_(\w+): return (\d+);\n#endif")


def _source_of(kind: str, arg: int, length: int) -> str:
    return {"ARG": f"arg{arg}", "LEN": f"arg{arg}/len{length}", "RET": f"arg{arg}/ret",
            "PLEN": f"arg{arg}/*len{length}", "FIXED": f"arg{arg}/{length}"}[kind]


def _side(block: str, side: str) -> list[tuple[str, str]]:
    match = re.search(rf"\.{side} = \{{\n(.*?)\n\t\t\}},", block, re.S)
    if not match:
        return []
    return [(ptype, _source_of(kind, int(arg), int(length))) for ptype, kind, arg, length in _ENTRY.findall(match[1])]


def test_generated_c_table_and_switch_agree_with_the_header() -> None:
    schema = load_schema(HEADER)
    generated = _gen_decode().generate(HEADER.read_text())
    blocks = {int(i): (name, body) for i, name, body in _BLOCK.findall(generated)}
    assert set(blocks) == set(schema.syscalls)
    for sc_id, spec in schema.syscalls.items():
        name, body = blocks[sc_id]
        assert name == spec.name
        assert _side(body, "enter") == [(p.type, p.source) for p in spec.enter], name
        assert _side(body, "exit") == [(p.type, p.source) for p in spec.exit], name
        assert f".n_enter = {len(spec.enter)}, .n_exit = {len(spec.exit)}," in body
    cases = {name: int(sc_id) for name, again, sc_id in _CASE.findall(generated) if name == again}
    assert cases == {spec.name: spec.id for spec in schema.syscalls.values()}
    assert "kmx_sc_specs[KMX_SC_MAX]" in generated
    assert max(schema.syscalls) < schema.const("KMX_SC_MAX")


def test_the_probe_handles_every_param_type_and_source_the_table_uses() -> None:
    schema = load_schema(HEADER)
    gen = _gen_decode()
    probe = PROBE_C.read_text()
    for spec in schema.syscalls.values():
        for param in (*spec.enter, *spec.exit):
            kind, _arg, _length = gen.parse_source(param.source)
            assert f"case KMX_PT_{param.type}:" in probe or param.type in ("BYTES", "SOCKADDR"), param
            if param.type in ("BYTES", "SOCKADDR"):
                assert f"case KMX_SRC_{kind}:" in probe, param


@pytest.mark.parametrize("bad", ["p:STR:arg9", "p:BYTES:arg1", "p:NOPE:arg1", "p:STR:arg1/len2", "p:BYTES:arg1/ret"])
def test_the_generator_rejects_what_the_probe_cannot_do(bad: str) -> None:
    text = HEADER.read_text().replace('X(1, openat, "path:STR:arg1", "")', f'X(1, openat, "{bad}", "")')
    with pytest.raises(ValueError):
        _gen_decode().generate(text)


def test_generated_comments_never_open_a_nested_comment() -> None:
    generated = _gen_decode().generate(HEADER.read_text())
    for comment in re.findall(r"/\*(.*?)\*/", generated, re.S):
        assert "/*" not in comment


def test_fault_injection_swaps_write_args_only_under_its_define() -> None:
    probe = PROBE_C.read_text()
    block = probe[probe.index("#ifdef KMX_FAULT_SWAP_ARGS") : probe.index("#endif", probe.index("KMX_FAULT_SWAP"))]
    schema = load_schema(HEADER)
    assert f"id == {schema.by_name['write'].id}" in block and "swap(raw[0], raw[2])" in block


# -- zig (clang) wrapper for loongarch64 -----------------------------------------------------------


def test_zig_wrapper_maps_gcc_flags_to_clang() -> None:
    args = ["-O2", "-msoft-float", "-fconserve-stack", "-fsanitize=bounds-strict", "-march=loongarch64",
            "-mabi=lp64s", "-c", "-o", "x.o", "x.c"]
    out = toolchain.zig_cc_args("loongarch64", args)
    assert out[:2] == ["-target", "loongarch64-linux-gnusf"]
    assert out[-1] == "-Wno-unknown-warning-option"
    assert "-mcpu=generic_la64" in out and "-march=loongarch64" not in out
    for dropped in ("-msoft-float", "-fconserve-stack", "-fsanitize=bounds-strict"):
        assert dropped not in out
    assert out[2:-1] == ["-O2", "-mcpu=generic_la64", "-mabi=lp64s", "-c", "-o", "x.o", "x.c"]


def test_zig_compiler_uses_llvm_tools_and_zig_ld(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not toolchain.zig_available():
        pytest.skip("ziglang is not installed in this environment")
    monkeypatch.setattr(toolchain, "_first_line", lambda argv: "0.0.0-test")
    compiler = toolchain._zig(get_arch("loongarch64"), tmp_path)
    assert compiler is not None and compiler.kind == "zig"
    assert "LLVM=1" in compiler.make_vars
    ld = next(v for v in compiler.make_vars if v.startswith("LD="))[3:]
    assert "ziglang ld.lld" in Path(ld).read_text()
    assert "zig-cc loongarch64" in Path(compiler.cc).read_text()


def test_required_packages_name_the_cross_compilers() -> None:
    bookworm = toolchain.required_packages("bookworm")
    trixie = toolchain.required_packages("trixie")
    for pkg in ("gcc-aarch64-linux-gnu", "gcc-s390x-linux-gnu", "gcc-powerpc64le-linux-gnu", "gcc-riscv64-linux-gnu",
                "make"):
        assert pkg in bookworm and pkg in trixie
    assert "gcc-loongarch64-linux-gnu" not in bookworm  # Debian 12 has none: zig instead
    assert "gcc-loongarch64-linux-gnu" in trixie
    assert "libelf1" in bookworm and "libelf1t64" in trixie


def test_missing_cross_gcc_hint_names_the_package() -> None:
    hint = toolchain.missing_compiler_hint(get_arch("s390x"), "bookworm")
    assert "apt-get install gcc-s390x-linux-gnu" in hint
    assert "ziglang" in toolchain.missing_compiler_hint(get_arch("loongarch64"), "bookworm")


# -- errors and reproduction -----------------------------------------------------------------------

CANNED = """\
make: Entering directory '/r/usr/src/linux-headers-6.1.0-50-amd64'
  CC [M]  /b/src/kmod/kmx_probe.o
/b/src/kmod/kmx_probe.c: In function 'kmx_emit':
/b/src/kmod/kmx_probe.c:301:9: warning: unused variable 'x' [-Wunused-variable]
  301 |         int x;
      |             ^
/b/src/kmod/kmx_probe.c:310:17: error: 'nparam' undeclared (first use in this function); did you mean 'nparams'?
  310 |         need += nparam;
      |                 ^~~~~~
      |                 nparams
/b/src/kmod/kmx_probe.c:311:3: error: expected ';' before '}' token
make[2]: *** [scripts/Makefile.build:250: /b/src/kmod/kmx_probe.o] Error 1
make: *** [Makefile:2012: /b/src/kmod] Error 2
"""


def test_first_error_is_the_first_compiler_error_with_its_context() -> None:
    first = kmod.first_error(CANNED)
    lines = first.splitlines()
    assert lines[0].startswith("/b/src/kmod/kmx_probe.c:310:17: error: 'nparam' undeclared")
    assert "need += nparam;" in lines[1]
    assert "warning" not in first and "311" not in first


def test_first_error_finds_modpost_and_make_errors() -> None:
    modpost = 'ERROR: modpost: "strncpy_from_user_nofault" [/b/kmx.ko] undefined!\nmake[2]: *** Error 1\n'
    assert kmod.first_error(modpost).startswith("ERROR: modpost:")
    assert kmod.first_error("foo\nmake: *** No rule to make target 'modules'.  Stop.\n").startswith("make: ***")


def test_build_failure_hint_reproduces_the_make_command(tmp_path: Path) -> None:
    command = ["make", "-j2", "-C", "/r/usr/src/linux-headers-x", f"M={tmp_path}/src/kmod", "ARCH=x86", "modules"]
    error = kmod.build_failure("kmx.ko for x86_64", CANNED, command, tmp_path / "src" / "kmod", tmp_path / "log")
    assert "'nparam' undeclared" in str(error)
    assert error.hint is not None
    line = error.hint.split("   (full log")[0]
    assert shlex.split(line) == ["cd", f"{tmp_path}/src/kmod", "&&", *command]


def _compiler(**kw: object) -> Compiler:
    base: dict[str, object] = {"arch": "aarch64", "kind": "gcc", "cc": "/usr/bin/aarch64-linux-gnu-gcc",
                               "version": "aarch64-linux-gnu-gcc 12.2.0",
                               "make_vars": ("CC=/usr/bin/aarch64-linux-gnu-gcc", "CROSS_COMPILE=aarch64-linux-gnu-")}
    base.update(kw)
    return Compiler(**base)  # type: ignore[arg-type]


def test_make_command_is_an_argument_list(tmp_path: Path) -> None:
    headers = tmp_path / "linux-headers-6.12.95+deb12-arm64"
    headers.mkdir()
    argv = kmod.make_command(headers, tmp_path / "b", get_arch("aarch64"), _compiler(), None)
    assert argv[:4] == ["make", "-j2", "-C", str(headers)]
    assert "ARCH=arm64" in argv and "CROSS_COMPILE=aarch64-linux-gnu-" in argv and argv[-1] == "modules"
    assert "CONFIG_DEBUG_INFO_BTF_MODULES=" not in argv
    (headers / "vmlinux").write_bytes(b"\x7fELF")
    argv = kmod.make_command(headers, tmp_path / "b", get_arch("aarch64"), _compiler(), "swap_args")
    assert "CONFIG_DEBUG_INFO_BTF_MODULES=" in argv and "KMX_FAULT_SWAP_ARGS=y" in argv
    zig = _compiler(arch="loongarch64", kind="zig", make_vars=("LLVM=1",), path_prepend=("/t/bin",))
    argv = kmod.make_command(headers, tmp_path / "b", get_arch("loongarch64"), zig, None)
    assert argv[0] == "env" and argv[1].startswith("PATH=/t/bin:") and argv[2] == "make"


# -- cache key -------------------------------------------------------------------------------------


def test_cache_key_changes_with_fault_sources_headers_and_compiler() -> None:
    base = kmod.cache_key("src", ["a", "b", "c"], "gcc 12", None)
    assert base == kmod.cache_key("src", ["a", "b", "c"], "gcc 12", None)
    assert base != kmod.cache_key("src", ["a", "b", "c"], "gcc 12", "swap_args")
    assert base != kmod.cache_key("src2", ["a", "b", "c"], "gcc 12", None)
    assert base != kmod.cache_key("src", ["a", "b", "d"], "gcc 12", None)
    assert base != kmod.cache_key("src", ["a", "b", "c"], "gcc 14", None)


def test_driver_sources_cover_the_module_and_the_schema_but_not_generated_files() -> None:
    files = kmod.driver_sources()
    assert {"kmod/Kbuild", "kmod/kmx_main.c", "kmod/kmx_probe.c", "kmod/compat.h", "kmod/gen_decode.py",
            "common/kmx_events.h"} <= set(files)
    assert "kmod/kmx_decode.h" not in files
    assert kmod.sources_digest(files) == kmod.sources_digest(dict(reversed(list(files.items()))))


def test_unknown_fault_is_refused() -> None:
    with pytest.raises(kmod.BuildError, match="unknown fault"):
        kmod.build_kmod(None, get_arch("x86_64"), "bookworm", Path("/nonexistent"), fault="nope")  # type: ignore[arg-type]


# -- running newer kbuild tools on an older glibc --------------------------------------------------


def _fake_elf(path: Path, glibc_minor: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF" + bytes(60) + f"GLIBC_2.2.5\0GLIBC_2.{glibc_minor}\0".encode())
    path.chmod(0o755)


def test_glibc_needed_reads_symbol_versions(tmp_path: Path) -> None:
    _fake_elf(tmp_path / "scripts" / "mod" / "modpost", 38)
    _fake_elf(tmp_path / "scripts" / "basic" / "fixdep", 34)
    (tmp_path / "scripts" / "script.sh").write_text("#!/bin/sh\n# GLIBC_2.99\0\n")
    (tmp_path / "scripts" / "script.sh").chmod(0o755)
    binaries = kmod.elf_executables(tmp_path)
    assert [b.name for b in binaries] == ["fixdep", "modpost"]
    assert kmod.glibc_needed(binaries) == (2, 38)


def test_wrap_for_glibc_keeps_argv0_and_points_at_the_final_place(tmp_path: Path) -> None:
    tree = tmp_path / "tmp" / "linux-kbuild-7.2"
    _fake_elf(tree / "scripts" / "mod" / "modpost", 38)
    _fake_elf(tree / "scripts" / "mod" / "modpost.real-lsb-64", 38)
    final = tmp_path / "final" / "linux-kbuild-7.2"
    wrapped = kmod.wrap_for_glibc(tree, Path("/l/ld-linux-x86-64.so.2"), Path("/l/lib"), final)
    assert sorted(wrapped) == ["scripts/mod/modpost", "scripts/mod/modpost.real-lsb-64"]
    script = (tree / "scripts" / "mod" / "modpost").read_text()
    assert script.startswith("#!/bin/sh\n")
    words = shlex.split(script.splitlines()[-1])
    assert words[:6] == ["exec", "/l/ld-linux-x86-64.so.2", "--library-path", "/l/lib", "--argv0", "$0"]
    assert words[6] == str(final / ".kmx-elf" / "scripts" / "mod" / "modpost")
    assert (tree / ".kmx-elf" / "scripts" / "mod" / "modpost").read_bytes().startswith(b"\x7fELF")
    assert kmod.wrap_for_glibc(tree, Path("/l/ld.so"), Path("/l/lib")) == []  # the stash is never re-wrapped


def test_host_glibc_is_read_from_confstr() -> None:
    version = kmod.host_glibc()
    assert version is None or (version[0] == 2 and version[1] >= 17)


def test_kmx_hdr_layout_matches_what_the_module_writes() -> None:
    # kmx_probe.c writes struct kmx_event_hdr; the consumers read KMX_HDR_FORMAT.
    schema = load_schema(HEADER)
    assert struct.calcsize("=" + str(schema.defines["KMX_HDR_FORMAT"])) == schema.const("KMX_HDR_SIZE") == 48
