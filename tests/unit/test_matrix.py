"""harness.matrix: loading and validating matrix.yaml, expanding cells, applicability."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.archs import ARCH_NAMES
from harness.errors import ConfigError
from harness.kernel import KernelFacts
from harness.matrix import (
    Applicability,
    Cell,
    KernelRef,
    Matrix,
    applicability,
    load_matrix,
    minimum_report,
)

REPO = Path(__file__).resolve().parents[2]
REAL = REPO / "matrix.yaml"

# A small valid matrix; malformed cases below each change one fragment of it.
BASE = """\
schema: 1
userland:
  default: trixie
architectures:
  x86_64:
    kernels:
      - {suite: bullseye, expect: "5.10"}
      - {suite: bookworm, expect: "6.1"}
  riscv64:
    kernels:
      - {suite: trixie, expect: "6.12"}
drivers:
  kmod:
    kind: kmod
    min_kernel: {x86_64: "3.10", riscv64: "5.0"}
    requires_config: [CONFIG_MODULES]
    source: {project: drivers/kmod}
    build: kbuild
    module: kmx.ko
    consumer: agent
  modern_bpf:
    kind: modern_bpf
    min_kernel: {x86_64: "5.8"}
    requires_config: [CONFIG_BPF_SYSCALL, CONFIG_DEBUG_INFO_BTF]
    source: {project: drivers/modern_bpf}
    build: bpf-core
    module: kmx_modern.bpf.o
    consumer: agent
consumers:
  agent:
    kind: agent
suites:
  capture:
    description: every syscall of a workload
  ia32:
    description: 32-bit compat syscalls
    archs: [x86_64]
    requires_config: [CONFIG_IA32_EMULATION]
profiles:
  ci:
    archs: [x86_64]
    kernels: newest
    drivers: [kmod]
    suites: [capture]
  full:
    kernels: all
