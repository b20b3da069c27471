"""Kernel images: find a suite's newest kernel for an architecture, the bootable file and its config.

The newest version is resolved through the kernel metapackage (`linux-image-<flavour>`), whose
Depends name the versioned image package. Newer Debian kernels split the image package into
`linux-binary-*` (the kernel file), `linux-modules-*` and `linux-base-*`; those parts are followed
through the image package's own Depends. Only the files a boot needs (the kernel and its config)
are extracted, and cached, not the hundreds of MB of modules.
"""

from __future__ import annotations

import fnmatch
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from debian.debfile import DebFile
from filelock import FileLock

from harness.archs import ArchProfile
from harness.debian import DebianRepo, Package
from harness.errors import ConfigError, FetchError
from harness.kernel import KernelFacts, parse_config

_WANTED = ("boot/*", "usr/lib/modules/*/vmlinuz", "usr/lib/modules/*/config", "usr/lib/modules/*/System.map")
_SPLIT_PARTS = ("linux-binary-", "linux-base-")


@dataclass(frozen=True)
class KernelImage:
    arch: str
    source: str  # suite name, or "path:<dir>" for a user's kernel
    release: str  # uname -r
    package: str  # image package name (or the user's directory)
    package_version: str
    kernel: Path  # the file QEMU boots
    config_path: Path | None
    config: dict[str, str]

    @property
    def facts(self) -> KernelFacts:
        return KernelFacts(
            release=self.release, package_version=self.package_version, config=self.config, suite=self.source
        )

    def describe(self) -> dict[str, object]:
        return {
            "arch": self.arch,
            "source": self.source,
            "release": self.release,
            "package": self.package,
            "package_version": self.package_version,
            "kernel": str(self.kernel),
            "capabilities": self.facts.capabilities(),
        }


def _extract_boot_files(repo: DebianRepo, pkg: Package, cache: Path) -> Path:
    """Extract only boot-relevant members of a kernel package, cached by its sha256."""
    dest = cache / "kernels" / pkg.sha256[:24]
    marker = dest / ".complete"
    if marker.exists():
        return dest
    deb = repo.fetch(pkg)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if marker.exists():
            return dest
        tmp = dest.with_name(dest.name + ".partial")
        if tmp.exists():
            _rmtree(tmp)
        tmp.mkdir()
        with DebFile(str(deb)) as debfile:
            archive: tarfile.TarFile = debfile.data.tgz()
            for member in archive:
                name = member.name.lstrip("./")
                if (member.isfile() or member.issym()) and any(fnmatch.fnmatchcase(name, p) for p in _WANTED):
                    member.name = name
                    archive.extract(member, tmp, filter="tar")
        (tmp / ".complete").write_text(json.dumps({"package": pkg.name, "version": pkg.version}))
        if dest.exists():
            _rmtree(dest)
        tmp.rename(dest)
    return dest


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _dependency_names(pkg: Package) -> list[str]:
    return [name for group in pkg.depends_names() for name in group]


def resolve_image_package(repo: DebianRepo, arch: ArchProfile, suite: str) -> Package:
    meta_name = f"linux-image-{arch.kernel_flavour}"
    meta = repo.find(suite, arch.debian_arch, meta_name)
    for name in _dependency_names(meta):
        if name.startswith("linux-image-") and name != meta_name and not name.endswith("-dbg"):
            return repo.find(suite, arch.debian_arch, name)
    raise FetchError(
        f"{meta_name} {meta.version} in {suite}/{arch.debian_arch} depends on no linux-image-* package",
        hint="the suite's kernel packaging changed; report it with the metapackage's Depends",
    )


def fetch_kernel(repo: DebianRepo, arch: ArchProfile, suite: str, cache: Path) -> KernelImage:
    image = resolve_image_package(repo, arch, suite)
    roots = [_extract_boot_files(repo, image, cache)]
    for name in _dependency_names(image):
        if name.startswith(_SPLIT_PARTS):
            roots.append(_extract_boot_files(repo, repo.find(suite, arch.debian_arch, name), cache))
    kernel = _first_match(roots, arch.kernel_globs)
    if kernel is None:
        raise FetchError(
            f"{image.name} {image.version} ({suite}/{arch.debian_arch}) holds no kernel matching "
            f"{', '.join(arch.kernel_globs)}"
        )
    config_path = _first_match(roots, ("boot/config-*", "usr/lib/modules/*/config"))
    release = _release_of(kernel, config_path)
    config = parse_config(config_path.read_text()) if config_path else {}
    return KernelImage(arch.name, suite, release, image.name, image.version, kernel, config_path, config)


def user_kernel(arch: ArchProfile, directory: Path) -> KernelImage:
    """A user's own kernel: a directory with the boot file (vmlinuz*/vmlinux*/Image) and its config."""
    if not directory.is_dir():
        raise ConfigError(
            f"kernel directory {directory} does not exist",
            hint="pass a directory holding vmlinuz (or vmlinux/Image) and config",
        )
    kernel = _first_match([directory], ("vmlinuz*", "vmlinux*", "Image*", "bzImage", *arch.kernel_globs))
    if kernel is None:
        raise ConfigError(f"{directory}: no kernel file (vmlinuz*, vmlinux*, Image*, bzImage) found")
    config_path = _first_match([directory], ("config*", ".config", "boot/config-*"))
    release = _release_of(kernel, config_path)
    config = parse_config(config_path.read_text()) if config_path else {}
    version = release.split("-")[0]
    return KernelImage(arch.name, f"path:{directory}", release, str(directory), version, kernel, config_path, config)


def _first_match(roots: list[Path], patterns: tuple[str, ...]) -> Path | None:
    for pattern in patterns:
        for root in roots:
            found = sorted(p for p in root.glob(pattern) if p.is_file() and not p.name.endswith(".map"))
            if found:
                return found[-1]
    return None


def _release_of(kernel: Path, config: Path | None) -> str:
    for path in (config, kernel):
        if path is None:
            continue
        for prefix in ("config-", "vmlinuz-", "vmlinux-"):
            if path.name.startswith(prefix):
                return path.name[len(prefix) :]
        if path.parent.parent.name == "modules":  # usr/lib/modules/<release>/vmlinuz
            return path.parent.name
    return os.path.basename(kernel)
