"""The legacy BPF probe without a VM: build commands, the kernel tree, the object, the user side.

One test compiles drivers/bpf for each architecture with zig's clang against a tiny stand-in
kernel tree (the few types and numbers the probe reads), through the same two commands the real
build runs; real kernels are proven in guests (the capture suite with --driver bpf).
"""

from __future__ import annotations

import re
import shlex
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from harness.archs import ARCHS, get_arch
from harness.build import bpf_common, bpf_legacy
from harness.build.bpf_legacy import KernelTree
from harness.errors import BuildError
from harness.guest import perfdev
from harness.guest.kmxdev import CpuStats
from harness.guest.schema import Decoder, encode_event, load_schema
from harness.paths import project_root

ROOT = project_root()
BPF = ROOT / "drivers" / "bpf"
HEADER = ROOT / "drivers" / "common" / "kmx_events.h"
PROBE = BPF / "kmx_bpf.c"


# -- the probe's sources -----------------------------------------------------------------------------


def test_the_probe_handles_every_param_type_and_source_the_table_uses() -> None:
    schema = load_schema(HEADER)
    probe = PROBE.read_text()
    for spec in schema.syscalls.values():
        for param in (*spec.enter, *spec.exit):
            if param.type in ("BYTES", "SOCKADDR"):
                kind = {"ret": "RET"}.get(param.source.split("/")[-1], "")
                if not kind:
                    tail = param.source.split("/")[-1]
                    kind = "LEN" if tail.startswith("len") else "PLEN" if tail.startswith("*len") else "FIXED"
                assert f"case KMX_SRC_{kind}:" in probe, param
            else:
                assert f"case KMX_PT_{param.type}:" in probe, param


def test_fault_injection_swaps_write_args_only_under_its_define() -> None:
    probe = PROBE.read_text()
    start = probe.index("#ifdef KMX_FAULT_SWAP_ARGS")
    block = probe[start : probe.index("#endif", start)]
    schema = load_schema(HEADER)
    assert f"id == {schema.by_name['write'].id}" in block
    assert "a0 = s->st.args[2]" in block and "a2 = s->st.args[0]" in block
    assert probe.count("KMX_FAULT_SWAP_ARGS") == 1


def test_arch_differences_live_in_compat_h_only() -> None:
    for path in BPF.glob("*.[ch]"):
        if path.name != "compat.h":
            assert "__TARGET_ARCH_" not in path.read_text(), path.name
    compat = (BPF / "compat.h").read_text()
    for arch in ("x86", "arm64", "s390", "powerpc"):
        assert f"__TARGET_ARCH_{arch}" in compat
    # The registers the module's syscall_get_arguments() reads, per architecture.
    for register in (
        "di",
        "si",
        "dx",
        "r10",
        "r8",
        "r9",
        "orig_x0",
        "regs[1]",
        "orig_gpr2",
        "gprs[3]",
        "orig_gpr3",
        "gpr[4]",
    ):
        assert re.search(rf"[(, ]{re.escape(register)}[),]", compat), register


def _defines(text: str) -> dict[str, str]:
    return {m[1]: m[2].strip('"') for m in re.finditer(r"^#define\s+(KMX_BPF_\w+)\s+(\S+)", text, re.M)}


def test_the_user_side_mirrors_the_probe_interface_header() -> None:
    defines = _defines((BPF / "kmx_bpf.h").read_text())
    assert defines["KMX_BPF_MAP_CONFIG"] == perfdev.MAP_CONFIG
    assert defines["KMX_BPF_MAP_STATS"] == perfdev.MAP_STATS
    assert defines["KMX_BPF_MAP_EVENTS"] == perfdev.MAP_EVENTS
    assert "=" + defines["KMX_BPF_CONFIG_FORMAT"] == perfdev.CONFIG.format
    assert "=" + defines["KMX_BPF_STATS_FORMAT"] == perfdev.STATS.format
    probe = PROBE.read_text()
    for name in (perfdev.MAP_CONFIG, perfdev.MAP_STATS, perfdev.MAP_EVENTS):
        assert re.search(rf"\}} {name} KMX_SEC\(\"\.maps\"\);", probe), name