"""


def write(tmp_path: Path, text: str, name: str = "matrix.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def mutate(old: str, new: str) -> str:
    assert old in BASE, f"test fragment not in BASE: {old!r}"
    return BASE.replace(old, new, 1)


@pytest.fixture(scope="module")
def real() -> Matrix:
    return load_matrix(REAL)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data = yaml.safe_load(REAL.read_text())
    assert isinstance(data, dict)
    return data


# ---------------------------------------------------------------------------------------------
# The real matrix.yaml


def test_real_matrix_loads(real: Matrix, raw: dict[str, Any]) -> None:
    assert list(real.architectures) == list(raw["architectures"])
    assert set(real.architectures) == set(ARCH_NAMES)
    assert list(real.drivers) == list(raw["drivers"])
    assert list(real.suites) == list(raw["suites"])
    assert set(real.profile_names) >= {"ci", "minimum", "full", "default"}


def _expected_count(raw: dict[str, Any], profile: str) -> int:
    spec = raw["profiles"][profile]
    archs = spec.get("archs", list(raw["architectures"]))
    drivers = spec.get("drivers", list(raw["drivers"]))
    suites = spec.get("suites", list(raw["suites"]))

    def kernels(arch: str) -> int:
        if spec["kernels"] == "all":
            return len(raw["architectures"][arch]["kernels"])
        # newest: one per arch; minimum: one per (arch, driver), unsupported pairs keep one that skips.
        return 1

    suite_archs = spec.get("suite_archs", {})
    return sum(kernels(arch) * len(drivers) * sum(1 for suite in suites if arch in suite_archs.get(suite, [arch]))
               for arch in archs)


@pytest.mark.parametrize("profile", ["full", "ci", "minimum", "default"])
def test_real_cell_counts(real: Matrix, raw: dict[str, Any], profile: str) -> None:
    cells = real.cells(profile)
    assert len(cells) == _expected_count(raw, profile)
    assert len({cell.id for cell in cells}) == len(cells), "cell ids are unique"


def test_real_cell_counts_by_hand(real: Matrix) -> None:
    # 12 kernels (3+3+2+2+1+1) x 4 drivers (the three reference drivers and falco-kmod) x 6 suites;
    # the file's comments promise these shapes. ci and default keep the three reference drivers.
    assert len(real.cells("full")) == 12 * 4 * 7
    assert len(real.cells("minimum")) == 6 * 4 * 7
    # capture and ia32 (which skips off x86_64) everywhere; containers and redaction on x86_64 and
    # s390x, permissions and tamper on x86_64
    assert len(real.cells("ci")) == 3 * 3 * 2 + 2 * 3 + 3 + 3 + 2 * 3
    assert len(real.cells("default")) == 6 * 3 * 2


def test_full_is_the_default_profile(real: Matrix) -> None:
    assert real.cells() == real.cells("full")


def test_cell_id_and_order(real: Matrix) -> None:
    cells = real.cells("full")
    ids = [cell.id for cell in cells]
    assert "x86_64-bookworm-backports-kmod-capture" in ids
    assert ids[0] == "x86_64-bullseye-kmod-capture"
    # Cells sharing a boot (arch, kernel) are adjacent, kernels oldest first.
    boots = [(cell.arch, cell.kernel.label) for cell in cells]
    firsts = list(dict.fromkeys(boots))
    assert len(firsts) == 12
    assert firsts[:3] == [("x86_64", "bullseye"), ("x86_64", "bookworm"), ("x86_64", "bookworm-backports")]


def test_ci_profile(real: Matrix) -> None:
    cells = real.cells("ci")
    assert [cell.arch for cell in cells] == ["x86_64"] * 18 + ["aarch64"] * 6 + ["s390x"] * 12
    for cell in cells:
        assert cell.kernel == real.newest_kernel(cell.arch)
        assert cell.driver in {"kmod", "bpf", "modern_bpf"}
        assert cell.suite in ("capture", "ia32") or (cell.arch, cell.suite) in {
            ("x86_64", "containers"), ("s390x", "containers"), ("x86_64", "permissions"), ("x86_64", "tamper"),
            ("x86_64", "redaction"), ("s390x", "redaction")}
    assert {cell.kernel.label for cell in cells} == {"bookworm-backports"}


def test_minimum_profile(real: Matrix) -> None:
    cells = real.cells("minimum")
    x86 = {cell.driver: cell for cell in cells if cell.arch == "x86_64" and cell.suite == "capture"}
    assert set(x86) == {"kmod", "bpf", "modern_bpf", "falco-kmod"}
    assert x86["falco-kmod"].kernel == x86["kmod"].kernel  # declared with the reference kmod's minimums
    for cell in x86.values():
        assert cell.kernel.suite == "bullseye"
        assert cell.kernel.expect == (5, 10, 0)
    assert x86["modern_bpf"].declared_min == (5, 8, 0)
    assert x86["bpf"].declared_min == (4, 14, 0)
    s390x = {cell.kernel.label for cell in cells if cell.arch == "s390x"}
    assert s390x == {"bookworm"}
    # bpf has no riscv64 minimum: its cells stay, on the newest kernel, and skip with the reason.
    riscv_bpf = [cell for cell in cells if cell.arch == "riscv64" and cell.driver == "bpf"]
    assert len(riscv_bpf) == 7
    assert all(cell.declared_min is None for cell in riscv_bpf)
    assert all(not applicability(real, cell, None).runnable for cell in riscv_bpf)


def test_minimum_report(real: Matrix) -> None:
    rows = minimum_report(real)
    assert len(rows) == 6 * 4
    by_key = {(row.arch, row.driver): row for row in rows}
    row = by_key["x86_64", "modern_bpf"]
    assert row.declared == (5, 8, 0)
    assert row.tested is not None and row.tested.suite == "bullseye"
    arch, driver, declared, tested = by_key["riscv64", "bpf"]
    assert (arch, driver, declared, tested) == ("riscv64", "bpf", None, None)
    assert by_key["s390x", "bpf"].tested == real.kernels("s390x")[0]


def test_kernels_sorted_and_lookups(real: Matrix) -> None:
    for arch in real.architectures:
        versions = [ref.expect for ref in real.kernels(arch)]
        assert versions == sorted(versions)
        assert real.newest_kernel(arch).expect == max(versions)
    assert [ref.label for ref in real.kernels("x86_64")] == ["bullseye", "bookworm", "bookworm-backports"]
    ref = real.kernels("x86_64")[0]
    assert ref == KernelRef(arch="x86_64", expect=(5, 10, 0), label="bullseye", suite="bullseye")
    assert ref.expect_text == "5.10"
    assert ref.source == "bullseye"
    assert real.newest_kernel("loongarch64").suite == "sid"
    assert real.userland_suite("loongarch64") == "sid"
    assert real.userland_suite("x86_64") == "trixie"
    assert real.minimum_candidates("s390x", "modern_bpf") == real.kernels("s390x")
    with pytest.raises(ConfigError, match="'mips' is not in the matrix"):
        real.kernels("mips")


def test_filters_narrow(real: Matrix) -> None:
    cells = real.cells("full", archs=["aarch64"], drivers=["kmod", "bpf"], suites="capture")
    assert {cell.arch for cell in cells} == {"aarch64"}
    assert {cell.driver for cell in cells} == {"kmod", "bpf"}
    assert {cell.suite for cell in cells} == {"capture"}
    assert len(cells) == 3 * 2 * 1
    assert real.cells("ci", archs="s390x")[0].id == "s390x-bookworm-backports-kmod-capture"


def test_filter_errors(real: Matrix) -> None:
    with pytest.raises(ConfigError, match="architecture 'amd64' is not in the matrix"):
        real.cells("full", archs=["amd64"])
    with pytest.raises(ConfigError, match="profile 'ci' does not select architecture 'riscv64'") as info:
        real.cells("ci", archs=["riscv64"])
    assert info.value.hint is not None and "x86_64, aarch64, s390x" in info.value.hint
    with pytest.raises(ConfigError, match="driver 'kmd' is not in the matrix") as info:
        real.cells("full", drivers=["kmd"])
    assert info.value.hint is not None and "'kmod'" in info.value.hint


def test_unknown_profile(real: Matrix) -> None:
    with pytest.raises(ConfigError, match="unknown profile 'nightly'") as info:
        real.cells("nightly")
    assert info.value.hint is not None
    for name in ("ci", "minimum", "full", "default"):
        assert name in info.value.hint


# ---------------------------------------------------------------------------------------------
# Malformed files: each is one ConfigError naming file, key path and bad value, on one line.

MALFORMED = [
    pytest.param(
        mutate("  riscv64:\n    kernels:", "  riscv65:\n    kernels:"),
        ["architectures.riscv65: 'riscv65' is not a known architecture"],
        "riscv64",
        id="unknown-arch",
    ),
    pytest.param(
        mutate("  riscv64:\n    kernels:", "  amd64:\n    kernels:"),
        ["architectures.amd64: 'amd64' is not a known architecture"],
        "write 'x86_64'",
        id="debian-arch-name",
    ),
    pytest.param(
        mutate("{suite: bullseye,", "{suite: bulseye,"),
        ["architectures.x86_64.kernels[0].suite: 'bulseye' is not a known Debian suite"],
        "did you mean 'bullseye'",
        id="misspelled-suite",
    ),
    pytest.param(
        mutate('expect: "6.1"', 'expect: "6"'),
        ["architectures.x86_64.kernels[1].expect: '6' is not a MAJOR.MINOR version"],
        '"MAJOR.MINOR"',
        id="expect-major-only",
    ),
    pytest.param(
        mutate('expect: "6.12"', 'expect: "abc"'),
        ["architectures.riscv64.kernels[0].expect: 'abc' is not a MAJOR.MINOR version"],
        None,
        id="expect-abc",
    ),
    pytest.param(
        mutate('expect: "5.10"', "expect: 5.10"),
        ["architectures.x86_64.kernels[0].expect: 5.1 is a number"],
        "quoted",
        id="expect-unquoted-float",
    ),
    pytest.param(
        mutate("schema: 1", "schema: 2"),
        ["schema: 2 is not a supported schema version"],
        None,
        id="schema-2",
    ),
    pytest.param(
        mutate("schema: 1", "schema: '1'"),
        ["schema: expected an integer, got a string '1'"],
        None,
        id="schema-string",
    ),
    pytest.param(
        BASE + "extras: true\n",
        ["extras: unknown key 'extras'"],
        "allowed keys: schema, mirror, userland",
        id="unknown-top-level-key",
    ),
    pytest.param(
        mutate('{suite: bookworm, expect: "6.1"}', '{suite: bookworm, expect: "6.1", flavour: rt}'),
        ["architectures.x86_64.kernels[1].flavour: unknown key 'flavour'"],
        "suite, path, name, expect",
        id="unknown-kernel-key",
    ),
    pytest.param(
        mutate('    kernels:\n      - {suite: trixie, expect: "6.12"}', "    kernels: []"),
        ["architectures.riscv64.kernels: [] is empty"],
        None,
        id="empty-kernels",
    ),
    pytest.param(
        mutate(
            '      - {suite: bookworm, expect: "6.1"}',
            '      - {suite: bookworm, expect: "6.1"}\n      - {suite: bullseye, expect: "5.10"}',
        ),
        ["architectures.x86_64.kernels[2].suite: 'bullseye' is listed twice for x86_64 (also kernels[0])"],
        None,
        id="duplicate-suite-in-arch",
    ),
    pytest.param(
        mutate("kind: kmod", "kind: ebpf"),
        ["drivers.kmod.kind: 'ebpf' is not a driver kind"],
        "kmod, bpf, modern_bpf",
        id="driver-unknown-kind",
    ),
    pytest.param(
        mutate('riscv64: "5.0"}', 'mips: "5.0"}'),
        ["drivers.kmod.min_kernel.mips: 'mips' is not a known architecture"],
        None,
        id="min-kernel-unknown-arch",
    ),
    pytest.param(
        mutate('{x86_64: "3.10"', '{x86_64: "3.x"'),
        ["drivers.kmod.min_kernel.x86_64: '3.x' is not a MAJOR.MINOR version"],
        None,
        id="min-kernel-bad-version",
    ),
    pytest.param(
        mutate('{x86_64: "5.8"}', "{x86_64: 5}"),
        ["drivers.modern_bpf.min_kernel.x86_64: 5 is not a MAJOR.MINOR version string"],
        None,
        id="min-kernel-int",
    ),
    pytest.param(
        mutate("requires_config: [CONFIG_MODULES]", "requires_config: [MODULES]"),
        ["drivers.kmod.requires_config[0]: 'MODULES' is not a kernel config option"],
        "did you mean 'CONFIG_MODULES'",
        id="requires-config-no-prefix",
    ),
    pytest.param(
        mutate("[CONFIG_BPF_SYSCALL, CONFIG_DEBUG_INFO_BTF]", "[CONFIG_BPF_SYSCALL, config_btf]"),
        ["drivers.modern_bpf.requires_config[1]: 'config_btf' is not a kernel config option"],
        "did you mean 'CONFIG_BTF'?",
        id="requires-config-lower-case",
    ),
    pytest.param(
        mutate("    drivers: [kmod]", "    drivers: [kmdo]"),
        ["profiles.ci.drivers[0]: 'kmdo' is not a driver in `drivers`"],
        "did you mean 'kmod'",
        id="profile-unknown-driver",
    ),
    pytest.param(
        mutate("    suites: [capture]", "    suites: [capture, throughput]"),
        ["profiles.ci.suites[1]: 'throughput' is not a suite in `suites`"],
        "capture, ia32",
        id="profile-unknown-suite",
    ),
    pytest.param(
        mutate("    archs: [x86_64]\n    kernels: newest", "    archs: [x86_64, s390x]\n    kernels: newest"),
        ["profiles.ci.archs[1]: 's390x' is not an architecture in `architectures`"],
        None,
        id="profile-arch-not-in-matrix",
    ),
    pytest.param(
        mutate("    archs: [x86_64]\n    kernels: newest", "    archs: [x86]\n    kernels: newest"),
        ["profiles.ci.archs[0]: 'x86' is not a known architecture"],
        None,
        id="profile-unknown-arch",
    ),
    pytest.param(
        mutate("    archs: [x86_64]\n    kernels: newest", "    archs: [x86_64, x86_64]\n    kernels: newest"),
        ["profiles.ci.archs: 'x86_64' is listed twice"],
        None,
        id="profile-duplicate-arch",
    ),
    pytest.param(
        mutate("requires_config: [CONFIG_MODULES]", "requires_config: [CONFIG_MODULES, CONFIG_MODULES]"),
        ["drivers.kmod.requires_config: 'CONFIG_MODULES' is listed twice"],
        None,
        id="requires-config-duplicate",
    ),
    pytest.param(
        mutate("    suites: [capture]", "    suites: []"),
        ["profiles.ci.suites: [] is empty"],
        None,
        id="profile-empty-suites",
    ),
    pytest.param(
        mutate("kernels: newest", "kernels: latest"),
        ["profiles.ci.kernels: 'latest' is not a kernel selection"],
        "newest, all, minimum",
        id="profile-kernels-latest",
    ),
    pytest.param(
        mutate("  full:\n    kernels: all", "  full:\n    archs: [x86_64]"),
        ["profiles.full: missing required key 'kernels'"],
        None,
        id="profile-missing-kernels",
    ),
    pytest.param(
        "- schema: 1\n- userland: {}\n",
        ["the top level must be a mapping, got a list"],
        None,
        id="top-level-list",
    ),
    pytest.param(
        "just a string\n",
        ["the top level must be a mapping, got a string 'just a string'"],
        None,
        id="top-level-string",
    ),
    pytest.param("# nothing here\n", ["the file is empty"], None, id="empty-file"),
    pytest.param(
        mutate("schema: 1\n", "schema: 1\nmirror: deb.example.org/debian\n"),
        ["mirror: 'deb.example.org/debian' is not an http://, https:// or file:// URI"],
        None,
        id="mirror-not-uri",
    ),
    pytest.param(
        mutate("schema: 1\n", "schema: 1\nmirror: ftp://deb.example.org/debian\n"),
        ["mirror: 'ftp://deb.example.org/debian' is not an http://"],
        None,
        id="mirror-ftp",
    ),
    pytest.param(
        mutate("  default: trixie", "  default: trixy"),
        ["userland.default: 'trixy' is not a known Debian suite"],
        "did you mean 'trixie'",
        id="userland-unknown-suite",
    ),
    pytest.param(
        mutate("  default: trixie", "  x86_64: trixie"),
        ["userland: missing required key 'default'"],
        None,
        id="userland-no-default",
    ),
    pytest.param(
        mutate("  default: trixie", "  default: trixie\n  arm: sid"),
        ["userland.arm: 'arm' is not a known architecture"],
        None,
        id="userland-unknown-arch",
    ),
    pytest.param(
        mutate("    kind: kmod\n", ""),
        ["drivers.kmod: missing required key 'kind'"],
        "kind, min_kernel, requires_config",
        id="driver-missing-kind",
    ),
    pytest.param(
        mutate(
            "  ia32:\n    description: 32-bit compat syscalls\n    archs: [x86_64]",
            "  ia32:\n    archs: [x86_64]",
        ),
        ["suites.ia32: missing required key 'description'"],
        None,
        id="suite-missing-description",
    ),
    pytest.param(
        mutate("    archs: [x86_64]\n    requires_config", "    archs: [x86-64]\n    requires_config"),
        ["suites.ia32.archs[0]: 'x86-64' is not a known architecture"],
        "did you mean 'x86_64'",
        id="suite-unknown-arch",
    ),
    pytest.param(
        mutate("  ia32:\n", "  ia-32:\n"),
        ["suites.ia-32: 'ia-32' is not a valid name"],
        None,
        id="suite-bad-name",
    ),
    pytest.param(
        mutate("{suite: bullseye,", "{suite: bullseye, path: /srv/linux,"),
        ["architectures.x86_64.kernels[0]: a kernel needs exactly one of 'suite' or 'path' (got both)"],
        None,
        id="kernel-suite-and-path",
    ),
    pytest.param(
        mutate("{suite: bullseye,", "{name: mine,"),
        ["architectures.x86_64.kernels[0]: a kernel needs exactly one of 'suite' or 'path' (got neither)"],
        None,
        id="kernel-neither",
    ),
    pytest.param(
        mutate('    kernels:\n      - {suite: trixie, expect: "6.12"}', '    kernels:\n      trixie: "6.12"'),
        ["architectures.riscv64.kernels: expected a list, got a mapping"],
        None,
        id="kernels-not-a-list",
    ),
    pytest.param(
        mutate("    description: every syscall of a workload", "    description:"),
        ["suites.capture.description: expected a string, got nothing (null)"],
        None,
        id="description-null",
    ),
    pytest.param(
        mutate("schema: 1\n", "schema: 1\nschema: 1\n"),
        ["line 2, column 1: invalid YAML: duplicate key 'schema' (first on line 1)"],
        None,
        id="duplicate-yaml-key",
    ),
    pytest.param(
        mutate("  default: trixie", "  default: [trixie"),
        ["line 4, column 14: invalid YAML: expected ',' or ']'", "flow sequence started on line 3"],
        None,
        id="yaml-syntax-error",
    ),
    pytest.param(
        mutate("    kind: kmod\n", "    kind: kmod\n   bad_indent: 1\n"),
        ["line 15, column 4: invalid YAML"],
        None,
        id="yaml-bad-indent",
    ),
]


@pytest.mark.parametrize(("text", "fragments", "hint"), MALFORMED)
def test_malformed(tmp_path: Path, text: str, fragments: list[str], hint: str | None) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_matrix(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message
    if hint is not None:
        assert info.value.hint is not None and hint in info.value.hint, info.value.hint


def test_base_is_valid(tmp_path: Path) -> None:
    matrix = load_matrix(write(tmp_path, BASE))
    assert len(matrix.cells("full")) == 3 * 2 * 2  # 3 kernels x 2 drivers x 2 suites
    assert [cell.id for cell in matrix.cells("ci")] == ["x86_64-bookworm-kmod-capture"]


def test_several_problems_reported_as_one(tmp_path: Path) -> None:
    text = mutate("kind: kmod", "kind: ebpf").replace("kernels: newest", "kernels: latest")
    with pytest.raises(ConfigError) as info:
        load_matrix(write(tmp_path, text))
    assert "drivers.kmod.kind: 'ebpf'" in str(info.value)
    assert str(info.value).endswith("(and 1 more problem)")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "matrix.yaml"
    with pytest.raises(ConfigError, match="no such file") as info:
        load_matrix(path)
    assert str(path) in str(info.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_matrix(tmp_path)


def test_path_kernel(tmp_path: Path) -> None:
    text = mutate(
        '      - {suite: bookworm, expect: "6.1"}',
        '      - {suite: bookworm, expect: "6.1"}\n      - {path: kernels/mine, expect: "6.6"}\n'
        '      - {path: /srv/linux-rc, expect: "6.15", name: rc}',
    )
    matrix = load_matrix(write(tmp_path, text))
    refs = matrix.kernels("x86_64")
    assert [ref.label for ref in refs] == ["bullseye", "bookworm", "mine", "rc"]
    assert refs[2].path == tmp_path / "kernels" / "mine"
    assert refs[2].suite is None
    assert refs[3].path == Path("/srv/linux-rc")
    assert matrix.newest_kernel("x86_64").label == "rc"
    assert "x86_64-rc-kmod-capture" in [cell.id for cell in matrix.cells("full")]


def test_path_kernel_name_only_for_paths(tmp_path: Path) -> None:
    text = mutate("{suite: bullseye,", "{suite: bullseye, name: old,")
    with pytest.raises(ConfigError, match=r"kernels\[0\]: 'name' 'old' is only for kernels given by 'path'"):
        load_matrix(write(tmp_path, text))


# ---------------------------------------------------------------------------------------------
# Applicability


def facts(release: str, config: dict[str, str], package_version: str = "") -> KernelFacts:
    return KernelFacts(release=release, package_version=package_version, config=config)


def cell_of(matrix: Matrix, arch: str, label: str, driver: str, suite: str) -> Cell:
    for cell in matrix.cells("full"):
        if (cell.arch, cell.kernel.label, cell.driver, cell.suite) == (arch, label, driver, suite):
            return cell
    raise AssertionError(f"no cell {arch} {label} {driver} {suite}")


def test_unsupported_driver_arch(real: Matrix) -> None:
    cell = cell_of(real, "riscv64", "trixie", "bpf", "capture")
    assert applicability(real, cell, None) == Applicability(
        False, "driver bpf does not support riscv64 (no minimum in matrix.yaml drivers.bpf.min_kernel)"
    )


def test_suite_restricted_to_arch(real: Matrix) -> None:
    cell = cell_of(real, "aarch64", "bookworm", "kmod", "ia32")
    assert applicability(real, cell, None) == Applicability(False, "suite ia32 runs only on x86_64")


def test_missing_btf(real: Matrix) -> None:
    cell = cell_of(real, "x86_64", "bookworm", "modern_bpf", "capture")
    kernel = facts("6.1.0-18-amd64", {"CONFIG_BPF_SYSCALL": "y", "CONFIG_DEBUG_INFO_BTF": "n"})
    assert applicability(real, cell, kernel) == Applicability(
        False, "kernel 6.1.0 lacks CONFIG_DEBUG_INFO_BTF (required by modern_bpf)"
    )


def test_missing_options_of_driver_and_suite(real: Matrix) -> None:
    cell = cell_of(real, "x86_64", "bookworm", "modern_bpf", "ia32")
    kernel = facts("6.1.0-18-amd64", {}, package_version="6.1.76-1")
    assert applicability(real, cell, kernel).reason == (
        "kernel 6.1.76 lacks CONFIG_BPF_SYSCALL, CONFIG_DEBUG_INFO_BTF (required by modern_bpf)"
        " and CONFIG_IA32_EMULATION (required by suite ia32)"
    )


def test_all_config_present(real: Matrix) -> None:
    cell = cell_of(real, "x86_64", "bookworm-backports", "modern_bpf", "ia32")
    options = ("CONFIG_BPF_SYSCALL", "CONFIG_DEBUG_INFO_BTF", "CONFIG_IA32_EMULATION")
    kernel = facts("6.12.95+deb12-amd64", dict.fromkeys(options, "y"))
    assert applicability(real, cell, kernel) == Applicability(True, None)
    kmod = cell_of(real, "x86_64", "bookworm-backports", "kmod", "capture")
    module_config = {"CONFIG_MODULES": "y", "CONFIG_TRACEPOINTS": "y"}
    assert applicability(real, kmod, facts("6.12.95", module_config)).runnable


def test_pending_without_facts(real: Matrix) -> None:
    cell = cell_of(real, "x86_64", "bookworm", "modern_bpf", "capture")
    assert applicability(real, cell, None) == Applicability(
        True, "kernel config not yet known (not fetched)", pending=True
    )


def test_no_requirements_no_reason(tmp_path: Path) -> None:
    text = mutate("    requires_config: [CONFIG_MODULES]\n", "")
    matrix = load_matrix(write(tmp_path, text))
    cell = matrix.cells("ci")[0]
    assert applicability(matrix, cell, None) == Applicability(True, None)


def test_kernel_below_minimum(tmp_path: Path) -> None:
    text = mutate('{suite: bullseye, expect: "5.10"}', '{suite: bullseye, expect: "4.9"}')
    matrix = load_matrix(write(tmp_path, text))
    cell = cell_of(matrix, "x86_64", "bullseye", "modern_bpf", "capture")
    assert cell.declared_min == (5, 8, 0)
    assert applicability(matrix, cell, None) == Applicability(
        False, "kernel 4.9.0 is below modern_bpf's minimum 5.8 for x86_64"
    )
    # The minimum profile skips past it to the oldest kernel that qualifies...
    minimum = load_matrix(write(tmp_path, text + "  minimum:\n    kernels: minimum\n", "min.yaml"))
    picked = {cell.driver: cell.kernel.label for cell in minimum.cells("minimum", archs=["x86_64"])}
    assert picked == {"kmod": "bullseye", "modern_bpf": "bookworm"}
    # ...and facts, once known, override the declared version.
    newer = cell_of(matrix, "x86_64", "bookworm", "modern_bpf", "capture")
    old = facts("5.4.0-1-amd64", {"CONFIG_BPF_SYSCALL": "y", "CONFIG_DEBUG_INFO_BTF": "y"})
    reason = applicability(matrix, newer, old).reason
    assert reason == "kernel 5.4.0 is below modern_bpf's minimum 5.8 for x86_64"


def test_minimum_when_no_kernel_qualifies(tmp_path: Path) -> None:
    text = mutate('min_kernel: {x86_64: "5.8"}', 'min_kernel: {x86_64: "7.0"}')
    text += "  minimum:\n    kernels: minimum\n"
    matrix = load_matrix(write(tmp_path, text))
    cells = matrix.cells("minimum", archs="x86_64", drivers="modern_bpf")
    assert {cell.kernel.label for cell in cells} == {"bookworm"}  # the newest, so the skip shows why
    reason = applicability(matrix, cells[0], None).reason
    assert reason == "kernel 6.1.0 is below modern_bpf's minimum 7.0 for x86_64"
    report = {(row.arch, row.driver): row for row in minimum_report(matrix)}
    assert report["x86_64", "modern_bpf"].tested is None
    assert report["x86_64", "modern_bpf"].declared == (7, 0, 0)


# ---------------------------------------------------------------------------------------------
# Drivers under test and their consumers (issue 10): source, build, module, consumer, version_from

SYSDIG = """\
  sysdig:
    kind: command
    debian: {package: sysdig, suite: sid}
    capture: [sysdig, -w, "{file}"]
    read: [sysdig, -r, "{file}", -p, "%evt.type %evt.dir"]
    version: [sysdig, --version]
