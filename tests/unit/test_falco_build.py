"""Falco's scap.ko build without building: dkms.conf, what the source supports, the tool PATH dir,
the make wrapper under `env -i`, probe output, cache keys. One test reads the real dkms package
(skipped when neither the cache nor the mirror has it)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.archs import ARCHS, get_arch
from harness.build.toolchain import Compiler
from harness.debian import Package
from harness.errors import BuildError, KmatrixError
from harness.thirdparty import falco
from harness.thirdparty.falco import DkmsConf, ScapSource

DKMS_CONF = """PACKAGE_NAME="scap"
PACKAGE_VERSION="0.23.2"

# 'struct mmsghdr' was introduced in Linux v2.6.33
BUILD_EXCLUSIVE_KERNEL_MIN="2.6.33"

BUILT_MODULE_NAME[0]="scap"
DEST_MODULE_LOCATION[0]="/kernel/extra"
AUTOINSTALL="yes"
"""

PPM_H = """#ifdef CONFIG_MIPS
#define SYSCALL_TABLE_ID0 __NR_Linux
#elif defined CONFIG_ARM
#define SYSCALL_TABLE_ID0 __NR_SYSCALL_BASE
#elif defined CONFIG_X86 || defined CONFIG_SUPERH
#define SYSCALL_TABLE_ID0 0
#elif defined CONFIG_PPC64
#define SYSCALL_TABLE_ID0 0
#elif defined CONFIG_S390
#define SYSCALL_TABLE_ID0 0
#elif defined CONFIG_ARM64
#define SYSCALL_TABLE_ID0 0
#elif defined CONFIG_RISCV
#define SYSCALL_TABLE_ID0 0
#endif
"""

MAIN_C = """#include <linux/version.h>