def test_config_and_stats_structs_match_their_formats() -> None:
    text = (BPF / "kmx_bpf.h").read_text()
    sizes = {"__u64": "Q", "__u32": "I"}

    arrays = {("__u32", "[KMX_REDACT_KEYS_MAX]", ""): "4I",
              ("__u8", "[KMX_REDACT_KEYS_MAX]", "[KMX_REDACT_KEY_MAX]"): "64s"}  # the redaction keys

    def fields(name: str) -> str:
        body = re.search(rf"struct {name} \{{(.*?)\}};", text, re.S)
        assert body
        found = re.findall(r"^\s*(__u\d+) \w+(\[KMX_REDACT_KEYS_MAX\])?(\[KMX_REDACT_KEY_MAX\])?;", body[1], re.M)
        return "".join(arrays.get(f, sizes.get(f[0], "?")) for f in found)

    assert fields("kmx_bpf_config") == perfdev.CONFIG.format.lstrip("=")
    assert fields("kmx_bpf_stats") == perfdev.STATS.format.lstrip("=")


# -- build commands ----------------------------------------------------------------------------------


def _tree(tmp_path: Path) -> KernelTree:
    return KernelTree(tmp_path / "obj", tmp_path / "src")


@pytest.mark.parametrize("arch", bpf_legacy.LEGACY_ARCHS)
def test_front_end_compiles_for_the_kernels_own_architecture(arch: str, tmp_path: Path) -> None:
    profile = get_arch(arch)
    argv = bpf_legacy.front_end_command(["cc"], profile, _tree(tmp_path), tmp_path / "b", tmp_path / "out.bc")
    assert argv[:3] == ["cc", "-target", bpf_legacy.FRONT_END_TRIPLES[arch]]
    assert f"-D__TARGET_ARCH_{bpf_common.TARGET_ARCH[arch]}" in argv
    assert {"-emit-llvm", "-D__KERNEL__", "-fno-jump-tables", "-fno-stack-protector"} <= set(argv)
    forced = [argv[i + 1] for i, a in enumerate(argv) if a == "-include"]
    assert forced == [f"{tmp_path}/src/include/linux/kconfig.h", f"{tmp_path}/src/include/linux/compiler_types.h"]
    includes = [a for a in argv if a.startswith("-I")]
    kbuild_arch = profile.kbuild_arch
    assert includes[1:4] == [
        f"-I{tmp_path}/src/arch/{kbuild_arch}/include",
        f"-I{tmp_path}/obj/arch/{kbuild_arch}/include/generated",
        f"-I{tmp_path}/src/include",
    ]
    assert argv[-4:] == ["-c", str(tmp_path / "b" / "bpf" / "kmx_bpf.c"), "-o", str(tmp_path / "out.bc")]
    assert ("-DCONFIG_CC_IS_CLANG" in argv) == (arch == "ppc64le")
    assert "-DKMX_FAULT_SWAP_ARGS" not in argv and "-DKMX_TRACEPOINT" not in argv


def test_front_end_with_the_fault_and_the_tracepoint_fallback(tmp_path: Path) -> None:
    argv = bpf_legacy.front_end_command(
        ["cc"], get_arch("x86_64"), _tree(tmp_path), tmp_path, tmp_path / "o", "swap_args", "tracepoint"
    )
    assert "-DKMX_FAULT_SWAP_ARGS" in argv and "-DKMX_TRACEPOINT" in argv
    with pytest.raises(BuildError, match="unknown fault"):
        bpf_legacy.front_end_command(["cc"], get_arch("x86_64"), _tree(tmp_path), tmp_path, tmp_path / "o", "nope")
    with pytest.raises(BuildError, match="unknown attachment"):
        bpf_legacy.front_end_command(
            ["cc"], get_arch("x86_64"), _tree(tmp_path), tmp_path, tmp_path / "o", None, "kprobe"
        )


@pytest.mark.parametrize("arch", ["riscv64", "loongarch64"])
def test_unsupported_architectures_are_refused_with_the_matrix_reason(arch: str, tmp_path: Path) -> None:
    assert not bpf_legacy.supported(get_arch(arch))
    with pytest.raises(BuildError, match=f"does not support {arch}"):
        bpf_legacy.front_end_command(["cc"], get_arch(arch), _tree(tmp_path), tmp_path, tmp_path / "o")
    with pytest.raises(BuildError, match=f"does not support {arch}"):
        bpf_legacy.build_legacy_bpf(None, get_arch(arch), "trixie", tmp_path)  # type: ignore[arg-type]


def test_legacy_archs_are_the_matrix_bpf_driver_archs() -> None:
    import yaml

    matrix = yaml.safe_load((ROOT / "matrix.yaml").read_text())
    assert set(matrix["drivers"]["bpf"]["min_kernel"]) == set(bpf_legacy.LEGACY_ARCHS)
    assert set(bpf_legacy.FRONT_END_TRIPLES) == set(bpf_legacy.LEGACY_ARCHS) <= set(ARCHS)


