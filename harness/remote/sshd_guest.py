"""A kmatrix guest that serves SSH, so the remote-target runner is tested against a real sshd.

The guest boots with `kmatrix.mode=sshd` and QEMU user networking, a free host loopback port
forwarded to its port 22. Its overlay carries Debian's dropbear and OpenSSH's sftp-server for the
guest's architecture (with the libraries the image lacks, harness.bench.auditd.debian_bundle), the
virtio-net modules of the guest's own kernel package (Debian builds NIC drivers as modules; they are
decompressed here because busybox's insmod takes plain .ko files, and loaded in the order their
`depends=` modinfo asks for), and an ephemeral ed25519 client key as root's authorized_keys. The
guest makes its host key at boot with dropbearkey and prints it on the console; the host then reads
it through the console agent (the trusted out-of-band channel) and pins its fingerprint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import lzma
import os
import socket
import struct
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from debian.debfile import DebFile

from harness.archs import ArchProfile, get_arch
from harness.bench.auditd import BundleSpec, debian_bundle
from harness.build import cached_dir, content_key
from harness.cells import files_overlay
from harness.debian import DebianRepo, Package
from harness.errors import BootError, BuildError, ConfigError, KmatrixError
from harness.images import KernelImage, resolve_image_package
from harness.matrix import KernelRef
from harness.remote.ssh import fingerprint, public_key_from_line
from harness.runner import Workspace, prepare
from harness.vm import Guest

SSHD_ROOT = "opt/kmatrix/peers/sshd"
MODULES_DIR = "opt/kmatrix/sshd/modules"  # images/init loads MODULES_DIR/../modules.load in order
HOST_KEY_PUB = "/etc/dropbear/host_ed25519.pub"  # written by images/init
# dropbear execs this path for the sftp subsystem (compiled in: SFTPSERVER_PATH).
SFTP_SERVER_PATH = "usr/lib/sftp-server"
SSHD = BundleSpec(
    name="sshd",
    roots=("dropbear-bin", "openssh-sftp-server"),
    binaries=("dropbear", "dropbearkey", "sftp-server"),
    guest_root=SSHD_ROOT,
    ignored=frozenset({"openssh-client"}),  # sftp-server's package asks for it; serving SFTP does not
    extra_dirs=("usr/lib/openssh",),
)
NIC_MODULES = ("virtio_net",)
_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst")
_MODULES_FORMAT = 1


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now (QEMU binds it moments later; a clash fails the boot loudly)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ephemeral_client_key(dest: Path) -> tuple[Path, str]:
    """A new ed25519 key written to dest (OpenSSH format, mode 0600) and its public line."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
    return dest, public.decode() + " kmatrix-ephemeral"


# -- kernel modules --------------------------------------------------------------------------------


def _modinfo(data: bytes) -> dict[str, str]:
    """A module's .modinfo strings (key=value, NUL-separated); the last value of a repeated key wins."""
    if data[:4] != b"\x7fELF":
        raise BuildError("not an ELF kernel module")
    wide, order = data[4] == 2, "<" if data[5] == 1 else ">"
    if wide:
        (shoff,) = struct.unpack_from(order + "Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", data, 0x3A)
        fmt = order + "IIQQQQIIQQ"
    else:
        (shoff,) = struct.unpack_from(order + "I", data, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", data, 0x2E)
        fmt = order + "IIIIIIIIII"
    sections = [struct.unpack_from(fmt, data, shoff + i * shentsize) for i in range(shnum)]
    names_at = sections[shstrndx][4]
    info: dict[str, str] = {}
    for name_off, _type, _flags, _addr, offset, size, *_rest in sections:
        name = data[names_at + name_off : data.index(b"\0", names_at + name_off)]
        if name == b".modinfo":
            for item in data[offset : offset + size].split(b"\0"):
                key, sep, value = item.decode(errors="replace").partition("=")
                if sep:
                    info[key] = value
    return info


def _decompress(name: str, data: bytes) -> bytes:
    if name.endswith(".xz"):
        return lzma.decompress(data)
    if name.endswith(".zst"):
        # No zstd in this Python's stdlib (3.14 has one); the zstd tool is a kernel build dependency.
        try:
            return subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError) as error:
            raise BuildError(f"cannot decompress {name}: {error}", hint="apt-get install zstd") from None
    return data


def _module_name(member: str) -> str | None:
    base = member.rsplit("/", 1)[-1]
    for suffix in _MODULE_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)].replace("-", "_")
    return None


def _module_packages(repo: DebianRepo, arch: ArchProfile, suite: str) -> list[Package]:
    """The kernel's image package and its linux-modules-* parts (newer Debian kernels split them)."""
    image = resolve_image_package(repo, arch, suite)
    parts = [name for group in image.depends_names() for name in group if name.startswith("linux-modules-")]
    return [image, *(repo.find(suite, arch.debian_arch, name) for name in parts)]


