"""The modern BPF probe without a VM: its generated decode table, build command, cache key, loader structs."""

from __future__ import annotations

import importlib.util
import json
import re
import struct
from pathlib import Path
from types import ModuleType

import pytest

from harness.archs import ARCHS, get_arch
from harness.build import bpf_common, bpf_modern
from harness.debian import Package
from harness.errors import BuildError
from harness.guest import bpfdev, bpfload
from harness.guest.schema import load_schema
from harness.paths import project_root

ROOT = project_root()
HEADER = ROOT / "drivers" / "common" / "kmx_events.h"
MODERN = ROOT / "drivers" / "modern_bpf"
BTF_ARCHS = ("x86_64", "aarch64", "s390x", "ppc64le", "riscv64", "loongarch64")


def _gen_decode() -> ModuleType:
    spec = importlib.util.spec_from_file_location("modern_gen_decode", MODERN / "gen_decode.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _generated(arch: str) -> str:
    table = json.loads((ROOT / "drivers" / "common" / "syscalls" / f"{arch}.json").read_text())
    return str(_gen_decode().generate(HEADER.read_text(), arch, table))


# -- the probe's decode table agrees with the schema header and the arch's syscall table -----------

_NR_ROW = re.compile(r"^\t\[(\d+)\] = (\d+), /\* (\w+) \*/$", re.M)
_COUNT_ROW = re.compile(r"^\t\[(\d+)\] = (\d+), /\* (\w+): (\d+) enter, (\d+) exit \*/$", re.M)
_CALL = {
    re.compile(r"kmx_put_str\(w, a\[(\d)\]\);"): lambda m: ("STR", f"arg{m[1]}"),
    re.compile(r"kmx_put_strv\(w, a\[(\d)\]\);"): lambda m: ("STRV", f"arg{m[1]}"),
    re.compile(r"kmx_put_fd2\(w, a\[(\d)\]\);"): lambda m: ("FD2", f"arg{m[1]}"),
    re.compile(r"kmx_put_u64\(w, KMX_PT_(\w+), a\[(\d)\]\);"): lambda m: (m[1], f"arg{m[2]}"),
    re.compile(r"kmx_put_(?:user|written)_bytes\(w, KMX_PT_(\w+), a\[(\d)\], a\[(\d)\]\);"):
        lambda m: (m[1], f"arg{m[2]}/len{m[3]}"),
    re.compile(r"kmx_put_user_bytes\(w, KMX_PT_(\w+), a\[(\d)\], ret > 0 \? \(__u64\)ret : 0\);"):
        lambda m: (m[1], f"arg{m[2]}/ret"),
    re.compile(r"kmx_put_user_bytes\(w, KMX_PT_(\w+), a\[(\d)\], (\d+)\);"): lambda m: (m[1], f"arg{m[2]}/{m[3]}"),
    re.compile(r"kmx_put_user_bytes_plen\(w, KMX_PT_(\w+), a\[(\d)\], a\[(\d)\]\);"):
        lambda m: (m[1], f"arg{m[2]}/*len{m[3]}"),
}


def _switch_params(text: str, function: str) -> dict[int, list[tuple[str, str]]]:
    """id -> [(type, source)] as the generated switch of `function` writes them."""
    body = text[text.index(f"void {function}(") :]
    body = body[: body.index("\n}\n")]
    result: dict[int, list[tuple[str, str]]] = {}
    pending: list[int] = []
    calls: list[tuple[str, str]] = []
    for line in body.splitlines():
        line = line.strip()
        case = re.match(r"case (\d+):", line)
        if case:
            if calls:  # a new group starts
                pending, calls = [], []
            pending.append(int(case[1]))
            continue
        if line == "break;":
            for sc_id in pending:
                result[sc_id] = list(calls)
            pending, calls = [], []
            continue
        for pattern, convert in _CALL.items():
            match = pattern.fullmatch(line)
            if match:
                calls.append(convert(match))  # type: ignore[no-untyped-call]
                break
        else:
            assert not line.startswith("kmx_"), f"unrecognised writer call {line!r}"
    return result


@pytest.mark.parametrize("arch", BTF_ARCHS)
def test_decode_table_matches_the_header_and_syscall_table(arch: str) -> None:
    schema = load_schema(HEADER)
    numbers = json.loads((ROOT / "drivers" / "common" / "syscalls" / f"{arch}.json").read_text())["syscalls"]
    text = _generated(arch)

    nr_rows = {int(nr): (int(sc_id), name) for nr, sc_id, name in _NR_ROW.findall(text) if int(nr) < 1024
               and not _COUNT_ROW.match(f"\t[{nr}] = {sc_id}, /* {name}")}
    expected = {numbers[s.name]: (s.id, s.name) for s in schema.syscalls.values() if s.name in numbers}
    table = text[text.index("kmx_nr_to_id[") : text.index("kmx_n_decoded[")]
    got = {int(nr): (int(sc_id), name) for nr, sc_id, name in _NR_ROW.findall(table)}
    assert got == expected
    assert nr_rows  # the pattern saw the table at all
    assert all(nr < 1024 for nr in got)

    counts = {int(i): (int(e), int(x)) for i, both, _name, e, x in _COUNT_ROW.findall(text)
              if int(both) == int(e) | int(x) << 4}
    for spec in schema.syscalls.values():
        assert counts.get(spec.id, (0, 0)) == (len(spec.enter), len(spec.exit)), spec.name

    enter = _switch_params(text, "kmx_decode_enter")
    exit_ = _switch_params(text, "kmx_decode_exit")
    for spec in schema.syscalls.values():
        assert enter.get(spec.id, []) == [(p.type, p.source) for p in spec.enter], spec.name
        assert exit_.get(spec.id, []) == [(p.type, p.source) for p in spec.exit], spec.name
    assert f'#define KMX_ID_TABLE {1 << (schema.const("KMX_SC_MAX") - 1).bit_length()}' in text


def test_decode_table_is_deterministic_and_says_where_it_came_from() -> None:
    first, second = _generated("s390x"), _generated("s390x")
    assert first == second
    assert "--arch s390x" in first and "linux-libc-dev" in first


def test_fault_swaps_the_write_syscall_arguments() -> None:
    source = (MODERN / "kmx_modern.bpf.c").read_text()
    start = source.index("#ifdef KMX_FAULT_SWAP_ARGS")
    block = source[start : source.index("#endif", start)]
    write_id = load_schema(HEADER).by_name["write"].id
    assert f"if (id == {write_id})" in block


def test_modern_header_structs_match_the_loader() -> None:
    text = (MODERN / "kmx_modern.h").read_text()

    def fields(name: str) -> list[str]:
        body = text[text.index(f"struct {name} {{") :]
        found = re.findall(r"^\t(__u\d+) \w+(\[KMX_REDACT_KEYS_MAX\])?(\[KMX_REDACT_KEY_MAX\])?;",
                           body[: body.index("};")], re.M)
        # the redaction keys: __u32 len[4] is "4I", __u8 key[4][16] is "64s"
        return [{("__u32", "[KMX_REDACT_KEYS_MAX]", ""): "4I", ("__u8", "[KMX_REDACT_KEYS_MAX]",
                 "[KMX_REDACT_KEY_MAX]"): "64s"}.get(f, f[0]) for f in found]

    sizes = {"__u16": "H", "__u32": "I", "__u64": "Q", "4I": "4I", "64s": "64s"}
    assert "=" + "".join(sizes[f] for f in fields("kmx_modern_config")) == bpfdev.CONFIG.format
    assert "=" + "".join(sizes[f] for f in fields("kmx_modern_counters")) == bpfdev.COUNTERS.format
    schema = load_schema(HEADER)
    assert "=" + "".join(sizes[f] for f in fields("kmx_hdr_words")) == "=" + str(schema.defines["KMX_HDR_FORMAT"])


# -- the build command and the cache key --------------------------------------------------------------


@pytest.mark.parametrize("arch", ["x86_64", "aarch64", "s390x", "ppc64le", "riscv64", "loongarch64"])
def test_compile_command_targets_the_arch(arch: str, tmp_path: Path) -> None:
    profile = get_arch(arch)
    out = tmp_path / "kmx_modern.bpf.o"
    argv = bpf_modern.compile_command(["zigcc"], profile, tmp_path, tmp_path / "libbpf", None, out)
    assert argv[0] == "zigcc"
    target = argv[argv.index("-target") + 1]
    assert target == ("bpfeb-freestanding" if profile.big_endian else "bpfel-freestanding")
    assert f"-D__TARGET_ARCH_{bpf_common.TARGET_ARCH[arch]}" in argv
    for flag in ("-g", "-O2", "-fno-unwind-tables"):
        assert flag in argv
    assert argv[-4:] == ["-c", str(tmp_path / "modern_bpf" / "kmx_modern.bpf.c"), "-o", str(out)]
    assert f"-I{tmp_path / 'include'}" in argv and f"-I{tmp_path / 'libbpf'}" in argv
    assert not any("FAULT" in a for a in argv)


def test_compile_command_with_the_fault(tmp_path: Path) -> None:
    argv = bpf_modern.compile_command(["cc"], get_arch("x86_64"), tmp_path, tmp_path, "swap_args", tmp_path / "o")
    assert "-DKMX_FAULT_SWAP_ARGS" in argv
    with pytest.raises(BuildError, match="unknown fault"):
        bpf_modern.compile_command(["cc"], get_arch("x86_64"), tmp_path, tmp_path, "nope", tmp_path / "o")


def test_big_endian_arches_get_bpfeb() -> None:
    for profile in ARCHS.values():
        flags = bpf_common.bpf_target_flags(profile)
        assert flags[1] == f"{'bpfeb' if profile.big_endian else 'bpfel'}-freestanding"


def test_cache_key_covers_sources_packages_compiler_fault_and_flags() -> None:
    base = bpf_modern.cache_key("src", ["vmlinux", "libbpf"], "zig 0.17.1 (clang 22.1.8)", None, ["-target", "x"])
    assert base == bpf_modern.cache_key("src", ["vmlinux", "libbpf"], "zig 0.17.1 (clang 22.1.8)", None,
                                        ["-target", "x"])
    variants = [
        bpf_modern.cache_key("src2", ["vmlinux", "libbpf"], "zig 0.17.1 (clang 22.1.8)", None, ["-target", "x"]),
        bpf_modern.cache_key("src", ["vmlinux2", "libbpf"], "zig 0.17.1 (clang 22.1.8)", None, ["-target", "x"]),
        bpf_modern.cache_key("src", ["vmlinux", "libbpf"], "zig 0.18.0 (clang 23.0.0)", None, ["-target", "x"]),
        bpf_modern.cache_key("src", ["vmlinux", "libbpf"], "zig 0.17.1 (clang 22.1.8)", "swap_args", ["-target", "x"]),
        bpf_modern.cache_key("src", ["vmlinux", "libbpf"], "zig 0.17.1 (clang 22.1.8)", None, ["-target", "y"]),
    ]
    assert base not in variants and len(set(variants)) == len(variants)


def test_sources_digest_covers_the_probe_the_schema_and_the_arch_table(tmp_path: Path) -> None:
    files = bpf_modern.driver_sources(arch="s390x")
    assert "modern_bpf/kmx_modern.bpf.c" in files and "modern_bpf/arch.h" in files
    assert "modern_bpf/include/linux/types.h" in files and "modern_bpf/gen_decode.py" in files
    assert files["common/kmx_events.h"] == HEADER
    assert "kmod/gen_decode.py" in files and "common/syscalls/s390x.json" in files
    assert "modern_bpf/kmx_modern_decode.h" not in files
    copy = {name: tmp_path / name.replace("/", "_") for name in files}
    for name, path in files.items():
        copy[name].write_bytes(path.read_bytes())
    digest = bpf_modern.sources_digest(copy)
    assert digest == bpf_modern.sources_digest(files)
    copy["common/kmx_events.h"].write_text(HEADER.read_text() + "\n")
    assert bpf_modern.sources_digest(copy) != digest


def test_build_modern_bpf_rejects_an_unknown_fault(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="unknown fault"):
        bpf_modern.build_modern_bpf(None, get_arch("x86_64"), tmp_path, fault="bogus")  # type: ignore[arg-type]


class _FakeRepo:
    """find_fetchable / unpack over a prepared tree (no network)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_fetchable(self, suites: list[str], arch: str, name: str) -> tuple[Package, list[str]]:
        return Package(name, "7.2.12-1", arch, f"pool/{name}.deb", "ab" * 32, 1, suite=suites[-1]), ["trixie: 404"]

    def unpack(self, pkg: Package) -> Path:
        return self.root


def test_vmlinux_header_refuses_debian_error_stub(tmp_path: Path) -> None:
    header = tmp_path / "usr/include/loongarch64-linux-gnu/linux/bpf/vmlinux.h"
    header.parent.mkdir(parents=True)
    header.write_text('#error "Kernel build without CONFIG_DEBUG_INFO_BTF, no type info available"\n')
    with pytest.raises(BuildError, match="ships no types") as caught:
        bpf_modern.vmlinux_header(_FakeRepo(tmp_path), get_arch("loongarch64"))  # type: ignore[arg-type]
    assert "CONFIG_DEBUG_INFO_BTF" in str(caught.value.hint)


def test_vmlinux_header_records_the_package_and_passed_over_suites(tmp_path: Path) -> None:
    header = tmp_path / "usr/include/s390x-linux-gnu/linux/bpf/vmlinux.h"
    header.parent.mkdir(parents=True)
    header.write_text("#ifndef __VMLINUX_H__\n#define __VMLINUX_H__\n#endif\n")
    logged: list[str] = []
    found = bpf_modern.vmlinux_header(_FakeRepo(tmp_path), get_arch("s390x"), logged.append)  # type: ignore[arg-type]
    assert found.header == header
    assert found.source == "linux-bpf-dev 7.2.12-1 (sid, s390x)"
    assert logged == ["s390x: trixie: 404"]


# -- the guest-side loader's pure parts ----------------------------------------------------------------


def test_prog_info_offsets() -> None:
    raw = bytearray(bpfload.PROG_INFO_SIZE)
    struct.pack_into("=I", raw, 20, 8 * 1841)
    struct.pack_into("=16s", raw, 64, b"kmx_sys_enter")
    struct.pack_into("=QQ", raw, 192, 4_000_000, 1000)
    struct.pack_into("=I", raw, 216, 11820)
    info = bpfload.parse_prog_info(bytes(raw))
    assert info["xlated_prog_len"] == 8 * 1841 and info["name"] == "kmx_sys_enter"
    assert (info["run_time_ns"], info["run_cnt"], info["verified_insns"]) == (4_000_000, 1000, 11820)
    # an older kernel fills less: the rest reads as zero
    assert bpfload.parse_prog_info(bytes(raw[:192]))["run_cnt"] == 0


def test_ring_size_and_online_cpus() -> None:
    assert bpfdev.ring_size(8 << 20) == 8 << 20
    assert bpfdev.ring_size(5 << 20) == 8 << 20
    assert bpfdev.ring_size(1) == bpfdev.PAGE
    assert bpfdev.online_cpus("0-3,6\n") == {0, 1, 2, 3, 6}
    assert bpfdev.online_cpus("0\n") == {0}