@pytest.mark.parametrize("arch", bpf_legacy.LEGACY_ARCHS)
def test_back_end_targets_the_kernels_byte_order(arch: str, tmp_path: Path) -> None:
    argv = bpf_legacy.back_end_command(["cc"], get_arch(arch), tmp_path / "p.bc", tmp_path / "p.o")
    target = argv[argv.index("-target") + 1]
    assert target == ("bpfeb-freestanding" if arch == "s390x" else "bpfel-freestanding")
    assert "-mcpu=v3" in argv and "-O2" in argv and "-g" in argv
    assert argv[-4:] == ["-c", str(tmp_path / "p.bc"), "-o", str(tmp_path / "p.o")]


def test_unknown_fault_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="unknown fault"):
        bpf_legacy.build_legacy_bpf(None, get_arch("x86_64"), "bookworm", tmp_path, fault="nope")  # type: ignore[arg-type]


def test_required_packages_are_none_zig_comes_from_the_venv() -> None:
    assert bpf_legacy.required_packages("bookworm") == bpf_legacy.required_packages("trixie") == []


def test_cache_key_changes_with_sources_headers_compiler_fault_and_attachment() -> None:
    base = bpf_legacy.cache_key("src", ["a", "b"], "zig 0.17.1", None)
    assert base == bpf_legacy.cache_key("src", ["a", "b"], "zig 0.17.1", None, "raw_tracepoint")
    assert base != bpf_legacy.cache_key("src2", ["a", "b"], "zig 0.17.1", None)
    assert base != bpf_legacy.cache_key("src", ["a", "c"], "zig 0.17.1", None)
    assert base != bpf_legacy.cache_key("src", ["a", "b"], "zig 0.18.0", None)
    assert base != bpf_legacy.cache_key("src", ["a", "b"], "zig 0.17.1", "swap_args")
    assert base != bpf_legacy.cache_key("src", ["a", "b"], "zig 0.17.1", None, "tracepoint")


def test_driver_sources_cover_the_probe_schema_and_generator_but_not_generated_files(tmp_path: Path) -> None:
    files = bpf_legacy.driver_sources()
    assert {
        "bpf/kmx_bpf.c",
        "bpf/kmx_bpf.h",
        "bpf/compat.h",
        "bpf/bpf_defs.h",
        "common/kmx_events.h",
        "kmod/gen_decode.py",
    } <= set(files)
    assert "bpf/kmx_decode.h" not in files
    digest = bpf_legacy.sources_digest(files)
    assert digest == bpf_legacy.sources_digest(dict(reversed(list(files.items()))))
    copy = dict(files)
    changed = tmp_path / "kmx_events.h"
    changed.write_text(HEADER.read_text() + "\n")
    copy["common/kmx_events.h"] = changed
    assert bpf_legacy.sources_digest(copy) != digest


def test_kernel_tree_follows_the_arch_makefile_to_the_common_headers(tmp_path: Path) -> None:
    common = tmp_path / "usr/src/linux-headers-6.1.0-50-common"
    (common / "include/linux").mkdir(parents=True)
    (common / "include/linux/kconfig.h").write_text("")
    arch_dir = tmp_path / "usr/src/linux-headers-6.1.0-50-amd64"
    arch_dir.mkdir(parents=True)
    (arch_dir / "Makefile").write_text(f"include {common}/Makefile\n")
    assert KernelTree.find(arch_dir) == KernelTree(arch_dir, common)
    assert KernelTree.find(arch_dir, "linux-headers-6.1.0-50-common") == KernelTree(arch_dir, common)
    (arch_dir / "Makefile").write_text("")
    with pytest.raises(BuildError, match="no kernel source headers"):
        KernelTree.find(arch_dir)