"""
FALCO = """\
  falco-kmod:
    kind: kmod
    min_kernel: {x86_64: "3.10"}
    requires_config: [CONFIG_MODULES, CONFIG_TRACEPOINTS]
    source: {debian: {package: falcosecurity-scap-dkms, suite: sid}}
    build: dkms
    module: scap.ko
    consumer: sysdig
    version_from: dkms-conf
"""


def with_third_party(text: str = BASE) -> str:
    """BASE plus Falco's module read by sysdig."""
    text = text.replace("consumers:\n  agent:\n    kind: agent\n", "consumers:\n  agent:\n    kind: agent\n" + SYSDIG)
    return text.replace("    consumer: agent\nconsumers:", "    consumer: agent\n" + FALCO + "consumers:", 1)


def test_declarations_of_the_base(tmp_path: Path) -> None:
    matrix = load_matrix(write(tmp_path, BASE))
    kmod = matrix.drivers["kmod"]
    assert (kmod.source.kind, kmod.source.project, kmod.build, kmod.module, kmod.consumer) == (
        "project", "drivers/kmod", "kbuild", "kmx.ko", "agent")
    assert kmod.module_name == "kmx" and kmod.version_from is None
    assert matrix.drivers["modern_bpf"].module_name == "kmx_modern.bpf.o"
    assert matrix.consumers["agent"].kind == "agent"