def kernel_modules(repo: DebianRepo, arch: ArchProfile, kernel: KernelImage, cache: Path,
                   names: tuple[str, ...] = NIC_MODULES) -> list[Path]:
    """names and every module they depend on, decompressed, in load order (dependencies first); cached."""
    if kernel.source.startswith("path:"):
        raise ConfigError(f"{kernel.source}: the SSH test guest needs a Debian kernel (its modules come from "
                          "the kernel package)")
    packages = _module_packages(repo, arch, kernel.source)
    key = content_key("kernel-modules", _MODULES_FORMAT, [p.sha256 for p in packages], sorted(names))
    dest = cache / "build" / "kernel-modules" / f"{arch.name}-{kernel.release}-{key}"

    def fill(tmp: Path) -> str:
        found: dict[str, bytes] = {}
        wanted = set(names)
        # Each pass over the (large, xz) data archive adds the dependencies the last one revealed.
        while wanted - set(found):
            missing = wanted - set(found)
            for pkg in packages:
                with DebFile(str(repo.fetch(pkg))) as deb:
                    archive: tarfile.TarFile = deb.data.tgz()
                    for member in archive:
                        name = _module_name(member.name)
                        if name in missing and member.isfile() and name not in found:
                            handle = archive.extractfile(member)
                            assert handle is not None
                            found[name] = _decompress(member.name, handle.read())
            still = missing - set(found)
            if still:
                raise BuildError(f"{', '.join(sorted(still))}: no such module in "
                                 f"{', '.join(p.name + ' ' + p.version for p in packages)}",
                                 hint=f"the kernel may build it in: check CONFIG_* in {kernel.config_path}")
            for name in missing:
                info = _modinfo(found[name])
                if not info.get("vermagic", "").startswith(kernel.release + " "):
                    raise BuildError(f"module {name} is for {info.get('vermagic')!r}, not {kernel.release}")
                wanted |= {dep.replace("-", "_") for dep in info.get("depends", "").split(",") if dep}
        order: list[str] = []

        def visit(name: str, path: tuple[str, ...]) -> None:
            if name in order:
                return
            if name in path:
                raise BuildError(f"module dependency loop: {' -> '.join((*path, name))}")
            for dep in filter(None, _modinfo(found[name]).get("depends", "").split(",")):
                visit(dep.replace("-", "_"), (*path, name))
            order.append(name)

        for name in sorted(names):
            visit(name, ())
        for name in order:
            (tmp / f"{name}.ko").write_bytes(found[name])
        (tmp / "modules.load").write_text("".join(f"{name}.ko\n" for name in order))
        return f"{kernel.release}\n"

    cached_dir(dest, fill)
    return [dest / line for line in (dest / "modules.load").read_text().split()]


# -- the guest -------------------------------------------------------------------------------------


@dataclass
class SshdGuest:
    """A running SSH-serving guest; `url` is a --target for it with the host key pinned."""

    guest: Guest
    port: int
    host_key: str  # the OpenSSH public key line the guest printed
    host_key_fingerprint: str
    identity: Path  # the ephemeral client key (private, 0600)

    @property
    def url(self) -> str:
        return f"ssh://root@127.0.0.1:{self.port}?fingerprint={self.host_key_fingerprint}&identity={self.identity}"

    def __enter__(self) -> SshdGuest:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            if self.guest.pid is not None:
                with contextlib.suppress(KmatrixError):  # one that will not power off is killed below
                    self.guest.poweroff()
        finally:
            self.guest.close()


def sshd_overlay(ws: Workspace, arch: ArchProfile, kernel: KernelImage, public_key: str, dest: Path) -> Path:
    """The cpio overlay turning a kmatrix guest into an SSH server for `public_key`."""
    bundle = debian_bundle(ws.repo, ws.matrix.userland_suite(arch.name), arch, ws.cache, SSHD, log=ws.say)
    files = list(bundle.files)
    files.append((bundle.path / "sbin" / "sftp-server", SFTP_SERVER_PATH, 0o755))
    modules = kernel_modules(ws.repo, arch, kernel, ws.cache)
    files += [(path, f"{MODULES_DIR}/{path.name}", 0o644) for path in modules]
    load = dest.parent / "modules.load"
    load.write_text("".join(f"{path.name}\n" for path in modules))
    files.append((load, "opt/kmatrix/sshd/modules.load", 0o644))
    keys = dest.parent / "authorized_keys"
    keys.write_text(public_key + "\n")
    files.append((keys, "root/.ssh/authorized_keys", 0o600))
    return files_overlay(files, dest)


def boot_sshd_guest(ws: Workspace, arch_name: str, ref: KernelRef, run_dir: Path, *,
                    timeout_s: float | None = None) -> SshdGuest:
    """Boot (arch, kernel) as an SSH server on a free loopback port; close() it when done."""
    arch = get_arch(arch_name)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec, kernel, _image, _reason = prepare(ws, arch, ref, mode="sshd")
    identity, public = ephemeral_client_key(run_dir / "client_ed25519")
    overlay = sshd_overlay(ws, arch, kernel, public, run_dir / "sshd.cpio.gz")
    port = free_loopback_port()
    spec = dataclasses.replace(spec, overlays=(overlay,), ssh_forward_port=port)
    guest = Guest(spec, run_dir / "console.log")
    try:
        guest.start()
        guest.wait_ready(timeout_s or arch.tcg_boot_timeout_s)
        # The console agent's checksummed reply is the out-of-band copy of the key sshd will present.
        reply = guest.request("read_file", path=HOST_KEY_PUB)
        line = str(reply.get("text", "")).strip()
        if not line:
            log = guest.request("read_file", path="/tmp/dropbear.log").get("text", "")
            raise BootError(f"the guest made no SSH host key ({HOST_KEY_PUB} is empty); dropbear log:\n{log}",
                            hint=f"console log: {guest.log.path}")
        host_key = public_key_from_line(line)
        sshd = SshdGuest(guest, port, line, fingerprint(host_key), identity)
        status = guest.exec(["sh", "-c", "cat /run/dropbear.pid && ip -o -4 addr show dev eth0"])
        if status["rc"] != 0:
            log = guest.request("read_file", path="/tmp/dropbear.log").get("text", "")
            raise BootError(f"dropbear or the network is not up in the guest: {status['stderr'].strip()}\n"
                            f"dropbear log:\n{log}", hint=f"console log: {guest.log.path}")
        return sshd
    except BaseException:
        guest.close()
        raise