def test_build_failure_shows_the_first_error_and_reproduces_the_command(tmp_path: Path) -> None:
    output = (
        "In file included from kmx_bpf.c:30:\n"
        "compat.h:88:3: error: use of undeclared identifier 'orig_ax'\n"
        "   88 |         kmx_reg(&v[0], regs, orig_ax);\n"
        "compat.h:99:1: error: something later\n"
    )
    command = ["/v/python", "-m", "ziglang", "cc", "-c", "kmx_bpf.c"]
    log = tmp_path / "build.log"
    with pytest.raises(BuildError) as caught:
        bpf_legacy._run_step(
            "kmx_bpf.o for x86_64",
            ["sh", "-c", f"printf %s {shlex.quote(output)} >&2; exit 1"],
            tmp_path,
            log,
            {"PATH": "/usr/bin:/bin"},
        )
    text = str(caught.value)
    assert "undeclared identifier 'orig_ax'" in text and "something later" not in text
    assert caught.value.hint is not None and caught.value.hint.startswith(f"cd {tmp_path} && sh -c")
    assert "error: something later" in log.read_text()
    assert command  # the real commands are argument lists (no shell), as above


# -- the object ----------------------------------------------------------------------------------------


def _elf(order: str, sections: list[tuple[str, int, int, bytes]]) -> bytes:
    """A minimal 64-bit ELF relocatable object with the given (name, type, flags, data) sections."""
    names = b"\0" + b"".join(name.encode() + b"\0" for name, *_ in sections) + b".shstrtab\0"
    body = b""
    offsets = []
    for _name, _kind, _flags, data in sections:
        offsets.append(64 + len(body))
        body += data
    strtab_off = 64 + len(body)
    body += names
    shoff = 64 + len(body)
    ident = b"\x7fELF" + bytes([2, 1 if order == "<" else 2, 1]) + bytes(9)
    header = ident + struct.pack(
        order + "HHIQQQIHHHHHH", 1, 247, 1, 0, 0, shoff, 0, 64, 0, 0, 64, len(sections) + 2, len(sections) + 1
    )
    table = bytes(64)
    position = 1
    for (name, kind, flags, data), offset in zip(sections, offsets, strict=True):
        table += struct.pack(order + "IIQQQQIIQQ", position, kind, flags, 0, offset, len(data), 0, 0, 8, 0)
        position += len(name) + 1
    table += struct.pack(order + "IIQQQQIIQQ", position, 3, 0, 0, strtab_off, len(names), 0, 0, 1, 0)
    return header + body + table


@pytest.mark.parametrize("order", ["<", ">"])
def test_program_sizes_count_instructions_of_executable_sections(order: str) -> None:
    obj = _elf(
        order,
        [
            (".text", 1, 0x6, bytes(16)),
            ("raw_tracepoint/sys_enter", 1, 0x6, bytes(8 * 100)),
            ("raw_tracepoint/sys_exit", 1, 0x6, bytes(8 * 90)),
            (".maps", 1, 0x3, bytes(24)),
            ("license", 1, 0x3, b"GPL\0"),
            ("empty", 1, 0x6, b""),
        ],
    )
    assert bpf_legacy.program_sizes(obj) == {".text": 2, "raw_tracepoint/sys_enter": 100, "raw_tracepoint/sys_exit": 90}
    assert bpf_legacy.elf_sections(obj)[".maps"] == (1, 0x3, 24)
    with pytest.raises(ValueError):
        bpf_legacy.program_sizes(b"\x7fELF\x01" + bytes(60))


# -- a real compile against a stand-in kernel tree ---------------------------------------------------

_PT_REGS = {
    "x86": "unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di, orig_ax, ip, cs, "
    "flags, sp, ss;",
    "arm64": "unsigned long regs[31]; unsigned long sp, pc, pstate; unsigned long orig_x0; int syscallno;",
    "s390": "unsigned long args[1]; unsigned long psw[2]; unsigned long gprs[16]; unsigned long orig_gpr2; "
    "unsigned int int_code; unsigned int int_parm; unsigned long int_parm_long; unsigned long flags;",
    "powerpc": "unsigned long gpr[32]; unsigned long nip, msr, orig_gpr3, ctr, link, xer, ccr, softe, trap;",
}
_ARCH_DEFINES = {
    "x86": "#define TS_COMPAT 0x0002\n#define CONFIG_IA32_EMULATION 1\n",
    "arm64": "#define TIF_32BIT 22\n",
    "s390": "#define TIF_31BIT 16\n#define _PIF_SYSCALL 1UL\n",
    "powerpc": "#define TIF_32BIT 20\n#define TRAP_FLAGS_MASK 0x1\n",
}
_UAPI_BPF = """
enum bpf_func_id { BPF_FUNC_map_lookup_elem = 1, BPF_FUNC_map_update_elem = 2, BPF_FUNC_map_delete_elem = 3,
  BPF_FUNC_ktime_get_ns = 5, BPF_FUNC_get_current_pid_tgid = 14, BPF_FUNC_perf_event_output = 25,
  BPF_FUNC_get_current_task = 35, BPF_FUNC_probe_read_user = 112, BPF_FUNC_probe_read_kernel = 113,
  BPF_FUNC_probe_read_user_str = 114, BPF_FUNC_get_current_cgroup_id = 80 };
enum bpf_map_type { BPF_MAP_TYPE_HASH = 1, BPF_MAP_TYPE_ARRAY = 2, BPF_MAP_TYPE_PERF_EVENT_ARRAY = 4,
  BPF_MAP_TYPE_PERCPU_ARRAY = 6, BPF_MAP_TYPE_LRU_HASH = 9 };
#define BPF_ANY 0
#define BPF_F_CURRENT_CPU 0xffffffffULL
struct bpf_raw_tracepoint_args { __u64 args[0]; };
"""