def test_third_party_driver_and_command_consumer(tmp_path: Path) -> None:
    matrix = load_matrix(write(tmp_path, with_third_party()))
    falco = matrix.drivers["falco-kmod"]
    assert falco.source.kind == "debian" and falco.source.debian is not None
    assert (falco.source.debian.package, falco.source.debian.suite) == ("falcosecurity-scap-dkms", "sid")
    assert (falco.build, falco.module, falco.module_name) == ("dkms", "scap.ko", "scap")
    assert falco.version_from == "dkms-conf"
    sysdig = matrix.consumers[falco.consumer]
    assert sysdig.kind == "command" and sysdig.debian is not None and sysdig.debian.package == "sysdig"
    assert sysdig.capture == ["sysdig", "-w", "{file}"] and sysdig.read is not None and "{file}" in sysdig.read
    # A hyphenated driver name is fine: it reads well in cell ids.
    assert "x86_64-bookworm-falco-kmod-capture" in [cell.id for cell in matrix.cells("full")]
    x86 = [cell for cell in matrix.cells("full") if cell.arch == "x86_64"]
    verdicts = {d: [applicability(matrix, c, None) for c in x86 if c.driver == d] for d in ("kmod", "falco-kmod")}
    assert verdicts["falco-kmod"] == verdicts["kmod"]  # same minimum there, same config options required