#if(LINUX_VERSION_CODE < KERNEL_VERSION(3, 10, 0))
#error The kernel module requires kernel versions greater or equal than '3.10'.
#endif
"""


def _source(tmp_path: Path, conf: str = DKMS_CONF, ppm_h: str = PPM_H) -> ScapSource:
    root = tmp_path / "scap-0.23.2"
    root.mkdir()
    (root / "ppm.h").write_text(ppm_h)
    (root / "main.c").write_text(MAIN_C)
    package = Package("falcosecurity-scap-dkms", "0.23.2-6", "all", "pool/f.deb", "ab" * 32, 1, suite="sid")
    return ScapSource(package, root, falco.parse_dkms_conf(conf))


def _gcc(arch: str, **changes: object) -> Compiler:
    triple = get_arch(arch).cross_triple
    fields: dict[str, object] = {"arch": arch, "kind": "gcc", "cc": f"/usr/bin/{triple}-gcc",
                                 "version": f"{triple}-gcc (Debian 12.2.0-14) 12.2.0",
                                 "make_vars": (f"CC=/usr/bin/{triple}-gcc", f"CROSS_COMPILE={triple}-")}
    fields.update(changes)
    return Compiler(**fields)  # type: ignore[arg-type]


# -- dkms.conf and the source's own limits --------------------------------------------------------


def test_dkms_conf_fields() -> None:
    conf = falco.parse_dkms_conf(DKMS_CONF)
    assert conf == DkmsConf("scap", "0.23.2", "scap", kernel_min=(2, 6, 33))


def test_dkms_conf_optional_limits_and_unquoted_values() -> None:
    conf = falco.parse_dkms_conf("PACKAGE_NAME=foo\nPACKAGE_VERSION='1.0'\nBUILD_EXCLUSIVE_KERNEL_MAX=\"6.6\"\n"
                                 "BUILD_EXCLUSIVE_ARCH=\"x86_64|aarch64\"  # only these\n")
    assert conf == DkmsConf("foo", "1.0", "foo", kernel_max=(6, 6), arch_regex="x86_64|aarch64")


def test_dkms_conf_without_name_is_an_error() -> None:
    with pytest.raises(BuildError, match="no PACKAGE_NAME"):
        falco.parse_dkms_conf('PACKAGE_VERSION="1"\n')


@pytest.mark.parametrize(("text", "expected"), [("6.12.95+deb12-arm64", (6, 12, 95)), ("5.10.0-32-amd64", (5, 10, 0)),
                                                ("7.2.13+deb14-loong64", (7, 2, 13)), ("2.6.33", (2, 6, 33))])
def test_version_tuple(text: str, expected: tuple[int, ...]) -> None:
    assert falco.version_tuple(text) == expected


def test_source_minimum_and_arch_symbols() -> None:
    assert falco.source_kernel_min(MAIN_C) == (3, 10, 0)
    assert falco.supported_symbols(PPM_H) == {"CONFIG_MIPS", "CONFIG_ARM", "CONFIG_X86", "CONFIG_SUPERH",
                                              "CONFIG_PPC64", "CONFIG_S390", "CONFIG_ARM64", "CONFIG_RISCV"}


def test_every_kmatrix_arch_has_a_kernel_symbol() -> None:
    assert {arch.kbuild_arch for arch in ARCHS.values()} <= set(falco.KERNEL_ARCH_SYMBOLS)


def test_buildable_where_the_source_supports_the_arch(tmp_path: Path) -> None:
    source = _source(tmp_path)
    for arch in ("x86_64", "aarch64", "s390x", "ppc64le", "riscv64"):
        assert falco.unbuildable_reason(source, get_arch(arch), "6.1.0-50-x") is None, arch


def test_an_arch_missing_from_ppm_h_is_refused_with_the_reason(tmp_path: Path) -> None:
    reason = falco.unbuildable_reason(_source(tmp_path), get_arch("loongarch64"), "7.2.13+deb14-loong64")
    assert reason is not None
    assert reason.startswith("scap 0.23.2 (falcosecurity-scap-dkms 0.23.2-6) does not support loongarch64: its "
                             "ppm.h defines SYSCALL_TABLE_ID0 only for CONFIG_ARM, CONFIG_ARM64")


def test_kernels_below_either_minimum_are_refused_with_the_reason(tmp_path: Path) -> None:
    source = _source(tmp_path)
    x86 = get_arch("x86_64")
    assert falco.unbuildable_reason(source, x86, "2.6.32-5-amd64") == (
        "scap 0.23.2 (falcosecurity-scap-dkms 0.23.2-6) needs kernel 2.6.33 or newer "
        "(dkms.conf BUILD_EXCLUSIVE_KERNEL_MIN); 2.6.32-5-amd64 is older")
    assert falco.unbuildable_reason(source, x86, "3.2.0-4-amd64") == (
        "scap 0.23.2 (falcosecurity-scap-dkms 0.23.2-6) needs kernel 3.10.0 or newer (main.c's #error); "
        "3.2.0-4-amd64 is older")


def test_dkms_arch_and_maximum_limits(tmp_path: Path) -> None:
    source = _source(tmp_path, DKMS_CONF + 'BUILD_EXCLUSIVE_ARCH="x86_64"\nBUILD_EXCLUSIVE_KERNEL_MAX="6.6"\n')
    assert "BUILD_EXCLUSIVE_ARCH='x86_64'" in str(falco.unbuildable_reason(source, get_arch("aarch64"), "6.1.0"))
    assert "up to 6.6 (dkms.conf BUILD_EXCLUSIVE_KERNEL_MAX); 6.12.95+deb12-amd64 is newer" in str(
        falco.unbuildable_reason(source, get_arch("x86_64"), "6.12.95+deb12-amd64"))


# -- the PATH directory and the make wrapper -------------------------------------------------------


def test_tool_links_are_the_cross_binutils_under_plain_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}" if not name.endswith("-as") else None)
    links = falco.tool_links(get_arch("aarch64"), _gcc("aarch64"))
    assert links["ld"] == "/usr/bin/aarch64-linux-gnu-ld"
    assert links["objcopy"] == "/usr/bin/aarch64-linux-gnu-objcopy"
    assert "as" not in links  # a tool this host lacks is left out, not linked to nothing
    assert "gcc" not in links  # CC is always passed; a plain gcc stays the host's (HOSTCC)


def test_tool_links_for_zig_are_its_llvm_tools(tmp_path: Path) -> None:
    for name in ("ld.lld", "llvm-ar", "llvm-objcopy", "llvm-nm"):
        (tmp_path / name).touch()
    compiler = Compiler("loongarch64", "zig", str(tmp_path / "cc"), "zig 0.14", ("LLVM=1",), (str(tmp_path),))
    links = falco.tool_links(get_arch("loongarch64"), compiler)
    assert links == {"ld": str(tmp_path / "ld.lld"), "ar": str(tmp_path / "llvm-ar"),
                     "nm": str(tmp_path / "llvm-nm"), "objcopy": str(tmp_path / "llvm-objcopy")}


def test_make_variables_carry_arch_compiler_kerneldir_and_btf_switch(tmp_path: Path) -> None:
    compiler = _gcc("aarch64")
    assert falco.make_variables(get_arch("aarch64"), compiler, tmp_path) == [
        "ARCH=arm64", *compiler.make_vars, f"KERNELDIR={tmp_path}"]
    (tmp_path / "vmlinux").touch()  # headers with vmlinux would make kbuild run pahole for module BTF
    assert falco.make_variables(get_arch("aarch64"), compiler, tmp_path)[-1] == "CONFIG_DEBUG_INFO_BTF_MODULES="


def test_a_probe_under_env_i_gets_the_tools_and_the_variables(tmp_path: Path) -> None:
    """What scap's configure/*/Makefile.inc does: `env -i CC=... PATH=$(PATH) ... sh build.sh`, whose
    `make` must find the wrapper (with the build's variables) and plain `ld` must be the cross one."""
    real_make = tmp_path / "real-make"
    real_make.write_text('#!/bin/sh\necho "make: $*"; command -v ld; echo "HOME=$HOME"\n')
    real_make.chmod(0o755)
    fake_ld = tmp_path / "aarch64-linux-gnu-ld"
    fake_ld.touch(mode=0o755)
    variables = ["ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-", "CONFIG_DEBUG_INFO_BTF_MODULES="]
    tools = falco.write_tool_dir(tmp_path / "tools", {"ld": str(fake_ld)}, str(real_make), variables, "/home/b")
    compiler = _gcc("aarch64", path_prepend=("/opt/zig",))
    path = falco.build_path(tools, compiler, inherited="/usr/bin:/bin")
    assert path == f"{tools}:/opt/zig:/usr/bin:/bin"
    probe = f"env -i CC=/usr/bin/aarch64-linux-gnu-gcc PATH={shlex.quote(path)} KERNELDIR=/k sh -c 'make CC=x -C dir'"
    done = subprocess.run(["sh", "-c", probe], capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    assert lines[0] == "make: ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- CONFIG_DEBUG_INFO_BTF_MODULES= CC=x -C dir"
    assert lines[1] == str(tools / "ld") and (tools / "ld").resolve() == fake_ld
    assert lines[2] == "HOME=/home/b"  # zig refuses to compile without a cache directory under HOME


def test_make_command_runs_the_real_make_with_the_path(tmp_path: Path) -> None:
    command = falco.make_command("/usr/bin/make", "/t:/usr/bin", tmp_path / "h", tmp_path / "src", ["ARCH=x86"])
    assert command == ["env", "PATH=/t:/usr/bin", "/usr/bin/make", "-j2", "-C", str(tmp_path / "h"),
                       f"M={tmp_path / 'src'}", "ARCH=x86", "modules"]


# -- probe output and the first error --------------------------------------------------------------

SANITY_BROKEN = """[configure-kmod] Including /b/configure/FS_MNT_IDMAP/Makefile.inc /b/configure/0__SANITY/Makefile.inc
[configure-kmod] Build output for HAS_FS_MNT_IDMAP:
[configure-kmod] make: Entering directory '/b/configure/FS_MNT_IDMAP'
/b/configure/FS_MNT_IDMAP/test.c:12:5: error: 'struct mnt_idmap' undeclared
make: Leaving directory '/b/configure/FS_MNT_IDMAP'
[configure-kmod] Build output for HAS_0__SANITY:
[configure-kmod] make: Entering directory '/b/configure/0__SANITY'
  BTF [M] /b/configure/0__SANITY/testmod.ko
/bin/sh: 1: pahole: not found
make[3]: *** [scripts/Makefile.modfinal:64: /b/configure/0__SANITY/testmod.ko] Error 127
make: Leaving directory '/b/configure/0__SANITY'
[configure-kmod] Build system is broken, please see above errors
/b/configure/0__SANITY/Makefile.inc:23: *** The build system is broken, please see above errors.  Stop.
"""

MAIN_BROKEN = """[configure-kmod] Build output for HAS_FS_MNT_IDMAP:
[configure-kmod] make: Entering directory '/b/configure/FS_MNT_IDMAP'
/b/configure/FS_MNT_IDMAP/test.c:12:5: error: 'struct mnt_idmap' undeclared
make: Leaving directory '/b/configure/FS_MNT_IDMAP'
[configure-kmod] Setting HAS_0__SANITY flag
[configure-kmod] Build system is sane
  CC [M]  /b/main.o
/b/main.c:100:1: error: implicit declaration of function 'foo'
make[2]: *** [scripts/Makefile.build:229: /b/main.o] Error 1
"""


def test_split_probe_output_separates_probe_logs() -> None:
    main, blocks = falco.split_probe_output(MAIN_BROKEN)
    assert set(blocks) == {"FS_MNT_IDMAP"}
    assert "mnt_idmap" in blocks["FS_MNT_IDMAP"] and "mnt_idmap" not in main
    assert "implicit declaration of function 'foo'" in main


def test_first_error_skips_a_failed_feature_probe() -> None:
    assert falco.scap_first_error(MAIN_BROKEN) == "/b/main.c:100:1: error: implicit declaration of function 'foo'"


def test_first_error_of_a_broken_sanity_probe_is_from_its_log() -> None:
    text = falco.scap_first_error(SANITY_BROKEN)
    assert text.startswith("scap's configure sanity probe failed")
    assert "Error 127" in text and "mnt_idmap" not in text


def test_a_nested_probe_make_and_joined_lines_end_the_block() -> None:
    """Seen with zig on loongarch64: the echoed log's lines joined, its make at level 2."""
    output = ("[configure-kmod] Build output for HAS_0__SANITY:\n"
              "[configure-kmod] make[2]: Entering directory '/b/configure/0__SANITY' CC [M] test.o\n"
              "error: unable to resolve zig cache directory: AppDataDirUnavailable make[4]: *** [test.o] Error 1\n"
              "make[2]: Leaving directory '/b/configure/0__SANITY' make[1]: *** [Makefile:260: __sub-make] Error 2\n"
              "[configure-kmod] Build system is broken, please see above errors\n"
              "/b/configure/0__SANITY/Makefile.inc:23: *** The build system is broken.  Stop.\n")
    main, _blocks = falco.split_probe_output(output)
    assert "Build system is broken" in main and "zig" not in main
    assert "\nerror: unable to resolve zig cache directory: AppDataDirUnavailable" in falco.scap_first_error(output)


def test_probe_features() -> None:
    assert falco.probe_features(MAIN_BROKEN, ["FS_MNT_IDMAP", "0__SANITY"]) == {"0__SANITY": True,
                                                                                  "FS_MNT_IDMAP": False}


# -- the cache key ---------------------------------------------------------------------------------


def test_cache_key_changes_with_each_input() -> None:
    base = falco.scap_cache_key("d" * 64, ["h1", "h2", "h3"], "gcc 12.2.0", ("CC=gcc",))
    assert base == falco.scap_cache_key("d" * 64, ["h1", "h2", "h3"], "gcc 12.2.0", ("CC=gcc",))
    others = [falco.scap_cache_key("e" * 64, ["h1", "h2", "h3"], "gcc 12.2.0", ("CC=gcc",)),
              falco.scap_cache_key("d" * 64, ["h1", "h2", "hX"], "gcc 12.2.0", ("CC=gcc",)),
              falco.scap_cache_key("d" * 64, ["h1", "h2", "h3"], "gcc 14.2.0", ("CC=gcc",)),
              falco.scap_cache_key("d" * 64, ["h1", "h2", "h3"], "gcc 12.2.0", ("CC=/usr/bin/gcc",))]
    assert len({base, *others}) == 5


def test_scap_devices_in_cpu_order() -> None:
    assert falco.scap_devices("null scap10 scap2 scap0 scap1 scapx tty") == ["scap0", "scap1", "scap2", "scap10"]


# -- the real package (from the cache, or the mirror when reachable) -------------------------------


def test_the_debian_dkms_package_parses() -> None:
    from harness.runner import Workspace

    try:
        source = falco.fetch_scap_source(Workspace.open().repo)
    except KmatrixError as error:
        pytest.skip(f"{falco.DKMS_PACKAGE} is neither cached nor fetchable: {str(error).splitlines()[0]}")
    assert source.conf.name == "scap" and source.conf.module == "scap"
    assert source.package.version.startswith(source.conf.version)
    assert source.conf.kernel_min is not None
    assert (source.root / "Makefile").is_file() and (source.root / "configure" / "0__SANITY").is_dir()
    supported = falco.supported_symbols((source.root / "ppm.h").read_text())
    for arch in ARCHS.values():  # the matrix's six architectures are all in this version's ppm.h
        assert falco.KERNEL_ARCH_SYMBOLS[arch.kbuild_arch] in supported, arch.name