_KCONFIG = """#include <generated/autoconf.h>
#define __ARG_PLACEHOLDER_1 0,
#define __take_second_arg(__ignored, val, ...) val
#define __is_defined(x) ___is_defined(x)
#define ___is_defined(val) ____is_defined(__ARG_PLACEHOLDER_##val)
#define ____is_defined(arg1_or_junk) __take_second_arg(arg1_or_junk 1, 0)
#define IS_ENABLED(option) __is_defined(option)
"""
_TYPES = """#ifndef _T
#define _T
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed long long __s64;
typedef __u32 u32;
#define NULL ((void *)0)
#endif
"""
_SCHED = """#ifndef _S
#define _S
#include <linux/types.h>
#include <asm/thread_info.h>
struct thread_info { unsigned long flags; u32 status; };
struct pid;
struct task_struct { struct thread_info thread_info; long state; int pid; int tgid; struct task_struct *real_parent;
  struct pid *thread_pid; };
#endif
"""
_PID = """#ifndef _PID
#define _PID
struct pid_namespace;
struct upid { int nr; struct pid_namespace *ns; };
struct pid { int count; unsigned int level; struct upid numbers[1]; };
#endif
"""
_PID_NS = """#ifndef _PNS
#define _PNS
#include <linux/pid.h>
struct ns_common { void *stashed; unsigned int inum; };
struct pid_namespace { int level; struct ns_common ns; };
#endif
"""
_UNISTD = "".join(
    f"#define __NR_{name} {nr}\n"
    for name, nr in (("write", 1), ("openat", 56), ("execve", 59), ("getppid", 110), ("accept4", 288), ("pipe2", 293))
)