def test_path_source_is_resolved_against_the_matrix_dir(tmp_path: Path) -> None:
    text = mutate("    source: {project: drivers/kmod}\n", "    source: {path: mine/kmod}\n")
    matrix = load_matrix(write(tmp_path, text))
    assert matrix.drivers["kmod"].source.path == str(tmp_path / "mine" / "kmod")
    text = mutate("    source: {project: drivers/kmod}\n", "    source: {path: /abs/kmod}\n")
    assert load_matrix(write(tmp_path, text)).drivers["kmod"].source.path == "/abs/kmod"


def test_real_matrix_declares_every_driver(real: Matrix) -> None:
    assert set(real.drivers) == {"kmod", "bpf", "modern_bpf", "falco-kmod"}
    declared = {name: (d.kind, d.source.kind, d.build, d.module, d.consumer) for name, d in real.drivers.items()}
    assert declared == {
        "kmod": ("kmod", "project", "kbuild", "kmx.ko", "agent"),
        "bpf": ("bpf", "project", "bpf-legacy", "kmx_legacy.bpf.o", "agent"),
        "modern_bpf": ("modern_bpf", "project", "bpf-core", "kmx_modern.bpf.o", "agent"),
        "falco-kmod": ("kmod", "debian", "dkms", "scap.ko", "sysdig"),
    }
    falco, kmod = real.drivers["falco-kmod"], real.drivers["kmod"]
    assert falco.source.debian is not None
    assert (falco.source.debian.package, falco.source.debian.suite) == ("falcosecurity-scap-dkms", "sid")
    assert falco.min_kernel == kmod.min_kernel
    assert falco.requires_config == ["CONFIG_MODULES", "CONFIG_TRACEPOINTS"]
    assert real.consumers["sysdig"].kind == "command"
    # falco-kmod stays out of what CI and the README's first command run.
    for profile in ("ci", "default"):
        assert real.profile(profile).drivers == ["kmod", "bpf", "modern_bpf"]
        assert "falco-kmod" not in {cell.driver for cell in real.cells(profile)}


