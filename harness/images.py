"""Kernel images: find a suite's newest kernel for an architecture, the bootable file and its config.

The newest version is resolved through the kernel metapackage (`linux-image-<flavour>`), whose
Depends name the versioned image package. Newer Debian kernels split the image package into
`linux-binary-*` (the kernel file), `linux-modules-*` and `linux-base-*`; those parts are followed
through the image package's own Depends. Only the files a boot needs (the kernel and its config)
are extracted, and cached, not the hundreds of MB of modules.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
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
from harness.paths import cache_writes

log = logging.getLogger("kmatrix.images")

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


_BOOT_FORMAT = 2  # the .complete marker records the sha256 of every extracted file (format 1 did not)


def _extract_boot_files(repo: DebianRepo, pkg: Package, cache: Path) -> Path:
    """Extract only boot-relevant members of a kernel package, cached by its sha256.

    The extracted files are checked against the sha256s recorded at extraction on every call: a
    cached kernel that changed on disk (a flipped bit, a truncation) is extracted again from the
    .deb (itself re-verified, or fetched again, by repo.fetch) and never handed to QEMU.
    """
    dest = cache / "kernels" / pkg.sha256[:24]
    if _boot_files_intact(dest, pkg):
        return dest
    deb = repo.fetch(pkg)
    with cache_writes(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(dest) + ".lock"):
            if _boot_files_intact(dest, pkg) or _adopt_unchecked(dest, deb, pkg):
                return dest
            tmp = dest.with_name(dest.name + ".partial")
            if tmp.exists():
                _rmtree(tmp)
            try:
                tmp.mkdir()
                files = _extract_members(deb, tmp)
                (tmp / ".complete").write_text(_marker(pkg, files))
                if dest.exists():
                    _rmtree(dest)
                tmp.rename(dest)
            except BaseException:
                _rmtree(tmp)  # a half-extracted kernel is never left where it could be mistaken for one
                raise
    return dest


def _marker(pkg: Package, files: dict[str, str]) -> str:
    return json.dumps(
        {"format": _BOOT_FORMAT, "package": pkg.name, "version": pkg.version, "deb_sha256": pkg.sha256, "files": files}
    )


def _adopt_unchecked(dest: Path, deb: Path, pkg: Package) -> bool:
    """Give a kernel extracted before checksums were recorded its checksums, if it matches the .deb.

    Its files are compared with the verified .deb's members and left in place (a guest may be booting
    from them right now); only the marker is rewritten. Anything else is extracted again.
    """
    marker = dest / ".complete"
    try:
        legacy = "format" not in json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if not legacy:
        return False
    files: dict[str, str] = {}
    with DebFile(str(deb)) as debfile:
        archive: tarfile.TarFile = debfile.data.tgz()
        for member in archive:
            name = member.name.lstrip("./")
            if not any(fnmatch.fnmatchcase(name, p) for p in _WANTED):
                continue
            if member.issym():
                files[name] = f"link:{member.linkname}"
            elif member.isfile():
                handle = archive.extractfile(member)
                assert handle is not None
                digest = hashlib.sha256()
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
                files[name] = digest.hexdigest()
    for name, expected in files.items():
        try:
            if _fingerprint(dest / name) != expected:
                return False
        except OSError:
            return False
    tmp = marker.with_name(".complete.tmp")
    tmp.write_text(_marker(pkg, files))
    tmp.replace(marker)
    return True


def _extract_members(deb: Path, dest: Path) -> dict[str, str]:
    """Extract the wanted members into dest; relative path -> sha256 (or "link:<target>")."""
    files: dict[str, str] = {}
    with DebFile(str(deb)) as debfile:
        archive: tarfile.TarFile = debfile.data.tgz()
        for member in archive:
            name = member.name.lstrip("./")
            if (member.isfile() or member.issym()) and any(fnmatch.fnmatchcase(name, p) for p in _WANTED):
                member.name = name
                archive.extract(member, dest, filter="tar")
                files[name] = _fingerprint(dest / name)
    return files


def _fingerprint(path: Path) -> str:
    if path.is_symlink():
        return f"link:{os.readlink(path)}"
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _boot_files_intact(dest: Path, pkg: Package) -> bool:
    """True iff dest is a complete extraction of pkg whose files still match their recorded sha256."""
    try:
        marker = json.loads((dest / ".complete").read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as error:
        log.warning("unreadable marker in cached kernel %s (%s); extracting it again", dest, error)
        return False
    if not isinstance(marker, dict) or marker.get("format") != _BOOT_FORMAT or marker.get("deb_sha256") != pkg.sha256:
        log.info("cached kernel %s has no checksums of its files; extracting it again", dest)
        return False
    files = marker.get("files")
    if not isinstance(files, dict):  # empty is fine: a split package part may hold no boot file
        return False
    for name, expected in files.items():
        try:
            actual = _fingerprint(dest / name)
        except OSError:
            actual = "missing"
        if actual != expected:
            log.warning(
                "cached kernel file %s does not match the sha256 recorded when it was extracted; "
                "extracting it again from the verified %s",
                dest / name,
                pkg.filename.rsplit("/", 1)[-1],
            )
            return False
    return True


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