def _stand_in_kernel(root: Path, kbuild_arch: str) -> KernelTree:
    """The few kernel types, constants and numbers the probe reads, in kbuild's split layout."""
    src, obj = root / "src", root / "obj"
    arch = f"arch/{kbuild_arch}/include/asm"
    files = {
        src / "include/linux/compiler_types.h": "#define __always_inline inline __attribute__((__always_inline__))\n",
        src / "include/linux/kconfig.h": _KCONFIG,
        obj / "include/generated/autoconf.h": "#define CONFIG_THREAD_INFO_IN_TASK 1\n#define CONFIG_COMPAT 1\n"
        "#define CONFIG_PPC_BOOK3S_64 1\n",
        src / "include/linux/types.h": _TYPES,
        src / "include/linux/version.h": "#define KERNEL_VERSION(a, b, c) (((a) << 16) + ((b) << 8) + (c))\n"
        "#define LINUX_VERSION_CODE KERNEL_VERSION(6, 1, 0)\n",
        src / "include/linux/sched.h": _SCHED,
        src / "include/linux/pid.h": _PID,
        src / "include/linux/pid_namespace.h": _PID_NS,
        src / arch / "thread_info.h": _ARCH_DEFINES[kbuild_arch],
        src / "include/linux/ptrace.h": "#include <asm/ptrace.h>\n",
        src / arch / "ptrace.h": f"#ifndef _P\n#define _P\nstruct pt_regs {{ {_PT_REGS[kbuild_arch]} }};\n#endif\n",
        src / "include/uapi/linux/bpf.h": f"#ifndef _B\n#define _B\n#include <linux/types.h>\n{_UAPI_BPF}#endif\n",
        src / arch / "unistd.h": _UNISTD,
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return KernelTree(obj, src)


def _stage(build_dir: Path) -> None:
    for name, path in bpf_legacy.driver_sources().items():
        dest = build_dir / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
    bpf_legacy.generate_decode(build_dir)


def _zig_or_skip() -> list[str]:
    try:
        return bpf_common.bpf_clang()
    except BuildError:
        pytest.skip("ziglang is not installed")


@pytest.mark.parametrize(
    ("arch", "attach"), [(a, "raw_tracepoint") for a in bpf_legacy.LEGACY_ARCHS] + [("x86_64", "tracepoint")]
)
def test_the_probe_compiles_in_two_steps_to_a_bpf_object_of_the_kernels_byte_order(
    arch: str, attach: str, tmp_path: Path
) -> None:
    compiler = _zig_or_skip()
    profile = get_arch(arch)
    tree = _stand_in_kernel(tmp_path / "kernel", profile.kbuild_arch)
    build_dir = tmp_path / "b"
    _stage(build_dir)
    assert "kmx_sc_specs[KMX_SC_MAX]" in (build_dir / "bpf" / "kmx_decode.h").read_text()
    env = bpf_common.zig_env(tmp_path / "cache")
    bitcode, obj = build_dir / "p.bc", build_dir / "p.o"
    for argv in (
        bpf_legacy.front_end_command(compiler, profile, tree, build_dir, bitcode, "swap_args", attach),
        bpf_legacy.back_end_command(compiler, profile, bitcode, obj),
    ):
        done = subprocess.run(argv, cwd=build_dir, env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
    data = obj.read_bytes()
    assert data[5] == (2 if profile.big_endian else 1)  # EI_DATA: the kernel's byte order
    assert struct.unpack_from(">H" if profile.big_endian else "<H", data, 18)[0] == 247  # EM_BPF
    sections = bpf_legacy.elf_sections(data)
    assert {".maps", ".BTF", "license", ".rodata"} <= set(sections)
    programs = bpf_legacy.program_sizes(data)
    prefix = "raw_tracepoint/" if attach == "raw_tracepoint" else "tracepoint/raw_syscalls/"
    assert {f"{prefix}sys_enter", f"{prefix}sys_exit"} <= set(programs)
    assert all(count > 100 for name, count in programs.items() if name.startswith(prefix))


# -- the user side (perfdev), without a kernel ----------------------------------------------------


def test_perf_pages_are_a_power_of_two_within_the_buffer() -> None:
    assert perfdev.perf_pages(8 << 20, 4096) == 2048
    assert perfdev.perf_pages(3 * 4096, 4096) == 2
    assert perfdev.perf_pages(100, 4096) == 1
    assert perfdev.perf_pages(32 << 20, 65536) == 512


def test_snaplen_is_clamped_like_the_module() -> None:
    assert [perfdev.clamp_snaplen(v, 4096) for v in (0, 1, 256, 4096, 5000)] == [1, 1, 256, 4096, 4096]


def test_cpu_lists() -> None:
    assert perfdev.cpu_list("0-3,5\n") == [0, 1, 2, 3, 5]
    assert perfdev.cpu_list("0") == [0]
    assert perfdev.cpu_list("") == []


def test_per_cpu_stats_are_parsed_per_possible_cpu() -> None:
    raw = struct.pack("=QQQQ", 10, 1, 800, 0) + struct.pack("=QQQQ", 20, 0, 1600, 0)
    assert perfdev.parse_stats(raw, 2, {0}) == [CpuStats(0, True, 10, 1, 800), CpuStats(1, False, 20, 0, 1600)]


def test_records_are_decoded_per_cpu_and_merged_by_timestamp() -> None:
    schema = load_schema(HEADER)
    decoder = Decoder(schema)
    u64 = struct.Struct("=Q")

    def event(ts: int, nr: int) -> bytes:
        params = [("U64", 0, u64.pack(nr)), ("U64", 0, u64.pack(0)), ("S64", 0, u64.pack(7))]
        return encode_event(schema, ts, 42, 42, schema.const("KMX_EVT_SYS_EXIT"), params)

    padding = b"\0" * 4  # perf pads raw samples: records can be longer than their event
    records = [(1, event(5, 1) + padding), (0, event(3, 2)), (1, event(9, 3)), (0, event(7, 4) + padding)]
    events = perfdev.decode_records(decoder, records)
    assert [(e.ts_ns, e.cpu, e.nr) for e in events] == [(3, 0, 2), (5, 1, 1), (7, 0, 4), (9, 1, 3)]
    assert all(e.ret == 7 for e in events)
    with pytest.raises(ValueError):
        perfdev.decode_records(decoder, [(0, event(1, 1)[:40])])
