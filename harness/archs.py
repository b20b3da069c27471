"""One small declarative profile per architecture: everything that differs between them.

Behaviour lives elsewhere (vm.py builds QEMU command lines from these, images.py finds kernels
with them); a profile only holds data, like labgrid's resources or tuxrun's device classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.errors import ConfigError


@dataclass(frozen=True)
class Firmware:
    """Firmware fetched from Debian's archive through the repository client (no host install)."""

    suite: str
    package: str
    path: str  # inside the package's data
    # Architecture: all packages are listed in every binary-<arch> index too; those indexes are
    # what apt itself reads (a mirror's binary-all index was seen out of sync with InRelease).
    debian_arch: str = "amd64"
    fallback_suites: tuple[str, ...] = ("forky", "sid")


@dataclass(frozen=True)
class ArchProfile:
    name: str  # kmatrix's name, also what `uname -m` prints in the guest
    debian_arch: str
    kernel_flavour: str  # linux-image-<flavour> metapackage suffix
    kernel_globs: tuple[str, ...]  # where the bootable kernel lives in the image packages
    qemu_binary: str
    machine: str
    console: str | None  # console= argument; None where the machine's default console works
    cross_triple: str  # GNU triple of Debian's cross gcc
    kbuild_arch: str  # ARCH= for kbuild
    bpf_target: str  # clang -target for BPF objects: bpfel or bpfeb
    zig_target: str  # zig cc -target for static helpers
    cpu: str | None = None
    memory_mb: int = 1024
    bios: str | None = None  # QEMU -bios value for firmware QEMU ships itself
    firmware: Firmware | None = None  # -bios from a Debian package
    big_endian: bool = False
    machine_args: tuple[str, ...] = ()
    # Debian packages that provide `qemu_binary`, by host release (bookworm ships some in -misc).
    qemu_packages: dict[str, tuple[str, ...]] = field(default_factory=dict)
    tcg_boot_timeout_s: int = 120
    # QEMU's TCG for this target supports -icount (a guest clock that counts instructions, so the
    # bench's ratios do not move with host load). QEMU's loongarch64 aborts under it ("Raised
    # interrupt while not in I/O function"), measured with QEMU 10.0 here.
    tcg_icount: bool = True
    # -icount shift for the bench: 2**shift ns of guest time per instruction. 3 (a 125 MIPS guest)
    # where TCG runs near that; s390x's TCG is about 4x slower, so its guest second is shorter.
    icount_shift: int = 3

    @property
    def uname_m(self) -> str:
        return self.name


ARCHS: dict[str, ArchProfile] = {
    "x86_64": ArchProfile(
        name="x86_64",
        debian_arch="amd64",
        kernel_flavour="amd64",
        kernel_globs=("boot/vmlinuz-*",),
        qemu_binary="qemu-system-x86_64",
        machine="q35",
        cpu="max",
        console="ttyS0",
        cross_triple="x86_64-linux-gnu",
        kbuild_arch="x86",
        bpf_target="bpfel",
        zig_target="x86_64-linux-musl",
        qemu_packages={"bookworm": ("qemu-system-x86",), "trixie": ("qemu-system-x86",)},
    ),
    "aarch64": ArchProfile(
        name="aarch64",
        debian_arch="arm64",
        kernel_flavour="arm64",
        kernel_globs=("boot/vmlinuz-*",),
        qemu_binary="qemu-system-aarch64",
        machine="virt",
        cpu="max",
        console="ttyAMA0",
        cross_triple="aarch64-linux-gnu",
        kbuild_arch="arm64",
        bpf_target="bpfel",
        zig_target="aarch64-linux-musl",
        qemu_packages={"bookworm": ("qemu-system-arm",), "trixie": ("qemu-system-arm",)},
    ),
    "s390x": ArchProfile(
        name="s390x",
        debian_arch="s390x",
        kernel_flavour="s390x",
        kernel_globs=("boot/vmlinuz-*",),
        qemu_binary="qemu-system-s390x",
        machine="s390-ccw-virtio",
        console=None,  # the SCLP console is the default
        cross_triple="s390x-linux-gnu",
        kbuild_arch="s390",
        bpf_target="bpfeb",
        zig_target="s390x-linux-musl",
        big_endian=True,
        icount_shift=5,
        qemu_packages={"bookworm": ("qemu-system-misc",), "trixie": ("qemu-system-s390x",)},
    ),
    "ppc64le": ArchProfile(
        name="ppc64le",
        debian_arch="ppc64el",
        kernel_flavour="powerpc64le",
        kernel_globs=("boot/vmlinux-*",),
        qemu_binary="qemu-system-ppc64",
        machine="pseries",
        console="hvc0",
        cross_triple="powerpc64le-linux-gnu",
        kbuild_arch="powerpc",
        bpf_target="bpfel",
        zig_target="powerpc64le-linux-musl",
        # Without these pseries asks for features TCG lacks and prints warnings on every boot.
        machine_args=("cap-cfpc=broken", "cap-sbbc=broken", "cap-ibs=broken", "cap-ccf-assist=off"),
        qemu_packages={"bookworm": ("qemu-system-ppc",), "trixie": ("qemu-system-ppc",)},
    ),
    "riscv64": ArchProfile(
        name="riscv64",
        debian_arch="riscv64",
        kernel_flavour="riscv64",
        kernel_globs=("boot/vmlinux-*",),
        qemu_binary="qemu-system-riscv64",
        machine="virt",
        console="ttyS0",
        bios="default",  # OpenSBI, shipped with QEMU
        cross_triple="riscv64-linux-gnu",
        kbuild_arch="riscv",
        bpf_target="bpfel",
        zig_target="riscv64-linux-musl",
        qemu_packages={"bookworm": ("qemu-system-misc",), "trixie": ("qemu-system-riscv",)},
    ),
    "loongarch64": ArchProfile(
        name="loongarch64",
        debian_arch="loong64",
        kernel_flavour="loong64",
        kernel_globs=("usr/lib/modules/*/vmlinuz", "boot/vmlinuz-*"),
        qemu_binary="qemu-system-loongarch64",
        machine="virt",
        cpu="la464",
        memory_mb=2048,
        tcg_icount=False,
        console="ttyS0,115200",
        firmware=Firmware(
            suite="trixie",
            package="qemu-efi-loongarch64",
            path="usr/share/qemu-efi-loongarch64/QEMU_EFI.fd",
        ),
        cross_triple="loongarch64-linux-gnu",
        kbuild_arch="loongarch",
        bpf_target="bpfel",
        zig_target="loongarch64-linux-musl",
        # QEMU 7.2's loongarch64 virt loads only ELF kernels: bookworm hosts need backports.
        qemu_packages={"bookworm": ("qemu-system-misc",), "trixie": ("qemu-system-misc",)},
    ),
}

ARCH_NAMES: tuple[str, ...] = tuple(ARCHS)


def get_arch(name: str) -> ArchProfile:
    try:
        return ARCHS[name]
    except KeyError:
        raise ConfigError(
            f"unknown architecture {name!r}",
            hint=f"choose one of: {', '.join(ARCH_NAMES)}",
        ) from None