def _driver_case(old: str, new: str, fragments: list[str], hint: str | None, case: str) -> Any:
    return pytest.param(mutate(old, new), fragments, hint, id=case)


DECLARATIONS = [
    _driver_case("    source: {project: drivers/kmod}\n", "", ["drivers.kmod: missing required key 'source'"],
                 "source, build, module, consumer", "missing-source"),
    _driver_case("{project: drivers/kmod}", "{project: drivers/kmod, path: /x}",
                 ["drivers.kmod.source: a driver source needs exactly one of 'project', 'debian' or 'path' "
                  "(got project and path)"], "{project: drivers/kmod}", "two-sources"),
    _driver_case("{project: drivers/kmod}", "{}", ["drivers.kmod.source: ", "(got none)"], None, "no-source"),
    _driver_case("{project: drivers/kmod}", "{project: /src/kmod}",
                 ["drivers.kmod.source.project: '/src/kmod' is not a folder inside the project"], "use `path:`",
                 "absolute-project"),
    _driver_case("{project: drivers/kmod}", "{project: ../kmod}",
                 ["drivers.kmod.source.project: '../kmod' is not a folder inside the project"], None,
                 "project-escapes"),
    _driver_case("{project: drivers/kmod}", "{projet: drivers/kmod}",
                 ["drivers.kmod.source.projet: unknown key 'projet'"], "did you mean 'project'?", "source-typo"),
    _driver_case("{project: drivers/kmod}", "{debian: {package: Scap_DKMS, suite: sid}}",
                 ["drivers.kmod.source.debian.package: 'Scap_DKMS' is not a Debian package name"], None,
                 "bad-package"),
    _driver_case("{project: drivers/kmod}", "{debian: {package: scap-dkms, suite: sidd}}",
                 ["drivers.kmod.source.debian.suite: 'sidd' is not a known Debian suite"], "did you mean 'sid'?",
                 "bad-package-suite"),
    _driver_case("    build: kbuild\n", "    build: kbiuld\n", ["drivers.kmod.build: 'kbiuld' is not a build"],
                 "did you mean 'kbuild'?", "unknown-build"),
    _driver_case("    build: bpf-core\n", "    build: kbuild\n",
                 ["drivers.modern_bpf.build: 'kbuild' cannot build a modern_bpf driver"], "bpf-core, prebuilt",
                 "build-for-another-kind"),
    _driver_case("{project: drivers/kmod}", "{debian: {package: scap-dkms, suite: sid}}",
                 ["drivers.kmod.source.debian: a kbuild build does not read a debian source"], "project, path",
                 "source-for-another-build"),
    _driver_case("    build: kbuild\n", "    build: dkms\n",
                 ["drivers.kmod.source.project: a dkms build does not read a project source"], "reads: debian",
                 "dkms-from-project"),
    _driver_case("    module: kmx.ko\n", "    module: kmx.o\n",
                 ["drivers.kmod.module: 'kmx.o' is not a kmod object (its name must end in .ko)"], None,
                 "kmod-module-suffix"),
    _driver_case("    module: kmx_modern.bpf.o\n", "    module: kmx_modern.ko\n",
                 ["drivers.modern_bpf.module: 'kmx_modern.ko' is not a modern_bpf object"], None,
                 "bpf-module-suffix"),
    _driver_case("    module: kmx.ko\n", "    module: drivers/kmx.ko\n",
                 ["drivers.kmod.module: 'drivers/kmx.ko' is not a file name"], None, "module-with-folder"),
    _driver_case("    module: kmx.ko\n", "    module: kmx_modern.bpf.o\n",
                 ["drivers.kmod.module: 'kmx_modern.bpf.o' is not a kmod object"], None, "module-of-another"),
    _driver_case("    consumer: agent\n  modern_bpf:", "    consumer: agnet\n  modern_bpf:",
                 ["drivers.kmod.consumer: 'agnet' is not a consumer in `consumers`"], "did you mean 'agent'?",
                 "unknown-consumer"),
    _driver_case("    consumer: agent\n  modern_bpf:", "    consumer: agent\n    version_from: gti\n  modern_bpf:",
                 ["drivers.kmod.version_from: 'gti' is not a version source"], "did you mean 'git'?",
                 "unknown-version-source"),
    _driver_case("    consumer: agent\n  modern_bpf:", "    consumer: agent\n    version_from: package\n  modern_bpf:",
                 ["drivers.kmod.version_from: 'package' needs a source of debian (this driver's is project)"],
                 "git, modinfo", "version-from-package-of-a-project"),
    _driver_case("    consumer: agent\nconsumers:", "    consumer: agent\n    version_from: modinfo\nconsumers:",
                 ["drivers.modern_bpf.version_from: 'modinfo' needs a kind of kmod (this driver's is modern_bpf)"],
                 None, "modinfo-of-a-probe"),
    _driver_case("  kmod:\n    kind: kmod\n", "  Kmod:\n    kind: kmod\n",
                 ["drivers.Kmod: 'Kmod' is not a valid driver name"], "lower-case letters, digits, _ and -",
                 "driver-name"),
    _driver_case("consumers:\n  agent:\n    kind: agent\n", "", ["missing required key 'consumers'"], None,
                 "no-consumers"),
    _driver_case("    kind: agent\n", "    kind: agnt\n", ["consumers.agent.kind: 'agnt' is not a consumer kind"],
                 "did you mean 'agent'?", "consumer-kind"),
    _driver_case("    kind: agent\n", "    kind: agent\n    capture: [x, '{file}']\n",
                 ["consumers.agent.capture: an agent consumer takes no 'capture'"], "{kind: agent}", "agent-command"),
    _driver_case("    kind: agent\n", "    kind: command\n    debian: {package: sysdig, suite: sid}\n"
                 "    capture: [sysdig, -w, '{file}']\n",
                 ["consumers.agent: missing required key 'read'"], "capture: [sysdig, -w, '{file}']",
                 "command-without-read"),
    _driver_case("    kind: agent\n", "    kind: command\n    debian: {package: sysdig, suite: sid}\n"
                 "    capture: [sysdig, -w, out.scap]\n    read: [sysdig, -r, '{file}']\n",
                 ["consumers.agent.capture: ['sysdig', '-w', 'out.scap'] never names the capture file"], "{file}",
                 "capture-without-file"),
    _driver_case("    kind: agent\n", "    kind: command\n    debian: {package: sysdig, suite: sid}\n"
                 "    capture: [sysdig, -w, '{out}']\n    read: [sysdig, -r, '{file}']\n",
                 ["consumers.agent.capture: {out} in '{out}' is not a placeholder"], "{file}", "unknown-placeholder"),
    _driver_case("    kind: agent\n", "    kind: command\n    debian: {package: sysdig, suite: sid}\n"
                 "    capture: 'sysdig -w {file}'\n    read: [sysdig, -r, '{file}']\n",
                 ["consumers.agent.capture: expected a list, got a string 'sysdig -w {file}'"], None,
                 "shell-string"),
]


@pytest.mark.parametrize(("text", "fragments", "hint"), DECLARATIONS)
def test_bad_declarations(tmp_path: Path, text: str, fragments: list[str], hint: str | None) -> None:
    test_malformed(tmp_path, text, fragments, hint)


def test_two_drivers_with_one_module_file(tmp_path: Path) -> None:
    copy = ("  kmod2:\n    kind: kmod\n    min_kernel: {x86_64: \"3.10\"}\n    source: {path: /x}\n"
            "    build: kbuild\n    module: kmx.ko\n    consumer: agent\n")
    text = BASE.replace("consumers:\n", copy + "consumers:\n", 1)
    with pytest.raises(ConfigError) as info:
        load_matrix(write(tmp_path, text))
    assert "drivers.kmod2.module: 'kmx.ko' is also drivers.kmod.module" in str(info.value)
    assert info.value.hint is not None and "own file name" in info.value.hint
